"""The SQL backend: sessions in one table of any database SQLAlchemy (Core) supports.

URLs: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``postgresql+psycopg://user@host/db``,
``mysql+pymysql://user@host/db`` (``postgresql://`` and ``mysql://``/``mariadb://`` without a driver mean
psycopg 3 and PyMySQL, the drivers the ``[postgresql]`` and ``[mysql]`` extras install).

Options in the query string: ``table`` (default ``sessmw_sessions``, so two sites can share a database),
``connect_timeout`` (seconds, default 5), ``socket_timeout`` (seconds one statement may take, default
10: PostgreSQL's ``statement_timeout``; MySQL/MariaDB's socket read and write timeouts and
``innodb_lock_wait_timeout``; SQLite's busy timeout), ``pool_size``, ``max_overflow``, ``pool_timeout``,
``pool_recycle``, and per driver a fixed list of connection options forwarded to it (TLS and the like,
see :data:`DRIVER_OPTIONS`).

How it works, and why:

* One row per session, modelled on Moodle's ``mdl_sessions``. The ``data`` column holds the whole
  encoded :class:`~sessionmw.backends.base.Record` (so a typed user id survives); the metadata columns
  next to it are for administration and gc, and the ones a touch changes (``last_access``,
  ``last_ip``, ``expires``) are authoritative over the blob.
* The lock lives in the row (``lock_token``, ``lock_until``) and is taken by one conditional
  ``UPDATE ... WHERE sid = :sid AND (lock_token IS NULL OR lock_until < :now)`` whose matched-row count
  says who won: portable to SQLite, PostgreSQL and MySQL/MariaDB (SQLAlchemy sets ``FOUND_ROWS`` for
  MySQL). Where the database has ``UPDATE ... RETURNING`` the record comes back in the same statement;
  elsewhere a ``SELECT`` follows in the same transaction.
* Locking an id with no row does not create one: it answers ``(True, None)``, and releasing or saving
  that token afterwards matches no row, which is harmless. No placeholder row is ever visible.
* Times are wall-clock epoch seconds (``time.time()``), comparable across processes and hosts.
* Every call is one short transaction; nothing is held open between calls. A pooled connection idle
  for more than :data:`PING_AFTER` is pinged first (and replaced when the server dropped it); one in
  steady use is not, so a call costs no extra round trip (SQLAlchemy's ``pool_pre_ping`` pings always).
* libpq has no read timeout: for PostgreSQL a watchdog thread cuts the socket of a call still waiting
  past ``socket_timeout`` and a margin, so a server process that stopped answering cannot hang a worker.
* ``ttl_until`` is the TTL safety net: a row past it loads as missing and may be re-created.
* Administration (:class:`~sessionmw.backends.base.AdminBackend`): ``user_sessions`` reads the indexed
  ``user_id`` column, ``gc`` is one ``DELETE`` over the indexed ``expires`` and ``ttl_until`` columns,
  and ``iter_records`` pages through the primary key (keyset pagination, one short transaction a page).
  Rows are matched to the key prefix exactly on every database (SQLite's ``LIKE`` ignores ASCII case),
  and so that the planner picks the index that matters (see :meth:`SQLBackend._prefix_match`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Connection, Engine, RowMapping

from ..core.errors import BackendUnavailable, ConfigError
from ._url import BackendURL, positive_float, positive_int
from .base import Record, Touch, decode_record, encode_record

__all__ = ["DEFAULT_TABLE", "DRIVER_OPTIONS", "SQLBackend", "from_url", "make_table"]

#: The table's name when the URL has no ``table`` option.
DEFAULT_TABLE = "sessmw_sessions"

#: Query-string options forwarded to the driver, per dialect family; any other option is an error.
DRIVER_OPTIONS: dict[str, tuple[str, ...]] = {
    "postgresql": (
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "application_name",
        "target_session_attrs",
        "options",
        "host",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
    ),
    "mysql": (
        "charset",
        "ssl_ca",
        "ssl_cert",
        "ssl_key",
        "ssl_capath",
        "ssl_cipher",
        "ssl_check_hostname",
        "unix_socket",
        "read_timeout",
        "write_timeout",
    ),
}
DRIVER_OPTIONS["mariadb"] = DRIVER_OPTIONS["mysql"]  # the same drivers (PyMySQL, mysqlclient) take both

#: Drivers with no client-side read timeout, whose calls the backend's watchdog bounds.
_NO_READ_TIMEOUT = ("psycopg", "psycopg2")

# The driver to use when the URL names only the dialect: the one our extras install.
_DEFAULT_DRIVER = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_EXTRA = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}\Z")
_SID_LEN = 128
_MAX_PREFIX = 64
#: Rows per page of :meth:`SQLBackend.iter_records` (one short transaction each).
_PAGE = 1000
_MAX_CHAR = 0x10FFFF


def _clip(value: str | None, size: int) -> str | None:
    return None if value is None else value[:size]


def _successor(prefix: str) -> str | None:
    """Return the least string above every string starting with ``prefix`` in code point order, if any."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000  # surrogates cannot be stored: skip them
        if code <= _MAX_CHAR:
            return "".join(chars) + chr(code)
    return None


def make_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE) -> sa.Table:
    """Build the sessions table ``name`` in ``metadata`` (modelled on Moodle's ``mdl_sessions``)."""
    # Session ids are case-sensitive: on MySQL/MariaDB compare them byte for byte.
    sid_type = sa.String(_SID_LEN).with_variant(
        mysql.VARCHAR(_SID_LEN, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )
    return sa.Table(
        name,
        metadata,
        # key prefix + session id
        sa.Column("sid", sid_type, primary_key=True),
        # str() of the user id (the typed id is in the encoded record)
        sa.Column("user_id", sa.String(255), nullable=True, index=True),
        sa.Column("state", sa.Integer, nullable=False, default=0, server_default=sa.text("0")),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("last_access", sa.Double, nullable=False),
        sa.Column("first_ip", sa.String(45), nullable=True),
        sa.Column("last_ip", sa.String(45), nullable=True),
        sa.Column("user_agent", sa.String(512), nullable=True),
        sa.Column("idle_override", sa.Boolean, nullable=False, default=False),
        sa.Column("idle_timeout", sa.Double, nullable=True),
        # the core's expiry, for gc
        sa.Column("expires", sa.Double, nullable=True, index=True),
        # the TTL safety net: a row past it loads as missing (indexed for gc)
        sa.Column("ttl_until", sa.Double, nullable=True, index=True),
        # the encoded Record (LargeBinary is only 64 KiB on MySQL)
        sa.Column("data", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"), nullable=True),
        sa.Column("lock_token", sa.String(64), nullable=True),
        sa.Column("lock_until", sa.Double, nullable=True),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )


#: A pooled connection idle for longer than this is pinged before use (one used more recently is not:
#: SQLAlchemy's pool_pre_ping would cost every call a round trip).
PING_AFTER = 1.0

_USED = "sessionmw_used"


class _Watch:
    """One call's entry with the :class:`_Watchdog`: its deadline and its connection's socket."""

    __slots__ = ("deadline", "fd", "fired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fd: int | None = None
        self.fired = False


class _Watchdog:
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
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def enter(self) -> _Watch:
        """Watch a call that starts now."""
        watch = _Watch(time.monotonic() + self.limit)
        with self._mutex:
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():  # first use, or in a forked child
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="sessionmw-sql-watchdog", daemon=True)
                self._thread.start()
        return watch

    def leave(self, watch: _Watch) -> bool:
        """Stop watching a call; tell whether its socket was cut."""
        with self._mutex:
            self._watches.discard(watch)
        return watch.fired

    def set_socket(self, watch: _Watch, fd: int | None) -> None:
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


def _dispose(engine: Engine, watchdog: _Watchdog | None) -> None:
    if watchdog is not None:
        watchdog.stop()
    engine.dispose()


def _fileno(dbapi_connection: Any) -> int | None:
    fileno = getattr(dbapi_connection, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except Exception:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


class SQLBackend:
    """Sessions in one SQL table through SQLAlchemy Core, locked by a conditional ``UPDATE``.

    :param engine: the engine to use; :meth:`close` disposes it.
    :param name: the URL for messages, without any password.
    :param table: the table's name.
    :param key_prefix: prepended to every session id, so two apps can share a table.
    :param password: a password to scrub from error messages.
    :param call_limit: seconds after which a call still waiting on the server has its socket cut (for
        drivers without a read timeout); ``None``: never.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        name: str,
        table: str = DEFAULT_TABLE,
        key_prefix: str = "sessmw:",
        password: str | None = None,
        call_limit: float | None = None,
    ) -> None:
        if not _TABLE_NAME.match(table):
            raise ConfigError(
                f"SQL backend option table={table!r} must be a plain identifier of at most 48 letters, digits or _",
                option="table",
            )
        if len(key_prefix) > _MAX_PREFIX:
            raise ConfigError(
                f"the SQL backend stores ids in {_SID_LEN} characters: key_prefix may have at most "
                f"{_MAX_PREFIX}, not {len(key_prefix)}",
                option="key_prefix",
            )
        self.name = name
        self.key_prefix = key_prefix
        self.engine = engine
        self._watchdog = _Watchdog(call_limit) if call_limit is not None else None
        # A backend dropped without close() still closes its pooled connections (drivers warn otherwise).
        self._finalizer = weakref.finalize(self, _dispose, engine, self._watchdog)
        self.metadata = sa.MetaData()
        self.table = make_table(self.metadata, table)
        self._password = password
        self._ready = False
        self._ready_mutex = threading.Lock()
        t = self.table
        self._record_cols = (t.c.data, t.c.last_access, t.c.last_ip, t.c.expires, t.c.ttl_until)

    # -- plumbing ------------------------------------------------------------------------------

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
        try:
            with self.engine.connect() as conn:
                self._create_once(conn, lambda c: self.metadata.create_all(c, checkfirst=True))
                # Each index on its own: a table made by an older version (without the ttl_until index
                # gc needs), or left half-made by a process that lost a race, gets what it lacks.
                for index in sorted(self.table.indexes, key=lambda ix: str(ix.name)):
                    self._create_once(conn, functools.partial(index.create, checkfirst=True))
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise self._unavailable(exc) from exc
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
            if not self._ready:
                self.create_tables()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One short transaction on a live connection; connection failures become :class:`BackendUnavailable`."""
        self._ensure_tables()
        watchdog = self._watchdog
        watch = watchdog.enter() if watchdog is not None else None
        try:
            with self.engine.connect() as conn:
                try:
                    self._check_alive(conn, watch)
                    with conn.begin():
                        yield conn
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

    def _check_alive(self, conn: Connection, watch: _Watch | None) -> None:
        """Ping a connection that has been idle a while, replacing it if it is dead (a server restart,
        an idle timeout on the way); the watchdog learns which socket the call uses first."""
        watchdog = self._watchdog
        fairy = conn.connection
        if watch is not None and watchdog is not None:
            watchdog.set_socket(watch, _fileno(fairy.dbapi_connection))
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
                watchdog.set_socket(watch, _fileno(fairy.dbapi_connection))

    def _key(self, sid: str) -> str:
        return self.key_prefix + sid

    def _live(self, now: float) -> sa.ColumnElement[bool]:
        t = self.table
        return sa.and_(t.c.data.is_not(None), sa.or_(t.c.ttl_until.is_(None), t.c.ttl_until > now))

    def _prefix_range(self) -> sa.ColumnElement[bool]:
        """Match exactly the rows under this key prefix, as a range of the primary key where it can be one.

        For scans in ``sid`` order (:meth:`iter_records`). SQLite's ``LIKE`` ignores ASCII case and never
        uses the index, but under its default BINARY collation (UTF-8 bytes, so code point order) the
        rows of a prefix are exactly those from the prefix up to its successor. PostgreSQL's ``LIKE`` is
        case-sensitive; on MySQL/MariaDB the ``sid`` column is ``utf8mb4_bin``, and ``LIKE 'p%'`` a range.
        """
        t = self.table
        prefix = self.key_prefix
        if not prefix:
            return sa.true()
        if self.engine.dialect.name == "sqlite":
            upper = _successor(prefix)
            return sa.and_(t.c.sid >= prefix, t.c.sid < upper) if upper is not None else t.c.sid >= prefix
        return t.c.sid.startswith(prefix, autoescape=True)

    def _prefix_match(self) -> sa.ColumnElement[bool]:
        """Match exactly the rows under this key prefix, without offering the planner the primary key.

        For gc, per-user look-ups and counts, whose useful indexes are ``expires``/``ttl_until`` and
        ``user_id``: a range of the primary key (which, with one site per table, spans the whole table)
        would tempt SQLite into scanning every row. ``substr(...) =`` is exact on all three databases.
        """
        prefix = self.key_prefix
        if not prefix:
            return sa.true()
        return sa.func.substr(self.table.c.sid, 1, len(prefix)) == prefix

    def _dead(self, now: float) -> sa.ColumnElement[bool]:
        """Rows gc removes: past the core's expiry or past their TTL."""
        t = self.table
        return sa.or_(t.c.expires < now, t.c.ttl_until <= now)

    def _holds(self, key: str, token: str, now: float) -> sa.ColumnElement[bool]:
        t = self.table
        return sa.and_(t.c.sid == key, t.c.lock_token == token, t.c.lock_until > now)

    @staticmethod
    def _to_record(row: RowMapping, now: float) -> Record | None:
        blob = row["data"]
        ttl_until = row["ttl_until"]
        if blob is None or (ttl_until is not None and ttl_until <= now):
            return None
        try:
            record = decode_record(bytes(blob))
        except ValueError:
            return None
        return record._replace(last_access=row["last_access"], last_ip=row["last_ip"], expires=row["expires"])

    @staticmethod
    def _columns(record: Record, ttl: float | None, now: float) -> dict[str, Any]:
        return {
            "user_id": None if record.user_id is None else str(record.user_id)[:255],
            "created": record.created,
            "last_access": record.last_access,
            "first_ip": _clip(record.first_ip, 45),
            "last_ip": _clip(record.last_ip, 45),
            "user_agent": _clip(record.user_agent, 512),
            "idle_override": bool(record.idle_override),
            "idle_timeout": record.idle_timeout,
            "expires": record.expires,
            "ttl_until": None if ttl is None else now + ttl,
            "data": encode_record(record),
        }

    @staticmethod
    def _touch_columns(touch: Touch, now: float) -> dict[str, Any]:
        values: dict[str, Any] = {
            "last_access": touch.last_access,
            "expires": touch.expires,
            "ttl_until": None if touch.ttl is None else now + touch.ttl,
        }
        if touch.last_ip is not None:
            values["last_ip"] = _clip(touch.last_ip, 45)
        return values

    # -- primitives ----------------------------------------------------------------------------

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid`` (taking over an expired lock); when taken, return its record too."""
        t = self.table
        key = self._key(sid)
        now = time.time()
        stmt = (
            sa.update(t)
            .where(t.c.sid == key, sa.or_(t.c.lock_token.is_(None), t.c.lock_until < now))
            .values(lock_token=token, lock_until=now + expire)
        )
        with self._begin() as conn:
            if self.engine.dialect.update_returning:
                row = conn.execute(stmt.returning(*self._record_cols)).mappings().first()
                if row is not None:
                    return True, self._to_record(row, now)
            elif conn.execute(stmt).rowcount == 1:
                row = conn.execute(sa.select(*self._record_cols).where(t.c.sid == key)).mappings().first()
                return True, None if row is None else self._to_record(row, now)
            # Not ours: either someone else holds it, or there is no row (nothing to lock, nothing to load).
            exists = conn.execute(sa.select(t.c.sid).where(t.c.sid == key)).first()
        return (exists is None), None

    def load(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking, or ``None``."""
        t = self.table
        now = time.time()
        with self._begin() as conn:
            row = conn.execute(sa.select(*self._record_cols).where(t.c.sid == self._key(sid))).mappings().first()
        return None if row is None else self._to_record(row, now)

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Insert a new session if ``sid`` is unused (a row past its TTL counts as unused)."""
        t = self.table
        key = self._key(sid)
        now = time.time()
        values = self._columns(record, ttl, now)
        try:
            with self._begin() as conn:
                conn.execute(sa.insert(t).values(sid=key, state=0, lock_token=None, lock_until=None, **values))
            return True
        except sa_exc.IntegrityError:
            pass  # rolled back; the connection went back to the pool clean
        # The id is taken, unless by a row past its TTL: take that one over.
        dead = sa.or_(t.c.data.is_(None), sa.and_(t.c.ttl_until.is_not(None), t.c.ttl_until <= now))
        with self._begin() as conn:
            result = conn.execute(
                sa.update(t).where(t.c.sid == key, dead).values(state=0, lock_token=None, lock_until=None, **values)
            )
            return result.rowcount == 1

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock in one ``UPDATE``, only if ``token`` still holds it."""
        t = self.table
        now = time.time()
        values = self._columns(record, ttl, now)
        stmt = sa.update(t).where(self._holds(self._key(sid), token, now))
        with self._begin() as conn:
            return conn.execute(stmt.values(lock_token=None, lock_until=None, **values)).rowcount == 1

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, refreshing last access first when ``touch`` is given."""
        t = self.table
        key = self._key(sid)
        now = time.time()
        with self._begin() as conn:
            if touch is not None:
                alive = sa.or_(t.c.ttl_until.is_(None), t.c.ttl_until > now)
                conn.execute(
                    sa.update(t).where(self._holds(key, token, now), alive).values(**self._touch_columns(touch, now))
                )
            stmt = sa.update(t).where(self._holds(key, token, now)).values(lock_token=None, lock_until=None)
            return conn.execute(stmt).rowcount == 1

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access of a live session without a lock and without rewriting its data."""
        t = self.table
        now = time.time()
        stmt = sa.update(t).where(t.c.sid == self._key(sid), self._live(now)).values(**self._touch_columns(touch, now))
        with self._begin() as conn:
            conn.execute(stmt)

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's expiry to ``expire`` seconds from now, if ``token`` still holds it."""
        t = self.table
        now = time.time()
        stmt = sa.update(t).where(self._holds(self._key(sid), token, now)).values(lock_until=now + expire)
        with self._begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def delete(self, sid: str) -> None:
        """Delete the session's row; a lock held on it goes too, and its holder's save then fails."""
        t = self.table
        with self._begin() as conn:
            conn.execute(sa.delete(t).where(t.c.sid == self._key(sid)))

    def close(self) -> None:
        """Close every pooled connection (the backend reconnects if it is used again)."""
        _dispose(self.engine, self._watchdog)

    # -- administration ------------------------------------------------------------------------

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        """Yield ``(sid, record)`` for every live session under this key prefix, a page per transaction.

        Keyset pagination over the primary key (``sid > last ORDER BY sid LIMIT n``): each page costs the
        same however far the scan has gone, and no transaction stays open while the caller works.
        """
        t = self.table
        n = len(self.key_prefix)
        last: str | None = None
        while True:
            now = time.time()
            query = sa.select(t.c.sid, *self._record_cols).where(self._prefix_range(), self._live(now))
            if last is not None:
                query = query.where(t.c.sid > last)
            with self._begin() as conn:
                rows = conn.execute(query.order_by(t.c.sid).limit(_PAGE)).mappings().all()
            for row in rows:
                key: str = row["sid"]
                record = self._to_record(row, now)
                if record is not None and key.startswith(self.key_prefix):
                    yield key[n:], record
            if len(rows) < _PAGE:
                return
            last = rows[-1]["sid"]

    def user_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """Return ``(sid, record)`` for every live session bound to ``user_id`` (via the ``user_id`` index)."""
        t = self.table
        n = len(self.key_prefix)
        wanted = str(user_id)
        now = time.time()
        query = sa.select(t.c.sid, *self._record_cols).where(
            t.c.user_id == wanted[:255], self._prefix_match(), self._live(now)
        )
        with self._begin() as conn:
            rows = conn.execute(query.order_by(t.c.sid)).mappings().all()
        found: list[tuple[str, Record]] = []
        for row in rows:
            key: str = row["sid"]
            record = self._to_record(row, now)
            # The column holds 255 characters and may compare case-insensitively (MySQL's default
            # collation): the typed id in the record decides.
            if record is None or not key.startswith(self.key_prefix) or str(record.user_id) != wanted:
                continue
            found.append((key[n:], record))
        return found

    def gc(self, now: float) -> int:
        """Delete the rows under this prefix past their expiry or TTL in one statement; return how many."""
        stmt = sa.delete(self.table).where(self._prefix_match(), self._dead(now))
        with self._begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def stats(self) -> dict[str, float]:
        """Return ``rows`` (rows under this prefix, expired included) and ``expired_rows`` (what gc would remove)."""
        t = self.table
        now = time.time()
        dead = sa.func.sum(sa.case((self._dead(now), 1), else_=0))
        query = sa.select(sa.func.count(), dead).select_from(t).where(self._prefix_match())
        with self._begin() as conn:
            rows, expired = conn.execute(query).one()
        return {"rows": float(rows or 0), "expired_rows": float(expired or 0)}


# -- construction ------------------------------------------------------------------------------


def _connect_args(
    dialect: str, driver: str, connect: float, statement: float, given: Mapping[str, str]
) -> dict[str, Any]:
    """The driver's own connect arguments for the connect timeout and the statement timeout.

    ``given`` are the driver options the URL forwards; a timeout the URL sets itself is left alone.
    """
    if dialect == "sqlite":  # the busy timeout: how long a statement waits for another writer
        return {"timeout": statement, "check_same_thread": False}
    if driver in ("psycopg", "psycopg2"):
        args: dict[str, Any] = {"connect_timeout": max(1, math.ceil(connect))}
        if "options" not in given:  # statement_timeout counts waits for locks too
            args["options"] = f"-c statement_timeout={max(1, math.ceil(statement * 1000))}"
        # libpq has no read timeout: a host that is gone is noticed by TCP, within about the timeout
        network = {
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(statement)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": max(1, math.ceil(statement * 1000)),
        }
        args.update((k, v) for k, v in network.items() if k not in given)
        return args
    if driver == "pg8000":  # one socket timeout for everything
        return {"timeout": max(connect, statement)}
    if driver in ("pymysql", "mysqldb", "mariadbconnector"):
        args = {"connect_timeout": max(1, math.ceil(connect))}
        for option in ("read_timeout", "write_timeout"):  # the socket's: a silent server
            if option not in given:
                args[option] = max(1, math.ceil(statement))
        if "init_command" not in given:  # the server's own wait for a row lock (50 s by default)
            args["init_command"] = f"SET SESSION innodb_lock_wait_timeout = {max(1, math.ceil(statement))}"
        return args
    return {}


def _sqlite_pragmas(busy_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            # WAL is kept in the database file, so only a new database is switched. Switching needs the
            # database to itself and answers "database is locked" at once, busy timeout or not, when
            # first connections race to do it: try again briefly. Should all tries lose, the
            # connection works on in the rollback-journal mode (WAL only lets readers run beside a writer).
            for attempt in range(10):
                try:
                    if cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                        break
                    cur.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.005 * (attempt + 1))
        finally:
            cur.close()

    return on_connect


def from_url(url: BackendURL, key_prefix: str) -> SQLBackend:
    """Build the backend for a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``, ...)."""
    table = url.take("table", str, DEFAULT_TABLE)
    timeout = url.take("connect_timeout", positive_float, 5.0)
    statement_timeout = url.take("socket_timeout", positive_float, 10.0)
    pool: dict[str, Any] = {
        "pool_size": url.take("pool_size", positive_int, None),
        "max_overflow": url.take("max_overflow", int, None),
        "pool_timeout": url.take("pool_timeout", positive_float, None),
        "pool_recycle": url.take("pool_recycle", int, None),
    }

    scheme = url.scheme
    family = scheme.split("+", 1)[0]
    forwarded: dict[str, str] = {}
    for option in DRIVER_OPTIONS.get(family, ()):
        value = url.take(option, str, None)
        if value is not None:
            forwarded[option] = value

    base = url.raw.split("?", 1)[0].split("#", 1)[0]
    try:
        sa_url: URL = sa.make_url(base)
    except sa_exc.ArgumentError:
        raise ConfigError(f"SQL backend URL {url.display!r} is not valid", option="backend") from None
    if scheme in _DEFAULT_DRIVER:
        sa_url = sa_url.set(drivername=_DEFAULT_DRIVER[scheme])
    if forwarded:
        sa_url = sa_url.update_query_dict(forwarded)

    dialect, driver = sa_url.get_backend_name(), sa_url.get_driver_name()
    # No pool_pre_ping: SQLBackend pings a connection only when it has been idle (PING_AFTER).
    kwargs: dict[str, Any] = {k: v for k, v in pool.items() if v is not None}
    if dialect == "sqlite":
        if sa_url.database in (None, "", ":memory:") or "mode=memory" in (sa_url.database or ""):
            raise ConfigError(
                "an in-memory SQLite database is private to each connection; use memory:// or sqlite:///path.db",
                option="backend",
            )
    try:
        connect_args = _connect_args(dialect, driver, timeout, statement_timeout, forwarded)
        engine = sa.create_engine(sa_url, connect_args=connect_args, **kwargs)
    except ImportError as exc:
        extra = _EXTRA.get(family)
        hint = f"pip install 'sessionmw[{extra}]'" if extra else f"install the DB-API driver for {scheme}://"
        missing = getattr(exc, "name", None) or str(exc)
        raise ConfigError(f"the {scheme}:// backend needs the {missing} driver: {hint}", option="backend") from exc
    except sa_exc.NoSuchModuleError as exc:
        raise ConfigError(f"SQLAlchemy has no dialect for {scheme}:// ({exc})", option="backend") from None
    except (sa_exc.ArgumentError, TypeError) as exc:
        text = str(exc).replace(url.password, "***") if url.password else str(exc)
        raise ConfigError(f"SQL backend URL {url.display!r}: {text}", option="backend") from None
    if dialect == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas(int(statement_timeout * 1000)))
    try:
        return SQLBackend(
            engine,
            name=url.display,
            table=table,
            key_prefix=key_prefix,
            password=url.password,
            # libpq has no read timeout: past statement_timeout and a margin, the watchdog cuts the socket.
            call_limit=statement_timeout + max(1.0, statement_timeout / 2) if driver in _NO_READ_TIMEOUT else None,
        )
    except ConfigError:
        engine.dispose()
        raise
