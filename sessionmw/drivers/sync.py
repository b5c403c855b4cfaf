"""The sync driver and one WSGI or Flask request's session glue.

The driver's loop is :mod:`._run_sync` (generated from the async one); this module is its I/O
layer: waiting for a lock, and one daemon thread that extends the locks held, every third of
``lock_expire`` (:class:`~.common.Renewals`). It imports no event loop.

A waiter waits for the backend's wake-up where the backend offers one
(:class:`~sessionmw.backends.base.WaitsForRelease`: a release in any process wakes it); otherwise, or
when that wait fails, on a ticket of this process (:class:`~sessionmw.backends.wakeups.Wakeups`),
which a release in this process wakes, one waiter per release. Then it tries the lock again: woken,
or after the core's delay (a waiter that can be woken skips the back-off's short first delays,
:func:`~sessionmw.core.locking.woken_wait`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..backends.base import Backend, WaitsForRelease
from ..backends.wakeups import Wakeups
from ..core.cookies import IdSigner
from ..core.errors import ReadOnlySessionError
from ..core.hooks import SessionHooks
from ..core.locking import woken_wait
from ..core.ops import Queue
from ..core.policy import Outcome, RequestFacts, SessionCore
from ..core.route import Route
from ..core.session import Session
from ._run_sync import SyncRunner
from .common import log_failed_renewal
from .waiting import log_failed_wait

__all__ = ["SyncDriver", "SyncRequest"]


class SyncDriver(SyncRunner):
    """Runs core flows against a sync :class:`Backend`, from any number of threads."""

    def __init__(self, backend: Backend, lock_expire: float) -> None:
        super().__init__(lock_expire)
        self.backend = backend
        self._mutex = threading.Lock()
        #: The backend's wake-up on a release in any process, if it has one.
        self._wait_released = backend.wait_released if isinstance(backend, WaitsForRelease) else None
        #: This process's waiters that wait on a ticket, woken by a release here.
        self._wakeups = Wakeups()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def _sleep(self, sid: str, delay: float) -> float:
        wait = self._wait_released
        if wait is not None:
            try:
                wait(sid, woken_wait(delay))
                return time.monotonic()
            except Exception as exc:
                log_failed_wait(exc)  # then wait as if the backend could not wake us
        with self._wakeups.ticket(sid) as ticket:
            ticket.wait(delay)
        return time.monotonic()

    def _queue(self, op: Queue) -> bool | None:
        with self._mutex:
            answer = super()._queue(op)
            if op.sid not in self._waiters:
                self._wakeups.forget(op.sid)
            return answer

    def _wake(self, sid: str) -> None:
        # One waiter per release; one between its failed try and its wait finds the wake-up kept.
        self._wakeups.wake(sid, keep=sid in self._waiters)

    def _hold(self, sid: str, token: str) -> None:
        with self._cond:
            self.renewals.add(sid, token, time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew_loop, name="sessionmw-lock-renewer", daemon=True)
                self._thread.start()

    def _renew_loop(self) -> None:
        renewals = self.renewals
        while True:
            with self._cond:
                due: list[tuple[str, str]] = []
                while not self._stopped and not due:
                    at = renewals.next_due()
                    now = time.monotonic()
                    if at is not None and at <= now:
                        due = renewals.take_due(now)
                    else:
                        self._cond.wait(None if at is None else at - now)
                if self._stopped:
                    return
            for sid, token in due:
                try:
                    still = self.backend.extend(sid, token, renewals.expire)
                except Exception as exc:
                    log_failed_renewal(exc)
                    still = True
                with self._cond:
                    renewals.renewed(token, still, time.monotonic())

    def close(self) -> None:
        """Stop the renewal thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify()


class SyncRequest(SessionHooks):
    """One WSGI or Flask request's session: loaded on first access, closed by the adapter.

    :param route: tells the request's route when the session is first loaded (Flask knows its
        endpoint only then); ``None`` when the adapter knew it up front.
    :param signer: signs and verifies this request's cookie (Flask reads its keys per request).
    """

    def __init__(
        self,
        core: SessionCore,
        driver: SyncDriver,
        req: RequestFacts,
        route: Callable[[], Route] | None = None,
        signer: IdSigner | None = None,
    ) -> None:
        self.core = core
        self.driver = driver
        self.req = req
        self.resolve_route = route
        self.signer = signer
        self.outcome: Outcome | None = None
        self.finished = False

    def session(self, route: Route, found: tuple[str, float | None] | None, cls: type[Session] = Session) -> Session:
        """Return the request's session, lazy when there is a cookie to load or a route to learn."""
        s = self.core.new_session(route, found, self, cls)
        if not route.excluded and (found is not None or self.resolve_route is not None):
            self.core.defer(s)
        return s

    def load(self, session: Session) -> None:
        """Load the session (taking its lock unless the route is read-only)."""
        if self.resolve_route is not None:
            self.core.apply_route(session, self.resolve_route())
        self._open(session, lock=None)

    def _open(self, session: Session, lock: bool | None) -> None:
        flow = self.core.open(session, lock=lock, now=time.time(), mono=time.monotonic(), req=self.req)
        self.driver.run(flow)

    def finish(self, session: Session, *, on_modified: bool = False, refresh: bool = False) -> Outcome:
        """Write back and release (once); return what the response carries."""
        if self.finished:
            # Closed before (release(), or a close that failed): the cookie as decided then, if at all.
            return self.core.outcome(None if self.outcome is None else self.outcome.cookie, session)
        self.finished = True
        flow = self.core.close(
            session,
            now=time.time(),
            mono=time.monotonic(),
            req=self.req,
            on_modified=on_modified,
            refresh=refresh,
            signer=self.signer,
        )
        self.outcome = self.driver.run(flow)
        return self.outcome

    def abort(self, session: Session) -> None:
        """Release the lock without writing, if the session was not finished."""
        if not self.finished and not self.core.holds_nothing(session):
            self.finished = True
            self.driver.run(self.core.abort(session))

    def release(self, session: Session) -> None:
        """``session.release()``: write back and release now."""
        self.finish(session)

    def upgrade(self, session: Session) -> None:
        """``session.upgrade()``: re-read under the lock."""
        if self.finished:
            raise ReadOnlySessionError("the session was already released; it cannot take a lock now")
        self.core.reset_for_upgrade(session)
        self._open(session, lock=True)
