"""Opening a TCP connection on either backend: name resolution, then connecting a non-blocking
socket, racing a host's addresses Happy-Eyeballs style (RFC 8305, 250 ms apart) as anyio's
``connect_tcp`` does. Both asyncio's and trio's connections start from the socket made here.

Errors are ``TransportError`` with ``phase`` ``"DNS"`` or ``"connect"`` and the OS's reason.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
from typing import Any

import anyio

from ._base import TransportError

__all__ = ["connect_socket", "is_ip", "readable"]

HAPPY_EYEBALLS_DELAY = 0.25

if hasattr(select, "poll"):

    def readable(fd: int) -> bool:
        """Whether ``fd`` has something to read (data, EOF or an error), without waiting."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

else:  # pragma: no cover - Windows

    def readable(fd: int) -> bool:
        """Whether ``fd`` has something to read (data, EOF or an error), without waiting."""
        return bool(select.select([fd], [], [], 0)[0])


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


async def connect_socket(host: str, port: int, where: str) -> socket.socket:
    """A connected, non-blocking TCP socket (``TCP_NODELAY``) to ``host:port``.

    ``where`` names the destination in error messages (the URL without its query).
    """
    if is_ip(host):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            return await _connect_one(family, (host, port))
        except OSError as exc:
            raise TransportError(f"{where}: connect failed: {_reason(exc)}", phase="connect") from exc
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise TransportError(f"{where}: DNS lookup of {host!r} failed: {_reason(exc)}", phase="DNS") from exc
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise TransportError(f"{where}: DNS lookup of {host!r} found no address", phase="DNS")
    if len(infos) == 1:
        try:
            return await _connect_one(infos[0][0], infos[0][4])
        except OSError as exc:
            raise TransportError(f"{where}: connect failed: {_reason(exc)}", phase="connect") from exc
    winner: socket.socket | None = None
    errors: list[str] = []

    async def attempt(family: int, address: Any, failed: anyio.Event) -> None:
        nonlocal winner
        try:
            sock = await _connect_one(family, address)
        except OSError as exc:
            errors.append(f"{address[0]}: {_reason(exc)}")
            failed.set()  # start the next address now
            return
        if winner is None:
            winner = sock
            tg.cancel_scope.cancel()
        else:  # pragma: no cover - two connects finished in the same loop iteration
            sock.close()

    try:
        async with anyio.create_task_group() as tg:
            for family, _, _, _, address in infos:
                failed = anyio.Event()
                tg.start_soon(attempt, family, address, failed)
                with anyio.move_on_after(HAPPY_EYEBALLS_DELAY):
                    await failed.wait()
    except BaseException:
        if winner is not None:  # won, but the caller was cancelled meanwhile
            winner.close()
        raise
    if winner is None:
        raise TransportError(f"{where}: connect failed: {'; '.join(errors)}", phase="connect")
    return winner


async def _connect_one(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            await anyio.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock
