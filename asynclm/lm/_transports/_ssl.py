"""The TLS configuration every transport shares, and readable TLS errors.

One trust store everywhere: the default context verifies certificates against the operating
system's trust store through ``truststore`` (as pip does), so a corporate CA installed in the
system works. The same context object goes to our HTTP/1.1 client and to the httpx client used
when proxy variables are set, so trust never changes with a proxy.
"""

from __future__ import annotations

import ssl
import threading

__all__ = ["default_ssl_context", "describe_tls_error", "load_default_ssl_context"]

_lock = threading.Lock()
_default: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """The process-wide default client context: system trust store, TLS >= 1.2, ALPN ``http/1.1``.

    Made on first use (loading the trust store takes ~20 ms) and shared by every thread and
    loop: an ``SSLContext`` is safe to use from several threads at once.
    """
    global _default
    ctx = _default
    if ctx is None:
        with _lock:
            if _default is None:
                import truststore

                made: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                made.minimum_version = ssl.TLSVersion.TLSv1_2
                made.set_alpn_protocols(["http/1.1"])
                _default = made
            ctx = _default
    return ctx


async def load_default_ssl_context() -> ssl.SSLContext:
    """``default_ssl_context`` from async code: the first time, the trust store is loaded in a
    worker thread (tens of ms of file reading that would otherwise stall the event loop)."""
    if _default is not None:
        return _default
    import anyio.to_thread

    return await anyio.to_thread.run_sync(default_ssl_context)


def describe_tls_error(exc: BaseException) -> str:
    """A one-line reason for a failed TLS handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc.reason or exc}"
    if isinstance(exc, (ssl.SSLEOFError, EOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return (
            "the server closed the connection during the handshake (is this port TLS? does the server "
            "accept TLS 1.2 or later?)"
        )
    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or exc.library or 'SSL error'}: {exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__
