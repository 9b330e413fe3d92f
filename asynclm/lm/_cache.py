"""The response cache: a process-wide memory LRU, a persistent SQLite file, and single-flight.

* Keys are the sha256 of the canonical JSON request body (sorted keys: model, messages,
  parameters) plus the ``rollout_id``. The API key travels in a header and the base URL is not part
  of the body, so neither is in a key; values are the server's JSON response text (no pickle).
* Memory: an ``OrderedDict`` LRU under a ``threading.Lock`` (callers run on many threads' loops).
* Disk: one SQLite file per cache directory, ``<cache_dir>/lm_cache_v1.sqlite3`` (WAL mode, so
  several processes can share it). Reads run in a worker thread (``anyio.to_thread``); writes are
  queued to one daemon writer thread per file that commits them in batches, so the event loop never
  waits for disk. Queued writes are flushed at interpreter exit. An in-memory index of the keys in
  the file (64-bit prefixes, read once) lets a miss skip the worker-thread hop altogether.
* Single-flight: identical requests in flight at once share one HTTP request. Each key in flight
  has a ``Flight`` whose one-slot process-wide ``ConcurrencyLimiter`` is held by the caller doing
  the request; the others queue on it (on their own loops and threads) and find the value when
  they get the slot. If that caller is cancelled its slot passes to the next, which then makes the
  request itself: no waiter is stranded by a cancelled leader.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

from asynclm.runtime import ConcurrencyLimiter

__all__ = ["DiskCache", "Flight", "MemoryCache", "cache_key", "disk_cache", "flights", "memory_cache"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
FILE_NAME = "lm_cache_v1.sqlite3"
_BATCH_WINDOW = 0.05  # seconds


def cache_key(canonical_body: bytes, rollout_id: object) -> str:
    digest = hashlib.sha256(canonical_body)
    if rollout_id is not None:
        digest.update(b"\x00rollout_id=" + repr(rollout_id).encode())
    return digest.hexdigest()


def _short(key: str) -> int:
    return int(key[:16], 16)


class MemoryCache:
    """A thread-safe LRU of ``key -> JSON bytes``."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class DiskCache:
    """A SQLite file of ``key -> JSON text``. Every method blocks: call ``get`` from a worker thread."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / FILE_NAME
        self._lock = threading.Lock()  # the connection; taken in worker threads only
        self._start_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[tuple[str, str] | threading.Event | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._index: set[int] | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def get(self, key: str) -> bytes | None:
        with self._lock:
            conn = self._connect()
            if self._index is None:
                self._index = {_short(k) for (k,) in conn.execute("SELECT key FROM responses")}
            row = conn.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0]).encode()

    def surely_absent(self, key: str) -> bool:
        """True when ``key`` is known not to be in the file, so a lookup (a thread hop) is skipped.

        The index of keys (a 64-bit prefix of each) is read with the first ``get`` and kept up
        to date with this process's writes. Entries written by *another* process after that are
        missed: a missed hit costs one request, and the write that follows is harmless.
        """
        index = self._index
        return index is not None and _short(key) not in index

    def put(self, key: str, value: bytes) -> None:
        """Queue a write (never blocks)."""
        writer = self._writer
        if writer is None or not writer.is_alive():  # first write, or one after close()
            with self._start_lock:  # not self._lock: a reader may hold that for a while
                if self._writer is writer:
                    self._writer = threading.Thread(
                        target=self._write_loop, name=f"asynclm-cache-writer {self.path}", daemon=True
                    )
                    self._writer.start()
        if self._index is not None:
            self._index.add(_short(key))
        self._queue.put((key, value.decode()))

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every write queued so far is committed (``False`` on timeout)."""
        if self._writer is None or not self._writer.is_alive():
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, tuple):
                # Let writes gather for a moment: one commit per batch instead of per response
                # keeps this thread from contending for the GIL on every call.
                time.sleep(_BATCH_WINDOW)
            batch: list[tuple[str, str]] = []
            events: list[threading.Event] = []
            while True:
                if item is None:
                    self._commit(batch)
                    for event in events:
                        event.set()
                    return
                if isinstance(item, threading.Event):
                    events.append(item)
                else:
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._commit(batch)
            for event in events:
                event.set()

    def _commit(self, batch: list[tuple[str, str]]) -> None:
        if not batch:
            return
        try:
            with self._lock:
                conn = self._connect()
                conn.execute("BEGIN")
                conn.executemany("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", batch)
                conn.execute("COMMIT")
        except sqlite3.Error:  # a cache that cannot be written is a slower program, not a failing one
            try:
                if self._conn is not None and self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=10)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


memory_cache = MemoryCache()
_disks: dict[str, DiskCache] = {}
_disks_lock = threading.Lock()


def default_cache_dir() -> str:
    import platformdirs

    return str(platformdirs.user_cache_dir("asynclm"))


def disk_cache(directory: str | None) -> DiskCache:
    """The process's ``DiskCache`` for ``directory`` (``None``: the user cache directory)."""
    key = os.path.abspath(directory) if directory is not None else default_cache_dir()
    disk = _disks.get(key)
    if disk is None:
        with _disks_lock:
            disk = _disks.get(key)
            if disk is None:
                disk = _disks[key] = DiskCache(key)
    return disk


@atexit.register
def _close_disks() -> None:
    with _disks_lock:
        disks = list(_disks.values())
    for disk in disks:
        disk.close()


def _forget_in_child() -> None:
    # In a forked child the parent's writer threads, connections and in-flight requests do not
    # exist, and a lock some other parent thread held at the fork would stay held forever.
    global _disks, _disks_lock
    _disks = {}
    _disks_lock = threading.Lock()
    memory_cache._lock = threading.Lock()
    flights._flights = {}
    flights._lock = threading.Lock()


class Flight:
    """One key's in-flight request, shared by every identical call made meanwhile."""

    __slots__ = ("error", "limiter", "refs", "value")

    def __init__(self) -> None:
        self.limiter = ConcurrencyLimiter(1)
        self.value: bytes | None = None
        self.error: BaseException | None = None
        self.refs = 0


class Flights:
    """The process-wide map ``key -> Flight``; a flight lives while anyone holds or awaits it."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._lock = threading.Lock()

    def join(self, key: str) -> Flight:
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = Flight()
            flight.refs += 1
            return flight

    def leave(self, key: str, flight: Flight) -> None:
        with self._lock:
            flight.refs -= 1
            if flight.refs == 0 and self._flights.get(key) is flight:
                del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)


flights = Flights()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
