"""The interface every provider wire format implements (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import LMError, error_for_status
from .._models import LMResponse, StreamDelta, Usage

__all__ = ["StreamParser", "WireFormat"]


class StreamParser:
    """Turns the data of each server-sent event of one stream into deltas.

    ``feed`` raises a typed ``LMError`` for an error event or a malformed one (the API key
    scrubbed from anything the server sent); ``done`` becomes true at the stream's final event (a
    stream that ends before it is truncated).
    """

    __slots__ = ("done", "model", "secret", "url")

    #: what the final event is called, for the message of a truncated stream
    final_event = "final"

    def __init__(self, url: str, model: str, secret: str | None = None) -> None:
        self.url = url
        self.model = model
        self.secret = secret
        self.done = False

    def scrub(self, text: str) -> str:
        """``text`` without the API key (a server may echo it back)."""
        return text.replace(self.secret, "***") if self.secret else text

    def feed(self, event: str) -> list[StreamDelta]:  # pragma: no cover - abstract
        raise NotImplementedError


class WireFormat:
    """One provider's HTTP API, as pure functions of bytes and dicts.

    Attributes:
        name: the model prefix (``"openai"``, ``"anthropic"``).
        path: the endpoint under ``base_url`` (``"/chat/completions"``).
        default_base_url: used when ``LM(base_url=None)``.
        key_env: the environment variable read when ``LM(api_key=None)``.
        request_id_header: the response header carrying the server's request id.
        default_max_tokens: sent when the call sets no ``max_tokens`` (``None``: not sent).
        to_wire: maps asynclm's request body to the provider's (``None``: sent as built).
        response: builds the ``LMResponse`` of a checked 2xx body (or a cache hit's).
    """

    name: str
    path: str
    default_base_url: str
    key_env: str
    request_id_header: str
    default_max_tokens: int | None = None
    to_wire: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    response: Callable[[dict[str, Any], str, bool], LMResponse]

    def headers(self, api_key: str | None) -> dict[str, str]:  # pragma: no cover - abstract
        """The request headers (content type, authentication, version)."""
        raise NotImplementedError

    def usage(self, raw: dict[str, Any]) -> Usage:  # pragma: no cover - abstract
        """The token counts of a decoded 2xx completion body (zeros where it reports none)."""
        raise NotImplementedError

    def check(self, payload: bytes) -> tuple[dict[str, Any], int]:  # pragma: no cover - abstract
        """Decode a 2xx body, check it is a completion; return it and its total tokens.

        Raises ``ValueError`` (a malformed body: the call retries, then raises ``ServerError``)."""
        raise NotImplementedError

    def error(
        self,
        status: int,
        payload: bytes,
        *,
        url: str,
        model: str,
        request_id: str | None,
        retry_after: float | None,
        secret: str | None,
    ) -> LMError:
        """The typed error of a non-2xx response (the API key scrubbed from its message).

        Both formats' error bodies hold an ``error`` object with ``type`` and ``message`` (OpenAI's
        at the top level, Anthropic's inside ``{"type": "error", ...}``); ``error_for_status`` reads
        it, and the status says the rest (Anthropic's 529 overloaded is a 5xx)."""
        return error_for_status(
            status,
            payload,
            url=url,
            model=model,
            request_id=request_id,
            retry_after=retry_after,
            secret=secret,
            key_env=self.key_env,
        )

    def retryable(self, status: int, payload: bytes) -> bool:  # pragma: no cover - abstract
        """Whether a non-2xx response is worth retrying."""
        raise NotImplementedError

    def stream_request(self, body: dict[str, Any]) -> bool:  # pragma: no cover - abstract
        """Make ``body`` a streaming request; return whether it asks for usage with
        ``stream_options`` (which a server may reject: the LM then asks again without)."""
        raise NotImplementedError

    def stream_parser(self, url: str, model: str, secret: str | None) -> StreamParser:  # pragma: no cover
        """A parser for the events of one stream (``secret``: the API key, kept out of errors)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<wire format {self.name!r} {self.path}>"
