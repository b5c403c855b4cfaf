"""The asyncio driver and one ASGI request's session glue.

The driver's loop is :mod:`._run_async`; this module is its I/O layer: waiting for a lock, and one
timer per driver that extends the locks held, every third of ``lock_expire``
(:class:`~.common.Renewals`).

A waiter awaits the backend's wake-up where the backend offers one
(:class:`~sessionmw.backends.base.AwaitsRelease`: a release in any process wakes it, and no thread is
parked); otherwise, or when that wait fails, a ticket of this process
(:class:`~sessionmw.backends.wakeups.Wakeups`), which a release in this process wakes, one waiter per
release. Then it tries the lock again: woken, or after the core's delay (a waiter that can be woken
skips the back-off's short first delays, :func:`~sessionmw.core.locking.woken_wait`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..backends.base import AsyncBackend, AwaitsRelease
from ..backends.wakeups import Wakeups
from ..core.errors import ReadOnlySessionError, SessionError
from ..core.hooks import SessionHooks
from ..core.locking import woken_wait
from ..core.ops import Queue
from ..core.policy import Outcome, SessionCore
from ..core.route import Route
from ..core.session import Session
from ._run_async import AsyncRunner
from .common import log_failed_renewal
from .waiting import log_failed_wait

__all__ = ["AsyncDriver", "AsyncRequest"]


class AsyncDriver(AsyncRunner):
    """Runs core flows against an :class:`AsyncBackend` on one asyncio event loop."""

    def __init__(self, backend: AsyncBackend, lock_expire: float) -> None:
        super().__init__(lock_expire)
        self.backend = backend
        #: The backend's wake-up on a release in any process, if it has one.
        self._await_released = backend.await_released if isinstance(backend, AwaitsRelease) else None
        #: This process's waiters that wait on a ticket, woken by a release here.
        self._wakeups = Wakeups()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # A backend that never blocks (memory) is called directly: no coroutine per primitive.
        self._inline = backend if getattr(backend, "nonblocking", False) else None

    async def _sleep(self, sid: str, delay: float) -> float:
        wait = self._await_released
        if wait is not None:
            try:
                await wait(sid, woken_wait(delay))
                return time.monotonic()
            except Exception as exc:
                log_failed_wait(exc)  # then wait as if the backend could not wake us
        with self._wakeups.ticket(sid, on_loop=True) as ticket:
            await ticket.await_(delay)
        return time.monotonic()

    def _queue(self, op: Queue) -> bool | None:
        answer = super()._queue(op)
        if op.sid not in self._waiters:
            self._wakeups.forget(op.sid)
        return answer

    def _wake(self, sid: str) -> None:
        # One waiter per release; one between its failed try and its wait finds the wake-up kept.
        self._wakeups.wake(sid, keep=sid in self._waiters)

    def _hold(self, sid: str, token: str) -> None:
        self.renewals.add(sid, token, time.monotonic())
        loop = self._timer_loop
        if self._timer is None or loop is None or loop.is_closed():
            self._arm(asyncio.get_running_loop())

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake up when the next renewal is due (on the loop of the request that holds the lock)."""
        self._timer_loop = loop
        due = self.renewals.next_due()
        self._timer = None if due is None else loop.call_later(max(0.0, due - time.monotonic()), self._due)

    def _due(self) -> None:
        """Extend every lock whose renewal is due, then wait for the next one."""
        loop = asyncio.get_running_loop()
        for sid, token in self.renewals.take_due(time.monotonic()):
            task = loop.create_task(self._renew(sid, token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm(loop)

    async def _renew(self, sid: str, token: str) -> None:
        try:
            still = await self.backend.aextend(sid, token, self.renewals.expire)
        except Exception as exc:
            log_failed_renewal(exc)
            still = True
        self.renewals.renewed(token, still, time.monotonic())
        if self._timer is None:
            self._arm(asyncio.get_running_loop())


class AsyncRequest(SessionHooks):
    """One ASGI request's session: loaded before the app runs, closed when the response starts.

    Also the request facts the core reads (``path``, ``client_ip``, ``user_agent``), taken from the
    scope only when asked: most requests write nothing and never need them.
    """

    def __init__(self, core: SessionCore, driver: AsyncDriver, scope: Any) -> None:
        self.core = core
        self.driver = driver
        self.scope = scope
        self.outcome: Outcome | None = None
        self.finished = False
        self._pending: asyncio.Task[Any] | None = None
        #: On a route in ``lazy_paths``: whether to lock, until the app asks for the session.
        self._deferred: bool | None = None

    @property
    def path(self) -> str:
        """The request path."""
        path: str = self.scope["path"]
        return path

    @property
    def client_ip(self) -> str | None:
        """The client's address as the server reported it."""
        client = self.scope.get("client")
        return client[0] if client else None

    @property
    def user_agent(self) -> str | None:
        """The User-Agent header, if any."""
        for name, value in self.scope["headers"]:
            if name == b"user-agent":
                agent: str = value.decode("latin-1")
                return agent
        return None

    async def open(self, session: Session, lock: bool) -> None:
        """Load the session before the app runs (its data is decoded on first use)."""
        flow = self.core.open(session, lock=lock, now=time.time(), mono=time.monotonic(), req=self, decode_later=True)
        await self.driver.run(flow)

    def defer(self, session: Session, lock: bool) -> None:
        """Leave the session unloaded until :meth:`aload` (``await load_session(request)``)."""
        self._deferred = lock
        self.core.defer(session)

    async def aload(self, session: Session) -> None:
        """Load a deferred session now (once); a failure is raised here and at every later use."""
        lock = self._deferred
        if lock is None:
            return
        self._deferred = None
        self.core.undefer(session)
        try:
            await self.open(session, lock=lock)
        except BaseException as exc:
            self.core.fail_later(session, exc)
            raise

    def load(self, session: Session) -> None:
        """The first use of the session: decode what was loaded, or load a deferred session."""
        if self._deferred is None:
            self.core.decode(session)
            return
        if _in_loop():
            self.core.defer(session)  # still unloaded: the app may load it and try again
            raise SessionError(
                f"{self.path} is in lazy_paths: load its session with 'await sessionmw.load_session(request)' "
                "(or Depends(load_session) in FastAPI) before an async endpoint uses it"
            )
        from anyio import from_thread

        from_thread.run(self.aload, session)
        self.core.decode(session)

    async def finish(self, session: Session) -> Outcome:
        """Write back and release (once); return what the response carries."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if not self.finished:
            return await self._close(session)
        # Closed before (release(), or a close that failed): the cookie as decided then, if at all.
        return self.core.outcome(None if self.outcome is None else self.outcome.cookie, session)

    async def _close(self, session: Session) -> Outcome:
        self.finished = True
        core = self.core
        # A lazy route's session nobody loaded, or a new one nobody changed (the common anonymous
        # case): nothing to write, nothing held, no flow to run.
        outcome = core.forget(session) if self._deferred is not None else core.settle(session)
        if outcome is None:
            flow = core.close(session, now=time.time(), mono=time.monotonic(), req=self)
            outcome = await self.driver.run(flow)
        self.outcome = outcome
        return outcome

    async def abort(self, session: Session) -> None:
        """Release the lock without writing, if the session was not finished."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if not self.finished:
            self.finished = True
            await self.driver.run(self.core.abort(session))

    def release(self, session: Session) -> None:
        """``session.release()``: frozen at once; written and unlocked now (or, on the loop, at once after)."""
        if self.finished or self._pending is not None:
            return
        if _in_loop():
            self.core.freeze_released(session)
            self._pending = asyncio.get_running_loop().create_task(self._close(session))
        else:
            from anyio import from_thread

            from_thread.run(self.finish, session)

    def upgrade(self, session: Session) -> None:
        """``session.upgrade()`` from a sync endpoint (in a worker thread); use ``aupgrade`` on the loop."""
        if _in_loop():
            raise ReadOnlySessionError(
                "session.upgrade() needs I/O: in an async endpoint use 'await session.aupgrade()'"
            )
        from anyio import from_thread

        from_thread.run(self.aupgrade, session)

    async def aupgrade(self, session: Session) -> None:
        """Re-read the session under its lock."""
        if self.finished:
            raise ReadOnlySessionError("the session was already released; it cannot take a lock now")
        self.core.apply_route(session, Route())
        if self._deferred is not None:  # never loaded: load it under the lock straight away
            self._deferred = True
            await self.aload(session)
            return
        self.core.reset_for_upgrade(session)
        await self.open(session, lock=True)
        self.core.decode(session)


def _in_loop() -> bool:
    """Tell whether the caller runs on an event loop (not in a worker thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
