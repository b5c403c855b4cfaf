"""memcached's meta protocol (``mg``/``ms``/``md``, memcached >= 1.6) over pymemcache's connections.

pymemcache 4 speaks only the classic text protocol, whose ``raw_command`` reads up to an end marker and
so cannot read a value that might contain it. This module is the one place that bypasses the library:
it keeps each server's idle pymemcache connections in a plain list (:class:`Connections`; connecting,
timeouts and ``TCP_NODELAY`` stay pymemcache's), sends several meta commands at once, and reads their
answers by length. What it buys: lock and load in one round trip, save and unlock in one (see the package's
notes and ``benchmarks/bench_memcached.py`` for the figures).

Rules of this module: no knowledge of sessions; commands in, answers out.
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple

from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
)

__all__ = ["Connections", "Reply", "md", "mg", "ms"]

_RECV = 64 * 1024


class Reply(NamedTuple):
    """One meta answer: its code (``HD``, ``VA``, ``EN``, ``NS``, ``EX``, ``NF``), returned flags, and value."""

    code: bytes
    #: Returned flags by letter: ``c`` (CAS), ``t`` (seconds left, -1 = never), ...
    flags: dict[str, bytes]
    value: bytes | None

    @property
    def ok(self) -> bool:
        """Whether the command did what it asked (``HD`` or ``VA``)."""
        return self.code == b"HD" or self.code == b"VA"

    @property
    def cas(self) -> bytes | None:
        """The item's CAS value, when the command asked for it (``c``)."""
        return self.flags.get("c")


def mg(key: str, flags: str = "v c") -> bytes:
    """A meta get of ``key`` returning ``flags`` (default: the value and its CAS)."""
    return b"mg %b %b\r\n" % (key.encode("ascii"), flags.encode("ascii"))


def ms(key: str, value: bytes, exptime: int, *, mode: str = "S", cas: bytes | None = None) -> bytes:
    """A meta set of ``key`` to ``value`` (``mode`` ``S`` set, ``E`` add, ``R`` replace), returning its new CAS.

    With ``cas``, memcached stores only if the item's CAS is still that value.
    """
    head = b"ms %b %d T%d M%b c" % (key.encode("ascii"), len(value), exptime, mode.encode("ascii"))
    if cas is not None:
        head += b" C" + cas
    return head + b"\r\n" + value + b"\r\n"


def md(key: str, cas: bytes | None = None) -> bytes:
    """A meta delete of ``key``, only while its CAS is ``cas`` when that is given."""
    line = b"md " + key.encode("ascii")
    if cas is not None:
        line += b" C" + cas
    return line + b"\r\n"


class Connections:
    """The idle connections of one server for meta commands: a plain list, with no lock and no clock.

    pymemcache's pool (``ObjectPool.get_and_release``) takes a lock twice, reads a clock and removes
    from a deque on every call, about 2.5 µs: more than the rest of the Python work of one exchange.
    A ``list``'s ``pop`` and ``append`` are atomic, so threads share this one without a lock; each
    connection is a pymemcache ``Client`` made by the pooled client's own factory, so connecting,
    timeouts and ``TCP_NODELAY`` stay pymemcache's. The pooled client still serves the classic
    commands (``stats``, ``get_many``), with its own pool.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._idle: list[Any] = []

    def exchange(self, commands: list[bytes]) -> list[Reply]:
        """Send ``commands`` in one write; return one reply per command.

        Raises pymemcache's exceptions (and ``OSError``) as its own calls do; a connection that failed
        is closed and dropped, so the next exchange connects anew.
        """
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self.client._create_client()
        try:
            if conn.sock is None:
                conn._connect()
            sock: socket.socket = conn.sock
            sock.sendall(b"".join(commands))
            replies = _read(sock, len(commands))
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)
        return replies

    def close(self) -> None:
        """Close every idle connection (one in use is closed by the next :meth:`close`)."""
        idle = self._idle
        while idle:
            try:
                conn = idle.pop()
            except IndexError:  # another thread took the last one
                break
            conn.close()


def _read(sock: socket.socket, count: int) -> list[Reply]:
    """Read ``count`` meta answers from ``sock``."""
    buf = b""
    replies: list[Reply] = []
    while len(replies) < count:
        end = buf.find(b"\r\n")
        while end < 0:
            chunk = sock.recv(_RECV)
            if not chunk:
                raise MemcacheUnexpectedCloseError()
            buf += chunk
            end = buf.find(b"\r\n")
        line, buf = buf[:end], buf[end + 2 :]
        parts = line.split(b" ")
        code = parts[0]
        value: bytes | None = None
        if code == b"VA":
            size = int(parts[1])
            parts = parts[2:]
            while len(buf) < size + 2:
                chunk = sock.recv(max(_RECV, size + 2 - len(buf)))
                if not chunk:
                    raise MemcacheUnexpectedCloseError()
                buf += chunk
            value, buf = buf[:size], buf[size + 2 :]
        elif code in (b"HD", b"EN", b"NS", b"EX", b"NF"):
            parts = parts[1:]
        else:
            _raise(line)
        replies.append(Reply(code, {p[:1].decode("ascii"): p[1:] for p in parts if p}, value))
    return replies


def _raise(line: bytes) -> None:
    """Raise pymemcache's exception for an error line."""
    if line.startswith(b"SERVER_ERROR"):
        raise MemcacheServerError(line[13:])
    if line.startswith(b"CLIENT_ERROR"):
        raise MemcacheClientError(line[13:])
    if line == b"ERROR":
        raise MemcacheUnknownCommandError(line)
    raise MemcacheServerError(b"unexpected answer: " + line[:80])
