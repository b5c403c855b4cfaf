"""How the Redis backend's commands reach the server: connections of its own, or redis-py's pool.

The asyncio runners are written by hand, and the sync ones generated from them by
``scripts/unasync.py`` (see ``_async.py``). A runner sends the commands of one round trip and
returns the reply (a list of them for several commands): :class:`Connections` on one server,
:class:`Pooled` otherwise.
"""

from __future__ import annotations

import contextlib  # unasync: remove
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel

from ._loop import deadline  # unasync: remove
from .client import NoBackoff, RedisConnectionError, ResponseError
from .config import ClientConfig
from .forks import FORKS
from .wire import Arg, pack

__all__ = ["Client", "Connections", "Pooled", "connect"]

Client = aredis.Redis | RedisCluster


class Connections:
    """Connections of the backend's own to one server, for the hot path: a list of idle ones.

    redis-py's pool spends, per command, a lock on taking and on returning a connection, metrics and
    event hooks and a retry wrapper (and on asyncio, with a ``socket_timeout``, a task per write and
    a timeout context per read). Here a command takes an idle connection (or makes one: redis-py's
    own class, with its parser and handshake), sends and reads through redis-py's connection methods
    and gives the connection back. Callers take distinct connections (``list.pop`` and ``append``
    are atomic). A connection left in an unknown state (an error other than a server's reply, a
    timeout, a cancellation) is closed at once, without waiting, and dropped: never reused with a
    reply pending. After a lost connection the idle ones go too. A forked child forgets the
    parent's connections without closing them (their sockets are the parent's).

    :param pool: the client's pool, whose connection class and options the connections copy.
    :param timeout: the URL's ``socket_timeout``; on asyncio one timeout bounds a whole round trip,
        connecting included, where the sync connections keep it as their socket timeout.
    """

    def __init__(self, pool: aredis.ConnectionPool, timeout: float | None) -> None:
        self._pool = pool
        self._kwargs = dict(pool.connection_kwargs)
        self._kwargs["socket_timeout"] = None  # unasync: remove
        self._class = pool.connection_class
        self._timeout = timeout
        self._idle: list[Any] = []
        FORKS.add(self)

    async def run(self, *commands: tuple[Arg, ...]) -> Any:
        """Send the commands in one round trip; one reply, or a list of them for several commands.

        A server's error reply is raised (for several commands: the first, after reading them all).
        """
        idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            conn = self._class(**self._kwargs)
        try:
            async with deadline(self._timeout):  # unasync: unwrap
                await conn.send_packed_command([pack(commands)])
                if len(commands) == 1:
                    try:
                        reply = await conn.read_response()
                    except ResponseError:
                        idle.append(conn)  # a whole reply was read: the connection is clean
                        raise
                else:
                    reply = []
                    for _ in commands:
                        try:
                            reply.append(await conn.read_response())
                        except ResponseError as exc:
                            reply.append(exc)
        except ResponseError:
            raise
        except BaseException as exc:
            with contextlib.suppress(Exception):  # unasync: unwrap
                await conn.disconnect(nowait=True)
            if isinstance(exc, RedisConnectionError):
                await self._forget_idle()
            raise
        idle.append(conn)
        if type(reply) is list:
            for r in reply:
                if isinstance(r, ResponseError):
                    raise r
        return reply

    async def _forget_idle(self) -> None:
        """After a lost connection: the server went away or restarted, so the idle connections (and the
        pool's) are most likely dead too; close them, so the first requests after a restart succeed."""
        idle, self._idle = self._idle, []
        with contextlib.suppress(Exception):  # unasync: unwrap
            for conn in idle:
                await conn.disconnect(nowait=True)
            await self._pool.disconnect(inuse_connections=False)

    async def load_script(self, script: str) -> None:
        """Load a script's source into the server's script cache (SCRIPT LOAD)."""
        await self.run(("SCRIPT", "LOAD", script))

    def after_fork(self) -> None:
        """In a forked child: drop the parent's connections unclosed (closing would shut the parent's sockets)."""
        self._idle = []

    async def aclose(self) -> None:
        """Close the idle connections (those in use close when their command ends in error, or are dropped)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()


class Pooled:
    """Commands through redis-py's client and its pool: for Sentinel, Cluster and a bounded pool."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def run(self, *commands: tuple[Arg, ...]) -> Any:
        """Send the commands (several: in one pipeline); one reply, or a list of them."""
        try:
            if len(commands) == 1:
                return await self._client.execute_command(*commands[0])  # type: ignore[no-untyped-call, unused-ignore]
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()
        except AttributeError as exc:
            # redis-py (asyncio Cluster) may write on a connection that a failure of another request has
            # just disconnected, whose writer is then None: a lost connection, waited out like one.
            if "NoneType" not in str(exc):
                raise
            raise RedisConnectionError(f"connection lost while sending: {exc}") from exc

    async def load_script(self, script: str) -> None:
        """Load a script's source (on every primary of a Cluster)."""
        await self._client.script_load(script)

    async def forget_idle(self) -> None:
        """After a failed command: close the pool's idle connections, which most likely lead to a dead master.

        A new Sentinel connection asks the sentinels where the master is. A Cluster client reloads its
        slot table after a failed node itself, but for asyncio's pipelines (the lock's SET and GET):
        those are given the reload here (closing the client instead, as redis-py's own pipeline retry
        does, would break the commands other requests have under way on it).
        """
        client = self._client
        if isinstance(client, aredis.Redis):
            with contextlib.suppress(Exception):  # unasync: unwrap
                await client.connection_pool.disconnect(inuse_connections=False)
        elif isinstance(client, RedisCluster):  # unasync: remove
            with contextlib.suppress(Exception):  # no node answers yet: the next attempt asks again
                await client.nodes_manager.initialize()


def connect(config: ClientConfig) -> tuple[Client, list[Any]]:
    """Build the client of ``config`` and the list of clients to close with it."""
    retry = Retry(NoBackoff(), config.retries)
    if config.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in config.nodes]  # type: ignore[no-untyped-call, unused-ignore]
        cluster = RedisCluster(startup_nodes=nodes, retry=retry, **config.kwargs)
        return cluster, [cluster]
    if config.kind == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            config.nodes, sentinel_kwargs={**config.sentinel_kwargs, "retry": retry}
        )
        master = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
            config.service, redis_class=aredis.Redis, retry=retry, **config.kwargs
        )
        return master, [master, *sentinel.sentinels]
    client = aredis.Redis(retry=retry, **config.kwargs)
    return client, [client]
