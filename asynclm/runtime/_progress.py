"""A progress bar for batches (tqdm, loaded only when a bar is asked for)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Counts finished and failed items; shows them with tqdm on a terminal.

    tqdm hides itself when stderr is not a terminal (CI logs, pipes), so ``progress=True`` is
    always safe to pass.
    """

    def __init__(self, total: int, desc: str | None = None) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:  # pragma: no cover - tqdm is a core dependency
            raise ImportError("progress bars need tqdm, a dependency of asynclm: pip install tqdm") from exc
        self.done = 0
        self.failed = 0
        self._bar: Any = tqdm(total=total, desc=desc, file=sys.stderr, disable=None, dynamic_ncols=True)

    @classmethod
    def maybe(cls, enabled: bool, total: int, desc: str | None = None) -> Progress | None:
        return cls(total, desc) if enabled else None

    def update(self, failed: bool = False, **postfix: Any) -> None:
        self.done += 1
        self.failed += failed
        if postfix or self.failed:
            self._bar.set_postfix(failed=self.failed, **postfix, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
