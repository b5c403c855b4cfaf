"""The SQL backend's primitives: lock, load, create, save, release, touch, extend, delete; gc and figures.

Each is one short transaction (:mod:`.connections`) of statements built by :mod:`.table`. See the
package's notes (:mod:`sessionmw.backends.sql`) for why each is shaped so.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from ..base import Record, Touch
from .connections import PING_AFTER as PING_AFTER
from .connections import WRITE as WRITE
from .connections import Connections, _dispose
from .notify import Notifier, listens
from .table import DEFAULT_TABLE, GC_BATCH, GC_BATCH_SQLITE, GC_LEASE, Prepared, Statements, check_names, make_table
from .watchdog import Watchdog

__all__ = ["PING_AFTER", "WRITE", "SQLBackend"]

#: Rows per page of :meth:`SQLBackend.iter_records` (one short transaction each).
_PAGE = 1000


class SQLBackend(Connections, Statements):
    """Sessions in one SQL table through SQLAlchemy Core, locked by a conditional ``UPDATE``.

    :param engine: the engine to use; :meth:`close` disposes it.
    :param name: the URL for messages, without any password.
    :param table: the table's name.
    :param key_prefix: prepended to every session id, so two apps can share a table.
    :param password: a password to scrub from error messages.
    :param call_limit: seconds after which a call still waiting on the server has its socket cut (for
        drivers without a read timeout); ``None``: never.
    :param busy_timeout: SQLite: seconds a write waits for the other writers of this process (SQLite's
        own busy timeout bounds the wait for other processes).
    :param create: create the table at the first call if it is missing; ``False``: raise
        :class:`ConfigError` naming it instead (a store opened by an administration command).
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
        busy_timeout: float = 10.0,
        create: bool = True,
    ) -> None:
        check_names(table, key_prefix)
        self.name = name
        self.key_prefix = key_prefix
        self.engine = engine
        self._watchdog = Watchdog(call_limit) if call_limit is not None else None
        # A backend dropped without close() still closes its pooled connections (drivers warn otherwise).
        self._finalizer = weakref.finalize(self, _dispose, engine, self._watchdog)
        self.metadata = sa.MetaData()
        self.table = make_table(self.metadata, table)
        self._password = password
        self._ready = False
        self._ready_mutex = threading.Lock()
        # The same pool; its transactions carry the WRITE option.
        self._writer = engine.execution_options(**{WRITE: True})
        self._sql = Prepared(self.table, engine.dialect.update_returning)
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self._turn_key = os.path.realpath(database) if database else None
        self._busy_timeout = busy_timeout
        self._create = create
        self._record_cols = self._sql.record_cols
        # PostgreSQL wakes a waiter for a lock by NOTIFY (notify.py); the other databases poll.
        self._notifier: Notifier | None = None
        if listens(engine.dialect):
            self._notifier = Notifier(self)
            self.wait_released = self._notifier.wait_released
            self.await_released = self._notifier.await_released

    # -- primitives ----------------------------------------------------------------------------

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid`` (taking over an expired lock); when taken, return its record too."""
        sql = self._sql
        now = time.time()
        where = {"p_key": self._key(sid), "p_now": now}
        with self._begin() as conn:
            result = conn.execute(sql.lock, {**where, "p_token": token, "p_until": now + expire})
            if self.engine.dialect.update_returning:
                row = result.mappings().first()
                if row is not None:
                    return True, self._to_record(row, now)
            elif result.rowcount == 1:
                row = conn.execute(sql.select, where).mappings().first()
                return True, None if row is None else self._to_record(row, now)
            # Not ours: either someone else holds it, or there is no row (nothing to lock, nothing to load).
            exists = conn.execute(sql.exists, where).first()
        return (exists is None), None

    def load(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking, or ``None``."""
        now = time.time()
        with self._begin(write=False) as conn:
            row = conn.execute(self._sql.select, {"p_key": self._key(sid)}).mappings().first()
        return None if row is None else self._to_record(row, now)

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Insert a new session if ``sid`` is unused (a row past its TTL counts as unused)."""
        key = self._key(sid)
        now = time.time()
        values = self._columns(record, ttl, now)
        try:
            with self._begin() as conn:
                conn.execute(
                    self._sql.insert, {"sid": key, "state": 0, "lock_token": None, "lock_until": None, **values}
                )
            return True
        except sa_exc.IntegrityError:
            pass  # rolled back; the connection went back to the pool clean
        # The id is taken, unless by a row past its TTL: take that one over. (A second transaction, as
        # the failed INSERT ends the first on PostgreSQL; it runs only when a fresh id was in use.)
        with self._begin() as conn:
            params = {"p_key": key, "p_now": now, "state": 0, "lock_token": None, "lock_until": None, **values}
            return conn.execute(self._sql.revive, params).rowcount == 1

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock in one ``UPDATE``, only if ``token`` still holds it."""
        now = time.time()
        params = {"p_key": self._key(sid), "p_token": token, "p_now": now, "lock_token": None, "lock_until": None}
        params.update(self._columns(record, ttl, now))
        with self._begin() as conn:
            return conn.execute(self._sql.save, params).rowcount == 1

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, refreshing last access first when ``touch`` is given."""
        now = time.time()
        params = {"p_key": self._key(sid), "p_token": token, "p_now": now}
        with self._begin() as conn:
            if touch is None:
                return conn.execute(self._sql.release, params).rowcount == 1
            params.update(self._touch_params(touch, now))
            return conn.execute(self._sql.release_touch, params).rowcount == 1

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access of a live session without a lock and without rewriting its data."""
        now = time.time()
        with self._begin() as conn:
            conn.execute(self._sql.touch, {"p_key": self._key(sid), "p_now": now, **self._touch_params(touch, now)})

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's expiry to ``expire`` seconds from now, if ``token`` still holds it."""
        now = time.time()
        params = {"p_key": self._key(sid), "p_token": token, "p_now": now, "p_until": now + expire}
        with self._begin() as conn:
            return conn.execute(self._sql.extend, params).rowcount == 1

    def delete(self, sid: str) -> None:
        """Delete the session's row; a lock held on it goes too, and its holder's save then fails."""
        with self._begin() as conn:
            conn.execute(self._sql.delete, {"p_key": self._key(sid)})

    def close(self) -> None:
        """Close every pooled connection (the backend reconnects if it is used again)."""
        if self._notifier is not None:
            self._notifier.close()
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
            with self._begin(write=False) as conn:
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
        with self._begin(write=False) as conn:
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

    def gc(self, now: float, limit: int | None = None) -> int:
        """Delete the rows under this prefix past their expiry or TTL, at most ``limit``; return how many.

        In transactions of at most :data:`~.table.GC_BATCH` rows each (:data:`~.table.GC_BATCH_SQLITE`
        on SQLite), so that a backlog of millions never holds locks that stall requests; between two,
        the thread yields, so that a request waiting for SQLite's write turn gets it.
        """
        step = GC_BATCH_SQLITE if self.engine.dialect.name == "sqlite" else GC_BATCH
        removed = 0
        while True:
            size = step if limit is None else min(step, limit - removed)
            if size <= 0:
                return removed
            if removed:
                time.sleep(0)  # let a waiting request have the write turn before the next transaction
            with self._begin() as conn:
                batch = self._gc_batch(now, size)
                if batch is not None:
                    picked = n = int(conn.execute(batch).rowcount)
                else:  # MySQL/MariaDB: pick, then delete by primary key
                    keys = list(conn.execute(self._gc_pick(now, size)).scalars())
                    picked, n = len(keys), int(conn.execute(self._gc_delete(now, keys)).rowcount) if keys else 0
            removed += n
            if picked < size:
                return removed

    def claim_gc(self, every: float) -> bool:
        """Take this prefix's turn to collect expired sessions for ``every`` seconds, unless another worker has it.

        The turn is the ``lock_until`` of a row without data (:data:`~.table.GC_LEASE`), taken by the
        same conditional ``UPDATE`` as a session's lock, and never released: it runs out.
        """
        now = time.time()
        renew, create = self._gc_claim(now, every)
        with self._begin() as conn:
            if conn.execute(renew).rowcount == 1:
                return True
            if conn.execute(self._sql.exists, {"p_key": self._key(GC_LEASE)}).first() is not None:
                return False
        try:
            with self._begin() as conn:
                conn.execute(create)
        except sa_exc.IntegrityError:
            return False  # another worker created it just now: the turn is theirs
        return True

    def stats(self) -> dict[str, float]:
        """Return ``rows`` (rows under this prefix, expired included) and ``expired_rows`` (what gc would remove)."""
        t = self.table
        now = time.time()
        dead = sa.func.sum(sa.case((self._dead(now), 1), else_=0))
        # count(data): the gc turn's row (no data) is no session
        query = sa.select(sa.func.count(t.c.data), dead).select_from(t).where(self._prefix_match())
        with self._begin(write=False) as conn:
            rows, expired = conn.execute(query).one()
        return {"rows": float(rows or 0), "expired_rows": float(expired or 0)}
