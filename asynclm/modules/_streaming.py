"""``streamify``: watch a program's output fields arrive, then get its ``Prediction``."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import anyio

from asynclm.runtime import iterate_sync

from ._stream_state import sink_var

__all__ = ["StreamChunk", "StreamingProgram", "streamify"]


@dataclasses.dataclass(frozen=True)
class StreamChunk:
    """New text of one output field, as the LM writes it.

    Attributes:
        predictor: the ``Predict`` writing it.
        field: the output field's name.
        text: the text added since the previous chunk of this field and predictor call.
        predictor_name: the predictor's path in the program (``"self"`` for a lone predictor).
    """

    predictor: Any
    field: str
    text: str
    predictor_name: str | None = None


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Sink:
    """Installed (as a context variable) for the program's task: its predictors stream into it."""

    def __init__(self, send: Any, names: dict[int, str]) -> None:
        self._send = send
        self._names = names

    async def stream(
        self,
        predictor: Any,
        lm: Any,
        adapter: Any,
        signature: Any,
        messages: list[dict[str, Any]],
        request: dict[str, Any],
    ) -> str:
        name = self._names.get(id(predictor))
        sent: dict[str, str] = {}
        parts: list[str] = []
        async with contextlib.aclosing(lm.stream(messages=messages, **request)) as deltas:
            async for delta in deltas:
                if not delta.text:
                    continue
                parts.append(delta.text)
                for field, text in adapter.stream_fields(signature, "".join(parts)):
                    before = sent.get(field, "")
                    if len(text) > len(before) and text.startswith(before):
                        sent[field] = text
                        await self._send.send(StreamChunk(predictor, field, text[len(before) :], name))
        return "".join(parts)


class StreamingProgram:
    """What ``streamify`` returns: call it like the program, iterate what it yields."""

    def __init__(self, program: Any, buffer: int) -> None:
        self.program = program
        self.buffer = buffer

    def __repr__(self) -> str:
        return f"streamify({self.program!r})"

    async def __call__(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        """Yield ``StreamChunk`` objects as output fields arrive, then the final prediction.

        The program runs in a child task. At most ``buffer`` chunks wait for the consumer; beyond
        that the program (and its HTTP stream) pauses. Closing the generator early (``break``
        inside ``async with contextlib.aclosing(...)``, or ``aclose()``) cancels the program and
        its in-flight requests. An exception of the program is raised here with its own type.
        """
        names = {id(p): name for name, p in _named_predictors(self.program)}
        send, receive = anyio.create_memory_object_stream[Any](self.buffer)

        async def run() -> None:
            async with send:
                token = sink_var.set(_Sink(send, names))
                try:
                    result = await self.program(*args, **kwargs)
                except Exception as exc:
                    await send.send(_Failure(exc))
                    return
                finally:
                    sink_var.reset(token)
                await send.send(result)

        failure: BaseException | None = None
        closed = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                async with receive:
                    async for item in receive:
                        if isinstance(item, _Failure):
                            failure = item.error
                            break
                        try:
                            yield item
                        except GeneratorExit:  # closed early: leave the task group cleanly first
                            closed = True
                            break
            finally:
                tg.cancel_scope.cancel()
        if closed:
            return
        if failure is not None:  # raised outside the task group: its own type, not an ExceptionGroup
            raise failure

    def sync(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Iterate the same items from synchronous code (through the thread's portal)."""
        return iterate_sync(lambda: self(*args, **kwargs), buffer=self.buffer)


def _named_predictors(program: Any) -> list[tuple[str, Any]]:
    named = getattr(program, "named_predictors", None)
    return list(named()) if callable(named) else []


def streamify(program: Any, *, buffer: int = 16) -> StreamingProgram:
    """Stream a program's output fields: ``async for item in streamify(prog)(**inputs)``.

    Yields ``StreamChunk`` (predictor, field, text) for each piece of each output field as
    the LM writes it (ChatAdapter and JSONAdapter), then the program's final ``Prediction``.
    ``streamify(prog).sync(**inputs)`` gives the same items to a plain ``for`` loop. Concurrent
    streams never mix: the sink lives in the program task's context.
    """
    if not isinstance(buffer, int) or buffer < 1 or not math.isfinite(buffer):
        raise ValueError(f"streamify(buffer={buffer!r}): use an int >= 1")
    return StreamingProgram(program, buffer)
