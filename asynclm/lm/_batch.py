"""``BatchLM``: an LM whose calls go through the provider's Batch API (half the price).

Each call builds its request exactly as the wrapped ``LM`` would (same body, same wire mapping,
same cache key), is served from the cache when its answer is there, and otherwise parks: its
request joins a queue, and a provider batch is submitted when no new request arrived for
``window`` seconds (or ``max_requests`` are queued). The batch is polled; when it ends, each parked
call resumes with its own ``LMResponse`` or its own typed error (lines are matched by
``custom_id``, which is the request's cache key).

There is no background task: one of the parked calls at a time "drives" (submits, polls,
distributes results) while the others wait on an event; when the driver's own answer arrives it
hands the role to another parked call. So cancelling the calls (a timeout, Ctrl-C, cancelling a
``batch``) stops everything, and the provider batches no parked call still needs are cancelled.

Durability: the provider's batch id and its requests' keys are written to the cache directory's
journal (``_batch_journal``) as soon as the batch exists; the results go to the cache. A rerun of
the same requests re-attaches to that batch instead of paying for it again.

The control-plane requests (file upload, batch create, poll, download, cancel) are a handful per
batch, so they go through an httpx client (the LM's ``http_client_factory`` when it has one, else
``httpx.AsyncClient`` with the LM's ``ssl_context`` or the process's default one; the
``asynclm[batch]`` extra), not the LM's POST-only fast transport.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio

from asynclm.runtime import SyncCallable, current_settings

from ._batch_journal import Journal, journal_for
from ._budget import admit, settle
from ._cache import DiskCache, cache_key, check_cache_mode, default_cache_dir, memory_store, store_for
from ._client import HISTORY_SIZE, LM, _clone
from ._errors import BadRequestError, LMError, LMTimeoutError, RateLimitError, ServerError
from ._models import LMResponse, Usage
from ._retry import parse_retry_after
from ._usage import record_usage

__all__ = ["BATCH_DISCOUNT", "BatchLM"]

logger = logging.getLogger("asynclm.lm.batch")

#: what a batched request costs relative to a normal one (OpenAI and Anthropic: half)
BATCH_DISCOUNT = 0.5
#: OpenAI's limit on the requests of one batch
OPENAI_MAX_REQUESTS = 50_000
#: the most bytes of requests in one batch (OpenAI: 200 MB per input file; Anthropic: 256 MB per
#: batch), with room for the wrapping of each line
MAX_BATCH_BYTES = 180_000_000
_TERMINAL = ("completed", "failed", "expired", "cancelled", "ended")
#: how long requests refused because the provider's queue is full keep being offered again, with
#: no batch of this BatchLM ending meanwhile (the completion window the providers promise)
QUEUE_FULL_GIVE_UP = 24 * 3600.0
_EXPIRED = -1  # a line the provider did not run before its window passed
_CANCELED = -2  # a line not run because the batch was cancelled
# custom_id -> (status, body: decoded, or its bytes, request id, whether the body's bytes were checked)
_Results = dict[str, tuple[int, Any, "str | None", bool]]
# an OpenAI output line as OpenAI (and the fake provider) write it: the body's bytes are taken as
# they are and checked (other shapes are decoded whole)
_LINE = re.compile(
    rb'\{\s*"id"\s*:\s*"[^"\\]*"\s*,\s*"custom_id"\s*:\s*"([0-9a-f]{64})"\s*,\s*"response"\s*:\s*\{\s*'
    rb'"status_code"\s*:\s*(2\d\d)\s*,\s*"request_id"\s*:\s*(?:"([^"\\]*)"|null)\s*,\s*"body"\s*:\s*'
)
_TAILS = (b'},"error":null}', b'}, "error": null}')
# an Anthropic results line holding a succeeded message, likewise
_ANTHROPIC_LINE = re.compile(
    rb'\{\s*"custom_id"\s*:\s*"([0-9a-f]{64})"\s*,\s*"result"\s*:\s*\{\s*"type"\s*:\s*"succeeded"\s*,\s*'
    rb'"message"\s*:\s*'
)
_loads = json.loads
_dumps = json.dumps


class _Req:
    """One distinct request (by cache key) waiting for its batch."""

    __slots__ = ("batch", "data", "error", "event", "key", "payload", "store", "waiters")

    def __init__(self, key: str, data: bytes, store: Any) -> None:
        self.key = key
        # the provider's request body, encoded once (the bytes the cache key hashes): the batch
        # file's lines embed it as is
        self.data = data
        self.store = store  # where its answer goes (None: cache=False)
        self.event = anyio.Event()
        self.payload: bytes | None = None
        self.error: BaseException | None = None
        self.batch: str | None = None
        self.waiters = 0

    @property
    def resolved(self) -> bool:
        return self.payload is not None or self.error is not None


def _answered_line(line: bytes, check: Any) -> tuple[str, tuple[int, bytes, str | None, bool]] | None:
    """(custom_id, result) of an OpenAI output line holding a 2xx completion, with the body's
    bytes cut out and checked; ``None`` when the line has another shape (then it is decoded
    whole)."""
    m = _LINE.match(line)
    if m is None:
        return None
    line = line.rstrip()
    for tail in _TAILS:
        if line.endswith(tail):
            body = line[m.end() : -len(tail)]
            try:
                check(body)  # ValueError: not the body alone, or not a completion
            except ValueError:
                return None
            request_id = m.group(3)
            return m.group(1).decode(), (
                int(m.group(2)), body, None if request_id is None else request_id.decode(), True
            )
    return None


def _succeeded_line(line: bytes, check: Any) -> tuple[str, tuple[int, bytes, None, bool]] | None:
    """(custom_id, result) of an Anthropic results line holding a succeeded message, with the
    message's bytes cut out and checked; ``None`` when the line has another shape."""
    m = _ANTHROPIC_LINE.match(line)
    if m is None:
        return None
    line = line.rstrip()
    if not line.endswith(b"}}"):
        return None
    body = line[m.end() : -2].rstrip()
    if not body.endswith(b"}"):  # spaces before the closing braces: another shape
        return None
    try:
        check(body)
    except ValueError:
        return None
    return m.group(1).decode(), (200, body, None, True)


def _errors_of(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The error objects of a failed OpenAI batch."""
    return [e for e in (info.get("errors") or {}).get("data") or [] if isinstance(e, dict)]


def _batch_errors(info: dict[str, Any]) -> str:
    return "; ".join(str(e.get("message")) for e in _errors_of(info)) or "no detail"


def _queue_full(info: dict[str, Any]) -> bool:
    """Whether a failed OpenAI batch was refused for room (the organisation's enqueued-token limit)."""
    return any(e.get("code") == "token_limit_exceeded" for e in _errors_of(info))


class _Lookup:
    """Persistent-cache look-ups of the calls that arrived together: one worker-thread hop."""

    __slots__ = ("event", "found", "keys")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.found: dict[str, bytes] | None = None
        self.event = anyio.Event()


def _get_many(disk: DiskCache, keys: list[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for key in keys:  # the first get reads the file's index of keys; the misses then cost no query
        if not disk.surely_absent(key):
            value = disk.get(key)
            if value is not None:
                found[key] = value
    return found


class _Batch:
    __slots__ = ("failures", "id", "journal", "keys", "live", "next_poll", "store")

    def __init__(self, batch_id: str, keys: list[str], journal: Journal, next_poll: float, store: Any) -> None:
        self.id = batch_id
        self.keys = keys
        self.journal = journal
        self.next_poll = next_poll
        self.store = store  # for its answers no waiting call takes
        self.failures = 0
        self.live = 0  # requests of this process still waiting for it


class _NoStream:
    """``BatchLM.stream``: refuses with a clear error."""

    def __init__(self, model: str) -> None:
        self._model = model

    def _refuse(self) -> TypeError:
        return TypeError(
            f"BatchLM({self._model!r}) cannot stream: a provider batch answers hours later, all at once. "
            "Stream with the LM itself (outside the BatchLM), or call without streaming."
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()

    def sync(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        raise self._refuse()


class BatchLM(SyncCallable):
    """An LM whose calls are gathered into provider batches: half the price, answers within 24 h.

    ``BatchLM(asynclm.LM("openai/gpt-4o-mini"))`` is used wherever an LM is (``Predict(lm=...)``,
    ``asynclm.configure(lm=...)``, ``asynclm.context(lm=...)``, ``await blm(...)``,
    ``blm.sync(...)``)::

        blm = asynclm.BatchLM(asynclm.LM("openai/gpt-4o-mini"), window=5.0)
        with asynclm.context(lm=blm):
            preds = await program.batch(items, concurrency=None)

    A call builds the request as the wrapped LM would and checks the LM's cache; on a miss it
    parks until its provider batch has finished. A batch is submitted when no new request arrived
    for ``window`` seconds, or when ``max_requests`` are queued. Every item of a ``batch`` whose
    program reaches an LM call parks there, so one program step of all items is one provider
    batch (use ``concurrency=None`` so that all items run at once). See docs/batch.md.

    Each call gets its own ``LMResponse`` (usage as reported, cost with the batch discount,
    ``BATCH_DISCOUNT``) or its own typed error (a failed line's status gives the type, as for a
    normal call; an expired batch gives ``LMTimeoutError``). ``usage_limits`` reserve each
    request before it is submitted. Results go to the cache; batch ids go to the cache
    directory's journal as soon as they exist, so a rerun re-attaches instead of paying twice.
    Cancelling the waiting calls cancels the provider batches none of them still needs.

    Args:
        lm: the LM to batch for: ``openai/`` (OpenAI's ``/files`` + ``/batches``, JSONL files)
            or ``anthropic/`` (Anthropic's Message Batches, ``/messages/batches``).
        window: seconds without a new request before the queue is submitted.
        max_requests: the most requests in one provider batch (OpenAI's limit is 50 000).
        poll_interval: seconds between polls of a submitted batch (longer after errors, or as
            ``Retry-After`` says).
        progress: show a progress bar (tqdm, on stderr when it is a terminal) of the completed
            requests out of those submitted, with the queued and in-flight batch counts; the same
            counts are logged at INFO level on ``asynclm.lm.batch``.

    Attributes:
        lm: the wrapped LM. model, model_name, provider: the LM's.
        history: the last 100 provider batches (id, requests, status, seconds).
    """

    def __init__(
        self,
        lm: LM,
        window: float = 5.0,
        max_requests: int = 50_000,
        poll_interval: float = 30,
        progress: bool = False,
    ) -> None:
        if not isinstance(lm, LM) or type(lm).__name__ in ("LocalLM", "ScriptedLM"):
            raise TypeError(
                f"BatchLM(lm) takes an asynclm.LM('openai/<model>'), got {lm!r}; provider batches need "
                "a server with a Batch API"
            )
        if lm.provider not in ("openai", "anthropic"):
            raise ValueError(f"BatchLM({lm.model!r}): provider batches exist for 'openai/' and 'anthropic/' LMs only")
        if not (isinstance(window, (int, float)) and window >= 0):
            raise ValueError(f"BatchLM(window={window!r}): use a number of seconds >= 0")
        if not isinstance(max_requests, int) or isinstance(max_requests, bool) or not (
            1 <= max_requests <= OPENAI_MAX_REQUESTS
        ):
            raise ValueError(f"BatchLM(max_requests={max_requests!r}): use an int from 1 to {OPENAI_MAX_REQUESTS}")
        if not (isinstance(poll_interval, (int, float)) and poll_interval > 0):
            raise ValueError(f"BatchLM(poll_interval={poll_interval!r}): use a number of seconds > 0")
        from importlib.util import find_spec

        if find_spec("filelock") is None:  # here, not when a created batch must reach the journal
            raise ImportError("BatchLM's journal of submitted batches needs filelock: pip install 'asynclm[batch]'")
        self.lm = lm
        self.window = float(window)
        self.max_requests = max_requests
        self.poll_interval = float(poll_interval)
        self.progress = progress
        self.model = lm.model
        self.model_name = lm.model_name
        self.provider = lm.provider
        self._anthropic = lm.provider == "anthropic"
        self._batches_path = "/messages/batches" if self._anthropic else "/batches"
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
        self._loop_lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._calls = 0  # calls in progress, all on the loop of self._token (under _loop_lock)
        self._token: Any = None
        # ordered: the driver's successor is the oldest waiting request, found without a scan
        self._reqs: OrderedDict[str, _Req] = OrderedDict()
        self._heir: _Req | None = None  # woken to drive next
        self._pending: dict[str, _Req] = {}
        self._batches: dict[str, _Batch] = {}
        self._journals: dict[str | None, Journal] = {}
        self._lookups: dict[DiskCache, _Lookup] = {}
        self._last_enqueue = 0.0
        self._first_queued = 0.0  # wall clock, for the history's phases
        self._arriving = 0
        self._driving = False
        self._kick = anyio.Event()
        # once the provider has refused a batch because its queue was full: one batch in flight
        # at a time, of at most _cap requests, none before _not_before; _refused counts the
        # refusals since a batch of ours last ended, the first of them at _refused_since
        self._one_at_a_time = False
        self._cap = OPENAI_MAX_REQUESTS
        self._not_before = 0.0
        self._refused = 0
        self._refused_since = 0.0
        self.submitted = 0
        self.completed = 0
        self._bar: Any = None

    def __repr__(self) -> str:
        return (
            f"BatchLM({self.lm!r}, window={self.window}, max_requests={self.max_requests}, "
            f"poll_interval={self.poll_interval})"
        )

    def __deepcopy__(self, memo: Any) -> BatchLM:
        return self  # shared, like an LM

    @property
    def preferred_adapter(self) -> Any:
        return getattr(self.lm, "preferred_adapter", None)

    @property
    def stream(self) -> _NoStream:
        """Streaming is refused (``TypeError``): a provider batch answers all at once, later."""
        return _NoStream(self.model)

    # -- a call -----------------------------------------------------------------------------------

    async def __call__(self, prompt: str | None = None, /, *, messages: Any = None, **params: Any) -> LMResponse:
        """Park this call until its provider batch has answered; return its ``LMResponse``.

        Takes the same arguments as ``LM.__call__`` (``timeout`` is ignored: a batch takes as
        long as the provider takes; bound the wait with ``anyio.fail_after`` or ``Parallel``'s
        ``timeout``, which cancels the provider batch if no other call needs it).

        Raises:
            LMError: this request's own error (a failed line, an expired or failed batch).
            TypeError: ``stream=...`` was passed (streaming is refused).
        """
        lm = self.lm
        use_cache = params.pop("cache", lm.cache)
        params.pop("timeout", None)
        rollout_id = params.pop("rollout_id", None)
        if use_cache is not True:
            check_cache_mode(use_cache, "call")
        if "stream" in params:
            raise self.stream._refuse()
        body = lm._body(prompt, messages, params)
        data = lm._encode(body, canonical=True)  # the wire body, encoded once: key, batch line, budget
        key = cache_key(lm._cache_endpoint, data, rollout_id)
        started = time.time()
        t0 = time.perf_counter()
        settings = current_settings()
        store = memory_store if use_cache == "memory" else store_for(settings)
        token = anyio.lowlevel.current_token()
        # Checked and claimed under a lock, and counted until the call returns: calls from two
        # loops that checked at once (or one that checked while another loop's call had not yet
        # queued its request) both went on, sharing this loop-bound state: hangs.
        with self._loop_lock:
            if self._calls and self._token != token:
                raise RuntimeError(
                    "BatchLM: one BatchLM serves one event loop at a time; make one BatchLM per thread/loop"
                )
            self._token = token
            self._calls += 1
        try:
            if use_cache and use_cache != "refresh":
                hit = store.memory.get(key)
                if hit is None and store.persistent is not None:
                    self._arriving += 1  # the driver holds the window open while calls are on their way
                    try:
                        hit = await self._lookup(store, key)
                    finally:
                        self._arriving -= 1
                if hit is not None:
                    response = lm._from_cache(hit)
                    record_usage(lm.model_name, response.usage, True)
                    lm._record(body, response.texts, response.usage, True, started, t0)
                    return response
            journal = self._journal(settings.cache_dir)
            ticket = admit(lm, data, body, True)  # usage_limits: reserve before submission
            if ticket is not None and not ticket.admitted:
                await ticket.wait()
            usage: Usage | None = None
            try:
                req = self._reqs.get(key)
                if req is None:
                    req = self._reqs[key] = _Req(key, data, store if use_cache else None)
                    found = journal.lookup(key, refresh=False)  # the journal in memory: no file access per call
                    if found is not None:  # submitted before (this process or an earlier one): re-attach
                        self._attach(req, *found, journal)
                    else:
                        if not self._pending:
                            self._kick.set()
                            self._first_queued = time.time()
                        self._pending[key] = req
                        self._last_enqueue = anyio.current_time()
                        if len(self._pending) >= self.max_requests:
                            self._kick.set()
                payload = await self._wait(req, journal)
                # Decoded here, as the call wakes, not when the batch's output was read: the driver
                # keeps only bytes, so thousands of decoded answers never sit in the heap at once
                # (they made the cyclic GC walk it again: 0.7 s of a 10 000-line round's parse).
                response = lm._wire.response(_loads(payload), lm.model_name, False)
                usage = response.usage
                cost = lm._pricer.cost(usage)
                usage.cost = None if cost is None else cost * BATCH_DISCOUNT
            except LMError as exc:
                lm._record_error(body, exc, started, t0)
                raise
            finally:
                if ticket is not None:
                    settle(ticket, usage)
            record_usage(lm.model_name, usage, False)
            lm._record(body, response.texts, usage, False, started, t0)
            return response
        finally:
            with self._loop_lock:
                self._calls -= 1

    def _journal(self, directory: str | None) -> Journal:
        journal = self._journals.get(directory)
        if journal is None:
            journal = journal_for(directory if directory is not None else default_cache_dir())
            if directory is None or os.path.isabs(directory):  # a relative one follows the working directory
                self._journals[directory] = journal
        return journal

    def _attach(self, req: _Req, batch_id: str, entry: dict[str, Any], journal: Journal) -> None:
        """Wait for ``req`` in the provider batch ``batch_id`` (submitted earlier, found in the journal)."""
        batch = self._batches.get(batch_id)
        if batch is None:
            batch = self._batches[batch_id] = _Batch(batch_id, list(entry.get("keys", ())), journal,
                                                     anyio.current_time(), req.store)  # fmt: skip
            logger.info("re-attaching to provider batch %s (%d requests)", batch_id, len(batch.keys))
            self._kick.set()
        req.batch = batch_id
        batch.live += 1

    async def _lookup(self, store: Any, key: str) -> bytes | None:
        """The persistent cache's answer for ``key``. For the SQLite file, the calls that arrive
        together share one worker-thread hop (a hop per call was a tenth of a parked call's CPU)."""
        persistent = store.persistent
        if not isinstance(persistent, DiskCache):
            hit: bytes | None = await persistent.aget(key)
        elif persistent.surely_absent(key) or not persistent.readable:
            return None
        else:
            lookup = self._lookups.get(persistent)
            if lookup is None:  # the first: let the calls started with it join, then one hop for all
                lookup = self._lookups[persistent] = _Lookup()
                lookup.keys.append(key)
                try:
                    await anyio.lowlevel.checkpoint()
                    del self._lookups[persistent]
                    lookup.found = await anyio.to_thread.run_sync(_get_many, persistent, lookup.keys)
                finally:
                    if self._lookups.get(persistent) is lookup:
                        del self._lookups[persistent]
                    lookup.event.set()
            else:
                lookup.keys.append(key)
                await lookup.event.wait()
            if lookup.found is None:  # the first call was cancelled before its hop: look up alone
                hit = await persistent.aget(key)
            else:
                hit = lookup.found.get(key)
        if hit is not None:
            store.memory.put(key, hit)
        return hit

    async def _wait(self, req: _Req, journal: Journal) -> bytes:
        req.waiters += 1
        try:
            while not req.resolved:
                if not self._driving:
                    self._driving = True
                    self._heir = None
                    try:
                        await self._drive(req, journal)
                    finally:
                        self._driving = False
                        self._hand_over()
                else:
                    await req.event.wait()
        finally:
            req.waiters -= 1
            if req.waiters == 0 and not req.resolved:
                with anyio.CancelScope(shield=True):
                    await self._abandon(req)
            if self._heir is req and not self._driving:  # woken to drive, but leaving (cancelled)
                self._hand_over()
        if req.error is not None:
            raise _clone(req.error)
        assert req.payload is not None
        return req.payload

    def _hand_over(self) -> None:
        """The driver leaves: wake one unresolved request's waiters, one of which drives next.

        (Requests leave ``_reqs`` when resolved or abandoned, so the first one waits.)"""
        self._heir = None
        for req in self._reqs.values():
            if not req.resolved and req.waiters > 0:
                self._heir = req
                old, req.event = req.event, anyio.Event()
                old.set()
                return

    async def _abandon(self, req: _Req) -> None:
        """No call waits for ``req`` any more (cancelled): unqueue it, or cancel its provider
        batch if no other waiting call needs that batch."""
        self._reqs.pop(req.key, None)
        self._pending.pop(req.key, None)
        batch_id = req.batch
        if batch_id is None:
            return
        batch = self._batches.get(batch_id)
        if batch is None:
            return
        batch.live -= 1
        if batch.live > 0:
            return
        self._batches.pop(batch_id, None)
        with anyio.move_on_after(30):
            try:
                async with self._http() as http:
                    await self._call(http, "POST", f"{self._batches_path}/{batch_id}/cancel", json_body={})
                logger.info("cancelled provider batch %s (no waiting call needs it)", batch_id)
            except LMError as exc:
                logger.warning("could not cancel provider batch %s: %s", batch_id, exc)
        await anyio.to_thread.run_sync(batch.journal.remove, batch_id)

    # -- the driver -------------------------------------------------------------------------------

    async def _drive(self, me: _Req, journal: Journal) -> None:
        async with self._http() as http:
            while not me.resolved:
                self._kick = anyio.Event()
                now = anyio.current_time()
                quiet = now - self._last_enqueue
                room = now >= self._not_before and not (self._one_at_a_time and self._batches)
                if self._pending and room and (
                    len(self._pending) >= min(self.max_requests, self._cap)
                    or (quiet >= self.window and (not self._arriving or quiet >= 10 * self.window))
                ):
                    await self._submit(http, journal)
                    continue
                for batch in list(self._batches.values()):
                    if batch.next_poll <= now and batch.id in self._batches:
                        await self._poll(http, batch)
                if me.resolved:
                    break
                wake = [b.next_poll for b in self._batches.values()]
                if self._pending and not (self._one_at_a_time and self._batches):  # (else a poll wakes us)
                    at = self._last_enqueue + self.window
                    if at <= now and self._arriving:  # calls still on their way: look again soon
                        at = now + max(0.005, min(self.window, 0.05))
                    wake.append(max(at, self._not_before))
                delay = (min(wake) - anyio.current_time()) if wake else self.poll_interval
                with anyio.move_on_after(max(0.0, delay)):
                    await self._kick.wait()

    @asynccontextmanager
    async def _http(self) -> AsyncIterator[Any]:
        lm = self.lm
        if lm.http_client_factory is not None:
            client = lm.http_client_factory()
        else:
            try:
                import httpx
            except ImportError:
                raise ImportError(
                    "BatchLM talks to the provider's Batch API through httpx: pip install 'asynclm[batch]' "
                    "(or pass LM(http_client_factory=...))"
                ) from None

            # the trust store of every other request (the system's, via truststore), made once per
            # process: httpx's own default (certifi) would refuse a corporate CA the LM's calls accept,
            # and loading it cost ~50 ms per driving session
            from ._transports._ssl import load_default_ssl_context

            verify = lm.ssl_context if lm.ssl_context is not None else await load_default_ssl_context()
            client = httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(120.0, connect=30.0))
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    async def _call(
        self,
        http: Any,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        files: Any = None,
        data: Any = None,
        raw: bool = False,
    ) -> Any:
        """One control-plane request, with the LM's retries; the decoded JSON (or bytes)."""
        lm = self.lm
        lm._check_key()
        url = lm.base_url + path
        headers = {k: v for k, v in lm._headers.items() if k != "content-type"}
        attempt = 0
        while True:
            error: LMError
            try:
                if files is not None:
                    response = await http.request(method, url, headers=headers, files=files, data=data)
                elif json_body is not None:
                    response = await http.request(method, url, headers=headers, json=json_body)
                elif content is not None:  # JSON already encoded
                    response = await http.request(
                        method, url, headers={**headers, "content-type": "application/json"}, content=content
                    )
                else:
                    response = await http.request(method, url, headers=headers)
            except Exception as exc:  # httpx's transport errors
                from ._errors import LMConnectionError
                from ._transports._httpx import describe_httpx_error

                why = lm._describe_exc(describe_httpx_error(exc))  # (the key masked)
                error = LMConnectionError(f"{method} {url} failed: {why}", model=lm.model_name)
                retry_after = None
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return response.content if raw else response.json()
                retry_after = parse_retry_after(response.headers)
                error = lm._wire.error(
                    status,
                    response.content,
                    url=url,
                    model=lm.model_name,
                    request_id=response.headers.get(lm._wire.request_id_header),
                    retry_after=retry_after,
                    secret=lm._key.value,
                )
                if not lm._wire.retryable(status, response.content):
                    raise error
            if attempt >= lm.max_retries:
                raise error
            from ._retry import backoff_delay

            await anyio.sleep(backoff_delay(attempt, lm.backoff_base, lm.backoff_max, retry_after))
            attempt += 1

    def _endpoint(self) -> str:
        # OpenAI's batch lines name the endpoint with its /v1 prefix
        path = urlsplit(self.lm.base_url).path.rstrip("/")
        version = path.rsplit("/", 1)[-1] if path else ""
        prefix = f"/{version}" if version.startswith("v") and version[1:].isdigit() else "/v1"
        return prefix + self.lm._wire.path

    async def _submit(self, http: Any, journal: Journal) -> None:
        submitting = time.time()
        last_queued = submitting - (anyio.current_time() - self._last_enqueue)
        # requests that another process (or a run before a crash) submitted since this one queued
        # them: re-attach. One stat of the journal per submission, not one per call.
        if journal.refresh():
            for key in [k for k in self._pending if journal.lookup(k, refresh=False) is not None]:
                found = journal.lookup(key, refresh=False)
                assert found is not None
                self._attach(self._pending.pop(key), *found, journal)
            if not self._pending:
                return
        take: list[_Req] = []
        size = 0
        most = min(self.max_requests, self._cap)
        for r in self._pending.values():  # split by the provider's size limits
            if len(take) >= most:
                break
            line = len(r.data) + 200
            if take and size + line > MAX_BATCH_BYTES:
                break
            take.append(r)
            size += line
        keys = [r.key for r in take]
        try:
            # The lines are put together from each request's encoded body (keys are hex digests,
            # nothing to escape): no request is encoded twice.
            if self._anthropic:
                content = b'{"requests":[' + b",".join(
                    [b'{"custom_id":"%s","params":%s}' % (r.key.encode(), r.data) for r in take]
                ) + b"]}"
                upload = None
            else:
                endpoint = self._endpoint()
                head = b'","method":"POST","url":' + _dumps(endpoint).encode() + b',"body":'
                content = b"".join([b'{"custom_id":"' + r.key.encode() + head + r.data + b"}\n" for r in take])
                upload = await self._call(
                    http, "POST", "/files", files={"file": ("asynclm-batch.jsonl", content, "application/jsonl")},
                    data={"purpose": "batch"},
                )
            # shielded: a batch the provider created must reach the journal, or a rerun pays twice
            with anyio.CancelScope(shield=True):
                if upload is None:
                    created = await self._call(http, "POST", "/messages/batches", content=content)
                else:
                    created = await self._call(
                        http,
                        "POST",
                        "/batches",
                        json_body={"input_file_id": upload["id"], "endpoint": endpoint, "completion_window": "24h"},
                    )
                batch_id = created["id"]
                entry = {
                    "provider": self.lm.provider,
                    "endpoint": self.lm._cache_endpoint,
                    "model": self.lm.model_name,
                    "created": time.time(),
                    "keys": keys,
                }
                await anyio.to_thread.run_sync(journal.add, batch_id, entry)
        except LMError as exc:
            for r in take:
                self._pending.pop(r.key, None)
                self._resolve(r, error=exc)
            return
        live = 0
        for r in take:
            self._pending.pop(r.key, None)
            r.batch = batch_id
            live += self._reqs.get(r.key) is r  # (a call abandoned during the upload no longer waits)
        batch = self._batches[batch_id] = _Batch(
            batch_id, keys, journal, anyio.current_time() + self.poll_interval,
            next((r.store for r in take if r.store is not None), None),
        )
        batch.live = live
        self.submitted += len(take)
        self.history.append({
            "batch": batch_id, "requests": len(take), "status": "submitted", "time": time.time(),
            # wall-clock phases (bench/bench_batch.py explains a round with them)
            "first_queued": self._first_queued, "last_queued": last_queued, "submitting": submitting,
        })  # fmt: skip
        if self._pending:
            self._first_queued = time.time()
        if self.progress:
            self._report(f"submitted batch {batch_id} ({len(take)} requests)")

    def _report(self, what: str) -> None:
        logger.info(
            "%s: queued %d, submitted %d, completed %d", what, len(self._pending), self.submitted, self.completed
        )
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.submitted, initial=self.completed, desc="provider batches", file=sys.stderr,
                             disable=None, dynamic_ncols=True)  # fmt: skip
        bar = self._bar
        bar.total = self.submitted
        bar.n = self.completed
        bar.set_postfix(queued=len(self._pending), batches=len(self._batches), refresh=False)
        bar.refresh()
        if self.completed >= self.submitted and not self._pending and not self._batches:
            bar.close()
            self._bar = None

    async def _poll(self, http: Any, batch: _Batch) -> None:
        try:
            info = await self._call(http, "GET", f"{self._batches_path}/{batch.id}")
        except LMError as exc:
            batch.failures += 1
            if exc.status == 404:  # the provider does not know it (deleted, another account): ask again
                logger.warning("provider batch %s is unknown to %s: submitting its requests again",
                               batch.id, self.lm.base_url)  # fmt: skip
                await self._requeue(batch)
                return
            if batch.failures > 20 or (exc.status is not None and exc.status in (401, 403)):
                self._batches.pop(batch.id, None)
                for key in batch.keys:
                    req = self._reqs.get(key)
                    if req is not None:
                        self._resolve(req, error=exc)
                return
            wait = min(self.poll_interval * 2**batch.failures, 600.0)
            if exc.retry_after:
                wait = max(wait, exc.retry_after)
            batch.next_poll = anyio.current_time() + wait
            return
        batch.failures = 0
        if self._anthropic:
            status = "ended" if info.get("processing_status") == "ended" else None
        else:
            status = info.get("status")
        if status not in _TERMINAL:
            batch.next_poll = anyio.current_time() + self.poll_interval
            return
        if status == "failed" and _queue_full(info):
            await self._refused_for_room(batch, info)
            return
        # a batch of ours ended: the provider's queue has room again
        self._refused, self._not_before = 0, 0.0
        seen = time.time()
        if self._anthropic:
            results = await self._anthropic_results(http, batch.id, info)
        else:
            results = await self._openai_results(http, info)
        lm = self.lm
        url = f"{lm.base_url}{self._batches_path}/{batch.id}"
        outcomes: list[tuple[_Req | None, bytes | None, LMError | None]] = []
        stores = set()
        disk_puts: list[tuple[DiskCache, str, bytes]] = []
        reqs = self._reqs
        for key in batch.keys:
            found = results.get(key)
            error: LMError | None = None
            payload: bytes | None = None
            line_status = status
            if found is not None and found[0] in (_EXPIRED, _CANCELED):
                line_status = "expired" if found[0] == _EXPIRED else "cancelled"
                found = None
            if found is None:
                if line_status == "expired" or info.get("expired_at"):
                    error = LMTimeoutError(
                        f"provider batch {batch.id} expired (its 24 h window passed) before this request ran",
                        model=lm.model_name,
                    )
                elif line_status == "failed":
                    error = BadRequestError(f"provider batch {batch.id} failed: {_batch_errors(info)}",
                                            model=lm.model_name)
                elif line_status == "cancelled":
                    error = LMError(f"provider batch {batch.id} was cancelled before this request ran",
                                    model=lm.model_name)
                else:
                    error = ServerError(f"provider batch {batch.id} completed without a result for this request",
                                        model=lm.model_name)
            else:
                code, answer, request_id, checked = found
                if isinstance(answer, bytes):
                    encoded = answer
                else:
                    encoded = _dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()
                if checked:
                    payload = encoded  # checked while the file was read
                elif 200 <= code < 300:
                    try:
                        lm._wire.check(encoded)
                    except ValueError as exc:
                        error = ServerError(f"{url}: an invalid completion in the batch output ({exc})",
                                            model=lm.model_name)
                    else:
                        payload = encoded
                else:
                    error = lm._wire.error(code, encoded, url=url, model=lm.model_name, request_id=request_id,
                                           retry_after=None, secret=lm._key.value)
            req = reqs.get(key)
            if req is not None and req.batch != batch.id:
                req = None
            # answers nobody here waits for (a rerun of part of a crashed run's requests) are kept too
            store = req.store if req is not None else batch.store
            if payload is not None and store is not None:
                store.memory.put(key, payload)
                persistent = store.persistent
                if isinstance(persistent, DiskCache):
                    disk_puts.append((persistent, key, payload))
                elif persistent is not None:
                    await persistent.aput(key, payload)
                stores.add(store)
            outcomes.append((req, payload, error))
        # queued together, after the parsing: the disk cache's writer thread wakes once and
        # commits them in one transaction instead of contending for the GIL line by line
        for disk, key, payload in disk_puts:
            disk.put(key, payload)
        for store in stores:
            flush = getattr(store.persistent, "flush", None)
            if flush is not None:
                await anyio.to_thread.run_sync(flush)  # the answers are on disk before the journal forgets
        await anyio.to_thread.run_sync(batch.journal.remove, batch.id)
        self._batches.pop(batch.id, None)
        parsed = time.time()
        # every waiting call resumes at once (so that their next calls make one batch again)
        for req, payload, error in outcomes:
            if req is not None and req.batch == batch.id:
                self._resolve(req, payload=payload, error=error)
        self.completed += len(batch.keys)
        self.history.append({
            "batch": batch.id, "requests": len(batch.keys), "status": status, "time": time.time(),
            "seen": seen, "parsed": parsed,  # wall-clock phases (see bench/bench_batch.py)
        })  # fmt: skip
        if self.progress:
            self._report(f"batch {batch.id} {status}")

    async def _requeue(self, batch: _Batch) -> None:
        """Forget the provider batch ``batch``; its requests still awaited go back to the queue."""
        self._batches.pop(batch.id, None)
        await anyio.to_thread.run_sync(batch.journal.remove, batch.id)
        for key in batch.keys:
            req = self._reqs.get(key)
            if req is not None and req.batch == batch.id:
                req.batch = None
                if not self._pending:
                    self._first_queued = time.time()
                self._pending[key] = req
                self._last_enqueue = anyio.current_time()

    def _backoff(self) -> float:
        return min(self.poll_interval * 2.0 ** (self._refused - 1), 600.0)

    async def _refused_for_room(self, batch: _Batch, info: dict[str, Any]) -> None:
        """The provider failed ``batch`` because its queue was full (OpenAI's enqueued-token limit:
        this BatchLM's batches in flight, or other jobs of the organisation). Nothing was run or
        paid: the requests go back to the queue. From then on this BatchLM keeps one batch in
        flight at a time; a batch refused while it was the only one makes later batches at most
        half its size; the next is submitted after a back-off (doubling from ``poll_interval`` to
        10 minutes, reset when a batch of ours ends). After ``QUEUE_FULL_GIVE_UP`` seconds of
        refusals with no batch of ours ending, this batch's calls and those queued get a
        ``RateLimitError``."""
        now = anyio.current_time()
        if not self._refused:
            self._refused_since = now
        self._refused += 1
        self.submitted -= len(batch.keys)  # (for the progress bar: they are queued again)
        detail = _batch_errors(info)
        self.history.append({"batch": batch.id, "requests": len(batch.keys), "status": "failed",
                             "time": time.time(), "requeued": True})  # fmt: skip
        if now - self._refused_since >= QUEUE_FULL_GIVE_UP:
            self._batches.pop(batch.id, None)
            await anyio.to_thread.run_sync(batch.journal.remove, batch.id)
            error = RateLimitError(
                f"provider batch {batch.id} failed: {detail} (the provider's queue has had no room for "
                f"{now - self._refused_since:.0f} s; submit fewer requests at once, or retry later)",
                model=self.lm.model_name,
            )
            for key in batch.keys:
                req = self._reqs.get(key)
                if req is not None and req.batch == batch.id:
                    self._resolve(req, error=error)
            for req in list(self._pending.values()):  # queued again earlier, for the same room
                self._resolve(req, error=error)
            self._pending.clear()
            self._refused, self._not_before = 0, 0.0  # calls made from now on start afresh
            return
        others = any(b is not batch for b in self._batches.values())
        if not others:  # too big for the room there is (ours in flight would explain it otherwise)
            self._cap = max(1, min(self._cap, len(batch.keys)) // 2)
        self._one_at_a_time = True
        self._not_before = now + self._backoff()
        logger.warning(
            "provider batch %s failed: %s; its %d requests go back to the queue: one batch at a time of at most "
            "%d, the next in %.3g s at the earliest", batch.id, detail, len(batch.keys), self._cap,
            self._not_before - now,
        )
        await self._requeue(batch)

    async def _openai_results(self, http: Any, info: dict[str, Any]) -> _Results:
        """The lines of a finished OpenAI batch's output and error files, by custom_id."""
        results: _Results = {}
        for field in ("output_file_id", "error_file_id"):
            file_id = info.get(field)
            if not file_id:
                continue
            content = await self._call(http, "GET", f"/files/{file_id}/content", raw=True)
            check = self.lm._wire.check
            for line in content.splitlines():
                fast = _answered_line(line, check)
                if fast is not None:
                    results[fast[0]] = fast[1]
                    continue
                if not line.strip():
                    continue
                try:
                    record = _loads(line)
                except ValueError:
                    continue
                custom_id = record.get("custom_id")
                response = record.get("response") or {}
                if response:
                    results[custom_id] = (
                        int(response.get("status_code") or 500), response.get("body"), response.get("request_id"),
                        False,
                    )
                else:
                    err = record.get("error") or {}
                    if isinstance(err, dict) and err.get("code") == "batch_expired":
                        results[custom_id] = (_EXPIRED, None, None, False)
                    else:
                        results[custom_id] = (500, {"error": err}, None, False)
        return results

    async def _anthropic_results(self, http: Any, batch_id: str, info: dict[str, Any]) -> _Results:
        """The results of an ended Anthropic Message Batch, by custom_id."""
        from ._wire._anthropic import ERROR_STATUS

        results: _Results = {}
        content = await self._call(http, "GET", f"/messages/batches/{batch_id}/results", raw=True)
        check = self.lm._wire.check
        for line in content.splitlines():
            fast = _succeeded_line(line, check)
            if fast is not None:
                results[fast[0]] = fast[1]
                continue
            if not line.strip():
                continue
            try:
                record = _loads(line)
            except ValueError:
                continue
            custom_id = record.get("custom_id")
            result = record.get("result") or {}
            kind = result.get("type")
            if kind == "succeeded":
                results[custom_id] = (200, result.get("message"), None, False)
            elif kind == "errored":
                body = result.get("error") or {}
                inner = body.get("error") if isinstance(body, dict) else None
                error_type = inner.get("type") if isinstance(inner, dict) else None
                status = ERROR_STATUS.get(error_type, 500) if isinstance(error_type, str) else 500
                results[custom_id] = (
                    status, body, body.get("request_id") if isinstance(body, dict) else None, False
                )
            elif kind == "expired":
                results[custom_id] = (_EXPIRED, None, None, False)
            elif kind == "canceled":
                results[custom_id] = (_CANCELED, None, None, False)
        return results

    def _resolve(self, req: _Req, payload: bytes | None = None, error: BaseException | None = None) -> None:
        req.payload = payload
        req.error = error if payload is None else None
        if req.payload is None and req.error is None:
            req.error = ServerError("no result", model=self.lm.model_name)
        self._reqs.pop(req.key, None)
        req.event.set()
