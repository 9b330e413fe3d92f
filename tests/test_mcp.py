"""asynclm.mcp against real MCP servers written with the `mcp` SDK's own server API
(tests/mcp_servers/demo_server.py): over stdio (a subprocess) and over streamable HTTP (the same
server under real uvicorn on a loopback port). Every async test runs on asyncio and on trio.

Overlap is asserted without timing: the server's `rendezvous` tool only returns once `n` calls
of its group are in flight at the same time (and fails after a timeout otherwise).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

pytest.importorskip("mcp")
uvicorn = pytest.importorskip("uvicorn")

import asynclm as alm  # noqa: E402
from asynclm.mcp import MCPConnectionClosedError, MCPConnectionError, MCPToolError, connect  # noqa: E402
from asynclm.modules import Tool, ToolArgumentError  # noqa: E402
from asynclm.runtime import SyncInAsyncContextError  # noqa: E402
from asynclm.testing import FakeOpenAIServer, FakeRequest, Fields, ScriptedLM  # noqa: E402

SERVER_FILE = Path(__file__).parent / "mcp_servers" / "demo_server.py"
STDIO = [sys.executable, str(SERVER_FILE)]
TOOL_NAMES = {"add", "weather", "rendezvous", "hang", "in_flight", "fail", "crash", "info", "pieces"}


def group() -> str:
    """A fresh rendezvous group (the HTTP server's counters are shared by the whole module)."""
    return uuid.uuid4().hex


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.ESRCH
    return False


# -- the HTTP server: the same MCPServer under uvicorn, in a thread ---------------------------------


class HTTPServer:
    def __init__(self) -> None:
        from tests.mcp_servers.demo_server import server

        self.mcp_server = server
        self.headers: list[dict[str, str]] = []
        app = server.streamable_http_app()

        async def recording_app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.headers.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
            await app(scope, receive, send)

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/mcp"
        self.server = uvicorn.Server(uvicorn.Config(recording_app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)

    def __enter__(self) -> HTTPServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def http_server() -> Iterator[HTTPServer]:
    with HTTPServer() as server:
        yield server


async def no_connections_left(server: HTTPServer) -> None:
    with anyio.fail_after(10):
        while server.open_connections():
            await anyio.sleep(0.01)


def connect_to(transport: str, http_server: HTTPServer | None = None, **kwargs: Any) -> Any:
    if transport == "stdio":
        return connect(STDIO, **kwargs)
    assert http_server is not None
    return connect(url=http_server.url, **kwargs)


@pytest.fixture(params=["stdio", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- Tool with a given JSON schema -----------------------------------------------------------------


async def test_tool_keeps_a_given_object_schema_and_checks_required_arguments() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 1}},
        "required": ["city"],
        "additionalProperties": False,
        "title": "forecastArguments",
    }

    async def forecast(**kwargs: Any) -> str:
        return f"{kwargs}"

    tool = Tool(forecast, desc="The forecast.", args=schema)
    schema["required"].append("days")  # the tool copied what it was given
    assert tool.json_schema["required"] == ["city"] and tool.json_schema["title"] == "forecastArguments"
    assert tool.args == {"city": {"type": "string"}, "days": {"type": "integer", "default": 1}}
    assert tool.function_schema()["function"]["parameters"] == tool.json_schema
    assert str(tool).startswith("forecast, whose description is <desc>The forecast.</desc>. It takes arguments {")
    assert await tool(city="Oslo") == "{'city': 'Oslo'}"
    with pytest.raises(ToolArgumentError) as info:
        await tool(days=2, colour="red")
    assert "missing required argument 'city'" in str(info.value)
    assert "unknown argument 'colour'" in str(info.value)
    assert "It takes: city (string), days (integer, default 1)" in str(info.value)
    # a tool built from a Python signature is unchanged
    assert Tool(forecast).json_schema == {"type": "object", "properties": {}, "required": []}


def test_result_values_text_parts_structured_content_and_errors() -> None:
    from mcp import types

    from asynclm.modules._mcp import mcp_result_value

    text = types.TextContent(type="text", text="first")
    image = types.ImageContent(type="image", data="aGk=", mime_type="image/png")
    more = types.TextContent(type="text", text="second")
    result = types.CallToolResult(content=[text, image, more])
    assert mcp_result_value("t", result) == "first\n[image content: image/png]\nsecond"
    structured = types.CallToolResult(content=[text], structured_content={"result": 1})
    assert mcp_result_value("t", structured) == {"result": 1}  # kept, unless the output schema wraps
    assert mcp_result_value("t", structured, unwrap=True) == 1
    failed = types.CallToolResult(content=[types.TextContent(type="text", text="no such city")], is_error=True)
    with pytest.raises(MCPToolError, match="MCP tool 't' failed: no such city"):
        mcp_result_value("t", failed)


# -- listing and calling ----------------------------------------------------------------------------


async def test_tools_keep_the_server_schemas_as_given(transport: str, http_server: HTTPServer) -> None:
    listed = {t.name: t for t in await http_server.mcp_server.list_tools()}
    async with connect_to(transport, http_server) as tools:
        assert all(isinstance(t, alm.Tool) for t in tools)
        by_name = {t.name: t for t in tools}
        assert set(by_name) == TOOL_NAMES
        for name, tool in by_name.items():
            assert tool.json_schema == listed[name].input_schema, name
            assert tool.desc == listed[name].description
        add = by_name["add"]
        assert add.json_schema["required"] == ["a"]
        assert add.args == {
            "a": {"title": "A", "type": "integer"},
            "b": {"default": 0, "title": "B", "type": "integer"},
        }
        assert add.function_schema()["function"] == {
            "name": "add",
            "description": "Add two integers.",
            "parameters": listed["add"].input_schema,
        }


async def test_calling_sync_and_async_server_tools(tmp_path: Path) -> None:
    async with connect(STDIO, env={"ASYNCLM_MCP_DEMO_VAR": "from-env"}, cwd=tmp_path) as tools:
        by_name = {t.name: t for t in tools}
        # structured content, with the server's {"result": ...} wrapper of non-object values removed
        assert await by_name["add"](a=2, b=3) == 5  # a sync server tool
        assert await by_name["weather"](city="Oslo") == "sunny in Oslo"  # an async one
        assert await by_name["pieces"]() == ["one", "two"]
        info = await by_name["info"]()  # an object: kept as the server sent it
        assert info["var"] == "from-env" and os.path.samefile(info["cwd"], tmp_path)  # noqa: ASYNC240
        assert by_name["add"].sync is not None  # every tool has the .sync twin


async def test_concurrent_calls_on_one_session_overlap(transport: str, http_server: HTTPServer) -> None:
    n, name = 6, group()
    results: list[Any] = []
    async with connect_to(transport, http_server) as tools:
        rendezvous = next(t for t in tools if t.name == "rendezvous")

        async def call() -> None:
            results.append(await rendezvous(group=name, n=n, timeout=20))

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(call)
    # each call returned only once all n were in flight on the server at the same time
    assert results == [f"{n} calls met"] * n


async def test_server_errors_become_tool_errors_and_react_observations() -> None:
    async with connect(STDIO, timeout=1.0) as tools:
        by_name = {t.name: t for t in tools}
        with pytest.raises(MCPToolError, match="boom"):  # isError with the server's text
            await by_name["fail"](message="boom")
        with pytest.raises(MCPToolError, match="'crash' failed"):
            await by_name["crash"]()
        with pytest.raises(MCPToolError, match="validation error"):  # the server checks types
            await by_name["add"](a="not a number")
        with pytest.raises(ToolArgumentError, match="missing required argument 'a'"):  # checked before sending
            await by_name["add"](b=1)

        plan = [("fail", {"message": "boom"}), ("hang", {"group": group()}), ("add", {"a": 1, "b": 2})]

        def respond(req: Any) -> dict[str, Any]:
            if "next_tool_name" not in str(req.messages[0]["content"]):
                return {"reasoning": "read it", "answer": "3"}
            i = max(str(m["content"]).count("[[ ## observation_") for m in req.messages if m["role"] == "user")
            if i < len(plan):
                return {"next_thought": f"step {i}", "next_tool_name": plan[i][0], "next_tool_args": plan[i][1]}
            return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}

        react = alm.ReAct("question -> answer", tools=tools)
        react.set_lm(ScriptedLM(respond))
        pred = await react(question="1 + 2?")
    trajectory = pred.trajectory
    assert trajectory["observation_0"].startswith("Execution error in fail: MCPToolError: ")
    assert "boom" in trajectory["observation_0"]
    # the session's read timeout (a protocol-level failure) is an observation too, not a crash
    assert trajectory["observation_1"].startswith("Execution error in hang: ")
    assert trajectory["observation_2"] == 3
    assert pred.answer == "3"


async def test_react_over_mcp_tools_end_to_end(transport: str, http_server: HTTPServer) -> None:
    """The model (a FakeOpenAIServer response function) asks for an MCP tool in ReAct's text
    protocol, reads the observation, finishes; the answer comes from the observation."""
    steps: list[str] = []

    def respond(request: FakeRequest) -> Any:
        system = str(request.messages[0]["content"])
        text = request.last_user_message
        if "next_tool_name" not in system:
            steps.append("extract")
            observation = "sunny" if "sunny in Oslo" in text else "unknown"
            return Fields(reasoning="the tool said so", answer=observation).render(request)
        assert "(1) add, whose description is <desc>Add two integers.</desc>" in system
        assert "weather, whose description is <desc>The weather in a city.</desc>" in system
        if "[[ ## observation_0 ## ]]" in text:
            steps.append("finish")
            return Fields(next_thought="I know it", next_tool_name="finish", next_tool_args={}).render(request)
        steps.append("weather")
        return Fields(next_thought="ask", next_tool_name="weather", next_tool_args={"city": "Oslo"}).render(request)

    async with FakeOpenAIServer(respond, support_tools=False) as llm, connect_to(transport, http_server) as tools:
        lm = alm.LM("openai/fake-model", base_url=llm.base_url, api_key="sk-test", cache=False, max_retries=0)
        react = alm.ReAct("question -> answer", tools=tools)
        with alm.context(lm=lm):
            pred = await react(question="What is the weather in Oslo?")
    assert steps == ["weather", "finish", "extract"]
    assert pred.trajectory["tool_name_0"] == "weather"
    assert pred.trajectory["observation_0"] == "sunny in Oslo"
    assert pred.answer == "sunny"


async def test_tool_from_mcp_over_a_session_of_your_own() -> None:
    import mcp

    async with mcp.Client(mcp.StdioServerParameters(command=STDIO[0], args=STDIO[1:])) as client:
        listed = (await client.list_tools()).tools
        tools = {t.name: alm.Tool.from_mcp(client, t) for t in listed}
        assert await tools["add"](a=40, b=2) == 42
        renamed = alm.Tool.from_mcp(client, next(t for t in listed if t.name == "weather"), name="get_weather")
        assert renamed.name == "get_weather"
        assert await renamed(city="Rome") == "sunny in Rome"  # still calls the server's `weather`


async def test_prefix_and_text_results(http_server: HTTPServer) -> None:
    async with connect(url=http_server.url, prefix="demo_", result_mode="text") as tools:
        assert {t.name for t in tools} == {f"demo_{n}" for n in TOOL_NAMES}
        by_name = {t.name: t for t in tools}
        assert await by_name["demo_add"](a=1, b=1) == "2"  # DSPy's default: the text parts
        assert await by_name["demo_weather"](city="Oslo") == "sunny in Oslo"
    with pytest.raises(ValueError, match="result_mode"):
        async with connect(url=http_server.url, result_mode="json"):  # type: ignore[arg-type]
            pass


# -- lifetime: the server process / connection ends with the block ----------------------------------


async def test_stdio_server_process_stops_when_the_block_exits() -> None:
    async with connect(STDIO) as tools:
        pid = (await next(t for t in tools if t.name == "info")())["pid"]
        assert not process_gone(pid)
    assert process_gone(pid)
    with pytest.raises(MCPConnectionClosedError, match=r"inside the `async with asynclm\.mcp\.connect"):
        await next(t for t in tools if t.name == "info")()


async def test_stdio_server_process_stops_when_the_block_raises() -> None:
    with pytest.raises(KeyError, match="raised in the block"):  # the block's own error, not a group
        async with connect(STDIO) as tools:
            pid = (await next(t for t in tools if t.name == "info")())["pid"]
            raise KeyError("raised in the block")
    assert process_gone(pid)


async def test_a_cancelled_block_stops_the_server_during_a_call_in_flight(
    transport: str, http_server: HTTPServer
) -> None:
    name = group()
    with anyio.CancelScope() as scope:
        async with connect_to(transport, http_server) as tools:
            by_name = {t.name: t for t in tools}
            pid = (await by_name["info"]())["pid"]
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: by_name["hang"](group=name))
                with anyio.fail_after(10):
                    while await by_name["in_flight"](group=name) < 1:
                        await anyio.sleep(0.01)
                scope.cancel()  # while `hang` is in flight on the server
    assert scope.cancelled_caught
    if transport == "stdio":
        assert process_gone(pid)
    else:
        await no_connections_left(http_server)
        with anyio.fail_after(10):  # the server noticed the client went away and cancelled the call
            while (await _in_flight_over_new_session(http_server, name)) > 0:
                await anyio.sleep(0.05)


async def _in_flight_over_new_session(http_server: HTTPServer, name: str) -> int:
    async with connect(url=http_server.url) as tools:
        return int(await next(t for t in tools if t.name == "in_flight")(group=name))


async def test_http_sends_the_headers_and_closes_its_connections(http_server: HTTPServer) -> None:
    before = len(http_server.headers)
    async with connect(url=http_server.url, headers={"Authorization": "Bearer sk-secret", "X-Trace": "t-1"}) as tools:
        assert await next(t for t in tools if t.name == "add")(a=1) == 1
        assert http_server.open_connections() >= 1
    sent = http_server.headers[before:]
    assert sent and all(h.get("authorization") == "Bearer sk-secret" and h.get("x-trace") == "t-1" for h in sent)
    await no_connections_left(http_server)


async def test_connection_failures_are_clear_and_never_show_credentials(tmp_path: Path) -> None:
    url = "http://user:pw@127.0.0.1:9/mcp?token=sk-secret"  # nothing listens on port 9 (discard)
    with pytest.raises(MCPConnectionError) as info:
        async with connect(url=url, headers={"Authorization": "Bearer sk-secret"}):
            pass
    message = str(info.value)
    assert message.startswith("could not open an MCP session with http://127.0.0.1:9/mcp: ")
    assert "sk-secret" not in message and "pw" not in message
    with pytest.raises(MCPConnectionError, match=r"no-such-mcp-server.*FileNotFoundError"):
        async with connect(["no-such-mcp-server"]):
            pass
    quits = tmp_path / "quits.py"
    quits.write_text("print('not an MCP server')\n")
    with pytest.raises(MCPConnectionError, match=r"quits\.py"):  # the process ended before the handshake
        async with connect([sys.executable, str(quits)]):
            pass


# -- from sync code ---------------------------------------------------------------------------------


def test_connect_sync_in_a_plain_thread(portal_backend: str) -> None:
    """`with connect.sync(...)` in a plain thread: the session lives on the thread's portal; the
    tools (and a ReAct over them) are called with .sync; other threads may call them too."""
    out: dict[str, Any] = {}

    def respond(request: FakeRequest) -> Any:
        if "next_tool_name" not in str(request.messages[0]["content"]):
            seen = "[[ ## observation_0 ## ]]\n5\n" in request.last_user_message  # the observation reached the model
            return Fields(reasoning="r", answer="5" if seen else "?").render(request)
        if "[[ ## observation_0 ## ]]" in request.last_user_message:
            return Fields(next_thought="done", next_tool_name="finish", next_tool_args={}).render(request)
        return Fields(next_thought="add", next_tool_name="add", next_tool_args={"a": 2, "b": 3}).render(request)

    def work(llm: FakeOpenAIServer) -> None:
        with connect.sync(STDIO) as tools:
            by_name = {t.name: t for t in tools}
            out["sum"] = by_name["add"].sync(a=20, b=22)
            out["pid"] = by_name["info"].sync()["pid"]
            # another plain thread (its own portal, its own loop): the call hops to the session's loop
            other: list[Any] = []
            helper = threading.Thread(target=lambda: other.append(by_name["weather"].sync(city="Lima")))
            helper.start()
            helper.join(30)
            out["other"] = other
            lm = alm.LM("openai/fake-model", base_url=llm.base_url, api_key="sk-test", cache=False, max_retries=0)
            react = alm.ReAct("question -> answer", tools=tools)
            with alm.context(lm=lm):
                out["answer"] = react.sync(question="2 + 3?").answer
            out["alive_inside"] = not process_gone(out["pid"])
        out["gone_after"] = process_gone(out["pid"])

    with FakeOpenAIServer(respond, support_tools=False) as llm:
        thread = threading.Thread(target=work, args=(llm,))
        thread.start()
        thread.join(120)
    assert not thread.is_alive()
    assert out == {
        "sum": 42,
        "pid": out["pid"],
        "other": ["sunny in Lima"],
        "answer": "5",
        "alive_inside": True,
        "gone_after": True,
    }


def test_connect_sync_exits_on_an_error_in_the_block() -> None:
    with pytest.raises(ZeroDivisionError):
        with connect.sync(STDIO) as tools:
            pid = next(t for t in tools if t.name == "info").sync()["pid"]
            1 / 0  # noqa: B018
    assert process_gone(pid)


async def test_connect_sync_inside_a_running_loop_says_to_use_async_with() -> None:
    with pytest.raises(SyncInAsyncContextError, match="async with"):
        with connect.sync(STDIO):
            pass


async def test_tools_are_callable_from_another_threads_loop() -> None:
    """The session lives on this test's loop; a plain thread's .sync call (on that thread's
    portal, another loop) hops to it."""
    async with connect(STDIO) as tools:
        add = next(t for t in tools if t.name == "add")

        def in_a_new_thread() -> list[Any]:
            box: list[Any] = []
            thread = threading.Thread(target=lambda: box.append(add.sync(a=3, b=4)))
            thread.start()
            thread.join(30)
            return box

        assert await anyio.to_thread.run_sync(in_a_new_thread) == [7]


# -- bad input --------------------------------------------------------------------------------------


async def test_bad_arguments_and_a_missing_sdk_get_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"either command=.* or url="):
        async with connect():
            pass
    with pytest.raises(ValueError, match="not both"):
        async with connect(STDIO, url="http://127.0.0.1:1/mcp"):
            pass
    with pytest.raises(ValueError, match="env= and cwd= apply to a subprocess"):
        async with connect(url="http://127.0.0.1:1/mcp", env={"A": "1"}):
            pass
    with pytest.raises(ValueError, match="headers= apply to an HTTP server"):
        async with connect(STDIO, headers={"A": "1"}):
            pass
    with pytest.raises(ValueError, match="http:// or https://"):
        async with connect(url="127.0.0.1:1/mcp"):
            pass
    monkeypatch.setitem(sys.modules, "mcp", None)
    with pytest.raises(ImportError, match=r"pip install 'asynclm\[mcp\]'"):
        async with connect(STDIO):
            pass
