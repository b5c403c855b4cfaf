"""The memory backend: sessions in this process's memory, for tests and development.

``memory://`` names one store per process (``memory://name`` another), shared by every middleware
that names it, so ``key_prefix`` keeps apps apart as it does on a real server. It is both a
:class:`~sessionmw.backends.base.Backend` and an
:class:`~sessionmw.backends.base.AsyncBackend`: it does no I/O, so the async methods call the sync
ones. A waiter for a lock waits on a ticket of the store (:class:`~.wakeups.Wakeups`), woken by the
release, one waiter per release, whichever middleware (sync or asyncio) of the process released it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ._url import BackendURL
from .base import Record, Touch
from .wakeups import Wakeups

__all__ = ["MemoryBackend"]


@dataclass
class _Store:
    mutex: threading.Lock = field(default_factory=threading.Lock)
    #: key -> (record, monotonic deadline or None)
    data: dict[str, tuple[Record, float | None]] = field(default_factory=dict)
    #: key -> (token, monotonic deadline)
    locks: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: key prefix + str(user id) -> keys of that user's sessions
    users: dict[str, set[str]] = field(default_factory=dict)
    #: key -> this store's waiters for its lock
    wakeups: Wakeups = field(default_factory=Wakeups)
    #: key prefix -> monotonic end of the gc turn claimed under it (:meth:`MemoryBackend.claim_gc`)
    gc_leases: dict[str, float] = field(default_factory=dict)


_STORES: dict[str, _Store] = {}
_STORES_MUTEX = threading.Lock()


def _store(name: str) -> _Store:
    with _STORES_MUTEX:
        store = _STORES.get(name)
        if store is None:
            store = _STORES[name] = _Store()
        return store


class MemoryBackend:
    """Sessions in a dict of this process; locks expire after ``lock_expire`` like everywhere else.

    :param name: which in-process store to use (``memory://name``).
    :param key_prefix: prepended to every session id.
    """

    #: No primitive ever blocks: the async driver may call the sync ones directly.
    nonblocking = True

    def __init__(self, name: str = "", *, key_prefix: str = "sessmw:") -> None:
        self.name = f"memory://{name}"
        self.key_prefix = key_prefix
        self._s = _store(name)

    def _live(self, key: str, now: float) -> Record | None:
        item = self._s.data.get(key)
        if item is None:
            return None
        record, deadline = item
        if deadline is not None and deadline <= now:
            self._remove(key)
            return None
        return record

    def _put(self, key: str, record: Record, ttl: float | None, now: float) -> None:
        old = self._s.data.get(key)
        if old is not None and old[0].user_id != record.user_id:
            self._unindex(key, old[0].user_id)
        self._s.data[key] = (record, None if ttl is None else now + ttl)
        if record.user_id is not None:
            self._s.users.setdefault(self.key_prefix + str(record.user_id), set()).add(key)

    def _unindex(self, key: str, user_id: str | int | None) -> None:
        if user_id is None:
            return
        ukey = self.key_prefix + str(user_id)
        keys = self._s.users.get(ukey)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._s.users[ukey]

    def _remove(self, key: str) -> bool:
        item = self._s.data.pop(key, None)
        if item is None:
            return False
        self._unindex(key, item[0].user_id)
        return True

    def _holds(self, key: str, token: str, now: float) -> bool:
        held = self._s.locks.get(key)
        return held is not None and held[0] == token and held[1] > now

    # -- sync primitives ------------------------------------------------------------------------

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid``; when taken, return its record too."""
        key = self.key_prefix + sid
        now = time.monotonic()
        with self._s.mutex:
            held = self._s.locks.get(key)
            if held is not None and held[1] > now:
                return False, None
            self._s.locks[key] = (token, now + expire)
            return True, self._live(key, now)

    def load(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking."""
        with self._s.mutex:
            return self._live(self.key_prefix + sid, time.monotonic())

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Store a new session if ``sid`` is unused."""
        key = self.key_prefix + sid
        now = time.monotonic()
        with self._s.mutex:
            if self._live(key, now) is not None:
                return False
            self._put(key, record, ttl, now)
            return True

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock, if ``token`` still holds it."""
        key = self.key_prefix + sid
        now = time.monotonic()
        with self._s.mutex:
            if not self._holds(key, token, now):
                return False
            del self._s.locks[key]
            saved = self._live(key, now) is not None  # else ended meanwhile (terminate, gc): never resurrect it
            if saved:
                self._put(key, record, ttl, now)
        self._s.wakeups.wake(key)
        return saved

    def save_tail(self, sid: str, head: Record, tail: bytes, token: str, ttl: float | None) -> bool:
        """Append ``tail`` to the data and store ``head``'s metadata, releasing the lock, if ``token`` holds it."""
        key = self.key_prefix + sid
        now = time.monotonic()
        with self._s.mutex:
            if not self._holds(key, token, now):
                return False
            del self._s.locks[key]
            old = self._live(key, now)  # None: ended meanwhile, never resurrected
            if old is not None:
                self._put(key, head._replace(data=old.data + tail), ttl, now)
        self._s.wakeups.wake(key)
        return old is not None

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, touching the record first."""
        key = self.key_prefix + sid
        now = time.monotonic()
        with self._s.mutex:
            if not self._holds(key, token, now):
                return False
            del self._s.locks[key]
            if touch is not None:
                self._touch(key, touch, now)
        self._s.wakeups.wake(key)
        return True

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access without rewriting the data."""
        with self._s.mutex:
            self._touch(self.key_prefix + sid, touch, time.monotonic())

    def _touch(self, key: str, touch: Touch, now: float) -> None:
        record = self._live(key, now)
        if record is not None:
            self._s.data[key] = (record.touched(touch), None if touch.ttl is None else now + touch.ttl)

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's expiry out, if ``token`` still holds it."""
        key = self.key_prefix + sid
        now = time.monotonic()
        with self._s.mutex:
            if not self._holds(key, token, now):
                return False
            self._s.locks[key] = (token, now + expire)
            return True

    def delete(self, sid: str) -> None:
        """Remove the session's data."""
        with self._s.mutex:
            self._remove(self.key_prefix + sid)

    def _locked(self, key: str) -> bool:
        with self._s.mutex:
            held = self._s.locks.get(key)
            return held is not None and held[1] > time.monotonic()

    def wait_released(self, sid: str, timeout: float) -> None:
        """Return when ``sid``'s lock is released (at once if it is free), or after ``timeout`` seconds."""
        key = self.key_prefix + sid
        with self._s.wakeups.ticket(key) as ticket:
            # Queued before the look: a release after it wakes this ticket, one before it shows here.
            if self._locked(key):
                ticket.wait(timeout)

    async def await_released(self, sid: str, timeout: float) -> None:
        """See :meth:`wait_released`; the wait is on the event loop."""
        key = self.key_prefix + sid
        with self._s.wakeups.ticket(key, on_loop=True) as ticket:
            if self._locked(key):
                await ticket.await_(timeout)

    def close(self) -> None:
        """Nothing to release: the store lives as long as the process."""

    # -- administration ------------------------------------------------------------------------

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        """Yield ``(sid, record)`` for every live session under this key prefix."""
        now = time.monotonic()
        n = len(self.key_prefix)
        with self._s.mutex:
            items = [
                (k[n:], rec)
                for k, (rec, deadline) in self._s.data.items()
                if k.startswith(self.key_prefix) and (deadline is None or deadline > now)
            ]
        yield from items

    def user_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """Return the live sessions bound to ``user_id``."""
        now = time.monotonic()
        n = len(self.key_prefix)
        with self._s.mutex:
            keys = list(self._s.users.get(self.key_prefix + str(user_id), ()))
            found = [(k[n:], self._live(k, now)) for k in keys]
        return [(sid, rec) for sid, rec in found if rec is not None]

    def gc(self, now: float, limit: int | None = None) -> int:
        """Remove sessions past their expiry (or TTL), at most ``limit`` of them; return how many.

        Oldest first (the dict keeps creation order), so a batch finds the expired ones early.
        """
        mono = time.monotonic()
        with self._s.mutex:
            doomed: list[str] = []
            for key, (record, deadline) in self._s.data.items():
                if limit is not None and len(doomed) >= limit:
                    break
                if not key.startswith(self.key_prefix):
                    continue
                if (deadline is not None and deadline <= mono) or (record.expires is not None and record.expires < now):
                    doomed.append(key)
            for key in doomed:
                self._remove(key)
        return len(doomed)

    def claim_gc(self, every: float) -> bool:
        """Take this key prefix's turn to collect for ``every`` seconds, unless it is taken (never released)."""
        mono = time.monotonic()
        with self._s.mutex:
            if self._s.gc_leases.get(self.key_prefix, mono) > mono:
                return False
            self._s.gc_leases[self.key_prefix] = mono + every
            return True

    def stats(self) -> dict[str, float]:
        """The memory store has no figures of its own."""
        return {}

    # -- async twins: no I/O, so they call the sync primitives ---------------------------------

    async def alock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """See :meth:`lock_and_load`."""
        return self.lock_and_load(sid, token, expire)

    async def aload(self, sid: str) -> Record | None:
        """See :meth:`load`."""
        return self.load(sid)

    async def acreate(self, sid: str, record: Record, ttl: float | None) -> bool:
        """See :meth:`create`."""
        return self.create(sid, record, ttl)

    async def asave(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """See :meth:`save`."""
        return self.save(sid, record, token, ttl)

    async def asave_tail(self, sid: str, head: Record, tail: bytes, token: str, ttl: float | None) -> bool:
        """See :meth:`save_tail`."""
        return self.save_tail(sid, head, tail, token, ttl)

    async def arelease(self, sid: str, token: str, touch: Touch | None) -> bool:
        """See :meth:`release`."""
        return self.release(sid, token, touch)

    async def atouch(self, sid: str, touch: Touch) -> None:
        """See :meth:`touch`."""
        self.touch(sid, touch)

    async def aextend(self, sid: str, token: str, expire: float) -> bool:
        """See :meth:`extend`."""
        return self.extend(sid, token, expire)

    async def adelete(self, sid: str) -> None:
        """See :meth:`delete`."""
        self.delete(sid)

    async def auser_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """See :meth:`user_sessions`."""
        return self.user_sessions(user_id)

    async def aclose(self) -> None:
        """See :meth:`close`."""


def from_url(url: BackendURL, key_prefix: str) -> MemoryBackend:
    """Build the backend for ``memory://`` or ``memory://name``."""
    name = url.hosts[0][0] if url.hosts else ""
    return MemoryBackend(name, key_prefix=key_prefix)


#: The memory backend is natively async too.
async_from_url = from_url
