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
* Every call is one short transaction of one statement (two where MySQL/MariaDB must read the row
  it just locked, having no ``UPDATE ... RETURNING``); nothing is held open between calls. Releasing
  with a touch is one ``UPDATE`` whose ``CASE`` touches only a row within its TTL.
* The statements of the per-request calls are built once per backend with bound parameters
  (:class:`~.table.Prepared`): each call finds its compiled form in SQLAlchemy's cache at once
  (building one costs about 100 µs of Python), and psycopg prepares the unchanging SQL text on the
  server after a few executions (its ``prepare_threshold``).
* SQLite under concurrent writers, following SQLAlchemy's recipe for the ``sqlite3`` driver: the
  driver emits no ``BEGIN`` of its own (``isolation_level = None``), a ``begin`` hook emits
  ``BEGIN IMMEDIATE`` for a write transaction (marked by the :data:`~.connections.WRITE` execution option)
  and a deferred ``BEGIN`` for a read. A write waits for the write lock when it begins, under the
  busy timeout (``socket_timeout``), rather than failing at once with "database is locked" when it
  cannot upgrade; no call retries on its own. The file is switched to WAL (readers never wait for the
  writer) with ``synchronous = NORMAL`` (no fsync per commit: a commit survives the application's
  crash, and a power loss can roll back only the last ones). SQLite's busy handler naps (1, 2, 5, ...
  up to 100 ms) and is not woken by a commit, so the threads of one process take turns on a mutex
  per database file first (handed over at once, waited for at most the busy timeout); the busy
  handler only arbitrates between processes. Under 16 threads this took p99 from about 270 ms to 40.
* A pooled connection idle for more than :data:`PING_AFTER` is pinged first (and replaced when the
  server dropped it); one in steady use is not, so a call costs no extra round trip (SQLAlchemy's
  ``pool_pre_ping`` pings always).
* libpq has no read timeout: for PostgreSQL a watchdog thread cuts the socket of a call still waiting
  past ``socket_timeout`` and a margin, so a server process that stopped answering cannot hang a worker.
* ``ttl_until`` is the TTL safety net: a row past it loads as missing and may be re-created.
* Administration (:class:`~sessionmw.backends.base.AdminBackend`): ``user_sessions`` reads the indexed
  ``user_id`` column, ``gc`` is one ``DELETE`` over the indexed ``expires`` and ``ttl_until`` columns,
  and ``iter_records`` pages through the primary key (keyset pagination, one short transaction a page).
  Rows are matched to the key prefix exactly on every database (SQLite's ``LIKE`` ignores ASCII case),
  and so that the planner picks the index that matters (see :meth:`SQLBackend._prefix_match`).

Where each part lives: :mod:`.table` (the table and the pieces of statements), :mod:`.watchdog` (the
thread that bounds calls of drivers with no read timeout), :mod:`.connections` (each
call's one short transaction on a live connection, table creation, SQLite's write turns),
:mod:`.backend` (:class:`SQLBackend`: the primitives and the administration side), :mod:`.config`
(the URL, the engine, the driver's options and SQLite's connect and begin hooks).
"""

from __future__ import annotations

from .backend import PING_AFTER as PING_AFTER
from .backend import SQLBackend as SQLBackend
from .config import DRIVER_OPTIONS as DRIVER_OPTIONS
from .config import from_url as from_url
from .table import DEFAULT_TABLE as DEFAULT_TABLE
from .table import make_table as make_table

__all__ = ["DEFAULT_TABLE", "DRIVER_OPTIONS", "SQLBackend", "from_url", "make_table"]
