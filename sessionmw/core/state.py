"""One request's session state: everything about it that is not the app's data.

Rules of this module: no I/O, no logic. The core's flows (:mod:`sessionmw.core.policy`) read and
write this object; :class:`~sessionmw.core.session.Session` records the app's intent in it (a new
id, a bound user, an invalidation); adapters never touch it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..backends.base import Record

__all__ = ["RequestState"]


# init=False: every field is a class-level default, so a request's state costs one empty object and
# the few assignments that differ from the defaults (one is made per request, on the hot path).
@dataclass(init=False, eq=False)
class RequestState:
    """The per-request session state the core owns: ids, lock, loaded record, flags, times."""

    # -- from the request -------------------------------------------------------------------------
    #: The id a validly signed cookie named, and when that cookie was signed (for a sliding Max-Age).
    cookie_sid: str | None = None
    signed_at: float | None = None
    #: The route is read-only and that is enforced: no lock, no write, changes raise.
    read_only: bool = False
    #: The route is declared read-only but ``read_only_debug`` is on: lock, write, and log changes.
    declared_read_only: bool = False

    # -- what the backend gave ----------------------------------------------------------------------
    #: The id whose record was loaded (and whose lock this request holds, if any).
    stored_id: str | None = None
    #: The name the store keeps that record under, which every backend operation uses: the handle of
    #: ``stored_id`` (a record stored under its raw id before handles, read by a read-only request,
    #: is read where it is: then the raw id).
    handle: str | None = None
    #: When the stored id was issued (the session's creation or its last rotation).
    since: float | None = None
    #: ``rotate_every`` has passed since then: the session gets a new id when it is written back.
    rotate: bool = False
    #: The cookie's id was replaced by rotation and led here: the response carries the new id.
    forwarded: bool = False
    record: Record | None = None
    #: The lock token while the lock is held, and the monotonic time it was taken.
    token: str | None = None
    lock_mono: float | None = None
    #: The stored session had timed out and a new one started.
    timed_out: bool = False
    #: Stored data not decoded yet (ASGI loads before the app runs but decodes on first access).
    pending: bytes | None = None
    #: Why the session could not be loaded; raised at its first use.
    error: BaseException | None = None

    # -- what the app asked for ---------------------------------------------------------------------
    #: The session id the response will carry (``None`` until a new session needs one).
    id: str | None = None
    #: A new id is drawn when the session is first asked for one (a new or regenerated session);
    #: a detached session (``Session({...})``) draws none.
    draws_id: bool = True
    invalidated: bool = False
    user_id: str | int | None = None
    user_bound: bool = False
    #: ``bind_user()`` was called in this request (``max_sessions_per_user`` is applied then).
    bound_now: bool = False
    #: The session carries its own idle timeout (``idle_timeout``; ``None`` = never).
    idle_override: bool = False
    idle_timeout: float | None = None

    # -- the request's progress ---------------------------------------------------------------------
    #: Why changes are refused now (read-only route, released, failed request), or ``None``.
    frozen_reason: str | None = None
    #: Written back and released (or aborted): nothing more happens to the backend.
    released: bool = False
