"""Incremental server-sent-events decoding (the subset chat-completion streams use).

Fed raw bytes as they arrive (chunk boundaries anywhere, even inside a UTF-8 character or a CRLF);
yields the ``data`` of each complete event. ``event:``/``id:``/``retry:`` fields and ``:`` comments
are ignored; multi-line ``data`` is joined with ``\\n`` as the SSE spec says.
"""

from __future__ import annotations

import codecs

__all__ = ["SSEDecoder"]


class SSEDecoder:
    __slots__ = ("_buffer", "_data", "_decoder", "_pending_cr")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._data: list[str] = []
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[str]:
        """Decode ``chunk``; return the data of each event it completed."""
        text = self._decoder.decode(chunk)
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the \n of a \r\n split across chunks
        self._pending_cr = text.endswith("\r")
        buffer = self._buffer + text
        if "\r" in buffer:
            buffer = buffer.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._buffer = buffer.split("\n")
        events: list[str] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith("data"):
                if line.startswith("data:"):
                    value = line[5:]
                    self._data.append(value[1:] if value.startswith(" ") else value)
                elif line == "data":
                    self._data.append("")
            # other fields and ":" comments are ignored
        return events

    def flush(self) -> list[str]:
        """At end of stream: an event left without its blank line still counts (lenient servers)."""
        events = self.feed(b"\n\n") if (self._buffer or self._data) else []
        return events

    @property
    def pending(self) -> bool:
        """Whether part of an event is buffered (the stream stopped mid-event)."""
        return bool(self._buffer or self._data)
