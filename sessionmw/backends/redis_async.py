"""The asyncio twin of the Redis backend, on ``redis.asyncio``.

Same shape as :mod:`.redis`, method for method: each builds an op of :mod:`._redis_common` and runs
it; the only difference is ``await``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from . import _redis_common as C
from .base import Record, Touch

__all__ = ["AsyncRedisBackend", "connect"]

T = TypeVar("T")

AsyncClient = aredis.Redis | RedisCluster


def connect(config: C.ClientConfig) -> tuple[AsyncClient, list[Any]]:
    """Build the asyncio client of ``config`` (no I/O yet) and the list of clients to close with it."""
    retry = Retry(NoBackoff(), config.retries)
    if config.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in config.nodes]
        cluster = RedisCluster(startup_nodes=nodes, retry=retry, **config.kwargs)
        return cluster, [cluster]
    if config.kind == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            config.nodes, sentinel_kwargs={**config.sentinel_kwargs, "retry": retry}
        )
        master = sentinel.master_for(config.service, redis_class=aredis.Redis, retry=retry, **config.kwargs)
        return master, [master, *sentinel.sentinels]
    client = aredis.Redis(retry=retry, **config.kwargs)
    return client, [client]


class AsyncRedisBackend:
    """Sessions in Redis through ``redis.asyncio``; each primitive is one round trip.

    :param config: how to reach the server (:func:`._redis_common.client_config` reads it from a URL).
    :param name: the backend's URL without password, for messages.
    :param key_prefix: prepended to every key.
    """

    def __init__(self, config: C.ClientConfig, *, name: str, key_prefix: str = "sessmw:") -> None:
        self.name = name
        self.key_prefix = key_prefix
        self.config = config
        self._base: C.RedisBase[AsyncClient] = C.RedisBase(name, C.Keys(key_prefix), lambda: connect(config))

    def client(self) -> AsyncClient:
        """The ``redis.asyncio`` client, built on first use (for administration and tests)."""
        return self._base.connected()

    async def _arun(self, op: C.Op[T]) -> T:
        base = self._base
        client = base.client
        if client is None:
            client = base.connected()
        try:
            try:
                reply = await client.execute_command(*op.command)
            except NoScriptError:
                if op.script is None:
                    raise
                await client.script_load(op.script)  # a new or flushed server: load the script, then once more
                reply = await client.execute_command(*op.command)
        except C.ERRORS as exc:
            raise base.unavailable(exc) from exc
        if base.policy_pending:
            try:
                base.policy_result(await client.config_get("maxmemory-policy"), None)
            except C.ERRORS as exc:
                base.policy_result(None, exc)
        return op.parse(reply)

    # -- primitives ----------------------------------------------------------------------------

    async def alock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """See :meth:`.redis.RedisBackend.lock_and_load`."""
        return await self._arun(C.lock_and_load(self._base.keys, sid, token, expire))

    async def aload(self, sid: str) -> Record | None:
        """See :meth:`.redis.RedisBackend.load`."""
        return await self._arun(C.load(self._base.keys, sid))

    async def acreate(self, sid: str, record: Record, ttl: float | None) -> bool:
        """See :meth:`.redis.RedisBackend.create`."""
        return await self._arun(C.create(self._base.keys, sid, record, ttl))

    async def asave(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """See :meth:`.redis.RedisBackend.save`."""
        return await self._arun(C.save(self._base.keys, sid, record, token, ttl))

    async def arelease(self, sid: str, token: str, touch: Touch | None) -> bool:
        """See :meth:`.redis.RedisBackend.release`."""
        return await self._arun(C.release(self._base.keys, sid, token, touch))

    async def atouch(self, sid: str, touch: Touch) -> None:
        """See :meth:`.redis.RedisBackend.touch`."""
        await self._arun(C.touch(self._base.keys, sid, touch))

    async def aextend(self, sid: str, token: str, expire: float) -> bool:
        """See :meth:`.redis.RedisBackend.extend`."""
        return await self._arun(C.extend(self._base.keys, sid, token, expire))

    async def adelete(self, sid: str) -> None:
        """See :meth:`.redis.RedisBackend.delete`."""
        await self._arun(C.delete(self._base.keys, sid))

    async def aclose(self) -> None:
        """See :meth:`.redis.RedisBackend.close`."""
        for client in self._base.take_closing():
            await client.aclose()
