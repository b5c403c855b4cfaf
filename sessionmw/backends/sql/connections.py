"""The SQL backend's connections: one short transaction on a live connection, the table made ready first.

:class:`Connections` is a base of :class:`~sessionmw.backends.sql.SQLBackend`: its methods are the
backend's own. :meth:`~Connections._begin` is the one way a call reaches the database: it creates or
checks the table once, pings a connection idle for more than :data:`PING_AFTER`, waits for this
process's turn to write a SQLite file, puts the call under the watchdog, and turns driver failures
into :class:`~sessionmw.core.errors.BackendUnavailable`.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from ...core.errors import BackendUnavailable, ConfigError
from .notify import Notifier, install
from .watchdog import Watch, Watchdog, fileno

__all__ = ["PING_AFTER", "WRITE", "Connections"]

#: A pooled connection idle for longer than this is pinged before use (one used more recently is not:
#: SQLAlchemy's pool_pre_ping would cost every call a round trip).
PING_AFTER = 1.0

_USED = "sessionmw_used"

#: The execution option that marks a write transaction (SQLite begins it ``IMMEDIATE``, see :mod:`.config`).
WRITE = "sessionmw_write"


# SQLite lets one writer in at a time, and a writer that finds the database locked sleeps in its busy
# handler (1, 2, 5, 10 ms, ... up to 100 ms a nap), not woken when the lock is freed: under 16 threads
# that made p99 hundreds of milliseconds. Threads of one process therefore take turns on a mutex per
# database file first, which hands over the moment a writer commits; SQLite's busy handler only
# arbitrates between processes. Keyed by the file's real path, so every backend on it shares one.
_WRITE_TURNS: dict[str, threading.Lock] = {}


def _forget_write_turns() -> None:
    _WRITE_TURNS.clear()  # a turn held by a thread of the parent would never be released in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_write_turns)


def _dispose(engine: Engine, watchdog: Watchdog | None) -> None:
    """Stop the watchdog's thread and close the engine's pooled connections."""
    if watchdog is not None:
        watchdog.stop()
    engine.dispose()


class Connections:
    """The connections part of :class:`~sessionmw.backends.sql.SQLBackend`: transactions, table readiness."""

    name: str
    engine: Engine
    metadata: sa.MetaData
    table: sa.Table
    _watchdog: Watchdog | None
    _password: str | None
    _ready: bool
    _ready_mutex: threading.Lock
    _writer: Engine
    _turn_key: str | None
    _busy_timeout: float
    _create: bool
    _notifier: Notifier | None

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        cause: BaseException = exc
        if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
            cause = exc.orig
        text = " ".join(str(cause).split()) or type(cause).__name__
        if self._password:
            text = text.replace(self._password, "***")
        if len(text) > 300:
            text = text[:297] + "..."
        return BackendUnavailable(f"SQL backend {self.name} is unavailable: {text}", backend=self.name)

    def create_tables(self) -> None:
        """Create the sessions table and any of its indexes that are missing (idempotent, safe to race)."""
        turn = self._write_turn() if self._turn_key is not None else None
        try:
            with self._writer.connect() as conn:
                self._create_once(conn, lambda c: self.metadata.create_all(c, checkfirst=True))
                # Each index on its own: a table made by an older version (without the ttl_until index
                # gc needs), or left half-made by a process that lost a race, gets what it lacks.
                for index in sorted(self.table.indexes, key=lambda ix: str(ix.name)):
                    self._create_once(conn, functools.partial(index.create, checkfirst=True))
                if self._notifier is not None:
                    install(conn, self.table)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        finally:
            if turn is not None:
                turn.release()
        self._ready = True

    @staticmethod
    def _create_once(conn: Connection, make: Callable[[Connection], None]) -> None:
        """Run one check-then-create step in its own transaction, checking again if another process won."""
        for attempt in range(3):
            try:
                with conn.begin():
                    make(conn)
                return
            except sa_exc.DBAPIError:
                # Another process created it between our check and our CREATE: check again.
                if conn.invalidated or attempt == 2:
                    raise

    def _ensure_tables(self) -> None:
        if self._ready:
            return
        with self._ready_mutex:
            if self._ready:
                return
            if self._create:
                self.create_tables()
            else:
                self._require_table()

    def _require_table(self) -> None:
        """Check that the table exists, creating nothing; raise :class:`ConfigError` naming it if not."""
        try:
            with self.engine.connect() as conn:
                found = sa.inspect(conn).has_table(self.table.name)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        if not found:
            raise ConfigError(
                f"SQL backend {self.name} has no table {self.table.name!r} "
                "(`sessionmw init-db` creates it, as does the middleware at its first session)",
                option="table",
            )
        self._ready = True

    @contextmanager
    def _begin(self, write: bool = True) -> Iterator[Connection]:
        """One short transaction on a live connection; connection failures become :class:`BackendUnavailable`.

        :param write: the transaction writes (SQLite then takes its write lock when it begins).
        """
        self._ensure_tables()
        watchdog = self._watchdog
        watch = watchdog.enter() if watchdog is not None else None
        try:
            with (self._writer if write else self.engine).connect() as conn:
                try:
                    self._check_alive(conn, watch)
                    turn = self._write_turn() if write and self._turn_key is not None else None
                    try:
                        with conn.begin():
                            yield conn
                    finally:
                        if turn is not None:
                            turn.release()
                    conn.connection.info[_USED] = time.monotonic()
                finally:
                    if watch is not None and watchdog is not None and watchdog.leave(watch):
                        conn.invalidate()  # its socket was cut, even if the call got through just before
        except sa_exc.IntegrityError:
            raise
        except (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError) as exc:
            if watch is not None and watch.fired and watchdog is not None:
                raise BackendUnavailable(
                    f"SQL backend {self.name} timed out: no answer within {watchdog.limit:g} s", backend=self.name
                ) from exc
            if isinstance(exc, sa_exc.ProgrammingError):
                self._ready = False  # the table may have been dropped: check it again next time
            raise self._unavailable(exc) from exc
        finally:
            if watch is not None and watchdog is not None:
                watchdog.leave(watch)  # also when no connection could be had

    def _write_turn(self) -> threading.Lock:
        """Wait for this process's turn to write the SQLite file (see ``_WRITE_TURNS``); return the held mutex."""
        assert self._turn_key is not None
        turn = _WRITE_TURNS.get(self._turn_key) or _WRITE_TURNS.setdefault(self._turn_key, threading.Lock())
        if not turn.acquire(timeout=self._busy_timeout):
            raise BackendUnavailable(
                f"SQL backend {self.name} is unavailable: database is locked "
                f"(other writers of this process held it for {self._busy_timeout:g} s)",
                backend=self.name,
            )
        return turn

    def _check_alive(self, conn: Connection, watch: Watch | None) -> None:
        """Ping a connection that has been idle a while, replacing it if it is dead (a server restart,
        an idle timeout on the way); the watchdog learns which socket the call uses first."""
        watchdog = self._watchdog
        fairy = conn.connection
        if watch is not None and watchdog is not None:
            watchdog.set_socket(watch, fileno(fairy.dbapi_connection))
        used = fairy.info.get(_USED)
        if used is not None and time.monotonic() - used <= PING_AFTER:
            return
        dialect = self.engine.dialect
        dbapi_connection = fairy.dbapi_connection
        assert dbapi_connection is not None
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if (watch is not None and watch.fired) or not dialect.is_disconnect(exc, dbapi_connection, None):
                raise sa_exc.DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error) from exc
            conn.invalidate(exc)
            fairy = conn.connection  # a new connection from the pool
            if watch is not None and watchdog is not None:
                watchdog.set_socket(watch, fileno(fairy.dbapi_connection))
