"""ReAct with two 0.2 s tools per turn: native tool calling (the turn's calls run at once) vs
DSPy's text protocol (one tool per step), issue 14.

    python -m bench.bench_tools                  # 5 repeats, 1 and 50 ReAct calls at once
    python -m bench.bench_tools --repeat 3 --concurrency 1,100

A ``FakeOpenAIServer`` (in this process, no latency) plays the model: natively it asks for both
tools in one turn, then finishes; in text it asks for one tool per step (two steps), then
finishes. One tool is async (``anyio.sleep(0.2)``), the other sync (``time.sleep(0.2)``, run in a
worker thread). Prints the median wall time per ``ReAct`` call (min–max over the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import anyio

import asynclm as alm
from asynclm.testing import FakeOpenAIServer, FakeRequest, Fields, Reply

TOOL_SECONDS = 0.2


async def fetch_a(key: str) -> str:
    await anyio.sleep(TOOL_SECONDS)
    return f"a:{key}"


def fetch_b(key: str) -> str:
    time.sleep(TOOL_SECONDS)
    return f"b:{key}"


def respond(request: FakeRequest) -> Any:
    system = str(request.messages[0]["content"])
    if "tools" in (request.json or {}):  # native
        if not any(m.get("role") == "tool" for m in request.messages):
            return Reply(
                tool_calls=[{"name": "fetch_a", "args": {"key": "k"}}, {"name": "fetch_b", "args": {"key": "k"}}]
            )
        return Reply(tool_calls=[{"name": "finish", "args": {}}])
    if "next_tool_name" not in system:  # the extract step
        return Fields(reasoning="read", answer="done")
    done = request.last_user_message.count("[[ ## observation_")
    if done == 0:
        return Fields(next_thought="a", next_tool_name="fetch_a", next_tool_args={"key": "k"})
    if done == 1:
        return Fields(next_thought="b", next_tool_name="fetch_b", next_tool_args={"key": "k"})
    return Fields(next_thought="done", next_tool_name="finish", next_tool_args={})


async def measure(native: bool, concurrency: int, base_url: str) -> float:
    lm = alm.LM("openai/fake", base_url=base_url, api_key="k", cache=False)
    react = alm.ReAct("question -> answer", tools=[fetch_a, fetch_b], native_tools=native)
    with alm.context(lm=lm):
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(concurrency):
                tg.start_soon(lambda i=i: react(question=f"q{i}"))
        return time.perf_counter() - start


async def main(args: argparse.Namespace) -> None:
    print("| ReAct, two 0.2 s tools (async + sync) | calls at once | wall s per batch (min–max) |")
    print("|---|---|---|")
    async with FakeOpenAIServer(respond) as server:
        await measure(True, 1, server.base_url)  # warm up (threads, connections)
        for concurrency in args.concurrency:
            for native in (True, False):
                runs = [await measure(native, concurrency, server.base_url) for _ in range(args.repeat)]
                label = "native tool calls (one turn, both at once)" if native else "text protocol (one tool per step)"
                print(f"| {label} | {concurrency} | {statistics.median(runs):.3f} ({min(runs):.3f}–{max(runs):.3f}) |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 50])
    anyio.run(main, parser.parse_args())
