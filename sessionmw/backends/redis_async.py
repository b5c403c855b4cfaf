"""The asyncio twin of the Redis backend, on ``redis.asyncio``.

Same shape as :mod:`.redis`, method for method: each builds an op of :mod:`._redis_common` and runs
it; the only difference is ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncGenerator, Sequence
from typing import Any, TypeVar

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # pragma: no cover - redis-py installs async-timeout on these versions
    from async_timeout import timeout as _timeout

from . import _redis_common as C
from .base import Record, Touch

__all__ = ["AsyncRedisBackend", "connect"]

T = TypeVar("T")

AsyncClient = aredis.Redis | RedisCluster


class Connections:
    """Connections of the backend's own to one server, for the hot path: a list of idle ones.

    redis-py's pool spends, per command, an asyncio lock on taking and on returning a connection,
    metrics and event hooks, a retry wrapper, and with a ``socket_timeout`` a task per write
    (``asyncio.wait_for``) and a timeout context per read. Here a command takes an idle connection
    (or makes one: redis-py's own class, with its parser and handshake), sends and reads through
    redis-py's connection methods inside one timeout, and gives the connection back. A connection
    left in an unknown state (an error other than a server's reply, a timeout, a cancellation) is
    closed and dropped, never reused with a reply pending.

    :param pool: the client's pool, whose connection class and options the connections copy.
    :param timeout: seconds for a whole round trip, connecting included (the URL's ``socket_timeout``).
    """

    def __init__(self, pool: aredis.ConnectionPool, timeout: float | None) -> None:
        self._pool = pool
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}  # one timeout here instead
        self._class = pool.connection_class
        self._timeout = timeout
        self._idle: list[Any] = []
        C.FORKS.add(self)

    async def run(self, *commands: tuple[C.Arg, ...]) -> Any:
        """Send the commands in one round trip; one reply, or a list of them for several commands.

        A server's error reply is raised (for several commands: the first, after reading them all).
        """
        idle = self._idle
        conn = idle.pop() if idle else self._class(**self._kwargs)
        try:
            async with _timeout(self._timeout):
                await conn.send_packed_command([C.pack(commands)])
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
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)  # closes without waiting: safe while being cancelled
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
        with contextlib.suppress(Exception):
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

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def run(self, *commands: tuple[C.Arg, ...]) -> Any:
        """Send the commands (several: in one pipeline); one reply, or a list of them."""
        if len(commands) == 1:
            return await self._client.execute_command(*commands[0])
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()

    async def load_script(self, script: str) -> None:
        """Load a script's source (on every primary of a Cluster)."""
        await self._client.script_load(script)


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
        #: What runs the primitives' commands: built with the client (see :meth:`_connect`).
        self._runner: Connections | Pooled | None = None
        self._timeout: float | None = config.kwargs.get("socket_timeout")
        #: The async generator that closes the clients when their loop shuts down.
        self._loop_watch: AsyncGenerator[None, None] | None = None

    def _connect(self) -> tuple[AsyncClient, list[Any]]:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop (client() in a test): the first command's loop owns it
            self._loop = None
        client, closing = connect(self.config)
        if self._loop is not None:
            self._watch_loop_end(self._loop, client)
        if self.config.own_connections:
            assert isinstance(client, aredis.Redis)
            self._runner = Connections(client.connection_pool, self._timeout)
            closing.append(self._runner)
        else:
            self._runner = Pooled(client)
        return client, closing

    def _runner_here(self) -> Connections | Pooled:
        """The runner of the running event loop, built on first use.

        Connections belong to the loop that opened them. When another loop calls (Starlette's
        TestClient without ``with`` runs each request on a loop of its own, then closes it), the
        clients of the old loop are given up, closed on it if it still runs, and new ones are built.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is None:  # built outside a loop, no connection yet: this loop owns it
                self._loop = loop
            else:
                self._give_up_clients()
        self._base.connected()
        runner = self._runner
        if runner is None:  # closed meanwhile
            runner = self._runner = Pooled(self._base.connected())
        return runner

    def _watch_loop_end(self, loop: asyncio.AbstractEventLoop, client: AsyncClient) -> None:
        """Close the clients when ``loop`` shuts down, while it can still run their closing.

        ``asyncio.run``, ``asyncio.Runner`` and anyio close every live async generator of a loop
        before closing the loop (``loop.shutdown_asyncgens()``). One such generator, stepped to its
        ``yield`` here, closes this backend's clients in its ``finally`` at that moment; so a loop that
        ends without the app's lifespan shutdown (Starlette's TestClient without ``with``, a script's
        ``asyncio.run``) does not leave its connections behind unclosed.
        """

        async def until_loop_ends() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                if self._base.client is client:  # not closed meanwhile (a later client is not its to close)
                    await self.aclose()

        watch = until_loop_ends()
        with contextlib.suppress(StopIteration):
            watch.asend(None).send(None)  # runs to the yield: no await before it
        self._loop_watch = watch  # kept alive until the loop's shutdown (or the next loop's client)

    def _take_clients(self) -> tuple[asyncio.AbstractEventLoop | None, list[Any]]:
        """Forget the clients (the next call builds new ones); return their loop and what to close."""
        owner, self._loop = self._loop, None
        self._runner = None
        return owner, self._base.take_closing()

    def _give_up_clients(self) -> None:
        """Forget the clients of another event loop; close them there if that loop still runs."""
        owner, closing = self._take_clients()
        if owner is not None and owner.is_running() and not owner.is_closed():
            for client in closing:
                asyncio.run_coroutine_threadsafe(client.aclose(), owner)

    def client(self) -> AsyncClient:
        """The ``redis.asyncio`` client, built on first use (for administration and tests)."""
        return self._base.connected()

    async def _arun(self, op: C.Op[T]) -> T:
        return op.parse(await self._send((op.command,), op.script))

    async def _arun_batch(self, batch: C.Batch[T]) -> T:
        """Run a batch of plain commands in one round trip, and read it."""
        return batch.parse(await self._send(batch.commands, None))

    async def _send(self, commands: tuple[tuple[C.Arg, ...], ...], script: str | None) -> Any:
        """Send commands in one round trip (loading ``script`` if the server lost it); the raw reply."""
        base = self._base
        runner = self._runner
        if runner is None or self._loop is not asyncio.get_running_loop():
            runner = self._runner_here()
        try:
            try:
                reply = await runner.run(*commands)
            except NoScriptError:
                if script is None:
                    raise
                await runner.load_script(script)  # a new or flushed server: load the script, then once more
                reply = await runner.run(*commands)
        except C.ERRORS as exc:
            raise base.unavailable(exc) from exc
        except asyncio.TimeoutError as exc:
            raise base.timed_out(self._timeout) from exc
        if base.policy_pending:
            await self._check_policy()
        return reply

    async def _check_policy(self) -> None:
        """Ask once for the eviction policy (see :meth:`._redis_common.RedisBase.policy_result`)."""
        base = self._base
        try:
            base.policy_result(await base.connected().config_get("maxmemory-policy"), None)
        except C.ERRORS as exc:
            base.policy_result(None, exc)

    async def _arun_all(self, ops: Sequence[C.Op[Any]]) -> list[Any]:
        """Run ops in one pipeline (one round trip per node), each parsed; a script the server lost is loaded."""
        if not ops:
            return []
        base = self._base
        self._runner_here()  # on this loop's client
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
        return await self._arun_batch(C.lock_and_load(self._base.keys, sid, token, expire))

    async def aprobe(self) -> None:
        """See :meth:`.redis.RedisBackend.probe` (the ASGI middleware calls it at start-up)."""
        await self._arun(C.ping())

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
        owner, closing = self._take_clients()
        if owner is not None and owner is not asyncio.get_running_loop():
            # One app served from two loops (two test clients of one app): another loop's streams
            # cannot be awaited here. Close them on their loop if it still runs; else they died with it.
            if owner.is_running() and not owner.is_closed():
                for client in closing:
                    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(client.aclose(), owner))
            return
        for client in closing:
            await client.aclose()
