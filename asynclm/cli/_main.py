"""``asynclm`` command line: ``asynclm demo``."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import anyio

    from asynclm.runtime import Parallel, context, settings

    async def work(i: int) -> str:
        await anyio.sleep(0.05)
        return f"{i}:{settings.backend}"

    for backend in ("asyncio", "trio"):
        with context(backend=backend):
            start = time.perf_counter()
            results = Parallel(concurrency=args.concurrency).sync([(work, (i,)) for i in range(args.n)])
            took = time.perf_counter() - start
        print(f"{backend:>8}: {len(results)} items of 50 ms, concurrency {args.concurrency}: {took:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asynclm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a small demo program")
    demo.add_argument("-n", type=int, default=200)
    demo.add_argument("--concurrency", type=int, default=50)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
