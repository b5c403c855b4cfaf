"""An :class:`AsyncBackend` made from a sync :class:`Backend` by running each call in a worker thread.

For backends whose client has no asyncio twin (file, SQLAlchemy with sync drivers, pymemcache). The
waiting for a lock still happens on the event loop (the async driver sleeps), so no thread is parked
while a request waits; a backend that wakes waiters itself (file, PostgreSQL) offers that wait as a
coroutine (:class:`~.base.AwaitsRelease`), which this wrapper passes on as it is.
"""

from __future__ import annotations

from anyio import to_thread

from .appending import AppendsTail
from .base import AwaitsRelease, Backend, Record, Touch, WaitsForFailover

__all__ = ["ThreadedAsyncBackend"]


class ThreadedAsyncBackend:
    """The async twin of any sync backend: each primitive runs in anyio's worker threads."""

    def __init__(self, backend: Backend) -> None:
        self.sync = backend
        self.name = backend.name
        if isinstance(backend, AwaitsRelease):
            self.await_released = backend.await_released
        if isinstance(backend, AppendsTail):
            self.asave_tail = self._asave_tail

    def cap_failover_wait(self, lock_timeout: float) -> None:
        """Pass the bound on failover waits to the wrapped backend, when it waits for failovers."""
        if isinstance(self.sync, WaitsForFailover):
            self.sync.cap_failover_wait(lock_timeout)

    async def alock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """See :meth:`Backend.lock_and_load`."""
        return await to_thread.run_sync(self.sync.lock_and_load, sid, token, expire)

    async def aload(self, sid: str) -> Record | None:
        """See :meth:`Backend.load`."""
        return await to_thread.run_sync(self.sync.load, sid)

    async def acreate(self, sid: str, record: Record, ttl: float | None) -> bool:
        """See :meth:`Backend.create`."""
        return await to_thread.run_sync(self.sync.create, sid, record, ttl)

    async def asave(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """See :meth:`Backend.save`."""
        return await to_thread.run_sync(self.sync.save, sid, record, token, ttl)

    async def _asave_tail(self, sid: str, head: Record, tail: bytes, token: str, ttl: float | None) -> bool:
        """See :meth:`AppendsTail.save_tail` (offered as ``asave_tail`` when the wrapped backend has it)."""
        sync = self.sync
        assert isinstance(sync, AppendsTail)
        return await to_thread.run_sync(sync.save_tail, sid, head, tail, token, ttl)

    async def arelease(self, sid: str, token: str, touch: Touch | None) -> bool:
        """See :meth:`Backend.release`."""
        return await to_thread.run_sync(self.sync.release, sid, token, touch)

    async def atouch(self, sid: str, touch: Touch) -> None:
        """See :meth:`Backend.touch`."""
        await to_thread.run_sync(self.sync.touch, sid, touch)

    async def aextend(self, sid: str, token: str, expire: float) -> bool:
        """See :meth:`Backend.extend`."""
        return await to_thread.run_sync(self.sync.extend, sid, token, expire)

    async def adelete(self, sid: str) -> None:
        """See :meth:`Backend.delete`."""
        await to_thread.run_sync(self.sync.delete, sid)

    async def auser_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """See :meth:`AdminBackend.user_sessions`."""
        fn = getattr(self.sync, "user_sessions", None)
        if fn is None:
            raise NotImplementedError(f"{self.name} cannot list a user's sessions")
        result: list[tuple[str, Record]] = await to_thread.run_sync(fn, user_id)
        return result

    async def aclose(self) -> None:
        """See :meth:`Backend.close`."""
        await to_thread.run_sync(self.sync.close)
