"""What a storage backend is: a few one-round-trip primitives, sync and async.

Rules of this module: no I/O. A backend never waits for a lock (the core's drivers do), never decides
whether a session has timed out (the core does), and never sees Python session objects: it stores a
:class:`Record`, whose ``data`` is already serialized.

Every method of :class:`Backend` is one attempt and, where the store allows it, one round trip. The
async protocol :class:`AsyncBackend` has the same methods with an ``a`` prefix (``aload``), so one
class with no I/O (memory) can be both, and a wrongly wired backend fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "AdminBackend",
    "SAME_IP",
    "AwaitsRelease",
    "WaitsForFailover",
    "WaitsForRelease",
    "AsyncBackend",
    "Backend",
    "Record",
    "SessionInfo",
    "Touch",
    "decode_record",
    "encode_record",
    "record_meta",
]


class Record(NamedTuple):
    """One stored session: its serialized data and the metadata the core keeps with it.

    Times are wall-clock seconds since the epoch (``time.time()``), since they are shared between
    processes and hosts. A named tuple rather than a frozen dataclass: one is built per write, and
    a frozen dataclass costs several times more to build.
    """

    #: The session dict, serialized.
    data: bytes
    #: When the session was created.
    created: float
    #: When the session was last used (refreshed at most once per ``touch_interval``).
    last_access: float
    #: Whose session it is (``bind_user``), or ``None`` for an anonymous one.
    user_id: str | int | None = None
    first_ip: str | None = None
    last_ip: str | None = None
    user_agent: str | None = None
    #: ``True`` when the session carries its own idle timeout (``idle_timeout`` below, ``None`` = never).
    idle_override: bool = False
    idle_timeout: float | None = None
    #: When the core considers the session expired (``None`` = never); backends index it for gc.
    expires: float | None = None
    #: Raised by one on every write of the session's data (1 for a new session); a store holding
    #: several copies (memcached replicas, a fast and a durable tier) believes the highest.
    version: int = 0

    def touched(self, touch: Touch) -> Record:
        """Return this record with the last access and IP of ``touch``."""
        return self._replace(
            last_access=touch.last_access,
            last_ip=touch.last_ip if touch.last_ip is not None else self.last_ip,
            expires=touch.expires,
        )


class Touch(NamedTuple):
    """A refresh of a session's last access, written without rewriting its data."""

    last_access: float
    last_ip: str | None
    #: The record's new expiry (``Record.expires``).
    expires: float | None
    #: Seconds the store should keep the record from now (a safety net; ``None`` = no TTL).
    ttl: float | None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the administration API tells about one session (never its data)."""

    sid: str
    user_id: str | int | None
    created: float
    last_access: float
    first_ip: str | None
    last_ip: str | None
    user_agent: str | None = None


_META_KEYS = ("c", "a", "u", "fi", "li", "ua", "io", "it", "x", "v")

#: The metadata line's last IP when it equals the first IP (a JSON ``0``: no address is a number).
SAME_IP = 0


def record_meta(record: Record) -> list[Any]:
    """Return the elements of ``record``'s metadata line, in the compact form :func:`encode_record` writes.

    The line is a JSON array of the fields after ``data``, in :class:`Record` order; two of them are
    shortened, both losslessly: the last IP is :data:`SAME_IP` when it equals the first IP (the usual
    case), and ``idle_override`` is ``0`` or ``1`` rather than ``false`` or ``true``. Times are written
    as they are (the core rounds them to the millisecond, so they print short).
    """
    last_ip = record.last_ip
    return [
        record.created,
        record.last_access,
        record.user_id,
        record.first_ip,
        SAME_IP if last_ip is not None and last_ip == record.first_ip else last_ip,
        record.user_agent,
        1 if record.idle_override else 0,
        record.idle_timeout,
        record.expires,
        record.version,
    ]


def encode_record(record: Record) -> bytes:
    """Return ``record`` as one blob: a JSON line of metadata (see :func:`record_meta`), then the data bytes."""
    return json.dumps(record_meta(record), separators=(",", ":")).encode("utf-8") + b"\n" + record.data


def decode_record(blob: bytes) -> Record:
    """Return the record in a blob made by :func:`encode_record`, in its compact form or in the older full one.

    The older form wrote the last IP always, ``idle_override`` as ``false``/``true``, and (before
    versions existed) nine fields; every element is read by rules that fit both, so a record partly
    rewritten by a Redis script (which writes the compact last IP into an old line) decodes too.
    """
    head, sep, data = blob.partition(b"\n")
    if not sep:
        raise ValueError("not a sessionmw record")
    meta: list[Any] = json.loads(head)
    last_ip = meta[4]
    return Record(
        data=data,
        created=meta[0],
        last_access=meta[1],
        user_id=meta[2],
        first_ip=meta[3],
        # A number is never an address: SAME_IP (type() so that an old line's false is not taken for 0).
        last_ip=meta[3] if type(last_ip) is int else last_ip,
        user_agent=meta[5],
        idle_override=bool(meta[6]),
        idle_timeout=meta[7],
        expires=meta[8],
        # Records written before versions existed have nine fields: version 0, older than any write.
        version=meta[9] if len(meta) > 9 else 0,
    )


@runtime_checkable
class Backend(Protocol):
    """Synchronous session storage: one attempt per call, no waiting, no policy.

    ``sid`` is the session id as it appears in the cookie; the backend adds its own key prefix.
    """

    #: A short description for messages and logs, with any password removed (``redis://host:6379/0``).
    name: str

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid`` for ``expire`` seconds; if that worked, also return its record.

        Returns ``(False, None)`` when another token holds the lock, ``(True, None)`` when the lock
        was taken but no session is stored under ``sid``.
        """
        ...

    def load(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking, or ``None``."""
        ...

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Store a new session only if ``sid`` is unused; return whether it was stored."""
        ...

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock, only if ``token`` still holds the lock.

        Returns ``False`` (and writes nothing) when the lock expired and may be someone else's, or
        when the session was deleted meanwhile (ended by an administrator, gc): a request in flight
        must never resurrect an ended session. The lock is released in that case too.
        """
        ...

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, refreshing last access first when ``touch`` is given."""
        ...

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access of a stored session without a lock and without rewriting its data."""
        ...

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's expiry to ``expire`` seconds from now, if ``token`` still holds it."""
        ...

    def delete(self, sid: str) -> None:
        """Remove the session's data (not its lock); removing a missing session is not an error."""
        ...

    def close(self) -> None:
        """Release connections and other resources."""
        ...


@runtime_checkable
class AsyncBackend(Protocol):
    """The asyncio twin of :class:`Backend`: the same primitives, ``a``-prefixed and awaitable."""

    name: str

    async def alock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """See :meth:`Backend.lock_and_load`."""
        ...

    async def aload(self, sid: str) -> Record | None:
        """See :meth:`Backend.load`."""
        ...

    async def acreate(self, sid: str, record: Record, ttl: float | None) -> bool:
        """See :meth:`Backend.create`."""
        ...

    async def asave(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """See :meth:`Backend.save`."""
        ...

    async def arelease(self, sid: str, token: str, touch: Touch | None) -> bool:
        """See :meth:`Backend.release`."""
        ...

    async def atouch(self, sid: str, touch: Touch) -> None:
        """See :meth:`Backend.touch`."""
        ...

    async def aextend(self, sid: str, token: str, expire: float) -> bool:
        """See :meth:`Backend.extend`."""
        ...

    async def adelete(self, sid: str) -> None:
        """See :meth:`Backend.delete`."""
        ...

    async def aclose(self) -> None:
        """See :meth:`Backend.close`."""
        ...


@runtime_checkable
class AdminBackend(Protocol):
    """The administration side of a backend: listing, per-user look-up, gc and figures (sync only).

    An async backend that serves ``max_sessions_per_user`` also offers ``auser_sessions``, the
    awaitable :meth:`user_sessions` (the threaded wrapper derives it from the sync one).

    A backend keeps an index of sessions by user id, updated when a session with a user is created
    and when one is deleted, so :meth:`user_sessions` costs in proportion to that user's sessions.
    Index entries of sessions the store dropped on its own (TTL, eviction) are skipped and cleaned.
    """

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        """Yield ``(sid, record)`` for every live session under this backend's key prefix."""
        ...

    def user_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """Return ``(sid, record)`` for every live session bound to ``user_id``."""
        ...

    def gc(self, now: float, limit: int | None = None) -> int:
        """Remove sessions whose ``expires`` is before ``now`` (or whose TTL passed); return how many.

        With ``limit``, remove at most that many (one batch of the middleware's background gc, on
        the stores that keep expired sessions: see :class:`sessionmw.core.sweep.Collects`); without,
        every one, in as many short batches as it takes.
        """
        ...

    def stats(self) -> dict[str, float]:
        """Return figures of the store itself, such as memcached's ``evictions`` or Redis' ``evicted_keys``."""
        ...


@runtime_checkable
class WaitsForFailover(Protocol):
    """A backend that waits out a server failover (Redis Sentinel, Cluster) before answering unavailable."""

    def cap_failover_wait(self, lock_timeout: float) -> None:
        """Never wait for a failover longer than ``lock_timeout``, a middleware setting the URL cannot see."""
        ...


@runtime_checkable
class WaitsForRelease(Protocol):
    """A backend that wakes a waiter when a session's lock is released, in this process or another.

    The drivers wait with it instead of sleeping between two tries of the lock; polling stays the
    fallback (a wait that fails, or a lock that expires rather than being released, is noticed at the
    next try the core's delays allow).
    """

    def wait_released(self, sid: str, timeout: float) -> None:
        """Return when ``sid``'s lock is released, at once if it is free now, or after ``timeout`` seconds.

        A release wakes one waiter (per process, or in all, as the store allows), who then tries the
        lock. Returning early is allowed: the caller tries the lock again either way.
        """
        ...


@runtime_checkable
class AwaitsRelease(Protocol):
    """The asyncio side of :class:`WaitsForRelease`: the wait parks no thread."""

    async def await_released(self, sid: str, timeout: float) -> None:
        """See :meth:`WaitsForRelease.wait_released`."""
        ...
