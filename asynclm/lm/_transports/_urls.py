"""Request URLs and header values, checked and encoded before anything goes on the wire (sans-I/O).

URLs are percent-encoded as httpx does (the WHATWG URL standard's percent-encode sets): non-ASCII
characters become UTF-8 ``%XX`` escapes, as do a space, ``"``, ``#``, ``<`` and ``>`` (and in the
path ``?``, `````, ``{`` and ``}``); everything else, ``%`` included, is sent as written. Control
characters (C0, DEL) are refused with a ``ValueError`` rather than silently dropped or sent: a
CR/LF in a URL or header is how requests are smuggled.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

__all__ = ["Target", "check_header_value"]

_QUERY_SAFE = "".join(chr(i) for i in range(0x21, 0x7F) if chr(i) not in '"#<>')
_PATH_SAFE = "".join(c for c in _QUERY_SAFE if c not in "?`{}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab is allowed in a header value


def _describe_control(text: str, what: str) -> str:
    m = _CONTROL.search(text)
    assert m is not None
    return (
        f"{what} contains the control character {m.group()!r} at position {m.start()}: "
        "remove it (control characters, CR and LF included, are never sent)"
    )


def check_header_value(name: str, value: str) -> None:
    """Raise ``ValueError`` if ``value`` cannot be sent as the value of header ``name``."""
    m = _CONTROL_IN_VALUE.search(value)
    if m is not None:
        raise ValueError(
            f"the value of HTTP header {name!r} contains the control character {m.group()!r}: "
            "header values must be one line of printable text"
        )


class Target:
    """A parsed, encoded request URL (cached per URL string by the transport).

    Raises ``ValueError`` naming what is wrong: an unsupported scheme, no host, credentials in
    the URL, control characters, or a bad port.
    """

    __slots__ = ("host", "origin", "port", "request_line", "safe_url", "tls")

    def __init__(self, url: str) -> None:
        if _CONTROL.search(url) is not None:
            raise ValueError(_describe_control(url, f"the URL {url!r}"))
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid URL {url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r}: use http:// or https://")
        host = parts.hostname
        if not host:
            raise ValueError(f"URL {url!r} has no host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials in the URL are not supported (they would end up in logs); "
                "send an Authorization header instead"
            )
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise ValueError(f"invalid host name {host!r} in {url!r}: {exc}") from None
        default_port = 443 if scheme == "https" else 80
        port = port or default_port
        path = quote(parts.path, safe=_PATH_SAFE) or "/"
        target = path
        if parts.query:
            target += "?" + quote(parts.query, safe=_QUERY_SAFE)
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header += f":{port}"
        self.host = host
        self.port = port
        self.tls = scheme == "https"
        self.origin = (scheme, host, port)
        # The query may hold secrets (some providers take ?key=...): never put it in messages.
        self.safe_url = f"{scheme}://{host_header}{path}"
        self.request_line = f"POST {target} HTTP/1.1\r\nHost: {host_header}\r\n"
