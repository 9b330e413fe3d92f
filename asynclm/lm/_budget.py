"""``usage_limits()``: hard budgets of requests, tokens and USD over everything run inside a block.

Like ``track_usage``, the block lives in a ``contextvars.ContextVar``: child tasks, ``Parallel``
items, ``asyncify`` threads and ``.sync()`` portal calls run in a copy of the caller's context that
holds the same block, so every request made anywhere under it is checked against it. Blocks nest:
a request counts in, and must fit, every enclosing block.

The LM client calls two functions around each HTTP attempt:

* ``admit`` before it is sent. In every enclosing block, for each limit set, the request must fit:
  ``used + reserved + estimate <= limit`` (``reserved``: the estimates of the block's requests in
  flight). If it does, its estimate joins ``reserved`` and it is sent. If it would fit once the
  requests in flight end (``used + estimate <= limit``), it waits for them (within the call's
  deadline) and checks again. Otherwise it raises ``UsageLimitExceeded`` and the block refuses
  every later request (sticky). Streams in flight are not waited for (the caller may be the
  one consuming them): a request that fits only once they end is refused.
* ``settle`` when it is over: the estimate leaves ``reserved``; the reported usage and cost (none
  for a failed attempt) join ``used``.

The bound this gives (asserted by tests/test_lm_budgets.py): after the last request a block
admitted, ``used + reserved <= limit``; from then on only requests already in flight finish, each
moving its estimate to its actual usage. So a block's final ``used`` is at most
``limit + sum(actual - estimate)`` over the requests in flight when it admitted its last one
(at most ``peak_in_flight`` of them), and never more than the limit when no estimate is below the
actual usage. And it is used: without streams, a request is refused only when
``used + estimate > limit``.

All state is under one lock (the calls run on many threads' event loops at once), never held
across an ``await``; a waiting request is woken on its own loop (``runtime.CrossLoopEvent``).

Blocks whose figures live in another process (``asynclm.ray``: a driver's blocks, seen from a
worker) appear in the chain as a block with ``remote`` set (an object with ``needs_cost``, an
async ``reserve(ticket)`` that returns a claim or raises ``UsageLimitExceeded``, and
``settle(claim, usage, cost)``): a ticket is checked against the local blocks first, then
reserved remotely in ``Ticket.wait``; ``settle`` releases both. The same rules apply there
(the remote side runs ``Ticket.decide`` and ``release`` on its copies of the blocks), so the
bound above holds for all the processes' requests together.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from asynclm.runtime import CrossLoopEvent

from ._errors import LMError
from ._models import Usage

if TYPE_CHECKING:
    from ._client import LM

__all__ = [
    "Ticket",
    "UsageLimitExceeded",
    "UsageLimits",
    "admit",
    "merge",
    "release",
    "settle",
    "snapshot",
    "usage_limits",
]

_LOCK = threading.Lock()


class UsageLimitExceeded(LMError):
    """A request would cross a ``usage_limits`` block's limit (or one was reached earlier in it).

    Raised before the request is sent; never retried. From then on the block refuses every new
    request.

    Attributes:
        limit_name: which limit: ``"max_requests"``, ``"max_input_tokens"``, ``"max_output_tokens"``,
            ``"max_total_tokens"`` or ``"max_cost"``.
        limit: its value.
        used: the block's figure for it when the request was refused (requests, tokens or USD).
        reserved: the estimates of the block's requests in flight then.
        estimate: this request's own estimate (1 for ``max_requests``).
        in_flight: how many of the block's requests were in flight then.
    """

    def __init__(
        self,
        message: str,
        *,
        limit_name: str = "",
        limit: float = 0.0,
        used: float = 0.0,
        reserved: float = 0.0,
        estimate: float = 0.0,
        in_flight: int = 0,
        model: str | None = None,
    ) -> None:
        super().__init__(message, model=model)
        self.limit_name = limit_name
        self.limit = limit
        self.used = used
        self.reserved = reserved
        self.estimate = estimate
        self.in_flight = in_flight
        self.figures = ""


class UsageLimits:
    """A ``usage_limits`` block: its limits and running figures (read them any time, from any thread).

    Attributes:
        max_requests, max_input_tokens, max_output_tokens, max_total_tokens, max_cost: the limits
            (``None``: not limited).
        requests: requests started under the block (a call's retries are not new requests; cache
            hits are none).
        input_tokens, output_tokens, total_tokens: the usage the server reported for them.
        cost: their USD cost, or ``None`` if the price of any was unknown (``known_cost``: the
            sum over those with a known price).
        in_flight: requests of the block being sent now; ``peak_in_flight``: the most at once.
        reserved_input_tokens, reserved_output_tokens, reserved_total_tokens, reserved_cost: the
            estimates of the requests in flight.
        exceeded: the ``UsageLimitExceeded`` that closed the block, or ``None``.
    """

    __slots__ = (
        "_tokens",
        "_waiting",
        "exceeded",
        "in_flight",
        "input_tokens",
        "known_cost",
        "max_cost",
        "max_input_tokens",
        "max_output_tokens",
        "max_requests",
        "max_total_tokens",
        "output_tokens",
        "parent",
        "peak_in_flight",
        "remote",
        "requests",
        "reserved_cost",
        "reserved_input_tokens",
        "reserved_output_tokens",
        "reserved_total_tokens",
        "streams_in_flight",
        "total_tokens",
        "unknown_cost_requests",
    )

    def __init__(
        self,
        max_requests: int | None = None,
        max_input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        max_total_tokens: int | None = None,
        max_cost: float | None = None,
    ) -> None:
        for name, value in (
            ("max_requests", max_requests),
            ("max_input_tokens", max_input_tokens),
            ("max_output_tokens", max_output_tokens),
            ("max_total_tokens", max_total_tokens),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"usage_limits({name}={value!r}): use an int >= 0, or None for no limit")
        if max_cost is not None and (
            isinstance(max_cost, bool) or not isinstance(max_cost, (int, float)) or not max_cost >= 0
        ):
            raise ValueError(f"usage_limits(max_cost={max_cost!r}): use a number of USD >= 0, or None for no limit")
        self.max_requests = max_requests
        self.max_input_tokens = max_input_tokens
        self.max_output_tokens = max_output_tokens
        self.max_total_tokens = max_total_tokens
        self.max_cost = None if max_cost is None else float(max_cost)
        self.parent: UsageLimits | None = None
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.total_tokens = 0
        self.known_cost = 0.0
        self.unknown_cost_requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.streams_in_flight = 0
        self.reserved_input_tokens = 0.0
        self.reserved_output_tokens = 0.0
        self.reserved_total_tokens = 0.0
        self.reserved_cost = 0.0
        self.exceeded: UsageLimitExceeded | None = None
        self.remote: Any = None  # set on a stand-in for blocks whose figures live elsewhere (see above)
        self._tokens: list[Token[UsageLimits | None]] = []
        self._waiting: list[Ticket] = []  # admissions waiting for requests in flight to end

    @property
    def cost(self) -> float | None:
        """The USD cost of the block's requests, or ``None`` if any had an unknown price."""
        with _LOCK:
            return None if self.unknown_cost_requests else self.known_cost

    def limits(self) -> dict[str, float]:
        """The limits that are set, by name."""
        return {name: value for name, value in _limit_items(self) if value is not None}

    # -- the block ------------------------------------------------------------------------------

    def __enter__(self) -> UsageLimits:
        with _LOCK:
            if self._tokens:
                raise RuntimeError(
                    "this usage_limits block is already active: open one block per `with` (it may be re-entered "
                    "after it closes to go on spending the same budget)"
                )
            self.parent = _current.get()
            self._tokens.append(_current.set(self))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _current.reset(self._tokens.pop())

    async def __aenter__(self) -> UsageLimits:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v!r}" for k, v in self.limits().items())
        state = " exceeded" if self.exceeded is not None else ""
        return (
            f"<usage_limits({limits}){state}: requests={self.requests} input_tokens={self.input_tokens} "
            f"output_tokens={self.output_tokens} total_tokens={self.total_tokens} cost={self.cost!r} "
            f"in_flight={self.in_flight}>"
        )


def _limit_items(block: UsageLimits) -> tuple[tuple[str, Any], ...]:
    return (
        ("max_requests", block.max_requests),
        ("max_input_tokens", block.max_input_tokens),
        ("max_output_tokens", block.max_output_tokens),
        ("max_total_tokens", block.max_total_tokens),
        ("max_cost", block.max_cost),
    )


def usage_limits(
    max_requests: int | None = None,
    max_input_tokens: int | None = None,
    max_output_tokens: int | None = None,
    max_total_tokens: int | None = None,
    max_cost: float | None = None,
) -> UsageLimits:
    """Hard limits on the LM requests made inside the block, wherever they run.

    ``with asynclm.usage_limits(max_requests=200, max_total_tokens=100_000, max_cost=0.5) as limits:``
    (or ``async with``); any subset of the limits. Every request is checked before it is sent
    against the block's used figures plus the estimates of its requests in flight plus its own
    estimate (as ``tpm`` estimates: ``len(body) / 4`` input tokens, ``max_tokens`` (or 512) x ``n``
    output tokens). A request that fits only once requests in flight end waits for them; one
    that would cross even then raises ``UsageLimitExceeded`` and closes the block to new
    requests. Cache hits are free and never refused; a call's retries are not new requests
    (but each is checked). ``max_cost`` needs every LM called in the block to have a known price
    (see ``LM(price=...)``). Child tasks, ``Parallel``/batch items, ``asyncify`` threads and
    ``.sync()`` calls started inside count; blocks nest, each enforcing its own limits. See
    "Budgets" in docs/lm.md for the exact overshoot bound.
    """
    return UsageLimits(max_requests, max_input_tokens, max_output_tokens, max_total_tokens, max_cost)


_current: ContextVar[UsageLimits | None] = ContextVar("asynclm.usage_limits", default=None)


class Ticket:
    """One attempt's claim on the enclosing blocks: what it reserves, and whether it was admitted.

    ``admit`` returns it admitted, or pending when it fits only once requests in flight finish:
    then ``await ticket.wait()`` (it admits or raises). ``settle`` ends it.
    """

    __slots__ = (
        "admitted",
        "blocks",
        "claim",
        "cost",
        "event",
        "first",
        "held",
        "input",
        "lm",
        "output",
        "remote",
        "stream",
    )

    def __init__(
        self,
        lm: LM,
        blocks: tuple[UsageLimits, ...],
        inp: float,
        out: float,
        cost: float,
        first: bool,
        stream: bool = False,
    ) -> None:
        self.lm = lm
        self.blocks = blocks
        self.input = inp
        self.output = out
        self.cost = cost
        self.first = first
        self.stream = bool(stream)
        self.admitted = False  # reserved everywhere: the request may start
        self.held = False  # reserved in the local blocks
        self.event: CrossLoopEvent | None = None
        self.remote: Any = None  # the remote blocks' side (see the module's docstring), if any
        self.claim: Any = None  # what the remote side reserved for it

    def _try(self) -> None:
        """Admit, or register to wait (``self.event``), or raise. Call under ``_LOCK``."""
        wait_on = self.decide()
        if wait_on is not None:  # wait for one of them to end, then check again
            self.event = CrossLoopEvent()
            wait_on._waiting.append(self)

    def decide(self) -> UsageLimits | None:
        """Reserve in every block and return ``None``; or return the block whose requests in flight
        must end first; or raise. Call under ``_LOCK``."""
        for block in self.blocks:
            if block.exceeded is not None:
                raise _closed(block.exceeded, self.lm)
        wait_on: UsageLimits | None = None
        for block in self.blocks:
            failure, wait = _check(block, self)
            if failure is None:
                continue
            if wait:  # fits once requests in flight finish
                wait_on = wait_on or block
                continue
            error = block.exceeded = _error(block, *failure, self.lm)
            waiting, block._waiting = block._waiting, []
            for ticket in waiting:  # they fail now: the block is closed
                if ticket.event is not None:
                    ticket.event.set()
            raise error
        if wait_on is not None:
            return wait_on
        for block in self.blocks:
            block.requests += self.first
            block.in_flight += 1
            block.streams_in_flight += self.stream
            if block.in_flight > block.peak_in_flight:
                block.peak_in_flight = block.in_flight
            block.reserved_input_tokens += self.input
            block.reserved_output_tokens += self.output
            block.reserved_total_tokens += self.input + self.output
            block.reserved_cost += self.cost
        self.held = True
        self.admitted = self.remote is None
        return None

    async def wait(self) -> None:
        """Wait until admitted (or raise ``UsageLimitExceeded``)."""
        while not self.held:
            event = self.event
            assert event is not None
            try:
                await event.wait()
            finally:
                with _LOCK:
                    for block in self.blocks:
                        if self in block._waiting:
                            block._waiting.remove(self)
                    self.event = None
            with _LOCK:
                self._try()
        if not self.admitted:  # the remote blocks' turn
            try:
                self.claim = await self.remote.reserve(self)
            except BaseException:
                release(self, None, None, refused=True)
                raise
            self.admitted = True


def active() -> bool:
    """Whether the calling context is inside a ``usage_limits`` block."""
    return _current.get() is not None


def admit(lm: LM, data: bytes, body: Mapping[str, Any], first: bool) -> Ticket | None:
    """Check a request against every enclosing block and reserve its estimate there.

    ``first``: whether this is the call's first attempt (only that one counts as a request).
    Returns ``None`` outside any block, else a ``Ticket``: admitted, or (when it fits only once
    requests in flight finish) pending, to ``await ticket.wait()``. Raises ``UsageLimitExceeded``
    if a limit would be crossed, ``ValueError`` if a block has ``max_cost`` and the LM's price is
    unknown.
    """
    block = _current.get()
    if block is None:
        return None
    blocks: list[UsageLimits] = []
    needs_cost = False
    remote = None
    while block is not None:
        blocks.append(block)
        needs_cost = needs_cost or block.max_cost is not None
        if block.remote is not None:
            remote = block.remote
            needs_cost = needs_cost or remote.needs_cost
        block = block.parent
    inp = len(data) / 4.0
    out = max(0.0, lm._estimate_tokens(data, body) - inp)
    cost = 0.0
    pricer = lm._pricer
    if needs_cost:
        estimate = pricer.estimate(inp, out) if pricer.ready else None
        if estimate is None:
            raise ValueError(
                f"usage_limits(max_cost=...) needs the price of {lm.model!r} at {lm.base_url}, and it is unknown "
                f"({pricer.unknown_reason()}): pass LM(..., price={{'input': usd_per_1M, 'output': usd_per_1M}}) "
                "(or price='<genai-prices provider id>' for a gateway serving a known provider's models)"
            )
        cost = estimate
    ticket = Ticket(lm, tuple(blocks), inp, out, cost, first, bool(body.get("stream")))
    ticket.remote = remote
    with _LOCK:
        ticket._try()
    return ticket


_Failure = tuple[str, float, float, float, float]  # limit name, limit, used, reserved, estimate


def _check(block: UsageLimits, ticket: Ticket) -> tuple[_Failure | None, bool]:
    """(what the ticket does not fit in now, whether it would fit once the block's requests in
    flight end). Streams in flight do not count for the wait: the caller may be consuming one."""
    if ticket.first and block.max_requests is not None and block.requests + 1 > block.max_requests:
        return ("max_requests", block.max_requests, block.requests, 0, 1), False
    can_wait = block.in_flight > block.streams_in_flight
    first_wait: _Failure | None = None
    for name, used, reserved, estimate in (
        ("max_input_tokens", block.input_tokens, block.reserved_input_tokens, ticket.input),
        ("max_output_tokens", block.output_tokens, block.reserved_output_tokens, ticket.output),
        ("max_total_tokens", block.total_tokens, block.reserved_total_tokens, ticket.input + ticket.output),
        ("max_cost", block.known_cost, block.reserved_cost, ticket.cost),
    ):
        limit = getattr(block, name)
        if limit is None or used + reserved + estimate <= limit:
            continue
        failure = (name, limit, used, reserved, estimate)
        if not (can_wait and used + estimate <= limit):
            return failure, False  # would cross even with nothing in flight
        first_wait = first_wait or failure
    return first_wait, first_wait is not None


def _fmt(name: str, value: float) -> str:
    if name == "max_cost":
        return f"${value:.6g}"
    return f"{value:.0f}" if name != "max_requests" else str(int(value))


def _error(
    block: UsageLimits, name: str, limit: float, used: float, reserved: float, estimate: float, lm: LM
) -> UsageLimitExceeded:
    """The error for a refused request (built only when one is raised: messages cost)."""
    what = "requests" if name == "max_requests" else ("USD" if name == "max_cost" else name[4:].replace("_", " "))
    if name == "max_requests":
        figures = f"{int(used)} requests started ({block.in_flight} in flight) + this one > {int(limit)}"
    else:
        figures = (
            f"used {_fmt(name, used)} + reserved {_fmt(name, reserved)} by {block.in_flight} request(s) in flight "
            f"+ this request's estimate {_fmt(name, estimate)} > limit {_fmt(name, limit)} {what}"
        )
    error = UsageLimitExceeded(
        f"usage_limits({name}={limit!r}) would be crossed by a request to {lm.model!r}: {figures}. "
        "No new request starts in this block.",
        limit_name=name,
        limit=limit,
        used=used,
        reserved=reserved,
        estimate=estimate,
        in_flight=block.in_flight,
        model=lm.model_name,
    )
    error.figures = figures
    return error


def _closed(error: UsageLimitExceeded, lm: LM) -> UsageLimitExceeded:
    closed = UsageLimitExceeded(
        f"usage_limits({error.limit_name}={error.limit!r}) was reached earlier in this block ({error.figures}); "
        f"no new request starts in it (a request to {lm.model!r} refused)",
        limit_name=error.limit_name,
        limit=error.limit,
        used=error.used,
        reserved=error.reserved,
        estimate=error.estimate,
        in_flight=error.in_flight,
        model=lm.model_name,
    )
    closed.figures = error.figures
    return closed


def settle(ticket: Ticket, usage: Usage | None) -> None:
    """An attempt is over: free its reservation; add ``usage`` (``None``: it failed, or never started)."""
    if not ticket.held:  # cancelled or timed out while waiting: nothing was reserved
        return
    cost = None
    if usage is not None:
        cost = usage.cost if usage.cost is not None else ticket.lm._pricer.cost(usage)
    if ticket.claim is not None:
        claim, ticket.claim = ticket.claim, None
        ticket.remote.settle(claim, usage, cost)
    release(ticket, usage, cost)


def release(ticket: Ticket, usage: Usage | None, cost: float | None, refused: bool = False) -> None:
    """Free the local blocks' reservation of a held ticket; add ``usage`` and ``cost`` (USD, ``None``:
    unknown). ``refused``: the remote side refused it after all, so it was no request."""
    if not ticket.held:
        return
    ticket.held = ticket.admitted = False
    wake: list[CrossLoopEvent] = []
    with _LOCK:
        for block in ticket.blocks:
            if refused:
                block.requests -= ticket.first
            block.in_flight -= 1
            block.streams_in_flight -= ticket.stream
            block.reserved_input_tokens -= ticket.input
            block.reserved_output_tokens -= ticket.output
            block.reserved_total_tokens -= ticket.input + ticket.output
            block.reserved_cost -= ticket.cost
            if usage is not None:
                block.input_tokens += usage.prompt_tokens
                block.output_tokens += usage.completion_tokens
                block.total_tokens += usage.total_tokens
                if cost is None:
                    block.unknown_cost_requests += 1
                else:
                    block.known_cost += cost
            if block._waiting:
                # wake the waiters that fit now, or all of them when nothing of the block is in
                # flight any more (each then either starts or is refused)
                keep: list[Ticket] = []
                for waiter in block._waiting:
                    if block.in_flight == block.streams_in_flight or _check(block, waiter)[0] is None:
                        if waiter.event is not None:
                            wake.append(waiter.event)
                    else:
                        keep.append(waiter)
                block._waiting = keep
    for event in wake:
        event.set()


# what another process needs to hold a block's limits (asynclm.ray), and to report back
_FIGURES = ("requests", "input_tokens", "output_tokens", "total_tokens", "known_cost", "unknown_cost_requests")


def snapshot(block: UsageLimits) -> dict[str, Any]:
    """A block's limits and figures (requests in flight counted as used: they are not the other
    side's to settle), and the error that closed it."""
    with _LOCK:
        state: dict[str, Any] = {name: value for name, value in _limit_items(block)}
        state.update({name: getattr(block, name) for name in _FIGURES})
        state["input_tokens"] += block.reserved_input_tokens
        state["output_tokens"] += block.reserved_output_tokens
        state["total_tokens"] += block.reserved_total_tokens
        state["known_cost"] += block.reserved_cost
        state["exceeded"] = block.exceeded
        return state


def merge(block: UsageLimits, delta: Mapping[str, Any]) -> None:
    """Add what another process used under ``block`` (``_FIGURES`` deltas, ``peak_in_flight``,
    ``exceeded``) to its figures."""
    with _LOCK:
        for name in _FIGURES:
            setattr(block, name, getattr(block, name) + delta[name])
        block.peak_in_flight = max(block.peak_in_flight, delta["peak_in_flight"])
        if block.exceeded is None and delta["exceeded"] is not None:
            block.exceeded = delta["exceeded"]
