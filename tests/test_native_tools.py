"""Native tool calling: the ToolCalls type, Predict with a ToolCalls output, ReAct over the LM's
function calling (every call of a turn run at once, results in order, errors and timeouts as
observations, the fallback to the text protocol), both providers, streaming under load."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pydantic
import pytest

import asynclm as alm
from asynclm.lm import BadRequestError
from asynclm.modules._streaming import StreamChunk, streamify
from asynclm.testing import FakeOpenAIServer, FakeRequest, Fault, Fields, Reply, ScriptedLM

# -- helpers --------------------------------------------------------------------------------------


def make_lm(server: FakeOpenAIServer, model: str = "openai/fake-model", **kwargs: Any) -> alm.LM:
    return alm.LM(model, base_url=server.base_url, api_key="sk-test", cache=False, max_retries=0, **kwargs)


def tool_messages(request: FakeRequest) -> list[dict[str, Any]]:
    return [m for m in request.messages if m.get("role") == "tool"]


def is_extract(request: FakeRequest) -> bool:
    return "tools" not in (request.json or {})


async def search(query: str) -> str:
    """Search the web."""
    await anyio.lowlevel.checkpoint()
    return f"results for {query}"


# -- the ToolCalls type ---------------------------------------------------------------------------


def test_tool_calls_from_dicts_provider_shapes_and_back() -> None:
    calls = alm.ToolCalls.from_dict_list(
        [
            {"name": "search", "args": {"query": "cats"}},
            {"id": "call_9", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
        ]
    )
    assert [(c.name, c.args, c.id) for c in calls.tool_calls] == [
        ("search", {"query": "cats"}, None),
        ("add", {"a": 1, "b": 2}, "call_9"),
    ]
    assert calls.format() == {
        "tool_calls": [{"name": "search", "args": {"query": "cats"}}, {"name": "add", "args": {"a": 1, "b": 2}}]
    }
    assert calls.model_dump() == calls.format()
    assert calls.to_openai()[0] == {
        "id": "call_0",
        "type": "function",
        "function": {"name": "search", "arguments": '{"query": "cats"}'},
    }
    assert alm.ToolCalls.ToolCall is type(calls.tool_calls[0])
    adapter = pydantic.TypeAdapter(alm.ToolCalls)
    # what the text protocol reads: a list, one call, or {"tool_calls": [...]}
    assert adapter.validate_python([{"name": "a", "args": {}}]).tool_calls[0].name == "a"
    assert adapter.validate_python({"name": "a", "args": {"x": 1}}).tool_calls[0].args == {"x": 1}
    assert len(adapter.validate_python({"tool_calls": [{"name": "a", "args": {}}, {"name": "b", "args": {}}]})) == 2
    schema = json.dumps(adapter.json_schema())
    assert '"id"' not in schema and "docstring" not in schema and '"args"' in schema
    with pytest.raises(pydantic.ValidationError):
        adapter.validate_python("not calls")


def test_tool_calls_is_a_known_type_name_in_string_signatures() -> None:
    sig = alm.Signature("question, tools: list[Tool] -> calls: ToolCalls", custom_types={"Tool": alm.Tool})
    assert sig.output_fields["calls"].annotation is alm.ToolCalls
    again = alm.Signature.from_dict(alm.Signature("q -> calls: ToolCalls").to_dict())
    assert again.output_fields["calls"].annotation is alm.ToolCalls


# -- Predict with a ToolCalls output --------------------------------------------------------------


class Plan(alm.Signature):
    """Pick the tools to call."""

    question: str = alm.InputField()
    tools: list[alm.Tool] = alm.InputField()
    note: str = alm.OutputField()
    calls: alm.ToolCalls = alm.OutputField()


async def test_predict_sends_tools_and_reads_tool_calls() -> None:
    weather = alm.Tool(search, name="weather")

    def respond(request: FakeRequest) -> Any:
        return Reply(text="", tool_calls=[{"name": "weather", "args": {"query": "Oslo"}, "id": "call_a"}])

    async with FakeOpenAIServer(respond) as server:
        lm = make_lm(server)
        pred = await alm.Predict(Plan, lm=lm)(question="Weather in Oslo?", tools=[weather])
        body = server.request_log[0].json
        raw = await lm(messages=[{"role": "user", "content": "x"}], tools=body["tools"])
    # the tools travel as OpenAI's `tools`, not in the prompt; the ToolCalls field is not asked in text
    assert body["tools"] == [weather.function_schema()]
    prompt = json.dumps(body["messages"])
    assert "weather" not in prompt and "calls" not in prompt and "Weather in Oslo?" in prompt
    assert isinstance(pred.calls, alm.ToolCalls)
    assert [(c.name, c.args, c.id) for c in pred.calls.tool_calls] == [("weather", {"query": "Oslo"}, "call_a")]
    assert pred.note is None  # the model only called tools
    assert raw.tool_calls == [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"query": "Oslo"}'}}
    ]
    assert raw.finish_reason == "tool_calls" and raw.text == ""


async def test_predict_answer_without_tool_calls_parses_the_text() -> None:
    async with FakeOpenAIServer(Fields(note="no tool needed")) as server:
        pred = await alm.Predict(Plan, lm=make_lm(server))(question="?", tools=[alm.Tool(search)])
    assert pred.note == "no tool needed" and pred.calls is None


async def test_requests_without_tools_are_unchanged() -> None:
    async with FakeOpenAIServer(Fields(answer="x")) as server:
        lm = make_lm(server)
        await alm.Predict("question -> answer", lm=lm)(question="?")
        await alm.Predict("question -> answer", lm=lm, native_tools=False)(question="?")
        first, second = server.request_log[0], server.request_log[1]
    assert "tools" not in first.json and first.body == second.body


async def test_predict_falls_back_to_text_on_a_400_naming_tools_and_remembers() -> None:
    def respond(request: FakeRequest) -> Any:
        # the text protocol: the tools are described in the prompt, the calls written as JSON
        assert "tools" in request.inputs and "search" in request.inputs["tools"]
        return Fields(note="look it up", calls=[{"name": "search", "args": {"query": "cats"}}])

    async with FakeOpenAIServer(respond, support_tools=False) as server:
        lm = make_lm(server)
        predict = alm.Predict(Plan, lm=lm)
        pred = await predict(question="cats?", tools=[alm.Tool(search)])
        again = await predict(question="dogs?", tools=[alm.Tool(search)])
        log = list(server.request_log)
    assert [("tools" in r.json) for r in log] == [True, False, False]  # one 400, then text for this LM
    assert pred.calls.tool_calls[0].name == "search" and pred.calls.tool_calls[0].args == {"query": "cats"}
    assert pred.note == "look it up" and again.calls is not None


async def test_native_tools_true_does_not_fall_back() -> None:
    async with FakeOpenAIServer("x", support_tools=False) as server:
        with pytest.raises(BadRequestError, match="tools"):
            await alm.Predict(Plan, lm=make_lm(server), native_tools=True)(question="?", tools=[alm.Tool(search)])


async def test_tool_calls_output_needs_a_tools_input() -> None:
    with pytest.raises(ValueError, match="no tools input"):
        await alm.Predict("question -> calls: ToolCalls", lm=ScriptedLM({"calls": []}))(question="?")


async def test_scripted_lm_uses_the_text_protocol_for_tool_calls() -> None:
    lm = ScriptedLM({"note": "n", "calls": [{"name": "search", "args": {"query": "q"}}]})
    pred = await alm.Predict(Plan, lm=lm)(question="?", tools=[alm.Tool(search)])
    assert "tools" not in lm.requests[0] and pred.calls.tool_calls[0].args == {"query": "q"}


# -- ReAct over native function calling -----------------------------------------------------------


async def test_react_wire_format_tools_tool_calls_and_tool_messages() -> None:
    async def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    def respond(request: FakeRequest) -> Any:
        if is_extract(request):
            return Fields(reasoning="read it", answer="sunny")
        if not tool_messages(request):
            return Reply(
                text="Both at once.",
                tool_calls=[
                    {"id": "call_w", "name": "weather", "args": {"city": "Oslo"}},
                    {"id": "call_s", "name": "search", "args": {"query": "Oslo"}},
                ],
            )
        return Reply(tool_calls=[{"id": "call_f", "name": "finish", "args": {}}])

    async with FakeOpenAIServer(respond) as server:
        react = alm.ReAct("question -> answer", tools=[weather, search])
        with alm.context(lm=make_lm(server)):
            pred = await react(question="Weather in Oslo?")
        first, second, extract = server.request_log
    assert [t["function"]["name"] for t in first.json["tools"]] == ["weather", "search", "finish"]
    assert first.json["tools"][0] == alm.Tool(weather).function_schema()
    assert [m["role"] for m in first.messages] == ["system", "user"]
    assert "[[ ## question ## ]]\nWeather in Oslo?" in first.messages[1]["content"]
    # the follow-up: the assistant's calls, then one tool message per call, in the order asked
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "tool", "tool"]
    assistant = second.messages[2]
    assert assistant["content"] == "Both at once."
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in assistant["tool_calls"]
    ] == [
        ("call_w", "weather", {"city": "Oslo"}),
        ("call_s", "search", {"query": "Oslo"}),
    ]
    assert tool_messages(second) == [
        {"role": "tool", "tool_call_id": "call_w", "content": "sunny in Oslo"},
        {"role": "tool", "tool_call_id": "call_s", "content": "results for Oslo"},
    ]
    assert "tools" not in extract.json and "observation_1" in extract.last_user_message
    assert pred.answer == "sunny"
    assert pred.trajectory == {
        "thought_0": "Both at once.",
        "tool_name_0": "weather",
        "tool_args_0": {"city": "Oslo"},
        "observation_0": "sunny in Oslo",
        "thought_1": "",
        "tool_name_1": "search",
        "tool_args_1": {"query": "Oslo"},
        "observation_1": "results for Oslo",
        "thought_2": "",
        "tool_name_2": "finish",
        "tool_args_2": {},
        "observation_2": "Completed.",
    }


async def test_two_tools_of_one_turn_overlap_and_results_keep_the_asked_order() -> None:
    """An async tool and a sync (thread) tool, 0.2 s each: both run at once (the peak of calls
    in flight is 2), and the slower-to-finish first call's result still comes first."""
    state = {"running": 0, "peak": 0}
    order: list[str] = []

    def enter() -> None:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])

    async def slow_async(x: int) -> int:
        enter()
        await anyio.sleep(0.3)
        state["running"] -= 1
        order.append("slow_async")
        return x * 10

    def slow_sync(x: int) -> int:
        enter()
        time.sleep(0.2)
        state["running"] -= 1
        order.append("slow_sync")
        return x + 1

    def respond(request: FakeRequest) -> Any:
        if is_extract(request):
            return Fields(reasoning="r", answer="ok")
        if not tool_messages(request):
            return Reply(tool_calls=[{"name": "slow_async", "args": {"x": 2}}, {"name": "slow_sync", "args": {"x": 2}}])
        return Reply(text="I have both.")  # no tool calls: done

    async with FakeOpenAIServer(respond) as server:
        react = alm.ReAct("question -> answer", tools=[slow_async, slow_sync])
        with alm.context(lm=make_lm(server)):
            pred = await react(question="?")
        second = server.request_log[1]
    assert state["peak"] == 2 and order == ["slow_sync", "slow_async"]
    assert [m["content"] for m in tool_messages(second)] == ["20", "3"]  # the order asked, not finished
    assert pred.trajectory["observation_0"] == 20 and pred.trajectory["observation_1"] == 3
    assert pred.trajectory["tool_name_2"] == "finish" and pred.trajectory["thought_2"] == "I have both."


async def test_failing_and_slow_tools_become_observations() -> None:
    async def broken(x: int) -> int:
        raise RuntimeError("the backend is down")

    async def stuck() -> str:
        await anyio.sleep(30)
        return "never"

    def blocking() -> str:
        time.sleep(1.0)
        return "late"

    def respond(request: FakeRequest) -> Any:
        if is_extract(request):
            return Fields(reasoning="r", answer="partial")
        if not tool_messages(request):
            return Reply(
                tool_calls=[
                    {"name": "broken", "args": {"x": 1}},
                    {"name": "stuck", "args": {}},
                    {"name": "blocking", "args": {}},
                    {"name": "search", "args": {"query": "q"}},
                    {"name": "nope", "args": {}},
                    {"id": "bad", "type": "function", "function": {"name": "search", "arguments": "{not json"}},
                ]
            )
        return Reply(tool_calls=[{"name": "finish", "args": {}}])

    async with FakeOpenAIServer(respond) as server:
        tools = [broken, stuck, alm.Tool(blocking, timeout=0.1), search]
        react = alm.ReAct("question -> answer", tools=tools, tool_timeout=0.1)
        with alm.context(lm=make_lm(server)), anyio.fail_after(10):
            pred = await react(question="?")
        contents = [m["content"] for m in tool_messages(server.request_log[1])]
    t = pred.trajectory
    assert t["observation_0"] == "Execution error in broken: RuntimeError: the backend is down"
    assert t["observation_1"].startswith("Execution error in stuck: TimeoutError: ")
    assert "timeout of 0.1 s" in t["observation_1"]
    assert t["observation_2"].startswith("Execution error in blocking: TimeoutError: ")
    assert t["observation_3"] == "results for q"  # the others did not stop it
    assert t["observation_4"].startswith("Execution error in nope: KeyError: ")
    assert "not valid JSON" in t["observation_5"]
    assert contents == [t[f"observation_{i}"] for i in range(6)]
    assert pred.answer == "partial"


async def test_react_falls_back_to_the_text_protocol_on_a_400_naming_tools() -> None:
    def respond(request: FakeRequest) -> Any:
        system = str(request.messages[0]["content"])
        if "next_tool_name" not in system:
            return Fields(reasoning="r", answer="from text")
        if "observation_0" in request.last_user_message:
            return Fields(next_thought="done", next_tool_name="finish", next_tool_args={})
        return Fields(next_thought="look", next_tool_name="search", next_tool_args={"query": "q"})

    async with FakeOpenAIServer(respond, support_tools=False) as server:
        lm = make_lm(server)
        react = alm.ReAct("question -> answer", tools=[search])
        with alm.context(lm=lm):
            pred = await react(question="?")
            with pytest.raises(BadRequestError, match="tools"):
                await alm.ReAct("question -> answer", tools=[search], native_tools=True)(question="?")
        with_tools = [("tools" in r.json) for r in server.request_log]
    assert with_tools == [True, False, False, False, True]  # one rejected try; native_tools=True tries anyway
    assert pred.answer == "from text" and pred.trajectory["observation_0"] == "results for q"


async def test_react_with_mcp_style_tools_sends_their_schema_as_given() -> None:
    """A Tool with a whole JSON schema (what asynclm.mcp gives): the schema travels unchanged and
    a call missing a required argument is an observation, not a crash."""
    seen: list[dict[str, Any]] = []

    async def call_remote(**arguments: Any) -> str:
        seen.append(arguments)
        return f"{arguments['a'] + arguments.get('b', 0)}"

    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer", "title": "A"}, "b": {"type": "integer", "default": 0}},
        "required": ["a"],
        "additionalProperties": False,
    }
    add = alm.Tool(call_remote, name="add", desc="Add two integers.", args=schema)

    def respond(request: FakeRequest) -> Any:
        if is_extract(request):
            return Fields(reasoning="r", answer="5")
        if not tool_messages(request):
            return Reply(tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}}, {"name": "add", "args": {"b": 1}}])
        return Reply(tool_calls=[{"name": "finish", "args": {}}])

    async with FakeOpenAIServer(respond) as server:
        with alm.context(lm=make_lm(server)):
            pred = await alm.ReAct("question -> answer", tools=[add])(question="2 + 3?")
        sent = server.request_log[0].json["tools"][0]
    assert sent == {
        "type": "function",
        "function": {"name": "add", "description": "Add two integers.", "parameters": schema},
    }
    assert pred.trajectory["observation_0"] == "5" and seen == [{"a": 2, "b": 3}]
    assert "missing required argument 'a'" in pred.trajectory["observation_1"]


async def test_react_context_overflow_drops_the_oldest_turn_from_the_conversation() -> None:
    def respond(request: FakeRequest) -> Any:
        if is_extract(request):
            return Fields(reasoning="r", answer="done")
        seen = [m["content"] for m in tool_messages(request)]
        if len(seen) >= 2:  # two results are too long for this "model"
            return Fault.context_window_exceeded()
        if seen == ["results for q1"]:
            return Reply(tool_calls=[{"name": "finish", "args": {}}])
        query = "q1" if seen == ["results for q0"] else "q0"
        return Reply(tool_calls=[{"name": "search", "args": {"query": query}}])

    async with FakeOpenAIServer(respond) as server:
        with alm.context(lm=make_lm(server)):
            pred = await alm.ReAct("question -> answer", tools=[search])(question="?")
        log = [[m["content"] for m in tool_messages(r)] for r in server.request_log]
    assert log == [[], ["results for q0"], ["results for q0", "results for q1"], ["results for q1"], []]
    assert "tool_name_0" not in pred.trajectory and pred.trajectory["observation_1"] == "results for q1"
    assert pred.trajectory["tool_name_2"] == "finish" and pred.answer == "done"


async def test_anthropic_native_tools_round_trip() -> None:
    def respond(request: FakeRequest) -> Any:
        if "tools" not in request.json:
            return Fields(reasoning="r", answer="sunny")
        results = [
            block
            for m in request.messages
            if m["role"] == "user" and isinstance(m["content"], list)
            for block in m["content"]
            if block.get("type") == "tool_result"
        ]
        if not results:
            calls = [
                {"id": "call_1", "name": "search", "args": {"query": "Oslo"}},
                {"id": "call_2", "name": "search", "args": {"query": "Rome"}},
            ]
            return Reply(text="Checking.", tool_calls=calls)
        return Reply(tool_calls=[{"id": "call_3", "name": "finish", "args": {}}])

    async with FakeOpenAIServer(respond) as server:
        lm = make_lm(server, "anthropic/claude-fake")
        with alm.context(lm=lm):
            pred = await alm.ReAct("question -> answer", tools=[search])(question="?")
        first, second = server.request_log[0], server.request_log[1]
    assert first.api == "anthropic" and first.json["tools"][0] == {
        "name": "search",
        "input_schema": alm.Tool(search).json_schema,
        "description": "Search the web.",
    }
    assert second.messages[1]["role"] == "assistant"
    uses = [b for b in second.messages[1]["content"] if b["type"] == "tool_use"]
    assert [(b["id"], b["input"]) for b in uses] == [("toolu_1", {"query": "Oslo"}), ("toolu_2", {"query": "Rome"})]
    assert second.messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "results for Oslo"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "results for Rome"},
    ]
    assert pred.trajectory["observation_1"] == "results for Rome" and pred.answer == "sunny"


async def test_streamed_react_with_async_tools_under_many_concurrent_requests() -> None:
    """50 streamed ReAct calls at once, each turn asking two async tools: no deadlock, and every
    stream gets its own answer (no cross-talk between the calls' tools, messages or chunks)."""

    async def lookup(key: str) -> str:
        await anyio.sleep(0.01)
        return f"value of {key}"

    async def echo(text: str) -> str:
        await anyio.lowlevel.checkpoint()
        return text.upper()

    def respond(request: FakeRequest) -> Any:
        question = request.inputs.get("question", "")
        if is_extract(request):
            return Fields(reasoning="read", answer=f"answer to {question}")
        if not tool_messages(request):
            return Reply(
                tool_calls=[{"name": "lookup", "args": {"key": question}}, {"name": "echo", "args": {"text": question}}]
            )
        return Reply(tool_calls=[{"name": "finish", "args": {}}])

    results: dict[str, tuple[str, str, Any]] = {}
    async with FakeOpenAIServer(respond, chunk_delay=0.001) as server:
        react = alm.ReAct("question -> answer", tools=[lookup, echo])

        async def one(i: int) -> None:
            question = f"q{i}"
            streamed: list[str] = []
            final = None
            async for item in streamify(react)(question=question):
                if isinstance(item, StreamChunk):
                    if item.field == "answer":
                        streamed.append(item.text)
                else:
                    final = item
            results[question] = ("".join(streamed), final.answer, final.trajectory)

        with alm.context(lm=make_lm(server)), anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(one, i)
    assert len(results) == 50
    for question, (streamed, answer, trajectory) in results.items():
        assert streamed == answer == f"answer to {question}"
        assert trajectory["observation_0"] == f"value of {question}"
        assert trajectory["observation_1"] == question.upper()


async def test_streamed_tool_calls_from_the_fake_server() -> None:
    async with FakeOpenAIServer(Reply(tool_calls=[{"name": "search", "args": {"query": "x"}}])) as server:
        deltas = [d async for d in make_lm(server).stream("?")]
    calls = [c for d in deltas for ch in d.raw.get("choices", []) for c in ch.get("delta", {}).get("tool_calls", [])]
    assert calls == [
        {
            "index": 0,
            "id": "call_1_0",
            "type": "function",
            "function": {"name": "search", "arguments": '{"query": "x"}'},
        }
    ]
    assert deltas[-1].finish_reason == "tool_calls" or any(d.finish_reason == "tool_calls" for d in deltas)


def test_native_tools_and_timeouts_are_checked() -> None:
    with pytest.raises(ValueError, match="native_tools"):
        alm.ReAct("q -> a", tools=[search], native_tools="yes")
    with pytest.raises(ValueError, match="tool_timeout"):
        alm.ReAct("q -> a", tools=[search], tool_timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        alm.Tool(search, timeout=-1)
    assert alm.ReAct("q -> a", tools=[search]).max_iters == 20


@pytest.mark.parametrize(
    ("message", "names_tools"),
    [
        ('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set', True),  # vLLM
        ("tools param requires --jinja flag", True),  # llama.cpp
        ("registry.ollama.ai/library/gemma:2b does not support tools", True),  # Ollama
        ("Unsupported parameter: 'tools' is not supported with this model.", True),  # OpenAI
        ("Tool calling is not supported for this model", True),
        ("Invalid parameter: messages with role 'tool' must answer a tool_call_id", False),
        ("This model's maximum context length is 8192 tokens", False),
    ],
)
def test_which_400s_mean_no_function_calling(message: str, names_tools: bool) -> None:
    from asynclm.lm import ContextWindowExceededError
    from asynclm.modules._tool_calling import tools_rejected

    assert tools_rejected(BadRequestError(message)) is names_tools
    assert not tools_rejected(ContextWindowExceededError("tools: too long"))
    assert not tools_rejected(RuntimeError("tools"))
