"""``ScriptedLM``: an in-process LM that answers with given output-field values.

For fast unit tests of modules: no server, no sockets. It is a real ``asynclm.LM`` whose
network step is replaced, so usage tracking, ``usage_limits``, history, callbacks, caching (off by
default) and ``.sync`` behave exactly as with a server.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio

from asynclm.lm import LM, Usage
from asynclm.lm._budget import admit, settle
from asynclm.lm._client import _wait_until

from ._render import input_fields, render_chat, render_json
from ._types import _text_messages

__all__ = ["ScriptedLM", "ScriptedRequest", "render_chat", "render_json"]

Answer = Mapping[str, Any] | str


class ScriptedRequest:
    """What a scripted answer function receives: the request as the LM would send it."""

    def __init__(self, body: Mapping[str, Any], index: int) -> None:
        self.body = body
        self.index = index  # 0-based, over all requests of this ScriptedLM
        self.messages: list[dict[str, Any]] = list(body.get("messages") or [])
        self.params = {k: v for k, v in body.items() if k not in ("messages", "model")}

    @property
    def wants_json(self) -> bool:
        return "response_format" in self.body

    @property
    def inputs(self) -> dict[str, str]:
        """The input fields as the adapter rendered them in the last user message (texts)."""
        return input_fields(_text_messages(self.messages))  # text parts of multi-part messages too

    @property
    def last_user_message(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else json.dumps(content)
        return ""

    def __repr__(self) -> str:
        return f"ScriptedRequest(index={self.index}, messages={len(self.messages)})"


class ScriptedLM(LM):
    """An LM that answers from a script instead of a server.

    Args:
        answers: what to answer, one of:
            * a dict of output-field values, used for every request;
            * a list of dicts (or raw strings), consumed in order, one per completion (``n=3``
              takes three); running out raises ``IndexError`` unless ``cycle=True``;
            * a function of ``ScriptedRequest`` returning a dict or a raw string.
            Dicts are rendered in the format the request asks for: JSON when it carries a
            ``response_format``, otherwise the ChatAdapter's ``[[ ## field ## ]]`` sections. A raw
            string is sent as is (to test parse failures).
        latency: seconds to wait before each answer (cancellable, like a real request).
        usage: ``(prompt_tokens, completion_tokens)`` reported per completion.
        cycle: restart the list when it runs out.
        model: the model name reported.
        **lm_kwargs: other ``asynclm.LM`` arguments (``cache`` defaults to ``False`` here).

    Attributes:
        requests: every request body received (JSON dicts), in order; thread-safe.
        supports_tools: ``False``: it answers text only, so ``ReAct`` and ``Predict`` with a
            ``ToolCalls`` output use the text protocol with it (native tool calling is tested
            with ``FakeOpenAIServer`` and ``Reply(tool_calls=[...])``).
    """

    supports_tools = False

    def __init__(
        self,
        answers: Answer | Sequence[Answer] | Callable[[ScriptedRequest], Answer],
        *,
        latency: float = 0.0,
        usage: tuple[int, int] = (10, 5),
        cycle: bool = False,
        model: str = "scripted",
        **lm_kwargs: Any,
    ) -> None:
        for limit in ("max_concurrency", "rpm", "tpm", "http_client_factory"):
            if lm_kwargs.get(limit) is not None:
                raise TypeError(f"ScriptedLM does not take {limit}=: use FakeOpenAIServer with asynclm.LM for that")
        lm_kwargs.setdefault("cache", False)
        lm_kwargs.setdefault("max_retries", 0)
        super().__init__(f"openai/{model}", base_url="http://scripted.invalid/v1", api_key="scripted", **lm_kwargs)
        if isinstance(answers, (str, Mapping)) or callable(answers):
            self._answers: Any = answers
        else:
            items = list(answers)
            self._answers = itertools.cycle(items) if cycle else iter(items)
        self.latency = latency
        self.usage = usage
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _next(self, request: ScriptedRequest) -> str:
        answers = self._answers
        if callable(answers) and not isinstance(answers, Mapping):
            answer = answers(request)
        elif isinstance(answers, (str, Mapping)):
            answer = answers
        else:
            with self._lock:
                try:
                    answer = next(answers)
                except StopIteration:
                    raise IndexError(
                        f"ScriptedLM ran out of answers at request {request.index + 1}; give more answers or cycle=True"
                    ) from None
        if isinstance(answer, str):
            return answer
        return render_json(answer) if request.wants_json else render_chat(answer)

    def _script(self, body: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
        with self._lock:
            index = len(self.requests)
            self.requests.append(json.loads(json.dumps(body, default=str)))
        request = ScriptedRequest(body, index)
        n = int(body.get("n") or 1)
        texts = [self._next(request) for _ in range(n)]
        prompt, completion = self.usage
        raw = {
            "id": f"scripted-{index}",
            "object": "chat.completion",
            "model": self.model_name,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion * n,
                "total_tokens": prompt + completion * n,
            },
        }
        return texts, raw

    async def _request(
        self, data: bytes, body: Mapping[str, Any], attempts: Any, stream: bool, deadline: float | None
    ) -> Any:
        # usage_limits hold as for a real LM: checked and reserved before, settled after
        ticket = admit(self, data, body, True)
        if ticket is not None and not ticket.admitted:
            await _wait_until(deadline, ticket.wait())
        try:
            # the call's deadline, honoured as the LM honours it around a transport
            await _wait_until(deadline, anyio.sleep(self.latency) if self.latency else anyio.lowlevel.checkpoint())
            texts, raw = self._script(body)
        except BaseException:
            if ticket is not None:
                settle(ticket, None)
            raise
        if stream:
            attempts.ticket = ticket  # settled when the stream ends
            return _ScriptedStream(texts[0], raw["usage"], self.model_name)
        if ticket is not None:
            settle(ticket, Usage.from_json(raw["usage"]))
        return json.dumps(raw).encode(), raw


class _ScriptedStream:
    """Server-sent events for one scripted answer, a few characters per chunk."""

    status = 200
    headers: Mapping[str, str] = {"content-type": "text/event-stream"}

    def __init__(self, text: str, usage: Mapping[str, Any], model: str, piece: int = 7) -> None:
        self._events: list[bytes] = []
        for start in range(0, len(text), piece):
            chunk = {"choices": [{"index": 0, "delta": {"content": text[start : start + piece]}}], "model": model}
            self._events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": dict(usage)}
        self._events.append(b"data: " + json.dumps(final).encode() + b"\n\n")
        self._events.append(b"data: [DONE]\n\n")
        self.closed = False

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for event in self._events:
            if self.closed:
                return
            await anyio.lowlevel.checkpoint()
            yield event

    async def aread(self) -> bytes:
        return b"".join(self._events)

    async def aclose(self) -> None:
        self.closed = True
