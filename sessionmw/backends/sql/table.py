"""The SQL backend's table and the statement pieces its calls are built from.

Rules of this module: no I/O. :func:`make_table` is the one definition of the sessions table;
:class:`Prepared` holds the statements of the per-request primitives, built once per backend with
bound parameters; :class:`Statements` (a base of :class:`~sessionmw.backends.sql.SQLBackend`, so its
methods are the backend's own) builds the ``WHERE`` clauses and column values every call uses, and
reads rows back into records.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine, RowMapping

from ...core.errors import ConfigError
from ..base import Record, Touch, decode_record, encode_record

__all__ = [
    "DEFAULT_TABLE",
    "GC_BATCH",
    "GC_BATCH_SQLITE",
    "GC_LEASE",
    "Prepared",
    "Statements",
    "check_names",
    "make_table",
]

#: The table's name when the URL has no ``table`` option.
DEFAULT_TABLE = "sessmw_sessions"

#: Rows one gc transaction deletes at most.
GC_BATCH = 1000
#: ... on SQLite, where a transaction that writes holds the whole database: about 10 ms of deleting.
GC_BATCH_SQLITE = 200

#: The row (under the key prefix) whose ``lock_until`` is the background gc's turn: no session's
#: name, since handles start ``h1.`` and raw ids are 43 characters (:mod:`sessionmw.core.handles`).
#: It has no data, so no listing, count or gc ever sees it as a session.
GC_LEASE = "gc"

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}\Z")
_SID_LEN = 128
_MAX_PREFIX = 64
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


def check_names(table: str, key_prefix: str) -> None:
    """Raise :class:`ConfigError` unless ``table`` is a plain identifier and ``key_prefix`` leaves room for ids."""
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


class Prepared:
    """The statements of the per-request primitives, built once with bound parameters (names start ``p_``).

    Building a statement and computing its cache key costs about 100 µs of Python per call; a statement
    built once keeps its cache key, so each call finds its compiled form in SQLAlchemy's compiled cache
    at once. The SQL text is then the same on every call, which psycopg prepares on the server after a
    few executions (its ``prepare_threshold``). Column values of ``insert`` and ``save`` are passed as
    parameters named after their columns.
    """

    def __init__(self, table: sa.Table, update_returning: bool) -> None:
        t = self.table = table
        key = sa.bindparam("p_key", type_=sa.String)
        now = sa.bindparam("p_now", type_=sa.Double)
        token = sa.bindparam("p_token", type_=sa.String)
        holds = sa.and_(t.c.sid == key, t.c.lock_token == token, t.c.lock_until > now)
        alive = sa.or_(t.c.ttl_until.is_(None), t.c.ttl_until > now)
        #: The record's columns, as :meth:`Statements._to_record` reads them.
        self.record_cols = (t.c.data, t.c.last_access, t.c.last_ip, t.c.expires, t.c.ttl_until)
        lock = (
            sa.update(t)
            .where(t.c.sid == key, sa.or_(t.c.lock_token.is_(None), t.c.lock_until < now))
            .values(lock_token=token, lock_until=sa.bindparam("p_until", type_=sa.Double))
        )
        #: Take a free or expired lock (with ``RETURNING`` the record, where the database has it).
        self.lock = lock.returning(*self.record_cols) if update_returning else lock
        self.select = sa.select(*self.record_cols).where(t.c.sid == key)
        self.exists = sa.select(t.c.sid).where(t.c.sid == key)
        self.insert = sa.insert(t)
        #: Replace a row past its TTL (or without data) by a new session's.
        self.revive = sa.update(t).where(
            t.c.sid == key, sa.or_(t.c.data.is_(None), sa.and_(t.c.ttl_until.is_not(None), t.c.ttl_until <= now))
        )
        self.save = sa.update(t).where(holds)
        self.release = sa.update(t).where(holds).values(lock_token=None, lock_until=None)
        # A touch changes last access, expiry and TTL, and the last IP when one is given.
        touched = {
            "last_access": sa.bindparam("p_last_access", type_=sa.Double),
            "expires": sa.bindparam("p_expires", type_=sa.Double),
            "ttl_until": sa.bindparam("p_ttl_until", type_=sa.Double),
            "last_ip": sa.func.coalesce(sa.bindparam("p_last_ip", type_=sa.String), t.c.last_ip),
        }
        #: Release the lock and, on a session still within its TTL, touch it: one ``UPDATE``.
        self.release_touch = (
            sa.update(t)
            .where(holds)
            .values(
                lock_token=None,
                lock_until=None,
                **{name: sa.case((alive, value), else_=t.c[name]) for name, value in touched.items()},
            )
        )
        self.touch = sa.update(t).where(t.c.sid == key, t.c.data.is_not(None), alive).values(**touched)
        self.extend = sa.update(t).where(holds).values(lock_until=sa.bindparam("p_until", type_=sa.Double))
        self.delete = sa.delete(t).where(t.c.sid == key)


class Statements:
    """The pieces of statements of :class:`~sessionmw.backends.sql.SQLBackend`, over its table and prefix."""

    table: sa.Table
    key_prefix: str
    engine: Engine

    def _key(self, sid: str) -> str:
        return self.key_prefix + sid

    def _live(self, now: float) -> sa.ColumnElement[bool]:
        t = self.table
        return sa.and_(t.c.data.is_not(None), sa.or_(t.c.ttl_until.is_(None), t.c.ttl_until > now))

    def _prefix_range(self) -> sa.ColumnElement[bool]:
        """Match exactly the rows under this key prefix, as a range of the primary key where it can be one.

        For scans in ``sid`` order (:meth:`SQLBackend.iter_records`). SQLite's ``LIKE`` ignores ASCII case and never
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

    def _gc_batch(self, now: float, limit: int) -> sa.Delete | None:
        """One batch of gc: delete at most ``limit`` rows under this prefix that expired before ``now``.

        In one short transaction, so that a backlog of millions never holds a lock for long:
        PostgreSQL picks the rows with ``FOR UPDATE SKIP LOCKED`` (a row a request is writing now is
        left for the next batch, and rechecked once locked), SQLite in a subquery under its one
        writer; both find them through the ``expires`` and ``ttl_until`` indexes and delete them by
        primary key. ``None`` on MySQL/MariaDB, which take no ``LIMIT`` in a subquery on the table
        they delete from: see :meth:`_gc_pick`.
        """
        t = self.table
        if self.engine.dialect.name in ("mysql", "mariadb"):
            return None
        pick = sa.select(t.c.sid).where(self._prefix_match(), self._dead(now)).limit(limit)
        if self.engine.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        return sa.delete(t).where(t.c.sid.in_(pick))

    def _gc_pick(self, now: float, limit: int) -> sa.Select[str]:
        """MySQL/MariaDB, first step of a batch: read (locking nothing) the keys of at most ``limit`` expired rows.

        Then :meth:`_gc_delete` deletes them by primary key. A ``DELETE ... WHERE expired LIMIT n``
        would lock every row it scans (and the gaps between them) until it commits, and so stall
        requests on sessions that are not expired at all.
        """
        t = self.table
        return sa.select(t.c.sid).where(self._prefix_match(), self._dead(now)).limit(limit)

    def _gc_delete(self, now: float, keys: list[str]) -> sa.Delete:
        """MySQL/MariaDB, second step: delete the picked rows that are still expired (by primary key)."""
        t = self.table
        return sa.delete(t).where(t.c.sid.in_(keys), self._dead(now))

    def _gc_claim(self, now: float, every: float) -> tuple[sa.Update, sa.Insert]:
        """The statements that take the gc turn: renew the lease row once it ran out, or create it."""
        t = self.table
        key = self._key(GC_LEASE)
        renew = (
            sa.update(t)
            .where(t.c.sid == key, t.c.data.is_(None), sa.or_(t.c.lock_until.is_(None), t.c.lock_until <= now))
            .values(lock_until=now + every)
        )
        create = sa.insert(t).values(
            sid=key,
            state=0,
            created=now,
            last_access=now,
            idle_override=False,
            data=None,
            expires=None,
            ttl_until=None,
            lock_token=GC_LEASE,
            lock_until=now + every,
        )
        return renew, create

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
    def _touch_params(touch: Touch, now: float) -> dict[str, Any]:
        """The parameters of :attr:`Prepared.touch` and :attr:`Prepared.release_touch`."""
        return {
            "p_last_access": touch.last_access,
            "p_expires": touch.expires,
            "p_ttl_until": None if touch.ttl is None else now + touch.ttl,
            "p_last_ip": _clip(touch.last_ip, 45),
        }
