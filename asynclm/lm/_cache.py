"""The response cache: memory layers, a persistent SQLite file (or a shared store), and single-flight.

* Keys are the sha256 of the LM's endpoint (scheme, host, port and path of its ``base_url``,
  normalized: lower-case scheme and host, default ports made explicit, no trailing slash, no user
  info or query) and the canonical JSON request body (sorted keys: model, messages, parameters),
  plus the ``rollout_id``. One model name on two servers never shares an entry. The API key
  travels in a header and is never part of a key; values are the server's JSON response text (no
  pickle).
* A ``Store`` is one memory layer in front of one persistent layer. The persistent layer is the
  SQLite file of the cache directory in effect (``configure(cache_dir=...)``), or the shared
  backend of ``configure(cache=...)`` (a ``RedisCache``). Each store has its own memory layer, so
  switching the cache directory switches the whole view: nothing answered from memory comes from
  another directory. ``cache="memory"`` uses one more, process-wide, memory-only store.
* Memory: an ``OrderedDict`` LRU under a ``threading.Lock`` (callers run on many threads' loops).
* Disk: one SQLite file per cache directory, ``<cache_dir>/lm_cache_v1.sqlite3`` (WAL mode, so
  several processes can share it; writes take the write lock up front, ``BEGIN IMMEDIATE``, and
  wait for it up to ``BUSY_TIMEOUT``). Reads run in a worker thread (``anyio.to_thread``);
  writes are queued to one daemon writer thread per file that commits them in batches, so the
  event loop never waits for disk. Queued writes are flushed at interpreter exit. An in-memory
  index of the keys in the file (64-bit prefixes, read once) lets a miss skip the thread hop.
* Failures never fail a call: a directory that cannot be created or written, a full disk, a file
  that is not a database, a lock held too long. The first one warns (``CacheWarning``, once per
  directory), and the store goes on with memory only: a file that cannot be read is not read
  or written again; one that cannot be written (a full disk, a write lock held too long) is
  still read.
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
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from asynclm.runtime import ConcurrencyLimiter

__all__ = [
    "CacheWarning",
    "DiskCache",
    "Flight",
    "MemoryCache",
    "SharedCache",
    "Store",
    "cache_key",
    "check_cache_mode",
    "disk_cache",
    "endpoint_of",
    "flights",
    "memory_store",
    "store_for",
]

_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
FILE_NAME = "lm_cache_v1.sqlite3"
_BATCH_WINDOW = 0.05  # seconds
#: how long a write waits for another process's write lock before the file is given up (seconds)
BUSY_TIMEOUT = 30.0
#: the same for a read (in WAL mode only an exclusive lock held by another program blocks one)
READ_BUSY_TIMEOUT = 5.0
MODES = (True, False, "memory", "refresh")
_warn_lock = threading.Lock()


class CacheWarning(RuntimeWarning):
    """A cache layer failed (unwritable directory, full disk, corrupt file, Redis down): calls go on without it."""


def check_cache_mode(cache: Any, what: str) -> None:
    """Raise ``ValueError`` unless ``cache`` is one of the modes."""
    if not any(cache is mode or (isinstance(cache, str) and cache == mode) for mode in MODES):
        raise ValueError(
            f"{what}(cache={cache!r}): use True (memory + disk, or the shared cache set with "
            "asynclm.configure(cache=...)), 'memory' (this process only), 'refresh' (skip the lookup, "
            "store the new answer) or False"
        )


def endpoint_of(base_url: str) -> str:
    """The normalized endpoint of a base URL, for cache keys: ``scheme://host:port/path``.

    Scheme and host in lower case, the default port made explicit, no trailing slash; user info,
    query and fragment are left out (they may hold secrets).
    """
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def cache_key(endpoint: str, canonical_body: bytes, rollout_id: object) -> str:
    digest = hashlib.sha256(endpoint.encode())
    digest.update(b"\x00")
    digest.update(canonical_body)
    if rollout_id is not None:
        digest.update(b"\x00rollout_id=" + repr(rollout_id).encode())
    return digest.hexdigest()


def _short(key: str) -> int:
    return int(key[:16], 16)


class MemoryCache:
    """A thread-safe LRU of ``key -> JSON bytes``; with ``ttl`` (seconds) entries also expire."""

    def __init__(self, maxsize: int = 10_000, ttl: float | None = None) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._expires: dict[str, float] | None = {} if ttl is not None else None
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                expires = self._expires
                if expires is not None and expires.get(key, 0.0) <= time.monotonic():
                    del self._data[key]
                    expires.pop(key, None)
                    return None
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if self._expires is not None and self.ttl is not None:
                self._expires[key] = time.monotonic() + self.ttl
            while len(self._data) > self.maxsize:
                old, _ = self._data.popitem(last=False)
                if self._expires is not None:
                    self._expires.pop(old, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            if self._expires is not None:
                self._expires.clear()

    def __len__(self) -> int:
        return len(self._data)


class SharedCache:
    """Base of persistent backends given to ``asynclm.configure(cache=...)`` (``RedisCache``).

    Subclasses implement ``aget`` and ``aput`` (never raising: a failing backend warns and answers
    ``None``) and set ``self.store = Store(MemoryCache(...), self)`` in their constructor.
    """

    store: Store

    async def aget(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def aput(self, key: str, value: bytes) -> None:
        raise NotImplementedError


class DiskCache:
    """A SQLite file of ``key -> JSON text``. ``get`` blocks: call it from a worker thread."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.readable = True
        self.writable = True
        self._warned = False
        self._lock = threading.Lock()  # the reading connection; taken in worker threads only
        self._start_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None  # for reads
        self._wconn: sqlite3.Connection | None = None  # the writer thread's
        self._queue: queue.SimpleQueue[tuple[str, str] | threading.Event | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._index: set[int] | None = None

    def _open(self, timeout: float) -> sqlite3.Connection:
        self.directory.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        try:
            give_up = time.monotonic() + timeout
            while True:
                # Turning a new file to WAL takes an exclusive lock that does not always wait on
                # the busy handler: when several processes create the file at once, retry.
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.execute(_SCHEMA)
                    break
                except sqlite3.OperationalError as exc:
                    if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > give_up:
                        raise
                    time.sleep(0.01)
        except BaseException:
            conn.close()
            raise
        return conn

    def _fail(self, doing: str, exc: BaseException) -> None:
        # A file that cannot be read is not written either (memory only); one that cannot be
        # written (a full disk, a write lock held elsewhere) is still read.
        self.writable = False
        if doing == "read":
            self.readable = False
        with _warn_lock:  # once per directory, even when a read and a write fail at the same time
            if self._warned:
                return
            self._warned = True
        still_read = " (entries already in the file are still read)" if self.readable else ""
        warnings.warn(
            f"asynclm: the LM response cache in {self.directory} cannot be {doing} "
            f"({type(exc).__name__}: {exc}); from now on this process keeps new answers in memory "
            f"only{still_read}. Point asynclm.configure(cache_dir=...) at a writable directory, or "
            f"delete {FILE_NAME} there if it is corrupt.",
            CacheWarning,
            stacklevel=2,
        )

    def get(self, key: str) -> bytes | None:
        """The value for ``key``; ``None`` when absent or when the file cannot be read (warns once)."""
        if not self.readable:
            return None
        try:
            with self._lock:
                conn = self._conn
                if conn is None:
                    conn = self._conn = self._open(READ_BUSY_TIMEOUT)
                if self._index is None:
                    self._index = {_short(k) for (k,) in conn.execute("SELECT key FROM responses")}
                row = conn.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        except (sqlite3.Error, OSError) as exc:
            self._fail("read", exc)
            return None
        return None if row is None else str(row[0]).encode()

    async def aget(self, key: str) -> bytes | None:
        if not self.readable or self.surely_absent(key):
            return None
        return await anyio.to_thread.run_sync(self.get, key)

    def surely_absent(self, key: str) -> bool:
        """True when ``key`` is known not to be in the file, so a lookup (a thread hop) is skipped.

        The index of keys (a 64-bit prefix of each) is read with the first ``get`` and kept up
        to date with this process's writes. Entries written by *another* process after that are
        missed: a missed hit costs one request, and the write that follows is harmless.
        """
        index = self._index
        return index is not None and _short(key) not in index

    def put(self, key: str, value: bytes) -> None:
        """Queue a write (never blocks; dropped once the file has proved unwritable)."""
        if not self.writable:
            return
        writer = self._writer
        if writer is None or not writer.is_alive():  # first write, or one after close()
            with self._start_lock:  # not self._lock: a reader may hold that for a while
                # Checked again under the lock, and published only once started: a thread that
                # saw it created but not yet alive would start a second writer on one connection.
                writer = self._writer
                if writer is None or not writer.is_alive():
                    writer = threading.Thread(
                        target=self._write_loop, name=f"asynclm-cache-writer {self.path}", daemon=True
                    )
                    writer.start()
                    self._writer = writer
        if self._index is not None:
            self._index.add(_short(key))
        self._queue.put((key, value.decode()))

    async def aput(self, key: str, value: bytes) -> None:
        self.put(key, value)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every write queued so far is committed or dropped (``False`` on timeout)."""
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
                    self._close_writer()
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
        if not batch or not self.writable:
            return
        conn = self._wconn
        try:
            if conn is None:
                conn = self._wconn = self._open(BUSY_TIMEOUT)
            conn.execute("BEGIN IMMEDIATE")  # the write lock now, waiting on the busy timeout
            try:
                conn.executemany("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", batch)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:  # a cache that cannot be written is a slower program
            self._fail("written", exc)
            self._close_writer()

    def _close_writer(self) -> None:
        conn, self._wconn = self._wconn, None
        if conn is not None:
            try:
                conn.close()
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


class Store:
    """One memory layer in front of one persistent layer (a ``DiskCache``, a ``SharedCache`` or none)."""

    __slots__ = ("memory", "persistent")

    def __init__(self, memory: MemoryCache, persistent: DiskCache | SharedCache | None) -> None:
        self.memory = memory
        self.persistent = persistent


memory_store = Store(MemoryCache(), None)  # cache="memory": process-wide, no persistent layer
_by_dir: dict[str, Store] = {}  # absolute directory -> its store
_by_setting: dict[str | None, Store] = {}  # the cache_dir setting as given (absolute or None) -> store
_lock = threading.Lock()
_default_dir: str | None = None


def default_cache_dir() -> str:
    global _default_dir
    if _default_dir is None:
        import platformdirs

        _default_dir = str(platformdirs.user_cache_dir("asynclm"))
    return _default_dir


def _dir_store(directory: str | None) -> Store:
    path = os.path.abspath(directory) if directory is not None else default_cache_dir()
    with _lock:
        store = _by_dir.get(path)
        if store is None:
            store = _by_dir[path] = Store(MemoryCache(), DiskCache(path))
        if directory is None or os.path.isabs(directory):  # a relative one follows the working directory
            _by_setting[directory] = store
    return store


def store_for(settings: Any) -> Store:
    """The store in effect for ``settings``: the shared cache if one is set, else the cache directory's.

    A dict lookup per call once a directory has been seen.
    """
    shared = settings.cache
    if shared is not None:
        if isinstance(shared, SharedCache):
            return shared.store
        raise TypeError(
            f"asynclm.configure(cache={shared!r}) is not a cache backend: use asynclm.RedisCache(url), "
            "or None for the SQLite file under cache_dir"
        )
    directory = settings.cache_dir
    store = _by_setting.get(directory)
    if store is None:
        store = _dir_store(directory)
    return store


def disk_cache(directory: str | None) -> DiskCache:
    """The process's ``DiskCache`` for ``directory`` (``None``: the user cache directory)."""
    disk = _dir_store(directory).persistent
    assert isinstance(disk, DiskCache)
    return disk


def memory_of(directory: str | None) -> MemoryCache:
    """The memory layer of ``directory``'s store."""
    return _dir_store(directory).memory


@atexit.register
def _close_disks() -> None:
    with _lock:
        stores = list(_by_dir.values())
    for store in stores:
        if isinstance(store.persistent, DiskCache):
            store.persistent.close()


def _forget_in_child() -> None:
    # In a forked child the parent's writer threads, connections and in-flight requests do not
    # exist, and a lock some other parent thread held at the fork would stay held forever. The
    # memory layers keep their entries (a copy of the parent's) with fresh locks.
    global _lock, _warn_lock
    _lock = threading.Lock()
    _warn_lock = threading.Lock()
    for store in [memory_store, *_by_dir.values()]:
        store.memory._lock = threading.Lock()
    for path, store in list(_by_dir.items()):
        fresh = Store(store.memory, DiskCache(path))
        _by_dir[path] = fresh
        for setting, old in list(_by_setting.items()):
            if old is store:
                _by_setting[setting] = fresh
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
    """The process-wide map ``(store, key) -> Flight``; a flight lives while anyone holds or awaits it."""

    def __init__(self) -> None:
        self._flights: dict[Any, Flight] = {}
        self._lock = threading.Lock()

    def join(self, key: Any) -> Flight:
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = Flight()
            flight.refs += 1
            return flight

    def leave(self, key: Any, flight: Flight) -> None:
        with self._lock:
            flight.refs -= 1
            if flight.refs == 0 and self._flights.get(key) is flight:
                del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)


flights = Flights()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
