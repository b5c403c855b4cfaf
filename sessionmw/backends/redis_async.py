"""The asyncio twin of the Redis backend, on ``redis.asyncio``.

Same shape as :mod:`.redis`, method for method: each builds an op of :mod:`._redis_common` and runs
it; the only difference is ``await``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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
        self._base: C.RedisBase[AsyncClient] = C.RedisBase(name, C.Keys(key_prefix), self._connect)
        #: The event loop the client was built on: its connections belong to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Whether one pipeline runs in order on one server (not Cluster, whose index sets live elsewhere).
        self._ordered = config.kind != "cluster"

    def _connect(self) -> tuple[AsyncClient, list[Any]]:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop (client() in a test): the first command's loop owns it
            self._loop = None
        return connect(self.config)

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

    async def _arun_all(self, ops: Sequence[C.Op[Any]]) -> list[Any]:
        """Run ops in one pipeline (one round trip per node), each parsed; a script the server lost is loaded."""
        if not ops:
            return []
        base = self._base
        client = base.client
        if client is None:
            client = base.connected()
        try:
            pipe = client.pipeline(transaction=False)
            for op in ops:
                pipe.execute_command(*op.command)
            replies = await pipe.execute(raise_on_error=False)
            loaded: set[str] = set()
            for i, (op, reply) in enumerate(zip(ops, replies, strict=True)):
                if isinstance(reply, NoScriptError) and op.script is not None:
                    if op.script not in loaded:
                        await client.script_load(op.script)
                        loaded.add(op.script)
                    replies[i] = await client.execute_command(*op.command)
                elif isinstance(reply, Exception):
                    raise reply
        except C.ERRORS as exc:
            raise base.unavailable(exc) from exc
        return [op.parse(reply) for op, reply in zip(ops, replies, strict=True)]

    # -- primitives ----------------------------------------------------------------------------

    async def alock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """See :meth:`.redis.RedisBackend.lock_and_load`."""
        return await self._arun(C.lock_and_load(self._base.keys, sid, token, expire))

    async def aload(self, sid: str) -> Record | None:
        """See :meth:`.redis.RedisBackend.load`."""
        return await self._arun(C.load(self._base.keys, sid))

    async def acreate(self, sid: str, record: Record, ttl: float | None) -> bool:
        """See :meth:`.redis.RedisBackend.create`."""
        keys = self._base.keys
        op = C.create(keys, sid, record, ttl)
        if record.user_id is None:
            return await self._arun(op)
        if self._ordered:
            stored: bool = (await self._arun_all((op, C.index_add(keys, sid, record.user_id))))[0]
            return stored
        stored = await self._arun(op)
        if stored:
            await self._arun(C.index_add(keys, sid, record.user_id))
        return stored

    async def asave(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """See :meth:`.redis.RedisBackend.save`."""
        saved, then = await self._arun(C.save(self._base.keys, sid, record, token, ttl))
        if then:
            await self._arun_all(then)
        return saved

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
        then = await self._arun(C.delete(self._base.keys, sid))
        if then:
            await self._arun_all(then)

    async def auser_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """See :meth:`.redis.RedisBackend.user_sessions`."""
        keys = self._base.keys
        index = keys.user(user_id)
        sids = await self._arun(C.members(index))
        if not sids:
            return []
        found, stale = C.pick_user_sessions(user_id, sids, await self._arun_all([C.load(keys, sid) for sid in sids]))
        if stale:
            await self._arun(C.index_remove(index, stale))
        return found

    async def aclose(self) -> None:
        """See :meth:`.redis.RedisBackend.close`; connections are closed on the event loop that opened them."""
        owner, self._loop = self._loop, None
        closing = self._base.take_closing()
        if owner is not None and owner is not asyncio.get_running_loop():
            # One app served from two loops (two test clients of one app): another loop's streams
            # cannot be awaited here. Close them on their loop if it still runs; else they died with it.
            if owner.is_running() and not owner.is_closed():
                for client in closing:
                    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(client.aclose(), owner))
            return
        for client in closing:
            await client.aclose()
