"""``Tool``: a plain function or coroutine function the LM may call, with its JSON schema.

Also ``run_blocking``, the one way modules run user-supplied *sync* callables (tools, reward
functions): in a worker thread, on a thread limiter of their own.

Why an own limiter, and one per nesting level: a sync tool often calls ``program.sync(...)``
itself. From a worker thread that call runs on the host event loop, and whatever *it* runs in
threads needs free worker threads too. If tools shared AnyIO's default limiter (40 threads), 40
busy tools would starve the work they wait for: a deadlock. So blocking calls made at nesting depth
``d`` (a context variable: depth 0 in user code, ``d + 1`` inside a call made at depth ``d``) use a
per-event-loop limiter of their own, separate from AnyIO's default one and from every other level:
an outer level can never exhaust the threads an inner level needs.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import typing
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio

from asynclm.runtime import SyncCallable, asyncify, is_async_callable, loop_resource

from ._callbacks import observe

__all__ = ["THREADS_PER_LEVEL", "Tool", "ToolArgumentError", "run_blocking"]

R = TypeVar("R")

#: Worker threads available to blocking tools / reward functions at each nesting level, per event loop.
THREADS_PER_LEVEL = 40

_depth: ContextVar[int] = ContextVar("asynclm.blocking_depth", default=0)


def _limiter(depth: int) -> anyio.CapacityLimiter:
    return loop_resource(("asynclm.modules.blocking_limiter", depth), lambda: anyio.CapacityLimiter(THREADS_PER_LEVEL))


async def run_blocking(fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    """Run the sync callable ``fn(*args, **kwargs)`` in a worker thread on its nesting level's limiter.

    The thread sees the caller's ``asynclm.context(...)``; ``.sync()`` called inside runs on the
    caller's event loop (and may itself run blocking callables, one level deeper).
    """
    return await _run_blocking(fn, args, kwargs, False)


async def _run_blocking(fn: Callable[..., R], args: Any, kwargs: Any, abandon_on_cancel: bool) -> R:
    depth = _depth.get()
    token = _depth.set(depth + 1)  # copied into the worker thread's context by asyncify
    try:
        return await asyncify(fn, limiter=_limiter(depth), abandon_on_cancel=abandon_on_cancel)(*args, **kwargs)
    finally:
        _depth.reset(token)


class ToolArgumentError(ValueError):
    """The arguments given to a tool do not match its parameters (unknown, missing or of the
    wrong type). The message names the tool, each problem, and the parameters it takes."""


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema with ``$ref``s to ``$defs`` replaced by the definitions (LMs read it better)."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


def _hints_of(func: Any) -> dict[str, Any]:
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)) and callable(target):
        target = type(target).__call__
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: treat those parameters as Any
        return dict(getattr(target, "__annotations__", {}) or {})


def _name_of(func: Any) -> str:
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    return str(getattr(target, "__name__", None) or type(target).__name__)


def _doc_of(func: Any) -> str | None:
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.isfunction(target) or inspect.ismethod(target):
        return inspect.getdoc(target)
    # a callable object: its class's docstring, else its __call__'s
    cls = type(target)
    own = cls.__doc__  # a class's own docstring (never inherited, unlike inspect.getdoc's)
    if own:
        return inspect.cleandoc(own)
    call = inspect.getattr_static(cls, "__call__", None)
    return inspect.getdoc(call) if call is not None else None


class _Param:
    __slots__ = ("adapter", "annotation", "default", "kind", "name")

    def __init__(self, name: str, annotation: Any, default: Any, kind: Any) -> None:
        self.name = name
        self.annotation = annotation
        self.default = default
        self.kind = kind
        self.adapter: Any = None
        if annotation is not Any:
            import pydantic

            self.adapter = pydantic.TypeAdapter(annotation)

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


class Tool(SyncCallable):
    """A function the LM may call: ``Tool(fn, name=None, desc=None, args=None, timeout=None)``.

    ``fn`` is a plain function or a coroutine function (or any callable). By default the name is
    the function's name, the description its docstring, and ``args`` — a JSON schema per
    parameter, ``{"city": {"type": "string"}, "days": {"type": "integer", "default": 1}}`` — comes
    from the type hints (pydantic; ``$ref``s inlined), the defaults and ``arg_desc``. Give any of
    them to override what is inferred.

    ``args`` may also be a whole JSON object schema (``{"type": "object", "properties": {...},
    "required": [...]}``, e.g. an MCP tool's input schema): the tool then keeps it as given
    (``json_schema``, and the ``parameters`` of ``function_schema()``), ``args`` is its
    ``properties``, and a call missing a ``required`` argument (or passing an unknown one when
    the schema says ``"additionalProperties": false``) raises ``ToolArgumentError`` before
    ``fn`` runs; type checks are left to ``fn`` (e.g. the MCP server). ``Tool.from_mcp`` builds
    such a tool for a tool of an MCP session.

    ``await tool(**kwargs)`` (or ``tool.sync(**kwargs)``) first validates the arguments against
    the parameters' type hints, coercing where pydantic's lax mode does (``"3"`` -> ``3``, a dict
    -> a pydantic model); unknown names (unless ``fn`` takes ``**kwargs``), missing required
    arguments and wrong types raise ``ToolArgumentError`` listing every problem. Then a
    coroutine function is awaited; a sync function runs in a worker thread (see
    ``run_blocking``), so it may block and may itself call ``program.sync(...)``. Callbacks
    get ``on_tool_start``/``on_tool_end``. With ``timeout`` (seconds), a call that takes longer
    raises ``TimeoutError`` (a sync function's worker thread is left to finish in the background;
    in ``ReAct`` the error is the observation).

    ``str(tool)`` is the line DSPy's ReAct puts in its instructions
    (``name, whose description is <desc>...</desc>. It takes arguments {...}.``).
    Tools are immutable in use; copying a program shares its tools.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        name: str | None = None,
        desc: str | None = None,
        args: Mapping[str, Any] | None = None,
        arg_types: Mapping[str, Any] | None = None,
        arg_desc: Mapping[str, str] | None = None,
        *,
        callbacks: Iterable[Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"Tool() needs a function or other callable, got {func!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
        ):
            raise ValueError(f"Tool(timeout={timeout!r}): use a number of seconds > 0, or None for no limit")
        self.timeout: float | None = timeout
        self.func = func
        self.name = name or _name_of(func)
        if not self.name.isidentifier() and not all(c.isalnum() or c in "_-" for c in self.name):
            raise ValueError(
                f"Tool name {self.name!r}: a tool name may use letters, digits, '_' and '-' only; "
                "pass Tool(fn, name='...')"
            )
        self.desc: str | None = desc if desc is not None else _doc_of(func)
        self.callbacks = list(callbacks or [])
        self.is_async = is_async_callable(func)

        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins: accept anything
            signature = inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])
        hints = _hints_of(func)
        overrides = dict(arg_types or {})
        self._params: dict[str, _Param] = {}
        self.has_kwargs = False
        for pname, p in signature.parameters.items():
            if p.kind is p.VAR_KEYWORD:
                self.has_kwargs = True
                continue
            if p.kind is p.VAR_POSITIONAL:
                continue
            annotation = overrides.get(pname, hints.get(pname, Any))
            self._params[pname] = _Param(pname, annotation, p.default, p.kind)
        self.arg_types: dict[str, Any] = {n: p.annotation for n, p in self._params.items()}
        descs = dict(arg_desc or {})
        unknown = sorted(set(descs) - set(self._params))
        if unknown and not self.has_kwargs:
            raise ValueError(f"Tool {self.name!r}: arg_desc names unknown parameter(s) {unknown}")
        # A whole object schema given as ``args`` (a parameter's schema is a dict, never the string "object").
        self._given_schema: dict[str, Any] | None = None
        if args is not None and args.get("type") == "object":
            self._given_schema = copy.deepcopy(dict(args))
            properties = self._given_schema.get("properties") or {}
            if not isinstance(properties, Mapping):
                raise ValueError(f"Tool {self.name!r}: the JSON schema's 'properties' must be an object")
            required = self._given_schema.get("required") or []
            if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
                raise ValueError(f"Tool {self.name!r}: the JSON schema's 'required' must be a list of names")
            self.args: dict[str, Any] = copy.deepcopy(dict(properties))
        elif args is not None:
            self.args = {k: dict(v) for k, v in args.items()}
        else:
            self.args = {n: self._schema(p, descs.get(n)) for n, p in self._params.items()}

    @staticmethod
    def _schema(param: _Param, desc: str | None) -> dict[str, Any]:
        schema = _inline_refs(param.adapter.json_schema()) if param.adapter is not None else {}
        if not param.required:
            try:
                json.dumps(param.default)
                schema["default"] = param.default
            except (TypeError, ValueError):
                pass
        if desc:
            schema["description"] = desc
        return schema

    # -- validation -----------------------------------------------------------------------------

    def validate_args(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments converted to the parameters' types; ``ToolArgumentError`` if they do not fit."""
        import pydantic

        problems: list[str] = []
        parsed: dict[str, Any] = {}
        for key, value in kwargs.items():
            param = self._params.get(key)
            if param is None:
                if self.has_kwargs:
                    parsed[key] = value
                else:
                    problems.append(f"unknown argument {key!r}")
                continue
            if param.adapter is None:
                parsed[key] = value
                continue
            try:
                parsed[key] = param.adapter.validate_python(value)
            except pydantic.ValidationError as exc:
                reasons = "; ".join(
                    (f"at {'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"] for e in exc.errors()
                )
                shown = repr(value)
                shown = shown if len(shown) <= 80 else shown[:77] + "..."
                problems.append(f"argument {key!r} = {shown}: {reasons}")
        missing = [n for n, p in self._params.items() if p.required and n not in kwargs]
        if self._given_schema is not None:
            missing += [n for n in self._given_schema.get("required", []) if n not in kwargs and n not in missing]
            if self._given_schema.get("additionalProperties") is False:
                problems.extend(
                    f"unknown argument {key!r}" for key in kwargs if key not in self.args and key not in self._params
                )
        problems.extend(f"missing required argument {n!r}" for n in missing)
        if problems:
            raise ToolArgumentError(
                f"Tool {self.name!r} got invalid arguments: {'; '.join(problems)}. It takes: {self._describe_params()}."
            )
        return parsed

    def _describe_params(self) -> str:
        if self._given_schema is not None:
            if not self.args:
                return "no arguments"
            required = set(self._given_schema.get("required", []))
            parts = []
            for n, schema in self.args.items():
                kind = schema.get("type", "any") if isinstance(schema, Mapping) else "any"
                extra = "" if n in required else ", optional"
                if isinstance(schema, Mapping) and "default" in schema:
                    extra = f", default {schema['default']!r}"
                parts.append(f"{n} ({kind}{extra})")
            return ", ".join(parts)
        if not self._params:
            return "no arguments" + (" (any keyword arguments)" if self.has_kwargs else "")
        parts = []
        for n, p in self._params.items():
            kind = self.args.get(n, {}).get("type") or ("any" if p.annotation is Any else str(p.annotation))
            parts.append(f"{n} ({kind}{'' if p.required else f', default {p.default!r}'})")
        return ", ".join(parts) + (", and any other keyword arguments" if self.has_kwargs else "")

    # -- the call -------------------------------------------------------------------------------

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError(f"Tool {self.name!r} takes keyword arguments only: await tool(name=value, ...)")
        return await self._call(kwargs, self.timeout)

    async def _call(self, kwargs: dict[str, Any], timeout: float | None) -> Any:
        """The call, with ``timeout`` seconds at most (``None``: no limit)."""
        async with observe("tool", self, kwargs) as outcome:
            parsed = self.validate_args(kwargs)
            positional_only = inspect.Parameter.POSITIONAL_ONLY
            positional = [parsed.pop(n) for n, p in self._params.items() if p.kind is positional_only and n in parsed]
            if timeout is None:
                result = await self._run(positional, parsed, False)
            else:
                with anyio.move_on_after(timeout) as scope:
                    result = await self._run(positional, parsed, True)
                if scope.cancelled_caught:
                    raise TimeoutError(f"tool {self.name!r} gave no result within its timeout of {timeout} s")
            outcome.value = result
        return result

    async def _run(self, positional: list[Any], kwargs: dict[str, Any], abandon_on_cancel: bool) -> Any:
        if self.is_async:
            return await self.func(*positional, **kwargs)
        result = await _run_blocking(self.func, positional, kwargs, abandon_on_cancel)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result

    async def acall(self, **kwargs: Any) -> Any:
        """Same as ``await tool(**kwargs)`` (DSPy's spelling)."""
        return await self(**kwargs)

    # -- description ----------------------------------------------------------------------------

    @property
    def json_schema(self) -> dict[str, Any]:
        """The JSON object schema of the tool's arguments: the one given as ``args`` (kept as
        given, ``required`` included), else built from ``args`` and the required parameters."""
        if self._given_schema is not None:
            return copy.deepcopy(self._given_schema)
        return {
            "type": "object",
            "properties": self.args,
            "required": [n for n, p in self._params.items() if p.required and n in self.args],
        }

    def function_schema(self) -> dict[str, Any]:
        """The tool in OpenAI's function-calling format (``{"type": "function", "function": {...}}``)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.desc or "", "parameters": self.json_schema},
        }

    @classmethod
    def from_mcp(
        cls, session: Any, mcp_tool: Any, *, name: str | None = None, result_mode: str = "structured"
    ) -> Tool:
        """A ``Tool`` that calls ``mcp_tool`` (an entry of an MCP ``list_tools()`` result) over
        ``session`` (an open ``mcp.Client`` or ``mcp.ClientSession``, or anything with an async
        ``call_tool(name, arguments)``).

        The tool keeps the server's name (``name=`` renames it for the LM; characters other than
        letters, digits, ``_`` and ``-`` become ``_``), description and input schema as given.
        Awaiting it returns the result's structured content when the server sent some (a
        ``{"result": value}`` wrapper, declared by the tool's output schema, gives ``value``:
        that is how MCP servers send a return value that is not an object), else its text parts
        joined by newlines; a result flagged ``isError`` raises ``MCPToolError`` with the
        server's text (in ``ReAct``: an observation). Errors of the protocol or the connection
        are raised as the SDK raises them (in ``ReAct``: observations too). With
        ``result_mode="text"`` (DSPy's default) the text parts are returned even when structured
        content came too. ``asynclm.mcp.connect`` opens a
        session and gives its tools this way.
        """
        from ._mcp import tool_from_mcp

        return tool_from_mcp(cls, session.call_tool, mcp_tool, name=name, result_mode=result_mode)

    def __str__(self) -> str:
        # DSPy's wording, so that ReAct instructions written for DSPy read the same.
        desc = f", whose description is <desc>{self.desc}</desc>.".replace("\n", "  ") if self.desc else "."
        return f"{self.name}{desc} It takes arguments {self.args}."

    def __repr__(self) -> str:
        timeout = f", timeout={self.timeout!r}" if self.timeout is not None else ""
        return f"Tool(name={self.name!r}, desc={self.desc!r}, args={self.args!r}{timeout})"

    # A tool wraps a function (often bound to a client or a database): copying a program shares it.
    def __copy__(self) -> Tool:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Tool:
        return self
