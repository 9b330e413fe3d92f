"""The journal of submitted provider batches, one small JSON file per cache directory.

``<cache_dir>/lm_batches_v1.json`` maps each provider batch id to the cache keys of its requests
(and the provider and endpoint it was sent to). An entry is written as soon as the provider has
created the batch, and removed once its results are in the cache (or it was cancelled). A rerun of
the same requests (same process or a new one after a crash) finds their keys here and re-attaches
to the batch instead of submitting again. Writes replace the file atomically (a temporary file,
``os.replace``), re-reading it first so that processes sharing a directory keep each other's
entries. No secrets are written: keys are hashes, ids are the provider's.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

__all__ = ["FILE_NAME", "Journal", "journal_for"]

FILE_NAME = "lm_batches_v1.json"

_journals: dict[str, Journal] = {}
_lock = threading.Lock()


class Journal:
    """The batches submitted from one cache directory (thread-safe)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, FILE_NAME)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._batches: dict[str, dict[str, Any]] = {}
        self._index: dict[str, str] = {}

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable: treated as empty (the results of finished batches are in the cache)
        batches = data.get("batches") if isinstance(data, dict) else None
        return batches if isinstance(batches, dict) else {}

    def _refresh(self) -> None:
        try:
            mtime: float | None = os.stat(self.path).st_mtime_ns
        except OSError:
            mtime = None
        if mtime == self._mtime and self._mtime is not None:
            return
        self._mtime = mtime
        self._batches = self._read()
        self._index = {key: batch_id for batch_id, entry in self._batches.items() for key in entry.get("keys", ())}

    def lookup(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """The batch id holding ``key`` and its entry, if a submitted batch holds it."""
        with self._lock:
            self._refresh()
            batch_id = self._index.get(key)
            if batch_id is None:
                return None
            return batch_id, self._batches[batch_id]

    def _write(self, batches: dict[str, dict[str, Any]]) -> None:
        import tempfile  # only here: keeps `import asynclm` light

        os.makedirs(self.directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lm_batches.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "batches": batches}, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._mtime = None  # re-read on next lookup

    def add(self, batch_id: str, entry: dict[str, Any]) -> None:
        """Record a batch the provider has just created (durably, before anything else happens)."""
        with self._lock:
            batches = self._read()
            batches[batch_id] = entry
            self._write(batches)
            self._refresh()

    def remove(self, batch_id: str) -> None:
        """Forget a batch whose results are in the cache (or that was cancelled)."""
        with self._lock:
            batches = self._read()
            if batches.pop(batch_id, None) is not None:
                self._write(batches)
            self._refresh()

    def batch_ids(self) -> list[str]:
        with self._lock:
            self._refresh()
            return list(self._batches)


def journal_for(directory: str) -> Journal:
    path = os.path.abspath(directory)
    with _lock:
        journal = _journals.get(path)
        if journal is None:
            journal = _journals[path] = Journal(path)
        return journal
