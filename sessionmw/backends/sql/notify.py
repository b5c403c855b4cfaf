"""PostgreSQL: a release that others wait for sends a ``NOTIFY``; each process's waiters ``LISTEN`` on one connection.

How a waiter is woken, and why so:

* The session's row counts, in its ``state`` column, the processes that have waiters for its lock.
  A process counts itself when its first waiter of that session comes (:meth:`Notifier.wait_released`:
  one ``UPDATE``, which also reads whether the lock is still held) and uncounts itself a second after
  its last one left (:data:`LINGER`), so a queue of requests costs two writes per process, not two per
  hand-off.
* A trigger on the table (:func:`install`, created with the table) sends ``pg_notify(channel, sid)``
  when an ``UPDATE`` frees the lock of a row that counts waiting processes, in the release's own
  statement: no extra round trip, ever. The trigger's ``WHEN`` reads three columns of the row, so a
  release nobody waits for (the common case) never calls its function. An unconditional ``NOTIFY``
  would cost every release a commit serialized with every other notifying commit of the cluster
  (PostgreSQL queues notifications in commit order under one lock) and wake every listening process.
* One connection per process listens (:class:`Notifier`, a thread), shared by every waiter of that
  process, and wakes one of the process's waiters of that session per notification
  (:class:`~..wakeups.Wakeups`). A notification that finds none waiting (the waiter is between a
  failed try and its wait) is kept for the next, so a counted process misses no release and its
  waiters wait without a round trip of their own.
* The listener connects on the first wait. When it cannot, or its connection drops, a wait raises
  :class:`~sessionmw.core.errors.BackendUnavailable` and the driver polls instead; the listener is
  tried again a second later. A process that dies (or loses its listener) while counted leaves its
  count behind: releases of that session then notify for nothing, as long as the session lives.

Only psycopg 3 (``postgresql+psycopg``, what ``postgresql://`` means here) listens; other drivers poll.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from ...core.errors import BackendUnavailable
from ..wakeups import Wakeups

if TYPE_CHECKING:
    from .backend import SQLBackend

__all__ = ["LINGER", "LISTEN_RETRY", "Notifier", "channel_of", "install", "listens"]

logger = logging.getLogger("sessionmw")

#: Seconds a process stays counted as waiting for a session after its last waiter left.
LINGER = 1.0

#: Seconds before a listener that failed to connect (or lost its connection) is tried again.
LISTEN_RETRY = 1.0

#: Seconds a waiter waits for the listener to connect before it polls instead.
_CONNECT_WAIT = 5.0

#: Seconds the listener's wait for notifications lasts before it looks for processes to uncount.
_LISTEN_SLICE = 0.5

# The trigger's function: notify, and change nothing.
_BODY = """
BEGIN
  PERFORM pg_notify('{channel}', NEW.sid);
  RETURN NEW;
END
"""


def listens(dialect: sa.engine.Dialect) -> bool:
    """Tell whether a backend on ``dialect`` is woken by notifications (PostgreSQL through psycopg 3)."""
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def channel_of(table: str) -> str:
    """The channel of ``table``'s notifications, also the name of its trigger and of the trigger's function."""
    return f"{table}_wake"


def install(conn: Connection, table: sa.Table) -> bool:
    """Create (or bring up to date) the trigger that notifies waiters of ``table``; return whether it is there.

    Idempotent and safe to race (an advisory lock orders the processes that create it); it writes
    nothing when the trigger is there as it should be. Without the right to create it (the table
    belongs to another role), log a warning and return ``False``: the waiters then poll.
    """
    preparer = conn.dialect.identifier_preparer
    name = channel_of(table.name)
    quoted_table, quoted_name = preparer.quote(table.name), preparer.quote(name)
    body = _BODY.format(channel=name)
    try:
        with conn.begin():
            current = conn.execute(
                sa.text(
                    "SELECT p.prosrc FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid "
                    "WHERE g.tgname = :name AND g.tgrelid = to_regclass(:table)"
                ),
                {"name": name, "table": quoted_table},
            ).scalar()
        if current == body:
            return True
        with conn.begin():
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})
            conn.execute(
                sa.text(f"CREATE OR REPLACE FUNCTION {quoted_name}() RETURNS trigger LANGUAGE plpgsql AS $${body}$$")
            )
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {quoted_name} ON {quoted_table}"))
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER {quoted_name} BEFORE UPDATE OF lock_token ON {quoted_table} FOR EACH ROW "
                    "WHEN (OLD.state > 0 AND OLD.lock_token IS NOT NULL AND NEW.lock_token IS NULL) "
                    f"EXECUTE PROCEDURE {quoted_name}()"
                )
            )
    except sa_exc.DBAPIError as exc:
        logger.warning(
            "SQL backend: cannot create the trigger %s on %s, so waiters for a lock poll: %s",
            name,
            table.name,
            " ".join(str(exc.orig or exc).split())[:300],
        )
        return False
    return True


class Notifier:
    """This process's listener for one backend's notifications, and the waiters it wakes.

    :param backend: the PostgreSQL backend whose releases notify (its engine, table and connections).
    """

    def __init__(self, backend: SQLBackend) -> None:
        self._backend = weakref.proxy(backend)  # the backend owns this; a strong reference would keep it
        self._engine = backend.engine
        self._prefix = backend.key_prefix
        self._channel = channel_of(backend.table.name)
        t = backend.table
        key = sa.bindparam("p_key", type_=sa.String)
        #: Count this process as waiting for the session; read whether its lock is held.
        self.count = (
            sa.update(t).where(t.c.sid == key).values(state=t.c.state + 1).returning(t.c.lock_token, t.c.lock_until)
        )
        #: Uncount it (never below zero).
        self.uncount = sa.update(t).where(t.c.sid == key).values(state=sa.func.greatest(t.c.state - 1, 0))
        self.wakeups = Wakeups()
        #: Sessions this process is counted for -> (counted: the count is committed; last time a waiter came).
        self._counted: dict[str, tuple[threading.Event, float]] = {}
        self._mutex = threading.Lock()
        self._listening = threading.Event()
        self._settled = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_at: float | None = None
        self._failure = ""
        self._stopped = False
        _NOTIFIERS.add(self)

    # -- the waiters' side -------------------------------------------------------------------------

    def wait_released(self, sid: str, timeout: float) -> None:
        """Return when ``sid``'s lock is released (in any process), at once if it is free, or after ``timeout`` s."""
        key = self._prefix + sid
        self.ensure_listening()
        with self.wakeups.ticket(key) as ticket:
            if self._counted_held(key):
                ticket.wait(timeout)

    async def await_released(self, sid: str, timeout: float) -> None:
        """See :meth:`wait_released`: the first waiter's ``UPDATE`` runs in a worker thread, the wait on the loop."""
        from anyio import to_thread

        key = self._prefix + sid
        if not self._listening.is_set():
            await to_thread.run_sync(self.ensure_listening)
        with self.wakeups.ticket(key, on_loop=True) as ticket:
            counted = self._counting(key, block=False)
            held = True if counted is None else await to_thread.run_sync(self._count, key, counted)
            if held:
                await ticket.await_(timeout)

    def _counted_held(self, key: str) -> bool:
        """Make sure this process is counted for ``key``; ``False`` when found free while counting it."""
        counted = self._counting(key)
        return True if counted is None else self._count(key, counted)

    def _counting(self, key: str, block: bool = True) -> threading.Event | None:
        """Note a waiter of ``key``; return the event to set once counted, if this one must count the process.

        A waiter that finds the process counted needs no round trip: a release since reaches the
        listener, which wakes it or keeps the wake-up for it. One that finds the count under way waits
        for it (``block``; on the event loop it does not, and may wait for a release it missed until
        its wait ends, as when polling).
        """
        with self._mutex:
            entry = self._counted.get(key)
            if entry is None:
                done = threading.Event()
                self._counted[key] = (done, time.monotonic())
                return done
            self._counted[key] = (entry[0], time.monotonic())
        if block and not entry[0].is_set():
            entry[0].wait(_CONNECT_WAIT)  # the first waiter's count is under way
        return None

    def _count(self, key: str, done: threading.Event) -> bool:
        """Count this process for ``key`` (one round trip); return whether the lock is held."""
        try:
            with self._backend._begin() as conn:
                row = conn.execute(self.count, {"p_key": key}).first()
        except BaseException:
            with self._mutex:
                self._counted.pop(key, None)
            raise
        finally:
            done.set()
        if row is None:  # no session: nothing to wait for, nothing counted
            with self._mutex:
                self._counted.pop(key, None)
            return False
        token, until = row
        return token is not None and until is not None and until > time.time()

    # -- the listener ------------------------------------------------------------------------------

    def ensure_listening(self) -> None:
        """Start the listener if it does not run; raise :class:`BackendUnavailable` while it cannot."""
        if self._listening.is_set():
            return
        with self._mutex:
            thread = self._thread
            if thread is None or not thread.is_alive():
                failed = self._failed_at
                if failed is not None and time.monotonic() - failed < LISTEN_RETRY:
                    raise self._unavailable()
                self._stopped = False
                self._settled = threading.Event()
                self._thread = threading.Thread(
                    target=self._listen, args=(self._settled,), name="sessionmw-pg-listen", daemon=True
                )
                self._thread.start()
            settled = self._settled
        settled.wait(_CONNECT_WAIT)  # listening, or failed
        if not self._listening.is_set():
            raise self._unavailable()

    def _unavailable(self) -> BackendUnavailable:
        name = self._backend.name
        reason = self._failure or "connecting"
        return BackendUnavailable(f"SQL backend {name}: not listening for released locks ({reason})", backend=name)

    def _listen(self, settled: threading.Event) -> None:
        try:
            fairy = self._engine.raw_connection()
            fairy.detach()  # its own connection for the life of the listener, outside the pool
            conn: Any = fairy.dbapi_connection
            conn.autocommit = True
            conn.execute(f'LISTEN "{self._channel}"')
        except Exception as exc:
            self._failed(exc)
            settled.set()
            return
        self._failed_at = None
        self._listening.set()
        settled.set()
        try:
            while not self._stopped:
                for note in conn.notifies(timeout=_LISTEN_SLICE):
                    key = note.payload
                    # None waiting: one is between its try and its wait; keep the wake-up for it.
                    self.wakeups.wake(key, keep=key in self._counted)
                self._uncount_idle()
        except Exception as exc:
            if not self._stopped:
                self._failed(exc)
        finally:
            self._listening.clear()
            with self._mutex:
                self._counted.clear()  # notifications are lost meanwhile: count again when back
            try:
                conn.close()
            except Exception:  # already broken
                pass

    def _uncount_idle(self) -> None:
        """Uncount this process for the sessions it has had no waiter for since :data:`LINGER` seconds."""
        now = time.monotonic()
        idle: list[str] = []
        with self._mutex:
            for key, (done, last) in list(self._counted.items()):
                if done.is_set() and now - last >= LINGER and not self.wakeups.waiting(key):
                    del self._counted[key]
                    idle.append(key)
        for key in idle:
            self.wakeups.forget(key)
            try:
                with self._backend._begin() as conn:
                    conn.execute(self.uncount, {"p_key": key})
            except Exception as exc:  # left counted: its releases notify for nothing, until it is written anew
                logger.debug("could not uncount a session's waiters: %s", exc)

    def _failed(self, exc: BaseException) -> None:
        self._failed_at = time.monotonic()
        self._failure = " ".join(str(exc).split())[:200] or type(exc).__name__
        logger.warning("SQL backend: no connection listens for released locks: %s", self._failure)

    def close(self) -> None:
        """Stop listening (the thread ends within a second; a later wait starts it again)."""
        self._stopped = True
        self._listening.clear()

    def after_fork(self) -> None:
        """In a forked child: the listener did not come along; start a new one at the first wait.

        (psycopg never closes a connection of the parent from a child, so dropping it is safe. The
        parent's counts stay the parent's.)
        """
        self._listening.clear()
        self._thread = None
        self._mutex = threading.Lock()
        self._counted = {}
        self.wakeups = Wakeups()


_NOTIFIERS: weakref.WeakSet[Notifier] = weakref.WeakSet()


def _after_fork() -> None:
    for notifier in list(_NOTIFIERS):
        notifier.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
