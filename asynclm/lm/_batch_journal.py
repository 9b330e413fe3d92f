"""The journal of submitted provider batches, one small JSON file per cache directory.

``<cache_dir>/lm_batches_v1.json`` maps each provider batch id to the cache keys of its requests
(and the provider and endpoint it was sent to). An entry is written as soon as the provider has
created the batch, and removed once its results are in the cache (or it was cancelled). A rerun of
the same requests (same process or a new one after a crash) finds their keys here and re-attaches
to the batch instead of submitting again. Writes replace the file atomically (a temporary file,
``os.replace``). Each write re-reads the file and replaces it while holding an OS file lock
(``lm_batches_v1.json.lock``, the ``filelock`` package of the ``asynclm[batch]`` extra), so that
processes sharing a directory never lose each other's entries. Readers take no lock: they see the
file before or after a replace, never half of one. No secrets are written: keys are hashes, ids are
the provider's.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

__all__ = ["FILE_NAME", "Journal", "journal_for"]

FILE_NAME = "lm_batches_v1.json"
#: how long a write waits for another process's lock on the journal (seconds)
LOCK_TIMEOUT = 60.0

_journals: dict[str, Journal] = {}
_lock = threading.Lock()


class Journal:
    """The batches submitted from one cache directory (thread-safe)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, FILE_NAME)
        self._lock = threading.Lock()
        self._file_lock: Any = None
        self._loaded = False
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
            st = os.stat(self.path)
            mtime: Any = (st.st_mtime_ns, st.st_ino, st.st_size)  # a replace gives a new inode
        except OSError:
            mtime = None
        self._loaded = True
        if mtime == self._mtime:
            return
        self._mtime = mtime
        self._batches = self._read() if mtime is not None else {}
        self._index = {key: batch_id for batch_id, entry in self._batches.items() for key in entry.get("keys", ())}

    def refresh(self) -> bool:
        """Re-read the file if it changed (one ``stat`` when it did not); whether it holds any batch."""
        with self._lock:
            self._refresh()
            return bool(self._batches)

    def lookup(self, key: str, refresh: bool = True) -> tuple[str, dict[str, Any]] | None:
        """The batch id holding ``key`` and its entry, if a submitted batch holds it.

        ``refresh=False``: from the journal as last read (the file is read on the first look-up
        only); BatchLM looks up each call so, and refreshes once per submission.
        """
        with self._lock:
            if refresh or not self._loaded:
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

    def _locked(self) -> Any:
        """The OS lock on the journal, held around each read-modify-write across processes."""
        if self._file_lock is None:
            try:
                from filelock import FileLock
            except ImportError:
                raise ImportError(
                    "BatchLM's journal needs the filelock package: pip install 'asynclm[batch]'"
                ) from None
            os.makedirs(self.directory, exist_ok=True)
            self._file_lock = FileLock(self.path + ".lock", timeout=LOCK_TIMEOUT, thread_local=False)
        return self._file_lock

    def add(self, batch_id: str, entry: dict[str, Any]) -> None:
        """Record a batch the provider has just created (durably, before anything else happens)."""
        with self._lock, self._locked():
            batches = self._read()
            batches[batch_id] = entry
            self._write(batches)
            self._refresh()

    def remove(self, batch_id: str) -> None:
        """Forget a batch whose results are in the cache (or that was cancelled)."""
        with self._lock, self._locked():
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
