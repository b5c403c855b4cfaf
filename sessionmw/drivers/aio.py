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
import concurrent.futures
import logging
import threading
import time
from collections.abc import Coroutine, Generator
from typing import Any

from ..backends.base import AsyncBackend, AwaitsRelease
from ..backends.wakeups import Wakeups
from ..core.errors import ReadOnlySessionError, SessionError
from ..core.hooks import SessionHooks, adopt_cookie_id
from ..core.locking import woken_wait
from ..core.ops import Log, Op, Queue, Release
from ..core.policy import Outcome, SessionCore
from ..core.route import Mispredicted, Route
from ..core.session import Session
from ._run_async import AsyncRunner
from .common import log_failed_renewal
from .waiting import log_failed_wait

__all__ = ["AsyncDriver", "AsyncRequest"]

#: ``AsyncRequest._entry`` of a request whose session's uses are not watched.
_UNWATCHED: Any = object()
#: Seconds beyond ``lock_timeout`` a worker thread waits for the event loop to load its session.
_LOOP_GRACE = 60.0


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
    """One ASGI request's session: loaded before the app runs or on first use, closed when the response starts.

    Also the request facts the core reads (``path``, ``client_ip``, ``user_agent``), taken from the
    scope only when asked: most requests write nothing and never need them.

    A deferred session (:meth:`defer`: a route in ``lazy_paths``, or one predicted to leave its
    session untouched) is loaded by ``await load_session(request)``, or on first use in a worker
    thread (a sync endpoint) by the event loop that runs the request. A first use on the loop itself
    cannot load it: on a predicted route that is a misprediction (:class:`~sessionmw.core.route.Mispredicted`),
    recorded in :attr:`mispredicted` for the adapter to answer.
    """

    # Class-level defaults: a request sets only what differs (one is made per request).
    outcome: Outcome | None = None
    finished = False
    _pending: asyncio.Task[Any] | None = None
    #: A deferred session: whether to lock when it is loaded; ``None`` when it is not deferred.
    _deferred: bool | None = None
    #: The deferral is a prediction (not ``lazy_paths``): a use on the loop is a misprediction.
    _predicted = False
    #: The request's cookie is not read yet (a predicted deferral reads it at the first use).
    _unread = False
    #: The session was first used without ``await load_session(request)`` before: read or written
    #: (or released, or upgraded) as a plain dict. An endpoint that does so needs its session loaded
    #: before it runs, or in its worker thread; one that awaits ``load_session`` first does not.
    used_unloaded = False
    #: Such a use came before the app's router had chosen an endpoint (a middleware's).
    before_routing = False
    #: ``await load_session(request)`` came first.
    _awaited = False
    #: Why a deferred session could not be had when it was used (a misprediction), or ``None``.
    mispredicted: Mispredicted | None = None
    #: ``scope["endpoint"]`` when the request came in, while uses are watched (:meth:`watch`).
    _entry: Any = _UNWATCHED
    #: Lock releases kept until the response is out (:meth:`finish`), or ``None``.
    kept: list[Release] | None = None
    #: Whether :meth:`finish` keeps a plain release until the response is out (a switch for benchmarks).
    release_after_response = True

    def __init__(self, core: SessionCore, driver: AsyncDriver, scope: Any) -> None:
        self.core = core
        self.driver = driver
        self.scope = scope
        #: The thread running the request's event loop, and that loop: a use elsewhere is in a worker thread.
        self._thread = threading.get_ident()
        self._loop = asyncio.get_running_loop()

    def detach(self) -> None:
        """Let go of the request's scope when the request is over, keeping what a late use reads.

        The scope holds the session, which holds this object: a reference cycle that only the
        garbage collector would free, several objects per request.
        """
        scope = self.scope
        self.scope = {
            "path": scope["path"],
            "headers": scope["headers"],
            "client": scope.get("client"),
            "endpoint": scope.get("endpoint"),
        }

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

    def found_cookie(self) -> tuple[str, float] | None:
        """Return ``(sid, signed_at)`` from the request's validly signed session cookie, or ``None``."""
        cookie = None
        for name, value in self.scope["headers"]:
            if name == b"cookie":
                cookie = value.decode("latin-1") if cookie is None else f"{cookie}; {value.decode('latin-1')}"
        core = self.core
        return core.sid_from_cookie(cookie, core.settings.max_age)

    def defer(self, session: Session, lock: bool, predicted: bool = False) -> None:
        """Leave the session unloaded until :meth:`aload` or its first use.

        :param predicted: the route is predicted to leave it untouched (else it is in ``lazy_paths``).
            Then ``session`` was made before the cookie was read: the first use reads it.
        """
        self._deferred = lock
        if predicted:
            self._predicted = self._unread = True
            self._entry = self.scope.get("endpoint")  # watch(), inlined: this runs on every such request
        self.core.defer(session)

    def _nothing_stored(self, session: Session) -> bool:
        """Read the cookie of a predicted deferral: tell whether it names no session (a new one then)."""
        self._unread = False
        found = self.found_cookie()
        if found is None:
            self._deferred = None  # a new session: nothing to load, wherever it is used
            return True
        adopt_cookie_id(session, found)
        return False

    def watch(self, session: Session) -> None:
        """Note the session's first use, and whether it came before routing (:attr:`before_routing`)."""
        self._entry = self.scope.get("endpoint")
        self.core.defer(session)  # the first use calls load(), even when nothing was loaded

    def _note_use(self) -> None:
        if self._awaited or self.used_unloaded:
            return
        self.used_unloaded = True
        entry = self._entry
        if entry is not _UNWATCHED and self.scope.get("endpoint") is entry:
            self.before_routing = True

    async def aload(self, session: Session) -> None:
        """Load a deferred session now (once); a failure is raised here and at every later use."""
        self._awaited = True
        lock = self._deferred
        if lock is None or self.mispredicted is not None:
            return
        if self._unread and self._nothing_stored(session):
            self.core.undefer(session)
            return
        self._deferred = None
        self.core.undefer(session)
        # Closed already (release(), or the response started) with nothing held: a lock taken now
        # would never be let go. Read it without one; it takes no change, as after release().
        closed = self.finished
        try:
            await self.open(session, lock=lock and not closed)
        except BaseException as exc:
            self.core.fail_later(session, exc)
            raise
        if closed:
            self.core.freeze_released(session)

    def load(self, session: Session) -> None:
        """The first use of the session: decode what was loaded, or load a deferred session."""
        self._note_use()
        if self._deferred is None or (self._unread and self._nothing_stored(session)):
            self.core.decode(session)
            return
        if threading.get_ident() != self._thread:
            self._on_loop(self.aload(session))  # a worker thread: the loop loads it meanwhile
            self.core.decode(session)
            return
        if self._predicted:
            raise self._unloadable(session, "it was first used on the event loop, where it cannot be loaded")
        self.core.defer(session)  # still unloaded: the app may load it and try again
        raise SessionError(
            f"{self.path} is in lazy_paths: load its session with 'await sessionmw.load_session(request)' "
            "(or Depends(load_session) in FastAPI) before an async endpoint uses it"
        )

    def _unloadable(self, session: Session, why: str) -> Mispredicted:
        """Make a predicted session unusable for the rest of the request; return the error to raise."""
        error = self.mispredicted
        if error is None:
            error = self.mispredicted = Mispredicted(
                f"the session of {self.path} was not loaded, since this endpoint had not used it before, "
                f"and {why}; the endpoint loads its session before it runs from now on"
            )
            self.core.fail_later(session, error)
        return error

    def _on_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the request's event loop from a worker thread, and return its value."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        # The loop answers within lock_timeout plus a backend timeout; a loop blocked waiting for this
        # very thread never would: give up then instead of hanging the thread forever.
        try:
            return future.result(self.core.settings.lock_timeout + _LOOP_GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise SessionError(
                f"the event loop did not load the session of {self.path} for a worker thread: is the loop "
                "blocked waiting for that thread?"
            ) from None

    async def finish(self, session: Session, responding: bool = False) -> Outcome:
        """Write back and release (once); return what the response carries.

        :param responding: the response is about to start. A write still happens now (a failed one
            is still a 503), but a plain release of the lock is kept for :meth:`release_kept`, to
            run once the response is out: the lock alone orders the user's next request.
        """
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if not self.finished:
            outcome = self.finish_unloaded(session)
            if outcome is not None:
                return outcome
            return await self._close(session, responding and self.release_after_response)
        # Closed before (release(), or a close that failed): the cookie as decided then, if at all.
        return self.core.outcome(None if self.outcome is None else self.outcome.cookie, session)

    def finish_unloaded(self, session: Session) -> Outcome | None:
        """:meth:`finish` a session that was never loaded, at once (nothing to write or release).

        Returns ``None`` when the session was loaded, or was finished already: then await :meth:`finish`.
        """
        core = self.core
        if self.finished or self._pending is not None or not core.holds_nothing(session):
            return None
        self.finished = True
        self.outcome = outcome = core.forget(session)
        return outcome

    async def _close(self, session: Session, keep_releases: bool = False) -> Outcome:
        self.finished = True
        core = self.core
        # A session nobody loaded (deferred and never used, or watched and never used), or a new one
        # nobody changed (the common anonymous case): nothing to write, nothing held, no flow to run.
        outcome = core.forget(session) if core.holds_nothing(session) else core.settle(session)
        if outcome is None:
            flow = core.close(session, now=time.time(), mono=time.monotonic(), req=self)
            if keep_releases:
                flow = self._keeping_releases(flow)
            outcome = await self.driver.run(flow)
        self.outcome = outcome
        return outcome

    def _keeping_releases(self, flow: Generator[Op, object, Outcome]) -> Generator[Op, object, Outcome]:
        """Run ``flow``, answering each plain release of a lock at once and keeping it for later.

        Only :class:`~sessionmw.core.ops.Release` is kept: a write (save-and-release, create,
        delete) goes to the backend as the flow yields it, before the response starts.
        """
        value: object = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                outcome: Outcome = stop.value
                return outcome
            error = None
            if type(op) is Release:
                if self.kept is None:
                    self.kept = []
                self.kept.append(op)
                value = True  # a release's answer changes nothing the flow decides
                continue
            try:
                value = yield op
            except BaseException as exc:  # noqa: B036 - thrown back into the flow, as the driver does
                error = exc

    async def release_kept(self) -> None:
        """Perform the lock releases :meth:`finish` kept until the response was out."""
        kept, self.kept = self.kept, None
        if kept:
            await self.driver.run(_perform(kept))

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
        self._note_use()
        if self.finished or self._pending is not None:
            return
        if threading.get_ident() == self._thread:
            self.core.freeze_released(session)
            self._pending = self._loop.create_task(self._close(session))
        else:
            self._on_loop(self.finish(session))

    def upgrade(self, session: Session) -> None:
        """``session.upgrade()`` from a sync endpoint (in a worker thread); use ``aupgrade`` on the loop."""
        if threading.get_ident() == self._thread:
            raise ReadOnlySessionError(
                "session.upgrade() needs I/O: in an async endpoint use 'await session.aupgrade()'"
            )
        self._note_use()
        self._on_loop(self.aupgrade(session))

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


def _perform(ops: list[Release]) -> Generator[Op, object, None]:
    """A flow of the releases kept by :meth:`AsyncRequest.finish`: each is tried, a failure logged.

    The response is out by then: a lock that cannot be released is not the client's problem; it
    expires after ``lock_expire`` as one left by a dead request does.
    """
    for op in ops:
        try:
            yield op
        except Exception as exc:
            yield Log(logging.WARNING, "a session lock could not be released after the response (%s); it expires", exc)
