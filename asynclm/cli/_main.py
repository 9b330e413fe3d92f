"""The ``asynclm`` command line (``asynclm ...`` or ``python -m asynclm ...``).

``asynclm demo``
    A small program on the embedded local model (or any OpenAI-compatible server): a few
    questions through ``Predict``, a concurrent batch with a progress bar, a table of answers,
    timings and token usage.
``asynclm run FILE.py:program``
    Run a program from a file on ``--input key=value`` inputs, or on every line of
    ``--batch data.jsonl`` (JSONL out).

Exit codes: 0 success; 1 the program raised (traceback shown) or, with ``--keep-going``, some
batch items failed; 2 a usage problem (bad arguments, a missing extra, an unreachable or refusing
server, a bad ``FILE:program``), reported on one line without a traceback; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["CLIError", "main"]

DEFAULT_LOCAL_MODEL = "local/gemma-3-270m"


class CLIError(Exception):
    """A problem to report on one line (exit code 2), without a traceback."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _add_lm_options(parser: argparse.ArgumentParser, default_model: str | None) -> None:
    group = parser.add_argument_group("language model")
    group.add_argument(
        "--model",
        default=default_model,
        help="'local/gemma-3-270m' (the embedded model, needs asynclm[local]), 'openai/<model>' for any "
        "OpenAI-compatible server, or 'anthropic/<model>' (key from $ANTHROPIC_API_KEY)"
        + (f" (default: {default_model})" if default_model else " (default: $ASYNCLM_MODEL, else the program's own)"),
    )
    group.add_argument(
        "--base-url",
        help="the server's API root for openai/ models, e.g. http://localhost:8000/v1 (default: "
        "$ASYNCLM_BASE_URL, else OpenAI's; the key comes from $OPENAI_API_KEY)",
    )
    group.add_argument(
        "--threads", type=_positive_int, help="CPU threads of the embedded model (default 2, or 1 on a 2-CPU machine)"
    )
    group.add_argument("--no-cache", action="store_true", help="do not read or write the LM response cache")
    group.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio", help="the event loop to run on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asynclm",
        description="Run language-model programs from the shell.",
        epilog="Each command's options: asynclm demo --help, asynclm run --help. Guide: 'The asynclm command "
        "line' in the asynclm documentation. Exit codes: 0 ok, 1 program error, 2 usage/setup error.",
    )
    from asynclm import __version__

    parser.add_argument("--version", action="version", version=f"asynclm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,run}")

    demo = sub.add_parser(
        "demo",
        help="run a small program end to end (embedded local model by default)",
        description="A few questions through Predict, then a concurrent batch with a progress bar, then a table "
        "of answers, timings and token usage. Runs on the embedded local model unless --model says otherwise.",
    )
    _add_lm_options(demo, DEFAULT_LOCAL_MODEL)
    demo.add_argument("--questions", type=_positive_int, default=2, help="questions asked one by one (default 2)")
    demo.add_argument("--batch-size", type=_positive_int, default=6, help="questions in the batch (default 6)")
    demo.add_argument("--concurrency", type=_positive_int, default=4, help="batch concurrency (default 4)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser(
        "run",
        help="run a program from a file: asynclm run app.py:qa --input question=...",
        description="Load PROGRAM from FILE.py (a Module instance, an async function, or a class/factory called "
        "with no arguments to make one) and run it on --input values, or on every line of --batch.",
    )
    run.add_argument("target", metavar="FILE.py:PROGRAM", help="the file and the name of the program in it")
    run.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an input (repeatable); KEY:=JSON for a non-string value, e.g. k:=3 or tags:='[\"a\"]'. "
        "With --batch, these are defaults for every line",
    )
    run.add_argument("--batch", metavar="DATA.jsonl", help="run on every line (a JSON object of inputs); '-' is stdin")
    run.add_argument("--output", "-o", metavar="OUT.jsonl", help="where batch results go (default: stdout)")
    run.add_argument("--concurrency", type=_positive_int, default=8, help="batch items in flight (default 8)")
    run.add_argument(
        "--keep-going",
        action="store_true",
        help="record a failed batch item as {\"error\": ...} and go on (exit code 1 at the end) instead of stopping",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar for --batch")
    _add_lm_options(run, None)
    run.set_defaults(func=_cmd_run)
    return parser


def make_lm(model: str | None, base_url: str | None, threads: int | None = None) -> Any:
    """The LM named on the command line (``None`` if none was named)."""
    model = model or os.environ.get("ASYNCLM_MODEL") or None
    if base_url is None and model is not None and model.startswith("openai/"):
        base_url = os.environ.get("ASYNCLM_BASE_URL") or None  # the variable the examples read too
    if model is None:
        if base_url:
            raise CLIError("--base-url needs --model openai/<model>")
        return None
    from asynclm.lm import LM

    if model.startswith("local/"):
        if base_url:
            raise CLIError(f"--base-url does not apply to the embedded model {model!r}; use --model openai/<model>")
        from asynclm.lm._local import LocalLM, LocalModelUnavailableError

        try:
            return LocalLM(model, threads=threads)
        except LocalModelUnavailableError as exc:
            raise CLIError(str(exc)) from None
    try:
        return LM(model, base_url=base_url)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from ._run import run_program

    return run_program(args)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    first, _, rest = text.partition("\n")
    return first + (" (...)" if rest.strip() and len(first) > 60 else (" " + " ".join(rest.split()) if rest else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 and a usage line on bad arguments
    from asynclm.lm import AuthenticationError, LMConnectionError, LMError, LMTimeoutError
    from asynclm.modules import NoLMError

    try:
        if getattr(args, "backend", None):
            from asynclm.runtime._backends import import_backend

            import_backend(args.backend)  # a missing trio is one line, not a traceback from deep in anyio
        return int(args.func(args))
    except ImportError as exc:  # a missing extra: the message names it
        print(f"asynclm {args.command}: error: {_one_line(exc)}", file=sys.stderr)
    except CLIError as exc:
        print(f"asynclm {args.command}: error: {_one_line(exc)}", file=sys.stderr)
    except (LMConnectionError, LMTimeoutError, AuthenticationError) as exc:  # the LM's message has the hint
        print(f"asynclm {args.command}: error: {_one_line(exc)}", file=sys.stderr)
    except NoLMError:
        print(
            f"asynclm {args.command}: error: the program has no LM: pass --model local/gemma-3-270m or "
            "--model openai/<model> --base-url <url> (or set $ASYNCLM_MODEL)",
            file=sys.stderr,
        )
    except LMError as exc:  # the server refused the requests (bad model name, bad request...)
        print(f"asynclm {args.command}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"asynclm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
