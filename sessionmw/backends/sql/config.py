"""The SQL backend's URL: SQLAlchemy's, plus timeouts, pool sizes and the driver options it forwards."""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine

from ...core.errors import ConfigError
from .._url import BackendURL, positive_float, positive_int
from .backend import WRITE, SQLBackend
from .table import DEFAULT_TABLE

__all__ = ["DRIVER_OPTIONS", "from_url"]

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


def _sqlite_on_connect(busy_ms: int, wal: bool = True) -> Any:
    """The ``connect`` hook of a SQLite engine: transactions begun by :func:`_sqlite_on_begin`, a busy
    timeout, WAL (unless ``wal`` is false: a store opened without creating anything leaves the file's
    journal mode alone) and ``synchronous = NORMAL``."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy's recipe (its SQLite dialect's notes, "Transactions with SQLite and the sqlite3
        # driver"): the driver emits no BEGIN of its own, on_begin emits the one each transaction needs.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            # A writer waits up to the busy timeout for another's write lock, inside SQLite: no retries here.
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            # WAL is kept in the database file, so only a new database is switched. Switching needs the
            # database to itself and answers "database is locked" at once, busy timeout or not, when
            # first connections race to do it: try again briefly. Should all tries lose, the
            # connection works on in the rollback-journal mode (WAL only lets readers run beside a writer).
            for attempt in range(10 if wal else 0):
                try:
                    if cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                        break
                    cur.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.005 * (attempt + 1))
            # In WAL mode NORMAL syncs at checkpoints, not at every commit: a commit survives the
            # application's crash, and a power loss can only roll back the last ones, never corrupt.
            # FULL would hold the write lock for an fsync per commit (0.2 ms against 0.014 ms here).
            cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()

    return on_connect


def _sqlite_on_begin(conn: Connection) -> None:
    """The ``begin`` hook of a SQLite engine: ``BEGIN IMMEDIATE`` for a write, a deferred ``BEGIN`` otherwise.

    A write transaction takes SQLite's write lock at its start, waiting for it under the busy timeout;
    begun deferred, it would take it at its first write and could then fail at once with "database is
    locked" when another writer committed since its first read. Reads never wait for a writer (WAL).
    """
    write = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def from_url(url: BackendURL, key_prefix: str, *, create: bool = True) -> SQLBackend:
    """Build the backend for a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``, ...).

    :param create: ``False``: never create the database file or the table. A missing SQLite file is a
        :class:`ConfigError` now, a missing table one at the first call.
    """
    table = url.take("table", str, DEFAULT_TABLE)
    timeout = url.take("connect_timeout", positive_float, 5.0)
    statement_timeout = url.take("socket_timeout", positive_float, 10.0)
    pool: dict[str, Any] = {
        "pool_size": url.take("pool_size", positive_int, None),
        "max_overflow": url.take("max_overflow", int, None),
        "pool_timeout": url.take("pool_timeout", positive_float, None),
        "pool_recycle": url.take("pool_recycle", int, None),
    }
    forwarded = _take_driver_options(url)
    sa_url = _sqlalchemy_url(url, forwarded)
    if not create:
        _require_sqlite_file(url, sa_url)
    engine = _create_engine(url, sa_url, timeout, statement_timeout, forwarded, pool, wal=create)
    driver = sa_url.get_driver_name()
    try:
        return SQLBackend(
            engine,
            name=url.display,
            table=table,
            key_prefix=key_prefix,
            password=url.password,
            # libpq has no read timeout: past statement_timeout and a margin, the watchdog cuts the socket.
            call_limit=statement_timeout + max(1.0, statement_timeout / 2) if driver in _NO_READ_TIMEOUT else None,
            busy_timeout=statement_timeout,
            create=create,
        )
    except ConfigError:
        engine.dispose()
        raise


def _require_sqlite_file(url: BackendURL, sa_url: URL) -> None:
    """Raise :class:`ConfigError` naming the file when ``sa_url`` is a SQLite database that does not exist.

    Checked before anything connects: SQLite creates a missing file at the first connection.
    """
    database = sa_url.database
    if sa_url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return  # not SQLite, or in memory (refused when the engine is made)
    if database.startswith("file:"):  # a URI filename (?uri=true): file:path?mode=...
        database = unquote(database[len("file:") :].split("?", 1)[0])
    if not os.path.isfile(database):
        raise ConfigError(
            f"SQLite database {os.path.abspath(database)} does not exist "
            "(`sessionmw init-db` creates it, as does the middleware at its first session)",
            option="backend",
        )


def _take_driver_options(url: BackendURL) -> dict[str, str]:
    """Take from ``url`` the options forwarded to its dialect family's driver (:data:`DRIVER_OPTIONS`)."""
    family = url.scheme.split("+", 1)[0]
    forwarded: dict[str, str] = {}
    for option in DRIVER_OPTIONS.get(family, ()):
        value = url.take(option, str, None)
        if value is not None:
            forwarded[option] = value
    return forwarded


def _sqlalchemy_url(url: BackendURL, forwarded: Mapping[str, str]) -> URL:
    """SQLAlchemy's URL for ``url``: without our options, with the default driver and the forwarded options."""
    scheme = url.scheme
    base = url.raw.split("?", 1)[0].split("#", 1)[0]
    try:
        sa_url: URL = sa.make_url(base)
    except sa_exc.ArgumentError:
        raise ConfigError(f"SQL backend URL {url.display!r} is not valid", option="backend") from None
    if scheme in _DEFAULT_DRIVER:
        sa_url = sa_url.set(drivername=_DEFAULT_DRIVER[scheme])
    if forwarded:
        sa_url = sa_url.update_query_dict(forwarded)
    return sa_url


def _create_engine(
    url: BackendURL,
    sa_url: URL,
    timeout: float,
    statement_timeout: float,
    forwarded: Mapping[str, str],
    pool: Mapping[str, Any],
    wal: bool = True,
) -> Engine:
    """The engine for ``sa_url``; a missing driver or a bad option is a :class:`ConfigError` naming the fix.

    :param wal: SQLite: switch the database to WAL (see :func:`_sqlite_on_connect`).
    """
    scheme = url.scheme
    family = scheme.split("+", 1)[0]
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
        sa.event.listen(engine, "connect", _sqlite_on_connect(int(statement_timeout * 1000), wal))
        sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine
