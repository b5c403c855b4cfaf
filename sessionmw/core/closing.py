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
stored, changed                   save-and-release, or its tail    refresh if due
stored, emptied                   delete + release                 expire
stored, new id (regenerate/bind)  check lock, create new, delete   new
stored, due for rotation          check lock, create new, forward  new
stored, invalidated               delete + release                 expire (or new, if refilled)
new, changed, not empty           create (id reserved atomically)  new
new, unchanged or empty           nothing                          none
================================  ===============================  ==========================

Every backend operation names a session by its handle (:mod:`.handles`), and every record written
goes through :class:`~.envelope.AtRest` (dated, encrypted) and the size limit first (:mod:`.sealing`,
:mod:`.limits`): a session over ``max_session_bytes`` raises ``RecordTooLarge`` before any backend
call, and the lock is released with the stored record as it was (:class:`~.errors.RecordTooLarge`).

A changed session that keeps its id is written as a *tail* where it can be (:func:`.tails.changed_tail`,
:mod:`.patches`): the changed keys appended to the stored data with the metadata rewritten, fenced and
released as a save is, by the backend's optional ``save_tail``; else, and at each compaction, whole.

Rotation (``rotate_every``) is a new id like ``regenerate()``, except that the old id is not deleted:
its record is replaced by a forward (:meth:`.envelope.AtRest.forward`) that leads to the new id for
``rotate_grace`` seconds, so a parallel request of another tab carrying the old cookie lands in the
new session and gets its cookie. ``regenerate()`` and ``bind_user()`` delete the old id at once.
"""

from __future__ import annotations

import logging
from collections.abc import Generator

from ..backends.base import Record
from .cookies import IdSigner, format_delete_cookie, format_set_cookie, new_session_id
from .envelope import is_forward
from .events import emit, tell_unavailable
from .handles import handle_of
from .lifetime import Lifetime
from .ops import Create, Delete, Extend, Log, Op, Refresh, Release, Save, SaveTail, UserSessions
from .outcome import NO_REQUEST, QUIET, VARY, CookieAction, Outcome, RequestFacts
from .patches import MIN_BASE
from .sealing import Sealing
from .session import Session
from .state import RequestState
from .tails import changed_tail

__all__ = ["Closing"]

#: How many times a new id is drawn if the backend says it is taken (it never should be).
CREATE_ATTEMPTS = 3
_WRITTEN = "the session was already written back (release() or response start)"
_RELEASED = "the session was released; changes after release() are not saved"
_FAILED = "the request failed; its session changes were not saved"


class Closing(Sealing):
    """The flows that write a session back (part of :class:`~sessionmw.core.policy.SessionCore`)."""

    signer: IdSigner
    lifetime: Lifetime
    #: Write a changed session as a tail of its changed keys where it can (:mod:`.patches`); set
    #: false when the backend turns out to have no such primitive, or to write whole records always.
    tails: bool = True

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
    ) -> Generator[Op, object, Outcome]:  # not a generator itself: no extra layer when nobody listens
        """Return the flow writing ``s`` back and releasing its lock, as the module's case table says.

        The flow returns the :class:`Outcome`.

        :param on_modified: send the cookie whenever the session was modified (Flask's rule).
        :param refresh: send the cookie of a kept session on every request (Flask's permanent
            session with ``SESSION_REFRESH_EACH_REQUEST``).
        :param signer: signs a new cookie (default: the configured keys).

        Releases the lock even when writing fails.
        """
        flow = self._close(s, now=now, req=req, on_modified=on_modified, refresh=refresh, signer=signer)
        if not self.listening:
            return flow
        st = s._state

        def handle() -> str | None:
            sid = st.stored_id or st.id
            return st.handle or (None if sid is None else handle_of(sid))

        return tell_unavailable(flow, req.path, handle, lambda: st.user_id)

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
        key = st.handle  # the name of the stored record in every backend operation
        signer = signer or self.signer
        try:
            if st.read_only:
                rec = st.record
                if key is not None and rec is not None and self.lifetime.touch_due(rec, now):
                    yield Refresh(key, self.lifetime.touch(rec, now, req))
                kept = None
                if (refresh or st.forwarded) and stored is not None and rec is not None:
                    kept = CookieAction("set", signer.sign(stored))
                return self.outcome(kept, s)
            if st.declared_read_only and s.modified:
                yield Log(
                    logging.WARNING,
                    "route %s is declared read-only but changed session keys %s",
                    req.path or "?",
                    sorted(s._changed) or ["(in-place change)"],
                )
            if stored is None or key is None or st.invalidated or st.id != stored:
                action = yield from self._close_new_id(s, key, now, req, signer)
            else:
                action = yield from self._close_kept(s, stored, key, now, req, signer)
                if action is None and (refresh or st.forwarded or (on_modified and s.modified)):
                    action = CookieAction("set", signer.sign(stored))
            if action is None:
                return VARY if s.accessed else QUIET
            return self.outcome(action, s)
        finally:
            # The lock is still held if a step failed, or the regeneration was dropped.
            token = st.token
            if token is not None and key is not None:
                st.token = None
                yield Release(key, token)

    def _close_kept(
        self, s: Session, sid: str, key: str, now: float, req: RequestFacts, signer: IdSigner
    ) -> Generator[Op, object, CookieAction | None]:
        """Close a stored session that keeps its id: release, touch, save or delete it (or rotate it)."""
        st = s._state
        rec = st.record
        token = st.token
        assert rec is not None
        lifetime = self.lifetime
        if st.rotate and token is not None and self._has_content(s):
            return (yield from self._rotate(s, sid, key, token, rec, now, req, signer))
        if not s.modified:
            touch = lifetime.touch(rec, now, req) if lifetime.touch_due(rec, now) else None
            if token is not None:
                st.token = None
                yield Release(key, token, touch)
            elif touch is not None:
                yield Refresh(key, touch)
            return self._refresh(sid, st, now, signer)
        if not self._has_content(s):
            yield Delete(key)  # then close() releases the lock
            return CookieAction("delete")
        data = s._data()
        if token is None:  # pragma: no cover - a stored, writable session always holds its lock
            raise RuntimeError("sessionmw: writing a session whose lock is not held")
        saved: bool | None = None
        tail = None
        if self.tails and len(rec.data) >= MIN_BASE:  # small sessions, most of them: no call on their path
            tail = changed_tail(
                data,
                s._changed,
                st.user_id,
                rec,
                key,
                serializer=self.serializer,
                at_rest=self.at_rest,
                max_session_bytes=self.settings.max_session_bytes,
            )
        if tail is not None:
            head, ttl = lifetime.record(st, b"", now, req)
            saved = yield from SaveTail(key, head, tail, token, ttl)
            if saved is None:
                self.tails = False  # the backend has no such primitive: whole records from now on
        if saved is None:
            new, ttl = lifetime.record(st, self.serializer.dumps(data), now, req)
            since = st.since if st.since is not None else rec.created
            new = yield from self._sealed(s, data, new, key, since, req)
            saved = yield from Save(key, new, token, ttl)
        st.token = None  # released by the save, or found lost (if it raised, close() releases)
        if not saved and self.listening:
            yield emit("write_dropped", req.path, key, st.user_id)
        if not saved:
            yield Log(
                logging.ERROR,
                "the session was ended, or its lock expired and may have been taken by another request, "
                "while this request ran; its changes to keys %s were dropped on %s",
                sorted(s._changed),
                req.path or "?",
            )
        return self._refresh(sid, st, now, signer)

    def _rotate(
        self,
        s: Session,
        old_id: str,
        key: str,
        token: str,
        old: Record,
        now: float,
        req: RequestFacts,
        signer: IdSigner,
    ) -> Generator[Op, object, CookieAction | None]:
        """Give a session due for rotation a new id; its old id leads there for ``rotate_grace`` seconds.

        The new record is created first, then the old one is replaced by a forward with a fenced
        save, which releases the lock: a parallel request waiting for the old id's lock finds the
        forward. If the save finds the lock lost or the session ended, the new record is deleted
        again, so rotation never brings back a session an administrator ended.
        """
        st = s._state
        data = s._data()
        rec, ttl = self.lifetime.record(st, self.serializer.dumps(data), now, req)
        new_id = new_session_id()
        handle = handle_of(new_id)
        sealed = yield from self._sealed(s, data, rec, handle, now, req)
        if not (yield from Extend(key, token, self.settings.lock_expire)):
            yield Log(
                logging.ERROR,
                "the session lock expired before the rotated id was written; the rotation was dropped on %s",
                req.path or "?",
            )
            return None
        for _ in range(CREATE_ATTEMPTS):
            if (yield from Create(handle, sealed, ttl)):
                break
            new_id = new_session_id()  # pragma: no cover - 256-bit ids do not collide
            handle = handle_of(new_id)  # pragma: no cover
            sealed = self.at_rest.seal(rec, handle, now)  # pragma: no cover
        else:  # pragma: no cover - 256-bit ids do not collide
            raise RuntimeError("sessionmw: could not reserve a new session id")
        until = now + self.settings.rotate_grace
        forward = self.at_rest.forward(old._replace(last_access=now, version=rec.version), old_id, new_id, until)
        saved = yield from Save(key, forward, token, self.lifetime.ttl(until, now))
        st.token = None  # released by the save, or found lost
        if not saved:
            yield Delete(handle)
            if self.listening:
                yield emit("write_dropped", req.path, key, st.user_id)
            yield Log(
                logging.ERROR,
                "the session was ended, or its lock expired and may have been taken by another request, "
                "while this request ran; its rotation and its changes to keys %s were dropped on %s",
                sorted(s._changed),
                req.path or "?",
            )
            return None
        st.id = st.stored_id = new_id
        st.handle = handle
        st.since = now
        st.rotate = False
        st.record = sealed
        if self.listening:
            yield emit("rotated", req.path, handle, st.user_id)
            # The old id is no longer the session's: it only forwards, for rotate_grace, then is stale.
            yield emit("terminated", req.path, key, st.user_id, "rotated")
        return CookieAction("set", signer.sign(new_id))

    def _close_new_id(
        self, s: Session, key: str | None, now: float, req: RequestFacts, signer: IdSigner
    ) -> Generator[Op, object, CookieAction | None]:
        """Close a session whose id changes: a new, regenerated or invalidated one (close() releases).

        ``key`` names the stored record the session had (``None`` for a new session).
        """
        st = s._state
        token = st.token
        action: CookieAction | None = None
        sealed: Record | None = None
        ttl: float | None = None
        handle: str | None = None
        if s.modified and self._has_content(s):
            data = s._data()
            rec, ttl = self.lifetime.record(st, self.serializer.dumps(data), now, req)
            sid = s.id
            assert sid is not None
            handle = handle_of(sid)
            sealed = yield from self._sealed(s, data, rec, handle, now, req)
        if key is not None and token is not None and not st.invalidated:
            if not (yield from Extend(key, token, self.settings.lock_expire)):
                yield Log(
                    logging.ERROR,
                    "the session lock expired before the new id was written; the regeneration was dropped "
                    "(raise lock_expire) on %s",
                    req.path or "?",
                )
                return None
        if sealed is not None and handle is not None:
            for _ in range(CREATE_ATTEMPTS):
                if (yield from Create(handle, sealed, ttl)):
                    sid = s.id
                    assert sid is not None
                    action = CookieAction("set", signer.sign(sid))
                    break
                st.id = new_session_id()  # pragma: no cover - 256-bit ids do not collide
                handle = handle_of(st.id)  # pragma: no cover
                sealed = self.at_rest.seal(sealed._replace(data=self.serializer.dumps(s._data())), handle, now)
            else:  # pragma: no cover - 256-bit ids do not collide
                raise RuntimeError("sessionmw: could not reserve a new session id")
            if self.listening:
                yield from self._created_events(st, key, handle, req)
            limit = self.settings.max_sessions_per_user
            if limit is not None and st.bound_now and st.user_id is not None:
                others = yield from UserSessions(st.user_id)
                yield from self._end_oldest(others, keep={handle, key}, room=limit - 1, req=req)
        elif key is not None:
            action = CookieAction("delete")
        if key is not None:
            yield Delete(key)
            if st.invalidated and self.listening:
                old = st.record.user_id if st.record is not None else None
                yield emit("invalidated", req.path, key, old)
        return action

    def _created_events(
        self, st: RequestState, key: str | None, handle: str, req: RequestFacts
    ) -> Generator[Op, object, None]:
        """Tell the listeners that ``handle`` was stored: a new session, a regenerated one, a bound one."""
        if key is None or st.invalidated:
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
        if token is not None and st.handle is not None:
            yield Release(st.handle, token)

    def freeze_released(self, s: Session) -> None:
        """Refuse changes from now on: ``release()`` was called and the write is under way."""
        s._state.frozen_reason = _RELEASED

    def _end_oldest(
        self, sessions: list[tuple[str, Record]], *, keep: set[str | None], room: int, req: RequestFacts
    ) -> Generator[Op, object, None]:
        """End a user's oldest sessions until ``room`` others are left (Moodle's concurrent-login limit)."""
        # Forwards left by rotation are listed with their user until their grace ends: not sessions.
        others = sorted(
            (rec.created, sid, rec.user_id) for sid, rec in sessions if sid not in keep and not is_forward(rec)
        )
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
