"""The tiered backend's primitives: a fast tier in front of a durable one, composed through the protocols.

See the package's notes (:mod:`sessionmw.backends.tiered`) for why each is shaped so. How the backend
calls each tier, and what it remembers between calls (lock tokens, stale copies), is in :mod:`.tiers`.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

from ...core.errors import BackendUnavailable, ConfigError
from ..base import AdminBackend, AwaitsRelease, Backend, Record, Touch, WaitsForFailover, WaitsForRelease
from .tiers import MAX_TRACKED as MAX_TRACKED
from .tiers import Tiers, _FastDown, _Held, _Outage

__all__ = ["MAX_TRACKED", "REFILL_TTL_MARGIN", "WRITE_WINDOW", "TieredBackend"]

logger = logging.getLogger("sessionmw")

#: Seconds a write-through holds the durable tier's lock (taken and released within one save).
WRITE_WINDOW = 30.0

#: Seconds added to a session's remaining lifetime for the TTL of a copy refilled into the fast tier.
REFILL_TTL_MARGIN = 120.0


class _Wrote(enum.Enum):
    """What a write to the durable tier came to."""

    WRITTEN = "written"
    #: No such session there: it was ended, and must not come back.
    GONE = "gone"
    #: The durable tier holds a later version: ours is stale.
    NEWER = "newer"
    #: Another token holds the durable tier's lock.
    BUSY = "busy"
    #: The durable tier did not answer.
    DOWN = "down"


class TieredBackend(Tiers):
    """A fast backend (memcached, Redis) in front of a durable one (SQL, file, Redis) that keeps every session.

    Locks and reads are served by ``fast``; ``durable`` gets every ``write_every``-th write of a
    session, every create and delete, and holds the registry (listing, per-user look-up, gc).

    :param fast: the fast tier; it holds the locks.
    :param durable: the durable tier; it must offer administration (:class:`AdminBackend`).
    :param write_every: write a session's data through to ``durable`` when its version is a multiple of this.
    :param refresh_every: seconds; a write not due for the durable tier still refreshes the session's
        last access there when it crosses a multiple of this many seconds (the middleware passes its
        touch interval), so the registry never ends a session that is alive in the fast tier.
    """

    def __init__(self, fast: Backend, durable: Backend, *, write_every: int = 1, refresh_every: float = 60.0) -> None:
        if not isinstance(write_every, int) or isinstance(write_every, bool) or write_every < 1:
            raise ConfigError(
                f"durable_write_every must be an int >= 1, not {write_every!r}", option="durable_write_every"
            )
        if not isinstance(durable, AdminBackend):
            raise ConfigError(
                f"{durable.name} cannot be a durable tier: it keeps no registry (no administration side)",
                option="durable_backend",
            )
        self.fast = fast
        self.durable = durable
        self.registry: AdminBackend = durable
        self.write_every = write_every
        self.refresh_every = refresh_every
        self.name = f"{fast.name} + {durable.name}"
        self.key_prefix: str = getattr(durable, "key_prefix", getattr(fast, "key_prefix", "sessmw:"))
        self._mutex = threading.Lock()
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._stale: OrderedDict[str, None] = OrderedDict()
        self._fast_outage = _Outage(f"fast tier {fast.name}")
        self._durable_outage = _Outage(f"durable tier {durable.name}")
        self._degraded_note = f"serving sessions from the durable tier {durable.name} alone until it answers"
        # The fast tier holds the locks: a waiter is woken by its releases, where it can wake one.
        if isinstance(fast, WaitsForRelease):
            self.wait_released = fast.wait_released
        if isinstance(fast, AwaitsRelease):
            self.await_released = fast.await_released

    # -- the durable tier: refill and write-through --------------------------------------------

    def _refill(self, sid: str, record: Record) -> bool:
        """Put the durable tier's ``record`` back into the fast tier; return False if ``sid`` ended meanwhile.

        The durable tier is read again after the copy is made: an administrator who ended the session
        deletes from the durable tier first and from the fast tier second, so either this second read
        sees it gone, or that delete comes after our copy and removes it.
        """
        now = time.time()
        ttl = None if record.expires is None else max(1.0, record.expires - now) + REFILL_TTL_MARGIN
        try:
            if not self._fast(self.fast.create, sid, record, ttl):
                return True  # another request refilled it first
        except _FastDown:
            return True
        if self.durable.load(sid) is None:
            self._delete_fast(sid)
            return False
        return True

    def _fill(self, sid: str) -> Record | None:
        """A miss in the fast tier (eviction, flush, restart): read the durable tier and refill."""
        record = self.durable.load(sid)
        if record is None or not self._refill(sid, record):
            return None
        return record

    def _write_durable(self, sid: str, record: Record, token: str, ttl: float | None) -> _Wrote:
        """Write ``record`` to the durable tier under its own lock, taken with the same token.

        Never over a copy of a later version, and never where the session is gone. (The same version
        may be overwritten: records written by hand, or before versions existed, all carry 0.)
        """
        durable = self.durable
        try:
            locked, current = durable.lock_and_load(sid, token, WRITE_WINDOW)
            if not locked:
                logger.warning(
                    "tiered backend: the durable tier %s holds the lock of a session elsewhere; "
                    "this write reaches the fast tier only",
                    durable.name,
                )
                return _Wrote.BUSY
            if current is None:
                durable.release(sid, token, None)
                return _Wrote.GONE
            if current.version > record.version:
                durable.release(sid, token, None)
                logger.warning(
                    "tiered backend: the durable tier %s holds version %d of a session, this write version %d; "
                    "this write is dropped",
                    durable.name,
                    current.version,
                    record.version,
                )
                return _Wrote.NEWER
            written = durable.save(sid, record, token, ttl)
        except BackendUnavailable as exc:
            self._durable_outage.failed(exc, "sessions live in the fast tier only until it answers")
            return _Wrote.DOWN
        self._durable_outage.answered()
        return _Wrote.WRITTEN if written else _Wrote.GONE

    def _refresh_durable(self, sid: str, record: Record, ttl: float | None, held: _Held | None) -> None:
        """After a write the durable tier does not get: refresh its last access when a period boundary passed."""
        every = self.refresh_every
        if held is not None and held.loaded_access is not None and every > 0:
            if held.loaded_access // every == record.last_access // every:
                return
        touch = Touch(last_access=record.last_access, last_ip=record.last_ip, expires=record.expires, ttl=ttl)
        self._durable_best_effort(self.durable.touch, sid, touch)

    # -- primitives ----------------------------------------------------------------------------

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Lock in the fast tier (the durable one while it is down); a miss is read from the durable tier."""
        try:
            self._drop_stale(sid)
            locked, record = self._fast(self.fast.lock_and_load, sid, token, expire)
        except _FastDown:
            locked, record = self.durable.lock_and_load(sid, token, expire)
            if locked:
                self._remember(token, _Held(True, None if record is None else record.last_access))
            return locked, record
        if not locked:
            return False, None
        missed = False
        if record is None:
            # Not refilled here: the fast tier's save may insist on finding what the lock found (none).
            # The save or release of this token puts the session back (see save and release).
            try:
                record = self.durable.load(sid)
            except BaseException:
                self._release_fast(sid, token)
                raise
            missed = record is not None
        self._remember(token, _Held(False, None if record is None else record.last_access, missed))
        return True, record

    def load(self, sid: str) -> Record | None:
        """Read from the fast tier; a miss (or a fast tier that is down) is read from the durable tier."""
        try:
            self._drop_stale(sid)
            record = self._fast(self.fast.load, sid)
        except _FastDown:
            return self.durable.load(sid)
        if record is not None:
            return record
        return self._fill(sid)

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Register the session in the durable tier, then copy it to the fast tier."""
        if not self.durable.create(sid, record, ttl):
            return False
        try:
            if not self._fast(self.fast.create, sid, record, ttl):
                # A leftover under this id, which the durable tier (the registry) says is free.
                self._fast(self.fast.delete, sid)
                self._fast(self.fast.create, sid, record, ttl)
        except _FastDown:
            pass  # the next read finds it in the durable tier
        return True

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Write to the fast tier, and through to the durable one when due or when the fast tier refused."""
        held = self._forget(token)
        if held is not None and held.durable:
            if not self.durable.save(sid, record, token, ttl):
                return False
            self._delete_fast(sid)  # any copy there is older now
            return True
        try:
            # After a miss the write goes through too: the durable tier then also says whether the
            # session was ended meanwhile, before the fast tier gets a copy again.
            if record.version % self.write_every == 0 or (held is not None and held.missed):
                return self._save_through(sid, record, token, ttl)
            if self._fast(self.fast.save, sid, record, token, ttl):
                self._refresh_durable(sid, record, ttl, held)
                return True
            return self._after_refusal(sid, record, token, ttl)
        except _FastDown:
            return self._save_without_fast(sid, record, token, ttl)

    def _save_through(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """A write due for the durable tier: made while we still hold the fast lock, then to the fast tier.

        Raises :class:`_FastDown` when the fast tier fails before the durable write.
        """
        if not self._fast(self.fast.extend, sid, token, WRITE_WINDOW):
            return self._after_refusal(sid, record, token, ttl)
        wrote = self._write_durable(sid, record, token, ttl)
        if wrote in (_Wrote.GONE, _Wrote.NEWER):
            self._release_fast(sid, token)
            self._delete_fast(sid)
            return False
        try:
            if self._fast(self.fast.save, sid, record, token, ttl):
                return True
        except _FastDown:
            if wrote is _Wrote.WRITTEN:
                self._mark_stale(sid)
                return True
            return False
        # The fast tier lost the lock or the record since the extend (a flush): the durable tier has the write.
        if wrote is _Wrote.WRITTEN:
            self._delete_fast(sid)
            return True
        return False

    def _after_refusal(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """The fast tier refused a write: fenced (another request holds the lock or wrote since), or its lock
        or record vanished (eviction, flush, restart). Only in the second case is the write kept."""
        try:
            locked, current = self._fast(self.fast.lock_and_load, sid, token, WRITE_WINDOW)
        except _FastDown:
            return self._save_without_fast(sid, record, token, ttl)
        if not locked:
            return False  # fenced: another request holds the lock
        if current is not None and current.version >= record.version:
            self._release_fast(sid, token)
            return False  # fenced: another request wrote after we loaded
        wrote = self._write_durable(sid, record, token, ttl)
        if wrote is not _Wrote.WRITTEN:
            self._release_fast(sid, token)
            if wrote in (_Wrote.GONE, _Wrote.NEWER):
                self._delete_fast(sid)
            return False
        try:
            if current is not None and self._fast(self.fast.save, sid, record, token, ttl):
                return True
            self._refill(sid, record)
            self._release_fast(sid, token)
        except _FastDown:
            self._mark_stale(sid)
        return True

    def _save_without_fast(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """The fast tier, which holds this request's lock, is down: keep the write in the durable tier."""
        if self._write_durable(sid, record, token, ttl) is not _Wrote.WRITTEN:
            return False
        self._mark_stale(sid)  # if the fast server returns with its memory, its copy is older
        return True

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock in the tier that holds it; a touch reaches both tiers."""
        held = self._forget(token)
        if held is not None and held.durable:
            return self.durable.release(sid, token, touch)
        try:
            released = self._fast(self.fast.release, sid, token, touch)
        except _FastDown:
            released = False
        if touch is not None:
            self._durable_best_effort(self.durable.touch, sid, touch)
        if held is not None and held.missed:
            self._fill(sid)  # the session was read from the durable tier: put it back in the fast one
        return released

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access in both tiers (the core touches at most once per touch interval)."""
        try:
            self._fast(self.fast.touch, sid, touch)
        except _FastDown:
            self.durable.touch(sid, touch)
            return
        self._durable_best_effort(self.durable.touch, sid, touch)

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's expiry out in the tier that holds it."""
        if self._in_durable(token):
            return self.durable.extend(sid, token, expire)
        try:
            return self.fast.extend(sid, token, expire)
        except BackendUnavailable as exc:
            self._fast_outage.failed(exc, self._degraded_note)
            raise  # the lock in the fast tier cannot be vouched for

    def delete(self, sid: str) -> None:
        """Remove the session from the durable tier first, then from the fast one, so it never comes back."""
        self.durable.delete(sid)
        self._delete_fast(sid)

    def cap_failover_wait(self, lock_timeout: float) -> None:
        """Pass the bound on failover waits to each tier that waits for failovers (Redis Sentinel, Cluster)."""
        for tier in (self.fast, self.durable):
            if isinstance(tier, WaitsForFailover):
                tier.cap_failover_wait(lock_timeout)

    def close(self) -> None:
        """Close both tiers."""
        try:
            self.fast.close()
        finally:
            self.durable.close()

    # -- administration: the registry is the durable tier --------------------------------------

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        """Yield every live session, from the durable tier's registry."""
        return self.registry.iter_records()

    def user_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """Return ``user_id``'s live sessions, from the durable tier's user index."""
        return self.registry.user_sessions(user_id)

    def gc(self, now: float, limit: int | None = None) -> int:
        """Remove expired sessions from the durable tier, then the fast tier's leftovers; return the former.

        A batch (``limit``: the background gc) collects the durable tier only: the fast one is
        memcached or Redis, which drop expired copies themselves (their TTL).
        """
        if limit is not None:
            return self.registry.gc(now, limit=limit)
        removed = self.registry.gc(now)
        if isinstance(self.fast, AdminBackend):
            try:
                self._fast(self.fast.gc, now)
            except _FastDown:
                pass
        return removed

    def claim_gc(self, every: float) -> bool:
        """Take the durable tier's turn to collect for ``every`` seconds (never, when it expires sessions itself)."""
        claim = getattr(self.registry, "claim_gc", None)
        return bool(claim(every)) if claim is not None else False

    def stats(self) -> dict[str, float]:
        """Figures of both tiers: ``durable_*`` and ``fast_*``, plus ``evictions`` and ``fast_available``.

        ``evictions`` is what the fast tier dropped to make room (memcached ``evictions``, Redis
        ``evicted_keys``): with a durable tier these are cache misses, not lost sessions.
        """
        figures: dict[str, float] = {}
        for name, value in self.registry.stats().items():
            figures["durable_" + name] = value
        fast_figures: dict[str, float] = {}
        if isinstance(self.fast, AdminBackend):
            try:
                fast_figures = self._fast(self.fast.stats)
                figures["fast_available"] = 1.0
            except _FastDown:
                figures["fast_available"] = 0.0
        for name, value in fast_figures.items():
            figures["fast_" + name] = value
        figures["evictions"] = fast_figures.get("evictions", fast_figures.get("evicted_keys", 0.0))
        return figures
