"""Administration: list, end and clean up sessions, and move them between backends.

``SessionStore`` works on every backend through its :class:`~sessionmw.backends.base.AdminBackend`
side. It never reads session data, only the metadata the core keeps with each session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from ..backends import Backend, SessionInfo, TieredSpec, open_backend
from ..backends.base import AdminBackend, Record
from ..core.envelope import is_forward
from ..core.errors import ConfigError
from ..core.events import Listeners, SessionEvent
from ..drivers.emit import emit_sync

__all__ = ["SessionStore"]

#: Seconds added to a migrated session's remaining lifetime for its TTL in the new backend.
MIGRATE_TTL_MARGIN = 120.0


def _live(rec: Record, now: float) -> bool:
    """A session, not expired, and not the forward a rotated id leaves for its grace."""
    return (rec.expires is None or rec.expires >= now) and not is_forward(rec)


def _info(sid: str, rec: Record) -> SessionInfo:
    return SessionInfo(
        sid=sid,
        user_id=rec.user_id,
        created=rec.created,
        last_access=rec.last_access,
        first_ip=rec.first_ip,
        last_ip=rec.last_ip,
        user_agent=rec.user_agent,
    )


class SessionStore:
    """The sessions of one site (one backend and key prefix), for administrators and scripts.

    :param backend: a backend URL or instance, as given to the middleware.
    :param key_prefix: the site's key prefix (the middleware's ``key_prefix``).
    :param durable_backend: for a tiered store, the durable backend behind ``backend`` (the
        middleware's ``durable_backend``): sessions are listed from it, and ended in both tiers.
    :param durable_write_every: the middleware's ``durable_write_every`` (only ``migrate`` into this
        store would write, so it rarely matters here).
    :param create: ``False`` opens only a store that exists and never creates one: a missing
        file-backend directory, SQLite file or SQL table is a :class:`~sessionmw.ConfigError` naming it
        (a table's at the first call). The command line's ``list``, ``kill``, ``gc`` and ``stats`` do so.
    :param listeners: as the middleware's: each session ended here is a ``terminated`` event with
        reason ``"admin"``.
    """

    def __init__(
        self,
        backend: str | Backend | TieredSpec,
        *,
        key_prefix: str = "sessmw:",
        durable_backend: str | Backend | None = None,
        durable_write_every: int = 1,
        create: bool = True,
        listeners: Iterable[Callable[..., Any]] = (),
    ) -> None:
        self.listeners = Listeners(listeners)
        if durable_backend is not None:
            if isinstance(backend, TieredSpec):
                raise ConfigError(
                    "backend is a tiered store already; leave durable_backend None", option="durable_backend"
                )
            backend = TieredSpec(backend, durable_backend, write_every=durable_write_every)
        self.backend = open_backend(backend, key_prefix=key_prefix, create=create)
        if not isinstance(self.backend, AdminBackend):
            raise ConfigError(f"{self.backend.name} does not support administration", option="backend")
        self.admin: AdminBackend = self.backend

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the backend's connections."""
        self.backend.close()

    def list_sessions(self, user_id: str | int | None = None) -> list[SessionInfo]:
        """Return every live session (or ``user_id``'s), oldest first; never their data."""
        found = self.admin.iter_records() if user_id is None else self.admin.user_sessions(user_id)
        now = time.time()
        infos = [_info(sid, rec) for sid, rec in found if _live(rec, now)]
        infos.sort(key=lambda i: (i.created, i.sid))
        return infos

    def terminate(self, sid: str) -> bool:
        """End one session, named by its handle; its next request, even one waiting for its lock, starts afresh."""
        rec = self.backend.load(sid)
        self.backend.delete(sid)
        if rec is not None:
            self._ended(sid, rec)
        return rec is not None

    def terminate_user(self, user_id: str | int) -> int:
        """End every session of ``user_id``; costs in proportion to that user's sessions."""
        sessions = self.admin.user_sessions(user_id)
        for sid, rec in sessions:
            self.backend.delete(sid)
            self._ended(sid, rec)
        return len(sessions)

    def terminate_all(self) -> int:
        """End every session of this site (as at an upgrade)."""
        count = 0
        for sid, rec in list(self.admin.iter_records()):
            self.backend.delete(sid)
            self._ended(sid, rec)
            count += 1
        return count

    def _ended(self, sid: str, rec: Record) -> None:
        if self.listeners:
            emit_sync(self.listeners, SessionEvent("terminated", sid, rec.user_id, None, "admin"))

    def gc(self) -> int:
        """Remove expired sessions and their index entries; return how many were removed."""
        return self.admin.gc(time.time())

    def stats(self) -> dict[str, float]:
        """Figures: ``sessions`` (live), ``users`` (distinct bound users), ``oldest`` (creation time of
        the oldest live session, 0 if none), and what the store itself reports (memcached
        ``evictions`` and ``bytes``, Redis ``evicted_keys`` and ``used_memory``...; for a tiered store
        ``durable_*`` and ``fast_*`` figures, ``fast_available`` and the fast tier's ``evictions``).
        Counts and sizes in bytes are ``int``."""
        sessions = 0
        users: set[str] = set()
        oldest = 0.0
        now = time.time()
        for _, rec in self.admin.iter_records():
            if not _live(rec, now):
                continue
            sessions += 1
            if rec.user_id is not None:
                users.add(str(rec.user_id))
            if oldest == 0.0 or rec.created < oldest:
                oldest = rec.created
        figures: dict[str, float] = {"sessions": sessions, "users": len(users), "oldest": oldest}
        figures.update(self.admin.stats())
        # Backends report every figure as a float; what is whole (counts, bytes, flags) is an int.
        return {k: int(v) if k != "oldest" and float(v).is_integer() else v for k, v in figures.items()}

    def migrate(
        self,
        to: str | Backend | TieredSpec,
        *,
        to_key_prefix: str | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> int:
        """Copy every live session to another backend, keeping ids, so no user is logged out.

        Sessions that already exist there are left alone. ``progress`` is called with 1 per session
        copied or skipped. Returns how many were copied.
        """
        prefix = to_key_prefix if to_key_prefix is not None else getattr(self.backend, "key_prefix", "sessmw:")
        target = open_backend(to, key_prefix=prefix)
        copied = 0
        now = time.time()
        try:
            for sid, rec in self.admin.iter_records():
                if is_forward(rec):
                    continue  # a rotated id's forward, for its grace: not a session to carry over
                if rec.expires is None or rec.expires >= now:
                    ttl = None if rec.expires is None else max(1.0, rec.expires - now) + MIGRATE_TTL_MARGIN
                    if target.create(sid, rec, ttl):
                        copied += 1
                if progress is not None:
                    progress(1)
        finally:
            if target is not to:
                target.close()
        return copied

    def count(self) -> int:
        """Return how many sessions :meth:`migrate` or :meth:`terminate_all` would visit."""
        return sum(1 for _, rec in self.admin.iter_records() if not is_forward(rec))
