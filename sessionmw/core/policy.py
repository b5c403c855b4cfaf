"""The sans-IO session core: every decision about a session's life, and no I/O.

Rules of this module:

1. No sockets, threads, clocks or event loops. Times come in as arguments (``now`` is wall-clock
   seconds, ``mono`` is monotonic seconds); backend calls go out as :class:`Call` operations that a
   driver (:mod:`sessionmw._drive`) performs, sync or async, and sends the result back.
2. ``open`` and ``close`` are generators: they yield operations and receive results, so one policy
   serves the sync and the async drivers (httpx's ``auth_flow`` shape).
3. Adapters never decide anything about a session; a change of policy is a change here.

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

import fnmatch
import logging
from collections.abc import Generator
from typing import Any, Literal, NamedTuple, Protocol

from ..backends.base import Record, Touch
from .config import Settings
from .cookies import IdSigner, find_cookie, new_session_id
from .errors import SessionLockTimeout, TooManyWaiters
from .locking import new_lock_token, wait_delays
from .serializers import get_serializer
from .session import Session

__all__ = ["Call", "CookieAction", "Queue", "RequestFacts", "RequestInfo", "SessionCore", "Sleep"]

logger = logging.getLogger("sessionmw")

#: Seconds added to a session's timeout for the backend's TTL, beyond the touch interval.
TTL_MARGIN = 60.0
#: How many times a new id is drawn if the backend says it is taken (it never should be).
CREATE_ATTEMPTS = 3


class Call(NamedTuple):
    """Call backend primitive ``method`` with ``args``; the driver sends back its result."""

    method: str
    args: tuple[Any, ...]


class Sleep(NamedTuple):
    """Wait up to ``delay`` seconds for ``sid``'s lock (a local release wakes earlier).

    The driver sends back the monotonic time after the wait.
    """

    sid: str
    delay: float


class Queue(NamedTuple):
    """Join (``enter``) or leave the queue of waiters for ``sid`` in this process.

    On joining, the driver sends back whether the queue had room (fewer than ``limit`` waiters).
    """

    sid: str
    enter: bool
    limit: int


Op = Call | Sleep | Queue


class RequestFacts(Protocol):
    """What the core reads of a request (for metadata and log lines); adapters may compute it lazily."""

    @property
    def path(self) -> str: ...

    @property
    def client_ip(self) -> str | None: ...

    @property
    def user_agent(self) -> str | None: ...


class RequestInfo(NamedTuple):
    """What the core needs to know of the request: for metadata and log lines."""

    path: str = ""
    client_ip: str | None = None
    user_agent: str | None = None


_NO_REQUEST = RequestInfo()


class CookieAction(NamedTuple):
    """What the response must do with the session cookie: set ``value``, or expire it."""

    kind: Literal["set", "delete"]
    value: str = ""


class SessionCore:
    """Session policy for one configuration: cookies, locking, timeouts, write-back.

    :param settings: the validated options.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.signer = IdSigner(settings.secret_key)
        self.serializer = get_serializer(settings.serializer)
        self._touch_every = settings.effective_touch_interval

    # -- before the app runs ------------------------------------------------------------------

    def sid_from_cookie(self, cookie_header: str | None, max_age: float | None = None) -> tuple[str, float] | None:
        """Return ``(sid, signed_at)`` from a request's Cookie header when it carries a valid signed id.

        A missing, forged, garbled, oversized or expired cookie gives ``None``: no session, and no
        backend look-up.
        """
        value = find_cookie(cookie_header, self.settings.cookie_name)
        if value is None:
            return None
        return self.signer.unsign_with_time(value, max_age)

    def path_matches(self, path: str, patterns: tuple[str, ...]) -> bool:
        """Tell whether ``path`` matches one of the shell-style ``patterns``."""
        return any(fnmatch.fnmatchcase(path, p) for p in patterns)

    def new_session(self, *, read_only: bool = False, declared_read_only: bool = False) -> Session:
        """Return an empty session for a request, before anything is loaded."""
        s = Session()
        s._new_id_factory = new_session_id
        if self.settings.idle_timeout is not None:
            s._idle_timeout = self.settings.idle_timeout
        if read_only or declared_read_only:
            self.set_read_only(s, read_only, declared_read_only)
        return s

    def set_read_only(self, s: Session, read_only: bool, declared: bool) -> None:
        """Mark ``s`` read-only (enforced), or declared read-only under ``read_only_debug``."""
        s._read_only = read_only
        s._declared_read_only = declared
        s._frozen_reason = (
            "this route is read-only: its session is not locked and never written back; "
            "remove @read_only (or the read_only_paths entry) or call session.upgrade() first"
            if read_only
            else None
        )

    def open(
        self,
        s: Session,
        sid: str,
        *,
        lock: bool,
        now: float,
        mono: float,
        signed_at: float | None = None,
        req: RequestFacts = _NO_REQUEST,
        decode_later: bool = False,
    ) -> Generator[Op, Any, None]:
        """Load ``sid`` into ``s`` (taking its lock when ``lock``), or leave ``s`` new.

        With ``decode_later`` the data is deserialized on first access, so a route that never
        touches its session does not pay for it.

        Raises :class:`SessionLockTimeout` (or :class:`TooManyWaiters`) when the lock is not had in
        time; nothing is held then.
        """
        settings = self.settings
        s._cookie_signed_at = signed_at
        s._cookie_sid = sid
        token: str | None = None
        if not lock:
            rec = yield Call("load", (sid,))
        else:
            token = new_lock_token()
            started = mono
            queued = False
            try:
                while True:
                    locked, rec = yield Call("lock_and_load", (sid, token, settings.lock_expire))
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
            waited = mono - started
            s._lock_mono = mono
            if settings.lock_warn is not None and waited > settings.lock_warn:
                logger.warning("waited %.3f s for the session lock on %s", waited, req.path or "?")
            elif waited > 0:
                logger.debug("waited %.3f s for the session lock on %s", waited, req.path or "?")

        if rec is None:
            # An id we signed but do not hold (expired from the store, or deleted): never adopted.
            if token is not None:
                yield Call("release", (sid, token, None))
            return
        if self.expired(rec, now):
            s.timed_out = True
            yield Call("delete", (sid,))
            if token is not None:
                yield Call("release", (sid, token, None))
            logger.debug("session timed out; a new one starts (%s)", req.path or "?")
            return
        if decode_later:
            s._pending = rec.data
            s._decode = self._decode
            s._make_lazy()
        else:
            try:
                data = self.serializer.loads(rec.data)
            except Exception as exc:
                # Keep the record for inspection (gc removes it); the request starts a new session.
                logger.error("stored session data cannot be read (%s); starting a new session", exc)
                if token is not None:
                    yield Call("release", (sid, token, None))
                return
            s._fill(data)
        s._id = s._stored_id = sid
        s._record = rec
        s._token = token
        s._user_id = rec.user_id
        s._user_bound = rec.user_id is not None
        s._idle_override = rec.idle_override
        s._idle_timeout = rec.idle_timeout if rec.idle_override else settings.idle_timeout

    def _decode(self, raw: bytes) -> dict[str, Any]:
        try:
            return self.serializer.loads(raw)
        except Exception as exc:
            # The data is unreadable: the session goes on empty, and a write replaces the bad record.
            logger.error("stored session data cannot be read (%s); the session starts empty", exc)
            return {}

    def expired(self, rec: Record, now: float) -> bool:
        """Tell whether a stored session has passed its idle timeout or absolute lifetime."""
        idle = rec.idle_timeout if rec.idle_override else self.settings.idle_timeout
        if idle is not None and now - rec.last_access > idle:
            return True
        absolute = self.settings.absolute_timeout
        return absolute is not None and now - rec.created > absolute

    def expiry(self, created: float, last_access: float, override: bool, idle: float | None) -> float | None:
        """Return when a session with these times ends, or ``None`` if it never times out."""
        if not override:
            idle = self.settings.idle_timeout
        ends = [last_access + idle] if idle is not None else []
        if self.settings.absolute_timeout is not None:
            ends.append(created + self.settings.absolute_timeout)
        return min(ends) if ends else None

    def ttl(self, expires: float | None, now: float) -> float | None:
        """Return the backend TTL for a session ending at ``expires``: a safety net, never the rule."""
        if expires is None:
            if self.settings.max_age is not None and self.settings.max_age > 0:
                return self.settings.max_age + self._touch_every + TTL_MARGIN
            return None
        return max(1.0, expires - now) + self._touch_every + TTL_MARGIN

    # -- when the response starts -------------------------------------------------------------

    def close(
        self, s: Session, *, now: float, mono: float, req: RequestFacts = _NO_REQUEST
    ) -> Generator[Op, Any, CookieAction | None]:
        """Write ``s`` back and release its lock, as the module's case table says.

        Returns what to do with the cookie. Releases the lock even when writing fails.
        """
        if s._released:
            return None
        s._released = True
        if s._holds_nothing:  # never touched: nothing was loaded, nothing is held
            return None
        if not s._read_only:
            s._frozen_reason = "the session was already written back (release() or response start)"
        stored = s._stored_id
        token = s._token
        s._token = None
        try:
            if token is not None and stored is not None:
                held = mono - (s._lock_mono if s._lock_mono is not None else mono)
                logger.debug("held the session lock %.3f s on %s", held, req.path or "?")
            if s._read_only:
                if stored is not None and s._record is not None and self._touch_due(s._record, now):
                    yield Call("touch", (stored, self._touch(s._record, now, req)))
                return None
            if s._declared_read_only and s.modified:
                logger.warning(
                    "route %s is declared read-only but changed session keys %s",
                    req.path or "?",
                    sorted(s._changed) or ["(in-place change)"],
                )
            if stored is not None and not s._invalidated and s._id == stored:
                assert s._record is not None
                if not s.modified:
                    touch = self._touch(s._record, now, req) if self._touch_due(s._record, now) else None
                    if token is not None:
                        held_token, token = token, None
                        yield Call("release", (stored, held_token, touch))
                    elif touch is not None:
                        yield Call("touch", (stored, touch))
                    return self._refresh(stored, s, now)
                if not self._has_content(s):
                    yield Call("delete", (stored,))
                    return CookieAction("delete")
                rec, ttl = self._record(s, now, req)
                if token is None:  # pragma: no cover - a stored, writable session always holds its lock
                    raise RuntimeError("sessionmw: writing a session whose lock is not held")
                saved = yield Call("save", (stored, rec, token, ttl))
                token = None  # save released the lock (or found it lost); if it raised, finally releases
                if not saved:
                    logger.error(
                        "the session was ended, or its lock expired and may have been taken by another "
                        "request, while this request ran; its changes to keys %s were dropped on %s",
                        sorted(s._changed),
                        req.path or "?",
                    )
                return self._refresh(stored, s, now)

            # The id changes: a new session, a regenerated one, or an invalidated one.
            if stored is not None and token is not None and not s._invalidated:
                if not (yield Call("extend", (stored, token, self.settings.lock_expire))):
                    logger.error(
                        "the session lock expired before the new id was written; the regeneration "
                        "was dropped (raise lock_expire) on %s",
                        req.path or "?",
                    )
                    return None
            action: CookieAction | None = None
            if s.modified and self._has_content(s):
                rec, ttl = self._record(s, now, req)
                for _ in range(CREATE_ATTEMPTS):
                    sid = s.id
                    assert sid is not None
                    if (yield Call("create", (sid, rec, ttl))):
                        action = CookieAction("set", self.signer.sign(sid))
                        break
                    s._id = new_session_id()
                else:  # pragma: no cover - 256-bit ids do not collide
                    raise RuntimeError("sessionmw: could not reserve a new session id")
                limit = self.settings.max_sessions_per_user
                if limit is not None and s._bound_now and s._user_id is not None:
                    others = yield Call("user_sessions", (s._user_id,))
                    yield from self._end_oldest(others, keep={sid, stored}, room=limit - 1)
            elif stored is not None:
                action = CookieAction("delete")
            if stored is not None:
                yield Call("delete", (stored,))
            return action
        finally:
            if token is not None and stored is not None:
                yield Call("release", (stored, token, None))

    def abort(self, s: Session) -> Generator[Op, Any, None]:
        """Release ``s``'s lock without writing anything: the app raised, or the response failed.

        A session that was never loaded holds nothing and stays usable (Flask's test client opens a
        session, tears its request down, and only then lets the test read and save it).
        """
        if s._released or s._holds_nothing:
            return
        s._released = True
        s._frozen_reason = "the request failed; its session changes were not saved"
        token, s._token = s._token, None
        if token is not None and s._stored_id is not None:
            yield Call("release", (s._stored_id, token, None))

    def reset_for_upgrade(self, s: Session) -> str | None:
        """Forget what a read-only request read, before it re-reads under the lock; return the id."""
        sid = s._stored_id or s._cookie_sid
        s._fill({})
        s._id = s._stored_id = None
        s._record = None
        s._changed.clear()
        s.modified = False
        self.set_read_only(s, False, False)
        return sid

    def _end_oldest(
        self, sessions: list[tuple[str, Record]], *, keep: set[str | None], room: int
    ) -> Generator[Op, Any, None]:
        """End a user's oldest sessions until ``room`` others are left (Moodle's concurrent-login limit)."""
        others = sorted((rec.created, sid) for sid, rec in sessions if sid not in keep)
        for _, sid in others[: max(0, len(others) - room)]:
            logger.info("max_sessions_per_user: ending a user's oldest session")
            yield Call("delete", (sid,))

    def _has_content(self, s: Session) -> bool:
        """Whether a session is worth keeping: data, a bound user, or a timeout of its own."""
        return not s._is_empty() or s._user_bound or s._idle_override

    def _touch_due(self, rec: Record, now: float) -> bool:
        return now - rec.last_access >= self._touch_every

    def _touch(self, rec: Record, now: float, req: RequestFacts) -> Touch:
        expires = self.expiry(rec.created, now, rec.idle_override, rec.idle_timeout)
        return Touch(last_access=now, last_ip=req.client_ip, expires=expires, ttl=self.ttl(expires, now))

    def _refresh(self, sid: str, s: Session, now: float) -> CookieAction | None:
        """Re-send the cookie of a persistent session once per touch interval, so its Max-Age slides."""
        signed_at = s._cookie_signed_at
        if self.settings.max_age is None or signed_at is None:
            return None
        if now - signed_at >= max(1.0, self._touch_every):
            return CookieAction("set", self.signer.sign(sid))
        return None

    def _record(self, s: Session, now: float, req: RequestFacts) -> tuple[Record, float | None]:
        old = None if s._invalidated else s._record
        data = self.serializer.dumps(s._data())
        created = old.created if old is not None else now
        expires = self.expiry(created, now, s._idle_override, s._idle_timeout)
        rec = Record(
            data=data,
            created=created,
            last_access=now,
            user_id=s._user_id,
            first_ip=old.first_ip if old is not None else req.client_ip,
            last_ip=req.client_ip,
            user_agent=req.user_agent or (old.user_agent if old is not None else None),
            idle_override=s._idle_override,
            idle_timeout=s._idle_timeout if s._idle_override else None,
            expires=expires,
        )
        return rec, self.ttl(expires, now)
