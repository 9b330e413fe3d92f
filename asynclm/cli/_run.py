"""``asynclm run FILE.py:program``: run a user's program from the shell."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TextIO

from ._main import CLIError, make_lm


def parse_inputs(items: list[str]) -> dict[str, Any]:
    """``key=value`` (a string) or ``key:=json`` (any JSON value) pairs as a dict."""
    inputs: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise CLIError(f"--input {item!r}: expected KEY=VALUE (or KEY:=JSON)")
        if key.endswith(":"):
            key = key[:-1]
            try:
                inputs[key] = json.loads(value)
            except ValueError as exc:
                raise CLIError(f"--input {item!r}: the value after ':=' is not JSON ({exc})") from None
        else:
            inputs[key] = value
        if not key.isidentifier():
            raise CLIError(f"--input {item!r}: {key!r} is not a valid input name")
    return inputs


def load_program(target: str) -> Any:
    """The program named by ``FILE.py:NAME`` (``NAME`` may be dotted): a Module instance or
    async callable as is; a class or a plain function is called with no arguments to make one."""
    path_text, colon, name = target.rpartition(":")
    if not colon or not path_text or not name:
        raise CLIError(f"{target!r}: expected FILE.py:PROGRAM, e.g. app.py:qa")
    path = Path(path_text)
    if not path.is_file():
        raise CLIError(f"{target!r}: no such file {str(path)!r}")
    module_name = f"_asynclm_program_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"{target!r}: {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Like `python FILE.py`: the file's directory is importable, so its sibling modules are too.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)  # errors in the user's file propagate with their traceback
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            found = sorted(n for n in vars(module) if not n.startswith("_"))
            raise CLIError(
                f"{target!r}: {str(path)!r} has no {name!r} (it defines: {', '.join(found) or 'nothing public'})"
            ) from None
    return _as_program(obj, target)


def _needs_arguments(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
    )


def _as_program(obj: Any, target: str) -> Any:
    from asynclm.modules import Module
    from asynclm.runtime import asyncify, is_async_callable

    if isinstance(obj, Module) or (is_async_callable(obj) and not inspect.isclass(obj)):
        return obj
    if not callable(obj):
        raise CLIError(
            f"{target!r} is a {type(obj).__name__}, not a program (a Module, a function, or a class)"
        )
    if not inspect.isclass(obj) and _needs_arguments(obj):
        return asyncify(obj)  # a plain function taking the inputs: run in a worker thread
    try:
        made = obj()
    except TypeError as exc:
        raise CLIError(
            f"{target!r} cannot be called without arguments to make a program ({exc}); point at a Module "
            "instance, a function of the inputs, or a no-argument class/factory"
        ) from None
    if isinstance(made, Module) or is_async_callable(made):
        return made
    raise CLIError(f"{target!r}() returned a {type(made).__name__}, not a program (a Module or an async callable)")


def _jsonable(result: Any) -> Any:
    from pydantic_core import to_jsonable_python

    from asynclm.signatures import Example

    if isinstance(result, Example):
        return result.to_dict()
    return to_jsonable_python(result, fallback=str)


def _read_batch(source: str) -> list[dict[str, Any]]:
    try:
        stream: TextIO = sys.stdin if source == "-" else open(source, encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"--batch {source!r}: {exc.strerror or exc}") from None
    rows: list[dict[str, Any]] = []
    with stream if source != "-" else nullcontext(stream):
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise CLIError(f"--batch {source!r} line {number}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise CLIError(f"--batch {source!r} line {number}: expected a JSON object of inputs")
            rows.append(row)
    return rows


def run_program(args: argparse.Namespace) -> int:
    import anyio

    if args.output and not args.batch:
        raise CLIError("--output is for --batch results; a single run prints its result")
    defaults = parse_inputs(args.input)
    rows = _read_batch(args.batch) if args.batch else None
    if rows is None and not defaults:
        raise CLIError("no inputs: pass --input KEY=VALUE (repeatable) or --batch data.jsonl")
    lm = make_lm(args.model, args.base_url, args.threads)
    if lm is not None and args.no_cache:
        lm.cache = False
    program = load_program(args.target)
    return int(anyio.run(_run, args, program, lm, defaults, rows, backend=args.backend))


async def _run(
    args: argparse.Namespace, program: Any, lm: Any, defaults: dict[str, Any], rows: list[dict[str, Any]] | None
) -> int:
    from asynclm.lm import track_usage
    from asynclm.runtime import context

    with context(lm=lm) if lm is not None else nullcontext(), track_usage() as usage:
        t0 = time.perf_counter()
        if rows is None:
            result = await program(**defaults)
            json.dump(_jsonable(result), sys.stdout, ensure_ascii=False, indent=2)
            sys.stdout.write("\n")
            failed = 0
            count = 1
        else:
            failed, count = await _run_batch(args, program, defaults, rows)
        took = time.perf_counter() - t0
    used = usage.usage
    print(
        f"asynclm run: {count} run(s) in {took:.2f} s, {used.total_tokens} tokens "
        f"({used.prompt_tokens} prompt + {used.completion_tokens} completion)"
        + (f", {failed} failed" if failed else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0


async def _run_batch(
    args: argparse.Namespace, program: Any, defaults: dict[str, Any], rows: list[dict[str, Any]]
) -> tuple[int, int]:
    from asynclm.lm import AuthenticationError, LMConnectionError, LMTimeoutError
    from asynclm.runtime import Parallel

    items = [(program, {**defaults, **row}) for row in rows]
    results = await Parallel(
        concurrency=args.concurrency,
        return_exceptions=args.keep_going,
        progress=not args.no_progress,
    )(items)
    failed = 0
    with _open_output(args.output) as out:
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, (LMConnectionError, LMTimeoutError, AuthenticationError)):
                    raise result  # the server is unusable: a setup problem, not a row
                failed += 1
                line: Any = {"error": f"{type(result).__name__}: {result}"}
            else:
                line = _jsonable(result)
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return failed, len(rows)


def _open_output(path: str | None) -> Any:
    if path is None:
        return nullcontext(sys.stdout)
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"--output {path!r}: {exc.strerror or exc}") from None
