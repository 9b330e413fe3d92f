"""Small tools shared by the tests."""

from __future__ import annotations

import threading


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
