"""The Redis backend: its primitives and its administration side.

Written once: the asyncio backend (``_async.py``) and its runners are written by hand, and the sync
backend and its runners are generated from them by ``scripts/unasync.py`` (its docstring has the
rules; ``_loop.py`` holds what only asyncio needs). Edit the asyncio files, then run
``python scripts/unasync.py``; CI fails while a generated file is stale.

Every primitive is one round trip (ops.py builds it; keys.py has the key layout and the per-user
index), but for the index's own updates: a ``delete`` of a session with a user, and a ``save`` that
changes the user, add one; a ``create`` with a user pipelines its SADD. redis-py's own retries are
off (the core decides about waiting for a lock), so a server that is down answers at once with
:class:`~sessionmw.core.errors.BackendUnavailable`; connections are made anew when it is back. Behind
Sentinel or Cluster, a command that fails as a failover makes it fail is sent again, with back-off,
for up to ``failover_wait`` seconds (``failover.py``), so that a new master's promotion is a delay.

On one server (not Sentinel or Cluster, and without ``max_connections``) the primitives run on
connections of the backend's own (the runners' ``Connections``), skipping the per-command
bookkeeping of redis-py's pool; the administration side uses the client and its pool.
"""

from __future__ import annotations

import asyncio  # unasync: remove
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry

from ...core.errors import BackendUnavailable
from ..base import Record, Touch
from . import ops
from ._async_runners import Client, Connections, Pooled, connect
from ._loop import Watch, close_elsewhere, close_soon, running_loop, spawn, watch_loop_end  # unasync: remove
from .client import ERRORS, NoScriptError, RedisBase
from .config import ClientConfig
from .failover import FAILOVER_ERRORS, Attempt, Failover, UntilDeadline, is_failover
from .figures import figures
from .keys import Keys
from .wire import Arg

__all__ = ["AsyncRedisBackend"]

T = TypeVar("T")


class AsyncRedisBackend:
    """Sessions in Redis through the client of ``redis.asyncio``; each primitive is one round trip.

    :param config: how to reach the server (:func:`.config.client_config` reads it from a URL).
    :param name: the backend's URL without password, for messages.
    :param key_prefix: prepended to every key.
    """

    def __init__(self, config: ClientConfig, *, name: str, key_prefix: str = "sessmw:") -> None:
        self.name = name
        self.key_prefix = key_prefix
        self.config = config
        self._base: RedisBase[Client] = RedisBase(name, Keys(key_prefix), self._connect)
        #: Whether one pipeline runs in order on one server (not Cluster, whose index sets live elsewhere).
        self._ordered = config.kind != "cluster"
        #: What runs the primitives' commands: built with the client (see :meth:`_connect`).
        self._runner: Connections | Pooled | None = None
        self._timeout: float | None = config.kwargs.get("socket_timeout")
        #: Seconds a failing command is sent again while a new master is promoted (0: not at all).
        self.failover_wait = config.failover_wait
        self._loop: asyncio.AbstractEventLoop | None = None  # unasync: remove
        self._loop_watch: Watch | None = None  # unasync: remove
        self._tasks: set[asyncio.Task[None]] = set()  # unasync: remove

    def _connect(self) -> tuple[Client, list[Any]]:
        self._loop = running_loop()  # unasync: remove
        client, closing = connect(self.config)
        if self._loop is not None:  # unasync: remove
            self._loop_watch = watch_loop_end(lambda: self._base.client is client, self.aclose)
        if self.config.own_connections:
            assert isinstance(client, aredis.Redis)
            self._runner = Connections(client.connection_pool, self._timeout)
            closing.append(self._runner)
        else:
            self._runner = Pooled(client)
        return client, closing

    def _follow_loop(self) -> None:  # unasync: remove
        """Called on another loop than the clients': adopt it, or give up the other loop's clients (_loop.py)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:  # built outside a loop, no connection yet: this loop owns it
            self._loop = loop
            return
        owner, self._loop = self._loop, None
        self._runner = None
        close_soon(owner, self._base.take_closing())

    def _runner_here(self) -> Connections | Pooled:
        """The runner of the primitives (on asyncio: of the running loop), built on first use."""
        if self._loop is not asyncio.get_running_loop():  # unasync: remove
            self._follow_loop()
        self._base.connected()
        runner = self._runner
        if runner is None:  # closed meanwhile
            runner = self._runner = Pooled(self._base.connected())
        return runner

    def _client_here(self) -> Client:
        """The client for the administration side (on asyncio: of the running loop), built on first use."""
        self._runner_here()
        return self._base.connected()

    def client(self) -> Client:
        """The redis-py client, built on first use (for administration and tests)."""
        return self._base.connected()

    def cap_failover_wait(self, lock_timeout: float) -> None:
        """Never wait for a new master longer than ``lock_timeout``, the middleware's setting the URL cannot see."""
        self.failover_wait = min(self.failover_wait, max(0.0, lock_timeout))

    async def _run(self, op: ops.Op[T]) -> T:
        """Run one op in one round trip (more while waiting out a failover: the op is safe to repeat), and read it."""
        try:
            reply = await self._send((op.command,), op.script)
        except Failover as failed:
            reply = await self._again(failed, lambda: self._attempt((op.command,), op.script))
        return op.parse(reply)

    async def _send(self, commands: tuple[tuple[Arg, ...], ...], script: str | None) -> Any:
        """Send commands in one round trip (loading ``script`` if the server lost it); the raw reply."""
        base = self._base
        runner = self._runner
        if self._loop is not asyncio.get_running_loop():  # unasync: remove
            runner = None
        if runner is None:
            runner = self._runner_here()
        try:
            try:
                reply = await runner.run(*commands)
            except NoScriptError:
                if script is None:
                    raise
                await runner.load_script(script)  # a new or flushed server: load the script, then once more
                reply = await runner.run(*commands)
        except ERRORS as exc:
            raise self._failed(exc) from exc
        except asyncio.TimeoutError as exc:  # unasync: remove
            raise base.timed_out(self._timeout) from exc
        if base.policy_pending:
            await self._check_policy()
        return reply

    def _failed(self, exc: Exception) -> BackendUnavailable:
        """The error for a command that failed: a :class:`.failover.Failover` when a new master may be on its way."""
        unavailable = self._base.unavailable(exc)
        wait = self.failover_wait
        if wait and is_failover(exc):
            return Failover(unavailable, time.monotonic() + wait, wait)
        return unavailable

    async def _attempt(self, commands: tuple[tuple[Arg, ...], ...], script: str | None) -> Any:
        """Send commands once more (loading ``script`` if the server lost it); redis-py's errors as raised."""
        runner = self._runner_here()
        try:
            return await runner.run(*commands)
        except NoScriptError:
            if script is None:
                raise
            await runner.load_script(script)  # a promoted replica has the scripts, a new Cluster node may not
            return await runner.run(*commands)

    async def _again(self, failed: Failover, attempt: Attempt) -> Any:
        """Call ``attempt`` with back-off until it succeeds or ``failed``'s deadline has passed (failover.py).

        redis-py's ``Retry`` runs the loop and sleeps; each failure first drops the pool's idle
        connections (they lead to the dead master), so the next attempt connects anew: Sentinel's
        connections ask the sentinels for the master then, and a Cluster client reloads its slots.
        """
        backoff = UntilDeadline(failed.deadline)

        async def give_up_if_late(error: Exception) -> None:
            runner = self._runner
            if isinstance(runner, Pooled):
                await runner.forget_idle()
            if backoff.late():
                raise error

        try:
            return await Retry(backoff, -1, FAILOVER_ERRORS).call_with_retry(attempt, give_up_if_late, is_failover)
        except ERRORS as exc:
            if is_failover(exc):
                raise self._base.gave_up(exc, failed.wait) from exc
            raise self._base.unavailable(exc) from exc

    async def _check_policy(self) -> None:
        """Ask once for the eviction policy (see :meth:`.client.RedisBase.policy_result`)."""
        base = self._base
        try:
            base.policy_result(await base.connected().config_get("maxmemory-policy"), None)
        except ERRORS as exc:
            base.policy_result(None, exc)

    async def _run_all(self, todo: Sequence[ops.Op[Any]]) -> list[Any]:
        """Run ops in one pipeline (one round trip per node), each parsed; a script the server lost is loaded.

        Every op given here is safe to repeat (reads, SADD, SREM, the gc script): a failover is waited out.
        """
        if not todo:
            return []
        try:
            replies = await self._pipelined(todo)
        except Failover as failed:
            replies = await self._again(failed, lambda: self._pipeline(todo))
        return [op.parse(reply) for op, reply in zip(todo, replies, strict=True)]

    async def _pipelined(self, todo: Sequence[ops.Op[Any]]) -> list[Any]:
        """:meth:`_pipeline`, its errors raised as :class:`BackendUnavailable` (see :meth:`_failed`)."""
        try:
            return await self._pipeline(todo)
        except ERRORS as exc:
            raise self._failed(exc) from exc

    async def _pipeline(self, todo: Sequence[ops.Op[Any]]) -> list[Any]:
        """Send ops in one pipeline and return the raw replies; a script the server lost is loaded."""
        client = self._client_here()
        pipe = client.pipeline(transaction=False)
        for op in todo:
            pipe.execute_command(*op.command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        loaded: set[str] = set()
        for i, (op, reply) in enumerate(zip(todo, replies, strict=True)):
            if isinstance(reply, NoScriptError) and op.script is not None:
                if op.script not in loaded:
                    await client.script_load(op.script)
                    loaded.add(op.script)
                replies[i] = await client.execute_command(*op.command)  # type: ignore[no-untyped-call, unused-ignore]
            elif isinstance(reply, Exception):
                raise reply
        return replies

    async def _scan(self, pattern: str, kind: str) -> AsyncIterator[list[str]]:
        """SCAN keys of one type matching ``pattern`` (every primary in Cluster), in batches."""
        client = self._client_here()
        batch: list[str] = []
        try:
            async for key in client.scan_iter(match=pattern, count=ops.BATCH, _type=kind):
                batch.append(key.decode("utf-8") if isinstance(key, bytes) else str(key))
                if len(batch) >= ops.BATCH:
                    yield batch
                    batch = []
        except ERRORS as exc:
            raise self._base.unavailable(exc) from exc
        if batch:
            yield batch

    # -- primitives ----------------------------------------------------------------------------

    async def alock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid``; when taken, return its record too (one round trip)."""
        batch = ops.lock_and_load(self._base.keys, sid, token, expire)
        try:
            return batch.parse(await self._send(batch.commands, None))  # one call less on the hot path
        except Failover as failed:  # the lock may be ours already: ask for it with a variant that says so
            again = ops.lock_and_load_again(self._base.keys, sid, token, expire)
            return again.parse(await self._again(failed, lambda: self._attempt(again.commands, None)))

    async def aprobe(self) -> None:
        """Reach the server once: a PING, then the eviction-policy check (a warning when Redis may drop
        sessions); raises :class:`~sessionmw.core.errors.BackendUnavailable` when it is down."""
        await self._run(ops.ping())

    async def aload(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking (one GET)."""
        op = ops.load(self._base.keys, sid)
        try:
            return op.parse(await self._send((op.command,), None))  # _run, inlined: the read-only hot path
        except Failover as failed:
            return op.parse(await self._again(failed, lambda: self._attempt((op.command,), None)))

    async def acreate(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Store a new session if ``sid`` is unused."""
        keys = self._base.keys
        user = record.user_id
        op = ops.create(keys, sid, record, ttl)
        try:
            if user is not None and self._ordered:
                # One connection keeps the SET before the SADD, so the SADD rides in the same round trip; if
                # the SET loses (sid in use), the stray member names a session that user_sessions() removes.
                return op.parse((await self._pipelined((op, ops.index_add(keys, sid, user))))[0])
            stored = op.parse(await self._send((op.command,), None))
        except Failover as failed:  # the SET NX may have run: a variant that knows its own record
            again = ops.create_again(keys, sid, record, ttl)
            stored = again.parse(await self._again(failed, lambda: self._attempt(again.commands, None)))
        if stored and user is not None:  # Cluster: another node, and a member must never precede its session
            await self._run(ops.index_add(keys, sid, user))  # (after a failover, again: SADD is idempotent)
        return stored

    async def asave(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock, if ``token`` still holds it."""
        op = ops.save(self._base.keys, sid, record, token, ttl)
        try:
            reply = await self._send((op.command,), op.script)  # _run, inlined: the hot path
        except Failover as failed:  # safe to repeat: the script knows its own record (scripts.py)
            reply = await self._again(failed, lambda: self._attempt((op.command,), op.script))
        saved, then = op.parse(reply)
        if then:
            await self._run_all(then)
        return saved

    async def asave_tail(self, sid: str, head: Record, tail: bytes, token: str, ttl: float | None) -> bool:
        """Append ``tail`` to the data and store ``head``'s metadata line, releasing the lock, if ``token`` holds it.

        One round trip (append.py): the data already stored is neither sent nor read back.
        """
        return await self._run(ops.save_tail(self._base.keys, sid, head, tail, token, ttl))

    async def arelease(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, touching the record first."""
        op = ops.release(self._base.keys, sid, token, touch)
        try:
            return op.parse(await self._send((op.command,), op.script))  # _run, inlined: the hot path
        except Failover as failed:  # repeated: the lock is gone either way, and a touch applies once
            return op.parse(await self._again(failed, lambda: self._attempt((op.command,), op.script)))

    async def atouch(self, sid: str, touch: Touch) -> None:
        """Refresh last access (the metadata line, server-side) without sending the data."""
        await self._run(ops.touch(self._base.keys, sid, touch))

    async def aextend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's expiry out, if ``token`` still holds it."""
        return await self._run(ops.extend(self._base.keys, sid, token, expire))

    async def adelete(self, sid: str) -> None:
        """Remove the session's record (the lock stays with its holder), then its index entry."""
        then = await self._run(ops.delete(self._base.keys, sid))
        if then:
            await self._run_all(then)

    async def await_released(self, sid: str, timeout: float) -> None:
        """Return when ``sid``'s lock is released (in any process), at once if it is free, or after ``timeout`` s.

        One round trip: the waiter is counted and blocks in BLPOP until a release script pushes it a
        wake-up (scripts.py); a second one only when the BLPOP timed out, to uncount it. The wait is
        kept within half the socket timeout, so its read never times out. A failover is not waited
        out here: the error goes to the driver, which polls instead, and the lock's next try waits it out.
        """
        keys = self._base.keys
        if self._timeout is not None:
            timeout = min(timeout, self._timeout / 2)
        batch = ops.wait_released(keys, sid, timeout)
        try:  # unasync: unwrap
            woken = batch.parse(await self._send(batch.commands, None))
        except asyncio.CancelledError:  # unasync: remove
            # The reply may have been a wake-up, now lost with the connection: pass one on if the lock is free.
            spawn(self._tasks, self._send((ops.pass_on(keys, sid).command,), None))
            raise
        if not woken:
            await self._send((ops.leave(keys, sid).command,), None)

    async def aclose(self) -> None:
        """Close the clients and connections (on asyncio: on the loop that opened them); a later call opens new ones."""
        owner, self._loop = self._loop, None  # unasync: remove
        self._runner = None
        closing = self._base.take_closing()
        if await close_elsewhere(owner, closing):  # unasync: remove
            return
        for client in closing:
            await client.aclose()

    # -- administration ------------------------------------------------------------------------

    async def aiter_records(self) -> AsyncIterator[tuple[str, Record]]:
        """Yield ``(sid, record)`` for every live session under this key prefix (SCAN, then pipelined GETs)."""
        keys = self._base.keys
        async for batch in self._scan(keys.scan_pattern(), "string"):
            sids = [keys.sid_of(key) for key in batch]
            records = await self._run_all([ops.load(keys, sid) for sid in sids])
            for sid, record in zip(sids, records, strict=True):
                if record is not None:
                    yield sid, record

    async def auser_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """Return the live sessions of ``user_id``: SMEMBERS of its index, then its sessions (stale members removed)."""
        keys = self._base.keys
        index = keys.user(user_id)
        sids = await self._run(ops.members(index))
        if not sids:
            return []
        records = await self._run_all([ops.load(keys, sid) for sid in sids])
        found, stale = ops.pick_user_sessions(user_id, sids, records)
        if stale:
            await self._run(ops.index_remove(index, stale))
        return found

    async def agc(self, now: float) -> int:
        """Remove sessions whose expiry is before ``now`` with their index entry; return how many.

        Redis drops sessions past their TTL itself; this also drops index members left by those.
        """
        keys = self._base.keys
        removed = 0
        async for batch in self._scan(keys.scan_pattern(), "string"):
            results = await self._run_all([ops.gc_one(keys, keys.sid_of(key), now) for key in batch])
            then = [op for r in results if r is not None for op in r]
            removed += sum(1 for r in results if r is not None)
            await self._run_all(then)
        async for batch in self._scan(keys.user_scan_pattern(), "set"):
            sets = await self._run_all([ops.members(index) for index in batch])
            pairs = [(index, sid) for index, sids in zip(batch, sets, strict=True) for sid in sids]
            alive = await self._run_all([ops.exists(keys, sid) for _, sid in pairs])
            stale: dict[str, list[str]] = {}
            for (index, sid), live in zip(pairs, alive, strict=True):
                if not live:
                    stale.setdefault(index, []).append(sid)
            await self._run_all([ops.index_remove(index, sids) for index, sids in stale.items()])
        return removed

    async def astats(self) -> dict[str, float]:
        """Return Redis' ``evicted_keys``, ``expired_keys``, ``used_memory`` and ``maxmemory_policy_evicts``."""
        client = self._client_here()
        try:
            if isinstance(client, RedisCluster):
                stats = await client.info("stats", target_nodes=RedisCluster.PRIMARIES)
                memory = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            else:
                stats = await client.info("stats")
                memory = await client.info("memory")
        except ERRORS as exc:
            raise self._base.unavailable(exc) from exc
        return figures(stats, memory)
