"""Tool and ReAct: schemas, argument validation, sync/async tools, the DSPy field protocol,
tool errors as observations, context-window truncation, concurrency, save/load, end to end."""

from __future__ import annotations

import json
import threading
from typing import Any, Literal

import anyio
import anyio.to_thread
import pydantic
import pytest

import asynclm as alm
from asynclm.lm import ContextWindowExceededError
from asynclm.modules._react import ReAct
from asynclm.modules._tool import Tool, ToolArgumentError
from asynclm.testing import FakeOpenAIServer, Fault, ScriptedLM
from asynclm.testing._scripted import ScriptedRequest, render_chat

# -- helpers --------------------------------------------------------------------------------------


def is_step(req: ScriptedRequest) -> bool:
    """A request of ReAct's step predictor (its system message lists next_tool_name)."""
    return "next_tool_name" in str(req.messages[0]["content"])


def steps_done(req: ScriptedRequest) -> int:
    """Steps in the request's trajectory (re-asks after a parse error included)."""
    return max(str(m["content"]).count("[[ ## observation_") for m in req.messages if m["role"] == "user")


def agent(plan: list[tuple[str, dict[str, Any]]], answer: str = "42") -> ScriptedLM:
    """An LM that calls the tools of ``plan`` in order (then ``finish``) and answers ``answer``."""

    def respond(req: ScriptedRequest) -> dict[str, Any]:
        if not is_step(req):
            return {"reasoning": "read the trajectory", "answer": answer}
        i = steps_done(req)
        if i < len(plan):
            name, args = plan[i]
            return {"next_thought": f"step {i}", "next_tool_name": name, "next_tool_args": args}
        return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}

    return ScriptedLM(respond)


class Address(pydantic.BaseModel):
    city: str
    zip_code: int


async def search(query: str, k: int = 2) -> list[str]:
    """Search the web for `query`."""
    await anyio.lowlevel.checkpoint()
    return [f"result {i} for {query}" for i in range(k)]


def ship(to: Address, items: list[Address] | None = None) -> str:
    return f"{to.city}:{to.zip_code}:{len(items or [])}"


# -- Tool -----------------------------------------------------------------------------------------


def test_tool_schema_from_hints_defaults_and_docstring() -> None:
    tool = Tool(search)
    assert tool.name == "search"
    assert tool.desc == "Search the web for `query`."
    assert tool.args == {"query": {"type": "string"}, "k": {"type": "integer", "default": 2}}
    # DSPy's wording, so ReAct instructions read the same as DSPy's
    assert str(tool) == (
        "search, whose description is <desc>Search the web for `query`.</desc>. "
        "It takes arguments {'query': {'type': 'string'}, 'k': {'type': 'integer', 'default': 2}}."
    )
    fn = tool.function_schema()["function"]
    assert fn["name"] == "search" and fn["parameters"]["required"] == ["query"]


def test_tool_schema_inlines_model_refs_and_takes_overrides() -> None:
    tool = Tool(ship, arg_desc={"to": "where to ship"})
    to = tool.args["to"]
    assert to["type"] == "object" and to["properties"]["zip_code"]["type"] == "integer"
    assert to["description"] == "where to ship"
    assert "$ref" not in json.dumps(tool.args) and "$defs" not in json.dumps(tool.args)
    custom = Tool(ship, name="send", desc="Send things.", args={"to": {"type": "string"}})
    assert (custom.name, custom.desc, custom.args) == ("send", "Send things.", {"to": {"type": "string"}})
    with pytest.raises(ValueError, match="name="):
        Tool(lambda: 1)  # "<lambda>" is not a usable tool name
    with pytest.raises(ValueError, match="unknown parameter"):
        Tool(search, arg_desc={"nope": "x"})


async def test_tool_validates_and_coerces_arguments() -> None:
    tool = Tool(ship)
    assert await tool(to={"city": "Paris", "zip_code": "75001"}) == "Paris:75001:0"
    assert Tool(search).validate_args({"query": "q", "k": "3"}) == {"query": "q", "k": 3}
    with pytest.raises(ToolArgumentError) as info:
        await Tool(search)(k="three", colour="red")
    message = str(info.value)
    # every problem at once, and what the tool takes
    assert "'k'" in message and "integer" in message
    assert "unknown argument 'colour'" in message
    assert "missing required argument 'query'" in message
    assert "It takes: query (string), k (integer, default 2)" in message


async def test_tool_with_var_kwargs_accepts_extra_arguments() -> None:
    def log(level: str, **fields: Any) -> str:
        return f"{level} {sorted(fields.items())}"

    tool = Tool(log)
    assert tool.has_kwargs
    assert await tool(level="info", user="ann") == "info [('user', 'ann')]"


async def test_sync_tool_runs_in_a_worker_thread_and_sees_the_context() -> None:
    loop_thread = threading.get_ident()
    marker = ScriptedLM({"answer": "x"})

    def where() -> tuple[int, Any]:
        return threading.get_ident(), alm.settings.lm

    with alm.context(lm=marker):
        thread, lm = await Tool(where)()
    assert thread != loop_thread
    assert lm is marker


def test_tool_sync_twin_from_plain_code() -> None:
    assert Tool(search).sync(query="x", k=1) == ["result 0 for x"]
    assert Tool(ship).sync(to={"city": "Oslo", "zip_code": 150}) == "Oslo:150:0"


async def test_tool_calls_notify_callbacks() -> None:
    events: list[tuple[str, Any]] = []

    class Recorder(alm.Callback):
        def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            events.append(("start", (instance.name, inputs)))

        def on_tool_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
            events.append(("end", type(exception).__name__ if exception else outputs))

    tool = Tool(search, callbacks=[Recorder()])
    await tool(query="q", k=1)
    with pytest.raises(ToolArgumentError):
        await tool(k=1)
    assert events == [
        ("start", ("search", {"query": "q", "k": 1})),
        ("end", ["result 0 for q"]),
        ("start", ("search", {"k": 1})),
        ("end", "ToolArgumentError"),
    ]


# -- ReAct: protocol ------------------------------------------------------------------------------


async def test_react_runs_tools_and_extracts_the_answer() -> None:
    lm = agent([("search", {"query": "capital of France", "k": 1})], answer="Paris")
    react = ReAct("question -> answer", tools=[search])
    react.set_lm(lm)
    pred = await react(question="What is the capital of France?")

    assert pred.answer == "Paris" and pred.reasoning == "read the trajectory"
    assert pred.trajectory == {
        "thought_0": "step 0",
        "tool_name_0": "search",
        "tool_args_0": {"query": "capital of France", "k": 1},
        "observation_0": ["result 0 for capital of France"],
        "thought_1": "done",
        "tool_name_1": "finish",
        "tool_args_1": {},
        "observation_1": "Completed.",
    }
    assert len(lm.requests) == 3  # two steps, one extract
    # the second step saw the first step's trajectory, formatted with the adapter's field markers
    second = lm.requests[1]["messages"][-1]["content"]
    assert "[[ ## trajectory ## ]]\n[[ ## thought_0 ## ]]\nstep 0" in second
    assert '[[ ## tool_args_0 ## ]]\n{"query": "capital of France", "k": 1}' in second
    assert "[[ ## observation_0 ## ]]\n«result 0 for capital of France»" in second
    # the extract step is a ChainOfThought over the inputs + trajectory
    extract = lm.requests[2]["messages"][-1]["content"]
    assert "[[ ## tool_name_1 ## ]]\nfinish" in extract and "[[ ## reasoning ## ]]" in extract


def test_react_signatures_and_instructions_match_dspy() -> None:
    react = ReAct("question -> answer", tools=[search])
    sig = react.react.signature
    assert list(sig.input_fields) == ["question", "trajectory"]
    assert list(sig.output_fields) == ["next_thought", "next_tool_name", "next_tool_args"]
    assert sig.output_fields["next_tool_name"].annotation == Literal["search", "finish"]
    assert sig.output_fields["next_tool_args"].annotation == dict[str, Any]
    assert sig.instructions == (
        "Given the fields `question`, produce the fields `answer`.\n\n"
        "You are an Agent. In each episode, you will be given the fields `question` as input. "
        "And you can see your past trajectory so far.\n"
        "Your goal is to use one or more of the supplied tools to collect any necessary information "
        "for producing `answer`.\n\n"
        "To do this, you will interleave next_thought, next_tool_name, and next_tool_args in each turn, "
        "and also when finishing the task.\n"
        "After each tool call, you receive a resulting observation, which gets appended to your trajectory.\n\n"
        "When writing next_thought, you may reason about the current situation and plan for future steps.\n"
        "When selecting the next_tool_name and its next_tool_args, the tool must be one of:\n\n"
        "(1) search, whose description is <desc>Search the web for `query`.</desc>. It takes arguments "
        "{'query': {'type': 'string'}, 'k': {'type': 'integer', 'default': 2}}.\n"
        "(2) finish, whose description is <desc>Marks the task as complete. That is, signals that all "
        "information for producing the outputs, i.e. `answer`, are now available to be extracted.</desc>. "
        "It takes arguments {}.\n"
        "When providing `next_tool_args`, the value inside the field must be in JSON format"
    )
    extract = react.extract.signature
    assert list(extract.input_fields) == ["question", "trajectory"]
    assert list(extract.output_fields) == ["reasoning", "answer"]
    assert extract.instructions == "Given the fields `question`, produce the fields `answer`."
    assert [name for name, _ in react.named_predictors()] == ["react", "extract"]


def test_react_rejects_reserved_and_duplicate_tool_names() -> None:
    async def finish() -> str:
        return "x"

    with pytest.raises(ValueError, match="reserved"):
        ReAct("q -> a", tools=[finish])
    with pytest.raises(ValueError, match="two tools are named 'search'"):
        ReAct("q -> a", tools=[search, Tool(search)])
    with pytest.raises(ValueError, match="max_iters"):
        ReAct("q -> a", tools=[search], max_iters=0)


async def test_tool_errors_become_observations_and_the_loop_goes_on() -> None:
    def divide(a: float, b: float) -> float:
        return a / b

    lm = agent([("divide", {"a": 1, "b": 0}), ("divide", {"a": "one"}), ("divide", {"a": 6, "b": 3})])
    react = ReAct("question -> answer", tools=[divide])
    react.set_lm(lm)
    pred = await react(question="?")
    t = pred.trajectory
    assert t["observation_0"] == "Execution error in divide: ZeroDivisionError: float division by zero"
    assert t["observation_1"].startswith("Execution error in divide: ToolArgumentError: Tool 'divide' got invalid")
    assert "missing required argument 'b'" in t["observation_1"]
    assert t["observation_2"] == 2.0
    assert t["tool_name_3"] == "finish" and pred.answer == "42"


async def test_max_iters_bounds_the_loop_and_can_be_given_per_call() -> None:
    lm = agent([("search", {"query": str(i)}) for i in range(100)])
    react = ReAct("question -> answer", tools=[search], max_iters=3)
    react.set_lm(lm)
    pred = await react(question="?")
    assert [k for k in pred.trajectory if k.startswith("thought_")] == ["thought_0", "thought_1", "thought_2"]
    assert pred.answer == "42"
    pred = await react(question="?", max_iters=1)
    assert list(pred.trajectory) == ["thought_0", "tool_name_0", "tool_args_0", "observation_0"]


async def test_an_unparsable_step_ends_the_loop_and_the_answer_is_still_extracted() -> None:
    def respond(req: ScriptedRequest) -> Any:
        if not is_step(req):
            return {"reasoning": "r", "answer": "fallback"}
        if steps_done(req) == 0:
            return {"next_thought": "t", "next_tool_name": "search", "next_tool_args": {"query": "a"}}
        return "[[ ## next_thought ## ]]\nhmm\n\n[[ ## next_tool_name ## ]]\nteleport\n\n[[ ## completed ## ]]"

    lm = ScriptedLM(respond)
    react = ReAct("question -> answer", tools=[search])
    react.set_lm(lm)
    pred = await react(question="?")
    assert pred.answer == "fallback"
    assert list(pred.trajectory) == ["thought_0", "tool_name_0", "tool_args_0", "observation_0"]


async def test_context_window_overflow_drops_the_oldest_steps_and_retries() -> None:
    def respond(req: ScriptedRequest) -> Any:
        text = req.last_user_message
        # the model only fits a prompt with at most one step of trajectory
        if steps_done(req) > 1:
            raise ContextWindowExceededError("This model's maximum context length is 10 tokens", status=400)
        if not is_step(req):
            return {"reasoning": "r", "answer": "done"}
        if "thought_2" in text:
            return {"next_thought": "enough", "next_tool_name": "finish", "next_tool_args": {}}
        return {"next_thought": "more", "next_tool_name": "search", "next_tool_args": {"query": "q", "k": 1}}

    lm = ScriptedLM(respond)
    react = ReAct("question -> answer", tools=[search])
    react.set_lm(lm)
    pred = await react(question="?")
    assert pred.answer == "done"
    # steps 0..3 ran (3 = finish); the oldest were dropped so that one step is left
    assert list(pred.trajectory) == ["thought_3", "tool_name_3", "tool_args_3", "observation_3"]
    assert pred.trajectory["tool_name_3"] == "finish"


async def test_context_window_overflow_without_trajectory_raises() -> None:
    def respond(req: ScriptedRequest) -> Any:
        raise ContextWindowExceededError("prompt is too long", status=400)

    react = ReAct("question -> answer", tools=[search])
    react.set_lm(ScriptedLM(respond))
    with pytest.raises(ContextWindowExceededError, match="too long"):
        await react(question="x" * 100)


async def test_custom_truncation_policy_must_make_progress() -> None:
    class Stubborn(ReAct):
        def truncate_trajectory(self, trajectory: dict[str, Any]) -> dict[str, Any]:
            return dict(trajectory)

    def respond(req: ScriptedRequest) -> Any:
        if steps_done(req) >= 1:
            raise ContextWindowExceededError("context length", status=400)
        return {"next_thought": "t", "next_tool_name": "search", "next_tool_args": {"query": "q"}}

    react = Stubborn("question -> answer", tools=[search])
    react.set_lm(ScriptedLM(respond))
    with pytest.raises(RuntimeError, match="removed nothing"):
        await react(question="?")


# -- ReAct: concurrency and threads ---------------------------------------------------------------


class Peak:
    """Counts how many tool calls run at the same time (thread-safe)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


async def test_five_async_tools_run_concurrently() -> None:
    peak = Peak()

    async def lookup(key: str) -> str:
        peak.enter()
        try:
            await anyio.sleep(0.3)
        finally:
            peak.leave()
        return key.upper()

    def respond(req: ScriptedRequest) -> dict[str, Any]:
        question = req.last_user_message.split("[[ ## question ## ]]\n", 1)[1].split("\n", 1)[0]
        if not is_step(req):
            return {"reasoning": "r", "answer": question.upper()}
        if steps_done(req) == 0:
            return {"next_thought": "look", "next_tool_name": "lookup", "next_tool_args": {"key": question}}
        return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}

    react = ReAct("question -> answer", tools=[lookup])
    react.set_lm(ScriptedLM(respond))
    preds = await react.batch([{"question": f"q{i}"} for i in range(5)])
    assert [p.answer for p in preds] == ["Q0", "Q1", "Q2", "Q3", "Q4"]
    assert [p.trajectory["observation_0"] for p in preds] == ["Q0", "Q1", "Q2", "Q3", "Q4"]
    assert peak.peak == 5  # all five tool calls were in flight at once (no wall-clock assertion)


async def test_five_sync_blocking_tools_also_overlap() -> None:
    import time

    peak = Peak()

    def lookup(key: str) -> str:
        peak.enter()
        try:
            time.sleep(0.3)  # blocks its worker thread, never the event loop
        finally:
            peak.leave()
        return key

    react = ReAct("question -> answer", tools=[lookup])
    react.set_lm(agent([("lookup", {"key": "k"})]))
    await react.batch([{"question": str(i)} for i in range(5)])
    assert peak.peak == 5  # all five blocking calls at once, each in its own worker thread


async def test_sync_tool_calling_sync_programs_cannot_starve_the_thread_pool() -> None:
    """A sync tool that calls ``.sync()`` on a program whose own work needs a worker thread.

    With AnyIO's default thread limiter cut to one thread, a tool running on that limiter would
    hold the only thread while its inner program waits for one: a deadlock. Tools run on their
    own limiter, so this completes."""
    inner_lm = ScriptedLM({"answer": "inner answer"})

    class SyncProgram(alm.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qa = alm.Predict("question -> answer", lm=inner_lm)

        def forward(self, question: str) -> Any:  # a plain def forward runs in a worker thread
            return self.qa.sync(question=question)

    program = SyncProgram()

    def ask_expert(question: str) -> str:
        return str(program.sync(question=question).answer)

    react = ReAct("question -> answer", tools=[ask_expert])
    react.set_lm(agent([("ask_expert", {"question": "deep"})]))
    default = anyio.to_thread.current_default_thread_limiter()
    before = default.total_tokens
    default.total_tokens = 1
    try:
        with anyio.fail_after(10):
            pred = await react(question="?")
    finally:
        default.total_tokens = before
    assert pred.trajectory["observation_0"] == "inner answer"
    assert inner_lm.requests[0]["messages"][-1]["content"].startswith("[[ ## question ## ]]\ndeep")


def test_react_sync_and_batch_sync_from_plain_code() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    react = ReAct("question -> answer", tools=[add])
    react.set_lm(agent([("add", {"a": 2, "b": "3"})], answer="5"))
    pred = react.sync(question="2+3?")
    assert pred.answer == "5" and pred.trajectory["observation_0"] == 5
    preds = react.batch.sync([{"question": "a"}, {"question": "b"}], concurrency=2)
    assert [p.trajectory["observation_0"] for p in preds] == [5, 5]


async def test_react_notifies_tool_callbacks_under_the_module_call() -> None:
    events: list[tuple[str, str | None]] = []

    class Recorder(alm.Callback):
        def on_module_start(self, call_id: str, instance: Any, inputs: Any, parent_call_id: str | None = None) -> None:
            if isinstance(instance, ReAct):
                events.append(("react", call_id))

        def on_tool_start(self, call_id: str, instance: Any, inputs: Any, parent_call_id: str | None = None) -> None:
            events.append((instance.name, parent_call_id))

    react = ReAct("question -> answer", tools=[search])
    react.set_lm(agent([("search", {"query": "a"})]))
    with alm.context(callbacks=[Recorder()]):
        await react(question="?")
    (_, react_id), *tools = events
    assert tools == [("search", react_id), ("finish", react_id)]


# -- ReAct: state ---------------------------------------------------------------------------------


async def test_react_save_load_round_trip(tmp_path: Any) -> None:
    react = ReAct("question -> answer", tools=[search])
    react.react.signature = react.react.signature.with_instructions("Optimized agent instructions.")
    react.extract.demos = [alm.Example(question="q", trajectory="t", reasoning="r", answer="a")]
    path = tmp_path / "react.json"
    react.save(path)
    saved = json.loads(path.read_text())
    assert set(saved["predictors"]) == {"react", "extract"}
    assert "api_key" not in path.read_text()

    def lookup(key: str) -> str:
        return key

    fresh = ReAct("question -> answer", tools=[search, lookup]).load(path)
    assert fresh.react.signature.instructions == "Optimized agent instructions."
    assert [d.answer for d in fresh.extract.demos] == ["a"]
    # the saved instructions are kept, but the tool choices are this program's tools
    assert fresh.react.signature.output_fields["next_tool_name"].annotation == Literal["search", "lookup", "finish"]

    fresh.set_lm(agent([("lookup", {"key": "v"})]))
    pred = await fresh(question="?")
    assert pred.trajectory["observation_0"] == "v"

    with pytest.raises(alm.modules.ProgramFileError):
        ReAct("question, context -> answer", tools=[search]).load(path)


def test_react_deepcopy_shares_tools_and_lm() -> None:
    lm = ScriptedLM({"answer": "x"})
    react = ReAct("question -> answer", tools=[search])
    react.set_lm(lm)
    copy = react.deepcopy()
    assert copy.tools["search"] is react.tools["search"]
    assert copy.react.lm is lm and copy.react is not react.react


# -- end to end -----------------------------------------------------------------------------------


async def test_react_end_to_end_over_http_with_a_context_overflow() -> None:
    calls: list[str] = []

    def respond(request: Any) -> Any:
        system = str(request.messages[0]["content"])
        text = request.last_user_message
        steps = text.count("[[ ## observation_")
        if "next_tool_name" not in system:
            calls.append("extract")
            return render_chat({"reasoning": "it is sunny", "answer": "sunny"})
        calls.append(f"step{steps}")
        if steps >= 2:  # the trajectory got too long for this "model"
            return Fault.context_window_exceeded()
        if "thought_1" in text:
            return render_chat({"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}})
        return render_chat({"next_thought": "check", "next_tool_name": "weather", "next_tool_args": {"city": "Oslo"}})

    async def weather(city: str) -> str:
        await anyio.sleep(0.01)
        return f"sunny in {city}"

    # a server without function calling: ReAct falls back to DSPy's text protocol
    async with FakeOpenAIServer(respond, support_tools=False) as server:
        lm = alm.LM("openai/fake-model", base_url=server.base_url, api_key="sk-test", cache=False, max_retries=0)
        react = ReAct("question -> answer", tools=[weather])
        with alm.context(lm=lm), alm.track_usage() as usage:
            pred = await react(question="Weather in Oslo?")
    assert pred.answer == "sunny"
    # step0 -> weather; step1 -> weather again; step2 overflows -> drop step 0 -> step1 sees thought_1 -> finish
    assert calls == ["step0", "step1", "step2", "step1", "extract"]
    assert pred.trajectory["observation_1"] == "sunny in Oslo"
    assert "thought_0" not in pred.trajectory and pred.trajectory["tool_name_2"] == "finish"
    assert usage.calls == 4  # the overflowing request failed: not counted
    assert pred.usage.total_tokens == usage.total_tokens > 0


async def test_react_with_the_json_adapter() -> None:
    lm = agent([("search", {"query": "q", "k": 1})], answer="json works")
    react = ReAct("question -> answer", tools=[search])
    react.set_lm(lm)
    with alm.context(adapter=alm.JSONAdapter()):
        pred = await react(question="?")
    assert pred.answer == "json works"
    assert pred.trajectory["observation_0"] == ["result 0 for q"]
    assert all("response_format" in r for r in lm.requests)  # every step asked for JSON


async def test_react_inside_best_of_n_traces_the_original_predictors() -> None:
    from asynclm.modules import trace_scope
    from asynclm.modules._best_of_n import BestOfN

    react = ReAct("question -> answer", tools=[search])
    react.set_lm(agent([("search", {"query": "q"})]))
    best = BestOfN(react, 3, lambda args, pred: 1.0, threshold=None)
    with trace_scope() as trace:
        pred = await best(question="?")
    assert pred.answer == "42" and pred.trajectory["tool_name_1"] == "finish"
    assert [p for p, _, _ in trace] == [react.react, react.react, react.extract]


async def test_react_streams_its_steps_and_extract_by_predictor_name() -> None:
    from asynclm.modules._streaming import StreamChunk, streamify

    react = ReAct("question -> answer", tools=[search])
    react.set_lm(agent([("search", {"query": "q"})], answer="a streamed answer"))
    items = [item async for item in streamify(react)(question="?")]
    chunks = [item for item in items if isinstance(item, StreamChunk)]
    assert {c.predictor_name for c in chunks} == {"react", "extract"}
    answer = "".join(c.text for c in chunks if c.predictor_name == "extract" and c.field == "answer")
    assert answer == "a streamed answer"
    assert items[-1].answer == "a streamed answer"


async def test_nested_sync_tools_use_their_own_thread_level() -> None:
    """A sync tool runs a ReAct (with ``.sync``) whose own tool is sync: the inner tool runs one
    level deeper, on other threads, so even a one-thread outer level cannot starve it."""
    from asynclm.modules._tool import _limiter

    def shout(text: str) -> str:
        return text.upper()

    inner = ReAct("question -> answer", tools=[shout])
    inner.set_lm(agent([("shout", {"text": "hi"})], answer="inner done"))

    def delegate(question: str) -> str:
        pred = inner.sync(question=question)
        return f"{pred.answer}: {pred.trajectory['observation_0']}"

    outer = ReAct("question -> answer", tools=[delegate])
    outer.set_lm(agent([("delegate", {"question": "q"})]))
    level0 = _limiter(0)
    before = level0.total_tokens
    level0.total_tokens = 1
    try:
        with anyio.fail_after(10):
            pred = await outer(question="?")
    finally:
        level0.total_tokens = before
    assert pred.trajectory["observation_0"] == "inner done: HI"


async def test_finish_ignores_arguments_the_lm_passes_to_it() -> None:
    lm = agent([("finish", {"answer": "early"})], answer="from extract")
    react = ReAct("question -> answer", tools=[search])
    react.set_lm(lm)
    pred = await react(question="?")
    assert pred.trajectory["observation_0"] == "Completed."
    assert len(pred.trajectory) == 4 and pred.answer == "from extract"
    assert "(2) finish, whose description is" in react.react.signature.instructions
    assert "It takes arguments {}." in react.react.signature.instructions


async def test_tools_from_partials_and_callable_objects() -> None:
    import functools

    def power(base: int, exp: int) -> int:
        """Raise base to exp."""
        return int(base**exp)

    square = Tool(functools.partial(power, exp=2), name="square")
    assert square.desc == "Raise base to exp."
    assert await square(base="3") == 9

    class Counter:
        def __init__(self) -> None:
            self.total = 0

        async def __call__(self, by: int = 1) -> int:
            """Add to the running total."""
            self.total += by
            return self.total

    counter = Tool(Counter())
    assert (counter.name, counter.desc, counter.is_async) == ("Counter", "Add to the running total.", True)
    assert counter.args == {"by": {"type": "integer", "default": 1}}
    assert await counter(by="2") == 2
