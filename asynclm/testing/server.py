"""Run a ``asynclm.testing.FakeOpenAIServer`` as a process::

    python -m asynclm.testing.server --port 0 --latency 0.05 --text ok

The first line on stdout is the port it listens on (useful with ``--port 0``). It runs until
SIGTERM or SIGINT (or, with ``--exit-with-stdin``, until its stdin closes).
``GET /_fake/stats`` returns its counters and CPU time as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading

from ._server import FakeOpenAIServer, Fault, serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asynclm.testing.server",
        description="A fake OpenAI-compatible chat-completions server on loopback, with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each response")
    parser.add_argument("--chunk-delay", type=float, default=None, help="seconds between stream events")
    parser.add_argument("--text", default="ok", help="the text of every completion")
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--no-n", action="store_true", help="reject n > 1 with a 400")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of faulted requests")
    parser.add_argument(
        "--faults",
        default=None,
        help="comma-separated fault specs, e.g. '429:0.05,500,reset,malformed,truncate,hang' "
        "(default: 429/500/503/reset/malformed/truncate)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--batch-delay", type=float, default=0.0, help="seconds a provider batch takes")
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="stop when stdin reaches end of file (so the server dies with the process that started it)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        faults = [Fault.parse(spec) for spec in args.faults.split(",")] if args.faults else None
        server = FakeOpenAIServer(
            args.text,
            latency=args.latency,
            chunk_delay=args.chunk_delay,
            model=args.model,
            support_n=not args.no_n,
            fault_rate=args.fault_rate,
            faults=faults,
            seed=args.seed,
            batch_delay=args.batch_delay,
            host=args.host,
            port=args.port,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(sig, stop.set)
        if args.exit_with_stdin:
            # When the parent dies its end of the pipe closes: stdin reaches EOF. Watched by the
            # loop itself, not by a thread blocked in a read: such a thread still holds stdin's
            # lock at interpreter shutdown, and Python then aborts ("could not acquire lock").
            fd = sys.stdin.fileno()

            def on_stdin() -> None:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    loop.remove_reader(fd)
                    stop.set()

            try:
                loop.add_reader(fd, on_stdin)
            except NotImplementedError:  # pragma: no cover - Windows' proactor loop: a thread then

                def watch_stdin() -> None:
                    sys.stdin.buffer.read()
                    with contextlib.suppress(RuntimeError):  # the loop is already closed
                        loop.call_soon_threadsafe(stop.set)

                threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
        await serve(server, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
