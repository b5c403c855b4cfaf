"""The sans-IO session core: every decision about a session's life, and no I/O.

Rules of this module:

1. No sockets, threads, clocks, event loops or log handlers. Times come in as arguments (``now`` is
   wall-clock seconds, ``mono`` is monotonic seconds); backend calls go out as typed operations
   (:mod:`sessionmw.core.ops`) that a driver performs, sync or async, and sends the result back;
   log lines go out as :class:`~sessionmw.core.ops.Log` operations.
2. ``open`` and ``close`` are generators: they yield operations and receive results, so one policy
   serves the sync and the async drivers (httpx's ``auth_flow`` shape). ``close`` returns an
   :class:`Outcome`: the adapter copies it into its framework's response and decides nothing.
3. The request's state is one :class:`~sessionmw.core.state.RequestState`; the ``Session`` the app
   sees records the app's intent in it.

The case table of ``close`` (what happens when the response starts):

================================  ===============================  ==========================
state at close                    backend                          cookie
================================  ===============================  ==========================
lazy, never touched               nothing                          none
read-only (enforced)              touch, if due                    none
stored, unchanged                 release (+ touch if due)         refresh if due
stored, changed                   save-and-release (fenced)        refresh if due
stored, emptied                   delete + release                 expire
stored, new id (regenerate/bind)  check lock, create new, delete   new
stored, invalidated               delete + release                 expire (or new, if refilled)
new, changed, not empty           create (id reserved atomically)  new
new, unchanged or empty           nothing                          none
================================  ===============================  ==========================
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any, Literal, NamedTuple, Protocol

from ..backends.base import Record
from .config import Settings
from .cookies import IdSigner, find_cookie, format_delete_cookie, format_set_cookie, new_session_id
from .errors import SessionLockTimeout, TooManyWaiters
from .lifetime import Lifetime, adopt
from .locking import new_lock_token, wait_delays
from .ops import Create, Delete, Extend, Load, LockAndLoad, Log, Op, Queue, Refresh, Release, Save, Sleep, UserSessions
from .route import Route, RouteRules
from .serializers import get_serializer
from .session import Session, SessionHooks
from .state import RequestState

__all__ = ["CookieAction", "Outcome", "RequestFacts", "RequestInfo", "SessionCore"]

#: How many times a new id is drawn if the backend says it is taken (it never should be).
CREATE_ATTEMPTS = 3

_READ_ONLY = (
    "this route is read-only: its session is not locked and never written back; "
    "remove @read_only (or the read_only_paths entry) or call session.upgrade() first"
)
_EXCLUDED = "this path is in exclude_paths (or static files): it has no session"
_WRITTEN = "the session was already written back (release() or response start)"
_RELEASED = "the session was released; changes after release() are not saved"
_FAILED = "the request failed; its session changes were not saved"

Flow = Generator[Op, Any, None]


class RequestFacts(Protocol):
    """What the core reads of a request (for metadata and log lines); adapters may compute it lazily."""

    @property
    def path(self) -> str: ...

    @property
    def client_ip(self) -> str | None: ...

    @property
    def user_agent(self) -> str | None: ...


class RequestInfo(NamedTuple):
    """Request facts given as plain values."""

    path: str = ""
    client_ip: str | None = None
    user_agent: str | None = None


_NO_REQUEST = RequestInfo()


class CookieAction(NamedTuple):
    """What the response must do with the session cookie: set ``value``, or expire it."""

    kind: Literal["set", "delete"]
    value: str = ""


class Outcome(NamedTuple):
    """What the response must carry, decided when it starts."""

    #: The cookie change, or ``None`` to leave the browser's cookie as it is.
    cookie: CookieAction | None = None
    #: The complete ``Set-Cookie`` header value for ``cookie`` (Starlette's format), or ``None``.
    set_cookie: str | None = None
    #: Add ``Cookie`` to the response's ``Vary`` header: the session was read.
    vary: bool = False


_QUIET = Outcome()
_VARY = Outcome(vary=True)


class SessionCore:
    """Session policy for one configuration: cookies, routes, locking, timeouts, write-back.

    :param settings: the validated options.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.signer = IdSigner(settings.secret_key)
        self.serializer = get_serializer(settings.serializer)
        self.lifetime = Lifetime(settings)
        self.routes = RouteRules(settings)

    # -- before the app runs ------------------------------------------------------------------

    def sid_from_cookie(
        self, cookie_header: str | None, max_age: float | None = None, *, name: str | None = None
    ) -> tuple[str, float] | None:
        """Return ``(sid, signed_at)`` from a request's Cookie header when it carries a valid signed id.

        A missing, forged, garbled, oversized or expired cookie gives ``None``: no session, and no
        backend look-up.
        """
        value = find_cookie(cookie_header, self.settings.cookie_name if name is None else name)
        if value is None:
            return None
        return self.signer.unsign_with_time(value, max_age)

    def new_session(
        self,
        route: Route,
        found: tuple[str, float | None] | None,
        hooks: SessionHooks | None,
        cls: type[Session] = Session,
    ) -> Session:
        """Return the request's session, before anything is loaded.

        :param route: the request's route (:meth:`RouteRules.decide`).
        :param found: ``(sid, signed_at)`` from a validly signed cookie, or ``None``.
        :param hooks: the request glue that loads, releases and upgrades the session.
        """
        st = RequestState()
        st.draws_id = True
        idle = self.settings.idle_timeout
        if idle is not None:
            st.idle_timeout = idle
        if route.excluded:
            st.read_only = True
            st.frozen_reason = _EXCLUDED
        else:
            if found is not None:
                st.cookie_sid, st.signed_at = found
            if route.read_only or route.declared:
                _apply_route(st, route)
        return cls.for_request(st, hooks)

    def apply_route(self, s: Session, route: Route) -> None:
        """Make ``s`` read-only (enforced), declared read-only under ``read_only_debug``, or neither."""
        _apply_route(s._state, route)

    def defer(self, s: Session) -> None:
        """Leave ``s`` unloaded: its first use calls its hooks' ``load``."""
        s._make_lazy()

    def undefer(self, s: Session) -> None:
        """Take back :meth:`defer` without loading (the caller loads)."""
        s._unlazy()

    def settle(self, s: Session) -> Outcome:
        """Close ``s`` with no backend work: nothing was loaded, or nothing changed in a new session."""
        s._state.released = True
        return self.outcome(None, s)

    def holds_nothing(self, s: Session) -> bool:
        """Tell whether ``s`` was never loaded from the backend: no lock, no record, nothing to write."""
        return s._holds_nothing

    def untouched(self, s: Session) -> bool:
        """Tell whether closing ``s`` has nothing to do: a new session nobody changed, never lazy."""
        return s._state.stored_id is None and not s.modified and not s._lazy

    def fail_later(self, s: Session, error: BaseException) -> None:
        """Make every use of ``s`` raise ``error``; a route that never uses its session still runs."""
        s._poison(error)

    def peek(self, s: Session, key: str) -> Any:
        """Return ``s[key]`` if the session is loaded, else ``None``, without marking it accessed."""
        return None if s._lazy else dict.get(s, key)

    # -- loading ------------------------------------------------------------------------------

    def open(
        self,
        s: Session,
        *,
        lock: bool | None,
        now: float,
        mono: float,
        req: RequestFacts = _NO_REQUEST,
        decode_later: bool = False,
    ) -> Flow:
        """Load the cookie's session into ``s`` (taking its lock when ``lock``), or leave ``s`` new.

        ``lock=None`` takes the lock unless the route is read-only.

        With ``decode_later`` the data is deserialized on first access (:meth:`decode`), so a route
        that never touches its session does not pay for it.

        Raises :class:`SessionLockTimeout` (or :class:`TooManyWaiters`) when the lock is not had in
        time; nothing is held then.
        """
        st = s._state
        sid = st.cookie_sid
        if sid is None:
            return
        if lock is None:
            lock = not st.read_only
        token: str | None = None
        if not lock:
            rec: Record | None = yield Load(sid)
        else:
            token = new_lock_token()
            rec = yield from self._acquire(st, sid, token, mono, req)
        if rec is None:
            # An id we signed but do not hold (expired from the store, or deleted): never adopted.
            if token is not None:
                yield Release(sid, token)
            return
        if self.lifetime.expired(rec, now):
            st.timed_out = True
            yield Delete(sid)
            if token is not None:
                yield Release(sid, token)
            yield Log(logging.DEBUG, "session timed out; a new one starts (%s)", req.path or "?")
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
        adopt(st, sid, rec, token, self.settings.idle_timeout)

    def _acquire(
        self, st: RequestState, sid: str, token: str, mono: float, req: RequestFacts
    ) -> Generator[Op, Any, Record | None]:
        """Take ``sid``'s lock, waiting as the settings say; return its record (or ``None``)."""
        settings = self.settings
        started = mono
        queued = False
        try:
            while True:
                locked, rec = yield LockAndLoad(sid, token, settings.lock_expire)
                if locked:
                    break
                if not queued:
                    if not (yield Queue(sid, True, settings.max_waiters)):
                        raise TooManyWaiters(
                            f"too many requests ({settings.max_waiters}) already wait for this "
                            "session's lock; try again shortly",
                            sid_hint=sid[:6],
                            timeout=settings.lock_timeout,
                        )
                    queued = True
                delay = wait_delays(started, settings.lock_timeout, mono)
                if delay is None:
                    raise SessionLockTimeout(
                        f"the session is locked by another request and was not released within "
                        f"lock_timeout={settings.lock_timeout:g} s; try again shortly",
                        sid_hint=sid[:6],
                        timeout=settings.lock_timeout,
                    )
                mono = yield Sleep(sid, delay)
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
        rec_: Record | None = rec
        return rec_

    def decode(self, s: Session) -> None:
        """Fill ``s`` from the data :meth:`open` left undecoded (``decode_later``)."""
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
        _apply_route(st, Route())

    # -- when the response starts -------------------------------------------------------------

    def outcome(self, action: CookieAction | None, s: Session) -> Outcome:
        """Return what the response carries for the cookie ``action`` and the session's use so far."""
        if action is None:
            return _VARY if s.accessed else _QUIET
        settings = self.settings
        if action.kind == "set":
            header = format_set_cookie(
                settings.cookie_name,
                action.value,
                path=settings.path,
                max_age=settings.max_age,
                flags=settings.cookie_flags,
            )
        else:
            header = format_delete_cookie(settings.cookie_name, path=settings.path, flags=settings.cookie_flags)
        return Outcome(action, header, s.accessed)

    def close(
        self,
        s: Session,
        *,
        now: float,
        mono: float,
        req: RequestFacts = _NO_REQUEST,
        on_modified: bool = False,
        refresh: bool = False,
        signer: IdSigner | None = None,
    ) -> Generator[Op, Any, Outcome]:
        """Write ``s`` back and release its lock, as the module's case table says; return the outcome.

        :param on_modified: send the cookie whenever the session was modified (Flask's rule).
        :param refresh: send the cookie of a kept session on every request (Flask's permanent
            session with ``SESSION_REFRESH_EACH_REQUEST``).
        :param signer: signs a new cookie (default: the configured keys).

        Releases the lock even when writing fails.
        """
        st = s._state
        if st.released:
            return self.outcome(None, s)
        st.released = True
        if s._holds_nothing:  # never touched: nothing was loaded, nothing is held
            return self.outcome(None, s)
        if not st.read_only:
            st.frozen_reason = _WRITTEN
        stored = st.stored_id
        signer = signer or self.signer
        try:
            if st.read_only:
                rec = st.record
                if stored is not None and rec is not None and self.lifetime.touch_due(rec, now):
                    yield Refresh(stored, self.lifetime.touch(rec, now, req))
                kept = None
                if refresh and stored is not None and rec is not None:
                    kept = CookieAction("set", signer.sign(stored))
                return self.outcome(kept, s)
            if st.declared_read_only and s.modified:
                yield Log(
                    logging.WARNING,
                    "route %s is declared read-only but changed session keys %s",
                    req.path or "?",
                    sorted(s._changed) or ["(in-place change)"],
                )
            if stored is None or st.invalidated or st.id != stored:
                action = yield from self._close_new_id(s, stored, now, req, signer)
            else:
                action = yield from self._close_kept(s, stored, now, req, signer)
                if action is None and (refresh or (on_modified and s.modified)):
                    action = CookieAction("set", signer.sign(stored))
            return self.outcome(action, s)
        finally:
            # The lock is still held if a step failed, or the regeneration was dropped.
            token = st.token
            if token is not None and stored is not None:
                st.token = None
                yield Release(stored, token)

    def _close_kept(
        self, s: Session, sid: str, now: float, req: RequestFacts, signer: IdSigner
    ) -> Generator[Op, Any, CookieAction | None]:
        """Close a stored session that keeps its id: release, touch, save or delete it."""
        st = s._state
        rec = st.record
        token = st.token
        assert rec is not None
        lifetime = self.lifetime
        if not s.modified:
            touch = lifetime.touch(rec, now, req) if lifetime.touch_due(rec, now) else None
            if token is not None:
                st.token = None
                yield Release(sid, token, touch)
            elif touch is not None:
                yield Refresh(sid, touch)
            return self._refresh(sid, st, now, signer)
        if not self._has_content(s):
            yield Delete(sid)  # then close() releases the lock
            return CookieAction("delete")
        new, ttl = lifetime.record(st, self.serializer.dumps(s._data()), now, req)
        if token is None:  # pragma: no cover - a stored, writable session always holds its lock
            raise RuntimeError("sessionmw: writing a session whose lock is not held")
        saved = yield Save(sid, new, token, ttl)
        st.token = None  # released by the save, or found lost (if it raised, close() releases)
        if not saved:
            yield Log(
                logging.ERROR,
                "the session was ended, or its lock expired and may have been taken by another request, "
                "while this request ran; its changes to keys %s were dropped on %s",
                sorted(s._changed),
                req.path or "?",
            )
        return self._refresh(sid, st, now, signer)

    def _close_new_id(
        self, s: Session, stored: str | None, now: float, req: RequestFacts, signer: IdSigner
    ) -> Generator[Op, Any, CookieAction | None]:
        """Close a session whose id changes: a new, regenerated or invalidated one (close() releases)."""
        st = s._state
        token = st.token
        if stored is not None and token is not None and not st.invalidated:
            if not (yield Extend(stored, token, self.settings.lock_expire)):
                yield Log(
                    logging.ERROR,
                    "the session lock expired before the new id was written; the regeneration was dropped "
                    "(raise lock_expire) on %s",
                    req.path or "?",
                )
                return None
        action: CookieAction | None = None
        if s.modified and self._has_content(s):
            rec, ttl = self.lifetime.record(st, self.serializer.dumps(s._data()), now, req)
            for _ in range(CREATE_ATTEMPTS):
                sid = s.id
                assert sid is not None
                if (yield Create(sid, rec, ttl)):
                    action = CookieAction("set", signer.sign(sid))
                    break
                st.id = new_session_id()
            else:  # pragma: no cover - 256-bit ids do not collide
                raise RuntimeError("sessionmw: could not reserve a new session id")
            limit = self.settings.max_sessions_per_user
            if limit is not None and st.bound_now and st.user_id is not None:
                others = yield UserSessions(st.user_id)
                yield from self._end_oldest(others, keep={sid, stored}, room=limit - 1)
        elif stored is not None:
            action = CookieAction("delete")
        if stored is not None:
            yield Delete(stored)
        return action

    def abort(self, s: Session) -> Flow:
        """Release ``s``'s lock without writing anything: the app raised, or the response failed.

        A session that was never loaded holds nothing and stays usable (Flask's test client opens a
        session, tears its request down, and only then lets the test read and save it).
        """
        st = s._state
        if st.released or s._holds_nothing:
            return
        st.released = True
        st.frozen_reason = _FAILED
        token, st.token = st.token, None
        if token is not None and st.stored_id is not None:
            yield Release(st.stored_id, token)

    def freeze_released(self, s: Session) -> None:
        """Refuse changes from now on: ``release()`` was called and the write is under way."""
        s._state.frozen_reason = _RELEASED

    def _end_oldest(self, sessions: list[tuple[str, Record]], *, keep: set[str | None], room: int) -> Flow:
        """End a user's oldest sessions until ``room`` others are left (Moodle's concurrent-login limit)."""
        others = sorted((rec.created, sid) for sid, rec in sessions if sid not in keep)
        for _, sid in others[: max(0, len(others) - room)]:
            yield Log(logging.INFO, "max_sessions_per_user: ending a user's oldest session")
            yield Delete(sid)

    def _has_content(self, s: Session) -> bool:
        """Whether a session is worth keeping: data, a bound user, or a timeout of its own."""
        st = s._state
        return not s._is_empty() or st.user_bound or st.idle_override

    def _refresh(self, sid: str, st: RequestState, now: float, signer: IdSigner) -> CookieAction | None:
        """Re-send the cookie of a persistent session once per touch interval, so its Max-Age slides."""
        signed_at = st.signed_at
        if self.settings.max_age is None or signed_at is None:
            return None
        if now - signed_at >= max(1.0, self.lifetime.touch_every):
            return CookieAction("set", signer.sign(sid))
        return None


def _apply_route(st: RequestState, route: Route) -> None:
    st.read_only = route.read_only
    st.declared_read_only = route.declared
    st.frozen_reason = _READ_ONLY if route.read_only else None
