"""Opening a request's session: load it, taking its lock and waiting as configured.

Rules of this module: those of :mod:`sessionmw.core.policy`; its flows yield operations
(:mod:`sessionmw.core.ops`) and do no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from ..backends.base import Record
from .config import Settings
from .errors import BackendUnavailable, SessionLockTimeout, TooManyWaiters
from .events import emit
from .handles import handle_of
from .lifetime import Lifetime
from .locking import new_lock_token, wait_delays
from .ops import Delete, Load, LockAndLoad, Log, Op, Queue, Release, Sleep
from .outcome import NO_REQUEST, RequestFacts
from .route import Route
from .serializers import Serializer
from .session import Session
from .state import RequestState

__all__ = ["READ_ONLY", "Opening", "set_route"]


class Opening:
    """The flows that load a session (part of :class:`~sessionmw.core.policy.SessionCore`)."""

    settings: Settings
    serializer: Serializer
    lifetime: Lifetime
    #: Listeners are configured: the flows yield events (:func:`~sessionmw.core.events.emit`).
    listening: bool

    def open(
        self,
        s: Session,
        *,
        lock: bool | None,
        now: float,
        mono: float,
        req: RequestFacts = NO_REQUEST,
        decode_later: bool = False,
    ) -> Generator[Op, object, None]:
        """Load the cookie's session into ``s`` (taking its lock when ``lock``), or leave ``s`` new.

        ``lock=None`` takes the lock unless the route is read-only.

        With ``decode_later`` the data is deserialized on first access (:meth:`decode`), so a route
        that never touches its session does not pay for it.

        Raises :class:`SessionLockTimeout` (or :class:`TooManyWaiters`) when the lock is not had in
        time; nothing is held then.
        """
        flow = self._open(s, lock=lock, now=now, mono=mono, req=req, decode_later=decode_later)
        if not self.listening:
            return (yield from flow)
        try:
            return (yield from flow)
        except BackendUnavailable:
            sid = s._state.cookie_sid
            yield emit("backend_unavailable", req.path, None if sid is None else handle_of(sid))
            raise

    def _open(
        self,
        s: Session,
        *,
        lock: bool | None,
        now: float,
        mono: float,
        req: RequestFacts = NO_REQUEST,
        decode_later: bool = False,
    ) -> Generator[Op, object, None]:
        """:meth:`open`, without the ``backend_unavailable`` event."""
        st = s._state
        sid = st.cookie_sid
        if sid is None:
            return
        if lock is None:
            lock = not st.read_only
        token: str | None = None
        if not lock:
            rec = yield from Load(sid)
        else:
            token = new_lock_token()
            rec = yield from self._acquire(st, sid, token, mono, req)
        if rec is None:
            # An id we signed but do not hold (expired from the store, or deleted): never adopted.
            if token is not None:
                yield Release(sid, token)
            if self.listening:
                yield emit("missing", req.path, handle_of(sid))
            return
        reason = self.lifetime.expiry_reason(rec, now)
        if reason is not None:
            st.timed_out = True
            yield Delete(sid)
            if token is not None:
                yield Release(sid, token)
            yield Log(logging.DEBUG, "session timed out; a new one starts (%s)", req.path or "?")
            if self.listening:
                yield emit("expired", req.path, handle_of(sid), rec.user_id, reason)
            return
        if decode_later:
            st.pending = rec.data
            s._make_lazy()
        else:
            data = self._loads(rec.data)
            if data is None:
                # Keep the record for inspection (gc removes it); the request starts a new session.
                yield Log(logging.ERROR, "stored session data cannot be read; starting a new session")
                if token is not None:
                    yield Release(sid, token)
                return
            s._fill(data)
        # The stored record is this request's session from now on.
        st.id = st.stored_id = sid
        st.record = rec
        st.token = token
        st.user_id = rec.user_id
        st.user_bound = rec.user_id is not None
        st.idle_override = rec.idle_override
        st.idle_timeout = rec.idle_timeout if rec.idle_override else self.settings.idle_timeout
        if self.listening:
            yield emit("loaded", req.path, handle_of(sid), rec.user_id)

    def _acquire(
        self, st: RequestState, sid: str, token: str, mono: float, req: RequestFacts
    ) -> Generator[Op, object, Record | None]:
        """Take ``sid``'s lock, waiting as the settings say; return its record (or ``None``)."""
        settings = self.settings
        started = mono
        queued = False
        try:
            while True:
                locked, rec = yield from LockAndLoad(sid, token, settings.lock_expire)
                if locked:
                    break
                if not queued:
                    if not (yield from Queue(sid, True, settings.max_waiters)):
                        if self.listening:
                            yield emit("too_many_waiters", req.path, handle_of(sid))
                        raise TooManyWaiters(
                            f"too many requests ({settings.max_waiters}) already wait for this "
                            "session's lock; try again shortly",
                            sid_hint=sid[:6],
                            timeout=settings.lock_timeout,
                        )
                    queued = True
                delay = wait_delays(started, settings.lock_timeout, mono)
                if delay is None:
                    if self.listening:
                        yield emit("lock_timeout", req.path, handle_of(sid), seconds=mono - started)
                    raise SessionLockTimeout(
                        f"the session is locked by another request and was not released within "
                        f"lock_timeout={settings.lock_timeout:g} s; try again shortly",
                        sid_hint=sid[:6],
                        timeout=settings.lock_timeout,
                    )
                mono = yield from Sleep(sid, delay)
        finally:
            if queued:
                yield Queue(sid, False, settings.max_waiters)
        st.lock_mono = mono
        waited = mono - started
        if waited > 0:
            path = req.path or "?"
            if settings.lock_warn is not None and waited > settings.lock_warn:
                yield Log(logging.WARNING, "waited %.3f s for the session lock on %s", waited, path)
            else:
                yield Log(logging.DEBUG, "waited %.3f s for the session lock on %s", waited, path)
            if self.listening:
                yield emit("lock_waited", req.path, handle_of(sid), seconds=waited)
        rec_: Record | None = rec
        return rec_

    def decode(self, s: Session) -> None:
        """Fill ``s`` from the data :meth:`open` left undecoded (``decode_later``)."""
        if s._lazy:
            s._unlazy()
        st = s._state
        raw, st.pending = st.pending, None
        if raw is None:
            return
        data = self._loads(raw)
        # Unreadable data: the session goes on empty, and a write replaces the bad record.
        s._fill(data if data is not None else {})

    def _loads(self, raw: bytes) -> dict[str, Any] | None:
        try:
            return self.serializer.loads(raw)
        except Exception:
            return None

    def reset_for_upgrade(self, s: Session) -> None:
        """Forget what a read-only request read, before it re-reads under the lock."""
        st = s._state
        st.cookie_sid = st.stored_id or st.cookie_sid
        s._fill({})
        st.id = st.stored_id = None
        st.record = None
        s._changed.clear()
        s.modified = False
        set_route(st, Route())

    # -- when the response starts -------------------------------------------------------------


def set_route(st: RequestState, route: Route) -> None:
    """Record the route's read-only rule in the request state."""
    st.read_only = route.read_only
    st.declared_read_only = route.declared
    st.frozen_reason = READ_ONLY if route.read_only else None


READ_ONLY = (
    "this route is read-only: its session is not locked and never written back; "
    "remove @read_only (or the read_only_paths entry) or call session.upgrade() first"
)
