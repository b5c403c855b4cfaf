"""A watchdog thread that bounds the calls of SQL drivers with no read timeout of their own (libpq)."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

__all__ = ["Watch", "Watchdog", "fileno"]


class Watch:
    """One call's entry with the :class:`Watchdog`: its deadline and its connection's socket."""

    __slots__ = ("deadline", "fd", "fired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fd: int | None = None
        self.fired = False


class Watchdog:
    """Cuts the socket of a call that outlives its deadline, for drivers with no read timeout of their own.

    libpq (PostgreSQL) has none: a server that is slow answers ``statement_timeout``, a host that is gone
    the TCP keepalives, but a server process that stopped answering on a live host (frozen, stuck in
    I/O, behind a frozen proxy) keeps the worker waiting for ever. Here one daemon thread per backend
    wakes a few times per ``limit`` and shuts down the socket of any call past it; the driver then
    fails at once, and the call raises :class:`BackendUnavailable`. The cut happens under the same
    lock a finishing call takes to leave, so a connection is never cut after its call has left.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._tick = min(1.0, max(0.05, limit / 4))
        self._mutex = threading.Lock()
        self._watches: set[Watch] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def enter(self) -> Watch:
        """Watch a call that starts now."""
        watch = Watch(time.monotonic() + self.limit)
        with self._mutex:
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():  # first use, or in a forked child
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="sessionmw-sql-watchdog", daemon=True)
                self._thread.start()
        return watch

    def leave(self, watch: Watch) -> bool:
        """Stop watching a call; tell whether its socket was cut."""
        with self._mutex:
            self._watches.discard(watch)
        return watch.fired

    def set_socket(self, watch: Watch, fd: int | None) -> None:
        """Name the socket the call now uses (after a checkout or a reconnect)."""
        with self._mutex:
            watch.fd = fd

    def stop(self) -> None:
        """End the thread (it starts again if the backend is used again)."""
        with self._mutex:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(2)

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self._tick):
            now = time.monotonic()
            with self._mutex:
                for watch in self._watches:
                    if watch.deadline <= now and not watch.fired and watch.fd is not None:
                        watch.fired = True
                        _cut(watch.fd)


def _cut(fd: int) -> None:
    """Shut down the socket behind ``fd`` (its owner's next read fails at once), without closing ``fd``."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def fileno(dbapi_connection: Any) -> int | None:
    """The socket's file descriptor of a DB-API connection, when its driver tells."""
    fileno = getattr(dbapi_connection, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except Exception:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None
