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
from .cookies import new_session_id
from .envelope import AtRest
from .errors import SessionLockTimeout, TooManyWaiters
from .events import emit, tell_unavailable
from .handles import handle_of
from .lifetime import Lifetime
from .locking import new_lock_token, wait_delays
from .ops import Create, Delete, Load, LockAndLoad, Log, Op, Queue, Release, Sleep
from .outcome import NO_REQUEST, RequestFacts
from .patches import JSON_SERIALIZERS, merge
from .route import Route
from .serializers import Serializer
from .session import Session
from .state import RequestState

__all__ = ["MAX_FORWARDS", "READ_ONLY", "Opening", "set_route"]

#: How many forwards left by rotation one request follows (a chain forms only when ``rotate_every``
#: is shorter than ``rotate_grace``).
MAX_FORWARDS = 3


class Opening:
    """The flows that load a session (part of :class:`~sessionmw.core.policy.SessionCore`)."""

    settings: Settings
    serializer: Serializer
    lifetime: Lifetime
    at_rest: AtRest
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
    ) -> Generator[Op, object, None]:  # not a generator itself: no extra layer when nobody listens
        """Return the flow loading the cookie's session into ``s`` (locked when ``lock``), or leaving it new.

        ``lock=None`` takes the lock unless the route is read-only.

        With ``decode_later`` the data is deserialized on first access (:meth:`decode`), so a route
        that never touches its session does not pay for it.

        Raises :class:`SessionLockTimeout` (or :class:`TooManyWaiters`) when the lock is not had in
        time; nothing is held then.
        """
        flow = self._open(s, lock=lock, now=now, mono=mono, req=req, decode_later=decode_later)
        if not self.listening:
            return flow
        sid = s._state.cookie_sid
        return tell_unavailable(flow, req.path, lambda: None if sid is None else handle_of(sid), lambda: None)

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
        """:meth:`open`, without the ``backend_unavailable`` event.

        Every backend operation names the session by its handle (:func:`handle_of`), never by its id.
        """
        st = s._state
        sid = st.cookie_sid
        if sid is None:
            return
        if lock is None:
            lock = not st.read_only
        token = new_lock_token() if lock else None
        handle = handle_of(sid)
        rec = yield from self._fetch(st, handle, token, mono, req)
        if rec is None:
            rec, handle = yield from self._stored_under_id(st, sid, handle, token, mono, now, req)
        hops = 0
        while rec is not None:
            forward = self.at_rest.follow(rec, sid)
            if forward is None:
                break
            # The id was rotated away: within its grace it leads to the new id, after it is stale.
            if token is not None:
                yield Release(handle, token)
            if forward.new_id is None or forward.until < now or hops >= MAX_FORWARDS:
                yield Log(
                    logging.WARNING,
                    "a session id replaced by rotation was used after its grace period (a stolen cookie?); "
                    "a new session starts on %s",
                    req.path or "?",
                )
                if self.listening:
                    yield emit("stale_id", req.path, handle, rec.user_id)
                return
            hops += 1
            sid = forward.new_id
            handle = handle_of(sid)
            st.forwarded = True
            token = new_lock_token() if lock else None
            rec = yield from self._fetch(st, handle, token, mono, req)
        if rec is None:
            # An id we signed but do not hold (expired from the store, or deleted): never adopted.
            if token is not None:
                yield Release(handle, token)
            if self.listening:
                yield emit("missing", req.path, handle)
            return
        reason = self.lifetime.expiry_reason(rec, now)
        if reason is not None:
            st.timed_out = True
            yield Delete(handle)
            if token is not None:
                yield Release(handle, token)
            yield Log(logging.DEBUG, "session timed out; a new one starts (%s)", req.path or "?")
            if self.listening:
                yield emit("expired", req.path, handle, rec.user_id, reason)
            return
        opened = self.at_rest.open(rec, handle, bare_ok=handle == sid)
        payload = opened.payload
        data: dict[str, Any] | None = None
        if payload is not None and not decode_later:
            data = self._loads(payload)
        if payload is None or (data is None and not decode_later):
            # Keep the record for inspection (gc removes it); the request starts a new session.
            yield Log(
                logging.ERROR,
                "stored session data cannot be read (it %s); starting a new session on %s",
                opened.problem or "does not deserialize",
                req.path or "?",
            )
            if token is not None:
                yield Release(handle, token)
            return
        if data is None:
            st.pending = payload
            s._make_lazy()
        else:
            s._fill(data)
        # The stored record is this request's session from now on.
        st.id = st.stored_id = sid
        st.handle = handle
        st.since = since = opened.since if opened.since is not None else rec.created
        st.record = rec
        st.token = token
        st.user_id = rec.user_id
        st.user_bound = rec.user_id is not None
        st.idle_override = rec.idle_override
        st.idle_timeout = rec.idle_timeout if rec.idle_override else self.settings.idle_timeout
        every = self.settings.rotate_every
        if every is not None and token is not None and now - since >= every:
            st.rotate = True
        if self.listening:
            yield emit("loaded", req.path, handle, rec.user_id)

    def _fetch(
        self, st: RequestState, handle: str, token: str | None, mono: float, req: RequestFacts
    ) -> Generator[Op, object, Record | None]:
        """Read the record stored under ``handle``: under its lock when ``token`` is given, else without."""
        if token is None:
            rec: Record | None = yield from Load(handle)
            return rec
        return (yield from self._acquire(st, handle, token, mono, req))

    def _stored_under_id(
        self,
        st: RequestState,
        sid: str,
        handle: str,
        token: str | None,
        mono: float,
        now: float,
        req: RequestFacts,
    ) -> Generator[Op, object, tuple[Record | None, str]]:
        """Find a session stored under its raw id (before handles); return it and the name it is under.

        Runs only when nothing is stored under the handle: one unlocked read of the raw id (and, if
        nothing is there either, one more of the handle). A read-only
        request reads such a session where it is. A read-write request moves it (:meth:`_move`) while
        it holds the raw id's lock, so no other request, of this version or of an older one still
        running, writes it meanwhile; then it looks under the handle again, as any request would, and
        finds the forward the move left there.
        """
        found: Record | None = yield from Load(sid)
        if found is None:
            # A request moving this session may have put its forward under the handle after this one
            # looked there, and deleted the raw id since: look again, or a parallel request of the
            # same browser would start a new session.
            again: Record | None = yield from Load(handle)
            if again is None or token is None:
                return again, handle
            yield Release(handle, token)
            return (yield from self._acquire(st, handle, token, mono, req)), handle
        if token is None:
            return found, sid
        # Let the handle's lock go (a backend may not hold a lock on a name with no record), and take
        # it again once the move is done: never two locks of one session at once.
        yield Release(handle, token)
        raw_token = new_lock_token()
        try:
            raw = yield from self._acquire(st, sid, raw_token, mono, req)
            if raw is not None:  # else another request moved it while this one waited
                yield from self._move(sid, handle, raw, now)
        finally:
            yield Release(sid, raw_token)
        rec = yield from self._acquire(st, handle, token, mono, req)
        return rec, handle

    def _move(self, sid: str, handle: str, raw: Record, now: float) -> Generator[Op, object, None]:
        """Move a session stored under its raw id ``sid``: a new id, as a rotation gives.

        The raw id was a key of the store, so any copy of the store made before the upgrade holds
        it: the session goes on under a new id, created under that id's handle, and ``handle`` (the
        raw id's) gets a forward to it for ``rotate_grace`` seconds, so parallel requests still
        carrying the raw id land in the session and get the new cookie. ``create`` stores only under
        an unused name, so the move happens once.
        """
        new_id = new_session_id()
        new_handle = handle_of(new_id)
        moved = self.at_rest.adopt(raw, new_handle, now)
        if not (yield from Create(new_handle, moved, self.lifetime.ttl(raw.expires, now))):
            return  # pragma: no cover - 256-bit ids do not collide
        until = now + self.settings.rotate_grace
        forward = self.at_rest.forward(raw, sid, new_id, until)
        if (yield from Create(handle, forward, self.lifetime.ttl(until, now))):
            yield Delete(sid)
            yield Log(logging.INFO, "moved a session stored under its raw id to a new id (handle %s)", new_handle)
        else:
            yield Delete(new_handle)
            yield Log(logging.WARNING, "a session stored under its raw id was not moved: %s is taken", handle)

    def _acquire(
        self, st: RequestState, sid: str, token: str, mono: float, req: RequestFacts
    ) -> Generator[Op, object, Record | None]:
        """Take the lock of the session stored as ``sid`` (a handle), waiting as the settings say.

        Returns its record (or ``None``).
        """
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
                            yield emit("too_many_waiters", req.path, sid)
                        raise TooManyWaiters(
                            f"too many requests ({settings.max_waiters}) already wait for this "
                            "session's lock; try again shortly",
                            sid_hint=_hint(sid),
                            timeout=settings.lock_timeout,
                        )
                    queued = True
                delay = wait_delays(started, settings.lock_timeout, mono)
                if delay is None:
                    if self.listening:
                        yield emit("lock_timeout", req.path, sid, seconds=mono - started)
                    raise SessionLockTimeout(
                        f"the session is locked by another request and was not released within "
                        f"lock_timeout={settings.lock_timeout:g} s; try again shortly",
                        sid_hint=_hint(sid),
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
                yield emit("lock_waited", req.path, sid, seconds=waited)
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
        serializer = self.serializer
        try:
            if type(serializer) in JSON_SERIALIZERS:
                return merge(raw, serializer.loads)  # a base and the frames of changes after it (.patches)
            return serializer.loads(raw)
        except Exception:
            return None

    def reset_for_upgrade(self, s: Session) -> None:
        """Forget what a read-only request read, before it re-reads under the lock."""
        st = s._state
        st.cookie_sid = st.stored_id or st.cookie_sid
        s._fill({})
        st.id = st.stored_id = None
        st.handle = None
        st.since = None
        st.rotate = False
        st.record = None
        s._changed.clear()
        s.modified = False
        set_route(st, Route())

    # -- when the response starts -------------------------------------------------------------


def _hint(name: str) -> str:
    """The first characters of a session's stored name, for messages: never enough to use it."""
    return name[:9]


def set_route(st: RequestState, route: Route) -> None:
    """Record the route's read-only rule in the request state."""
    st.read_only = route.read_only
    st.declared_read_only = route.declared
    st.frozen_reason = READ_ONLY if route.read_only else None


READ_ONLY = (
    "this route is read-only: its session is not locked and never written back; "
    "remove @read_only (or the read_only_paths entry) or call session.upgrade() first"
)
