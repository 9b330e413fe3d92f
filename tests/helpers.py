"""Small tools shared by the tests."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


class InFlight:
    """Counts how many blocks run at once (``with gauge: ...``) across threads and tasks; ``peak`` is the most."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


class StubLM(str):
    """A stand-in for an LM in runtime tests: callable like one (``configure`` refuses what is not),
    equal to its name so tests can say which one they see."""

    async def __call__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"StubLM {str(self)!r} is a marker, not a model")


def run_threads_interleaved(target: Callable[..., object], args_per_thread: list[tuple[object, ...]]) -> None:
    """Run ``target(*args)`` on one thread per args tuple and join them all, with the interpreter
    switching threads every microsecond meanwhile (as a loaded machine may), so races between two
    bytecodes are reachable; the switch interval is restored afterwards."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=target, args=args) for args in args_per_thread]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
