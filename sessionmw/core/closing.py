"""Closing a request's session when the response starts: write back, release, decide the cookie.

Rules of this module: those of :mod:`sessionmw.core.policy`; its flows yield operations
(:mod:`sessionmw.core.ops`) and do no I/O.

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

from ..backends.base import Record
from .config import Settings
from .cookies import IdSigner, format_delete_cookie, format_set_cookie, new_session_id
from .errors import BackendUnavailable
from .events import emit
from .handles import handle_of
from .lifetime import Lifetime
from .ops import Create, Delete, Extend, Log, Op, Refresh, Release, Save, UserSessions
from .outcome import NO_REQUEST, QUIET, VARY, CookieAction, Outcome, RequestFacts
from .serializers import Serializer
from .session import Session
from .state import RequestState

__all__ = ["Closing"]

#: How many times a new id is drawn if the backend says it is taken (it never should be).
CREATE_ATTEMPTS = 3
_WRITTEN = "the session was already written back (release() or response start)"
_RELEASED = "the session was released; changes after release() are not saved"
_FAILED = "the request failed; its session changes were not saved"


class Closing:
    """The flows that write a session back (part of :class:`~sessionmw.core.policy.SessionCore`)."""

    settings: Settings
    signer: IdSigner
    serializer: Serializer
    lifetime: Lifetime
    listening: bool

    def outcome(self, action: CookieAction | None, s: Session) -> Outcome:
        """Return what the response carries for the cookie ``action`` and the session's use so far."""
        if action is None:
            return VARY if s.accessed else QUIET
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
        req: RequestFacts = NO_REQUEST,
        on_modified: bool = False,
        refresh: bool = False,
        signer: IdSigner | None = None,
    ) -> Generator[Op, object, Outcome]:
        """Write ``s`` back and release its lock, as the module's case table says; return the outcome.

        :param on_modified: send the cookie whenever the session was modified (Flask's rule).
        :param refresh: send the cookie of a kept session on every request (Flask's permanent
            session with ``SESSION_REFRESH_EACH_REQUEST``).
        :param signer: signs a new cookie (default: the configured keys).

        Releases the lock even when writing fails.
        """
        flow = self._close(s, now=now, req=req, on_modified=on_modified, refresh=refresh, signer=signer)
        if not self.listening:
            return (yield from flow)
        try:
            return (yield from flow)
        except BackendUnavailable:
            sid = s._state.stored_id or s._state.id
            yield emit("backend_unavailable", req.path, None if sid is None else handle_of(sid), s._state.user_id)
            raise

    def _close(
        self,
        s: Session,
        *,
        now: float,
        req: RequestFacts,
        on_modified: bool,
        refresh: bool,
        signer: IdSigner | None,
    ) -> Generator[Op, object, Outcome]:
        """:meth:`close`, without the ``backend_unavailable`` event."""
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
            if action is None:
                return VARY if s.accessed else QUIET
            return self.outcome(action, s)
        finally:
            # The lock is still held if a step failed, or the regeneration was dropped.
            token = st.token
            if token is not None and stored is not None:
                st.token = None
                yield Release(stored, token)

    def _close_kept(
        self, s: Session, sid: str, now: float, req: RequestFacts, signer: IdSigner
    ) -> Generator[Op, object, CookieAction | None]:
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
        saved = yield from Save(sid, new, token, ttl)
        st.token = None  # released by the save, or found lost (if it raised, close() releases)
        if not saved and self.listening:
            yield emit("write_dropped", req.path, handle_of(sid), st.user_id)
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
    ) -> Generator[Op, object, CookieAction | None]:
        """Close a session whose id changes: a new, regenerated or invalidated one (close() releases)."""
        st = s._state
        token = st.token
        if stored is not None and token is not None and not st.invalidated:
            if not (yield from Extend(stored, token, self.settings.lock_expire)):
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
                if (yield from Create(sid, rec, ttl)):
                    action = CookieAction("set", signer.sign(sid))
                    break
                st.id = new_session_id()
            else:  # pragma: no cover - 256-bit ids do not collide
                raise RuntimeError("sessionmw: could not reserve a new session id")
            if self.listening:
                yield from self._created_events(st, stored, sid, req)
            limit = self.settings.max_sessions_per_user
            if limit is not None and st.bound_now and st.user_id is not None:
                others = yield from UserSessions(st.user_id)
                yield from self._end_oldest(others, keep={sid, stored}, room=limit - 1, req=req)
        elif stored is not None:
            action = CookieAction("delete")
        if stored is not None:
            yield Delete(stored)
            if st.invalidated and self.listening:
                old = st.record.user_id if st.record is not None else None
                yield emit("invalidated", req.path, handle_of(stored), old)
        return action

    def _created_events(
        self, st: RequestState, stored: str | None, sid: str, req: RequestFacts
    ) -> Generator[Op, object, None]:
        """Tell the listeners that ``sid`` was stored: a new session, a regenerated one, a bound one."""
        handle = handle_of(sid)
        if stored is None or st.invalidated:
            yield emit("created", req.path, handle, st.user_id)
        else:
            yield emit("regenerated", req.path, handle, st.user_id)
        if st.bound_now:
            yield emit("bound", req.path, handle, st.user_id)

    def abort(self, s: Session) -> Generator[Op, object, None]:
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

    def _end_oldest(
        self, sessions: list[tuple[str, Record]], *, keep: set[str | None], room: int, req: RequestFacts
    ) -> Generator[Op, object, None]:
        """End a user's oldest sessions until ``room`` others are left (Moodle's concurrent-login limit)."""
        others = sorted((rec.created, sid, rec.user_id) for sid, rec in sessions if sid not in keep)
        for _, sid, user_id in others[: max(0, len(others) - room)]:
            yield Log(logging.INFO, "max_sessions_per_user: ending a user's oldest session")
            yield Delete(sid)
            if self.listening:
                # ``sid`` is the name the backend listed: already the stored handle.
                yield emit("terminated", req.path, sid, user_id, "user_limit")

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
