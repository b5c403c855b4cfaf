"""The Redis backend: sessions in Redis, Redis Sentinel or Redis Cluster, through redis-py.

URLs::

    redis://[[user]:password@]host:6379/0      rediss://...  (TLS)
    unix:///run/redis/redis.sock?db=0          redis+unix:///run/redis/redis.sock
    redis+sentinel://h1:26379,h2:26379/mymaster/0
    redis+cluster://h1:7000,h2:7001

Options (query string): ``connect_timeout`` and ``socket_timeout`` (seconds, default 2),
``max_connections``, ``health_check_interval``, ``db``, ``ssl`` and ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs`` (TLS), ``sentinel_password`` (Sentinel).

Every primitive is one round trip (see :mod:`._redis_common` for keys, scripts and the per-user
index), but for the index's own updates: a ``delete`` of a session with a user, and a ``save`` that
changes the user, add one; a ``create`` with a user pipelines its SADD. redis-py's own
retries are off (the core decides about waiting), so a server that is down answers at once with
:class:`~sessionmw.errors.BackendUnavailable`; connections are made anew when it is back.

On one server (not Sentinel or Cluster, and without ``max_connections``) the primitives run on
connections of the backend's own (:class:`Connections`), skipping the per-command bookkeeping of
redis-py's pool; the administration side uses the client and its pool.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import redis as redis_py
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry
from redis.sentinel import Sentinel

from . import _redis_common as C
from ._url import BackendURL
from .base import Record, Touch
from .redis_async import AsyncRedisBackend

__all__ = ["AsyncRedisBackend", "RedisBackend", "async_from_url", "connect", "from_url"]

T = TypeVar("T")

SyncClient = redis_py.Redis | RedisCluster


class Connections:
    """Connections of the backend's own to one server, for the hot path: a list of idle ones.

    The sync twin of :class:`.redis_async.Connections`: redis-py's connection class, packer and
    parser, without the pool's per-command lock, metrics and event hooks and retry wrapper. Threads
    take distinct connections (``list.pop`` and ``append`` are atomic). A connection left in an
    unknown state is closed and dropped; after a lost connection the idle ones go too. A forked
    child forgets the parent's connections without closing them (their sockets are the parent's).

    :param pool: the client's pool, whose connection class and options the connections copy.
    """

    def __init__(self, pool: redis_py.ConnectionPool) -> None:
        self._pool = pool
        self._kwargs = dict(pool.connection_kwargs)
        self._class = pool.connection_class
        self._idle: list[Any] = []
        C.FORKS.add(self)

    def run(self, *commands: tuple[C.Arg, ...]) -> Any:
        """Send the commands in one round trip; one reply, or a list of them for several commands.

        A server's error reply is raised (for several commands: the first, after reading them all).
        """
        idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            conn = self._class(**self._kwargs)
        try:
            conn.send_packed_command([C.pack(commands)])
            if len(commands) == 1:
                try:
                    reply = conn.read_response()
                except ResponseError:
                    idle.append(conn)  # a whole reply was read: the connection is clean
                    raise
            else:
                reply = []
                for _ in commands:
                    try:
                        reply.append(conn.read_response())
                    except ResponseError as exc:
                        reply.append(exc)
        except ResponseError:
            raise
        except BaseException as exc:
            conn.disconnect()
            if isinstance(exc, RedisConnectionError):
                self._forget_idle()
            raise
        idle.append(conn)
        if type(reply) is list:
            for r in reply:
                if isinstance(r, ResponseError):
                    raise r
        return reply

    def load_script(self, script: str) -> None:
        """Load a script's source into the server's script cache (SCRIPT LOAD)."""
        self.run(("SCRIPT", "LOAD", script))

    def _forget_idle(self) -> None:
        """After a lost connection the server most likely went away: close the idle connections too."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()
        self._pool.disconnect(inuse_connections=False)

    def after_fork(self) -> None:
        """In a forked child: drop the parent's connections unclosed (closing would shut the parent's sockets)."""
        self._idle = []

    def close(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()


class Pooled:
    """Commands through redis-py's client and its pool: for Sentinel, Cluster and a bounded pool."""

    def __init__(self, client: SyncClient) -> None:
        self._client = client

    def run(self, *commands: tuple[C.Arg, ...]) -> Any:
        """Send the commands (several: in one pipeline); one reply, or a list of them."""
        if len(commands) == 1:
            return self._client.execute_command(*commands[0])  # type: ignore[no-untyped-call]
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute()

    def load_script(self, script: str) -> None:
        """Load a script's source (on every primary of a Cluster)."""
        self._client.script_load(script)


def connect(config: C.ClientConfig) -> tuple[SyncClient, list[Any]]:
    """Build the sync client of ``config`` and the list of clients to close with it."""
    retry = Retry(NoBackoff(), config.retries)
    if config.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in config.nodes]  # type: ignore[no-untyped-call]
        cluster = RedisCluster(startup_nodes=nodes, retry=retry, **config.kwargs)
        return cluster, [cluster]
    if config.kind == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            config.nodes, sentinel_kwargs={**config.sentinel_kwargs, "retry": retry}
        )
        master = sentinel.master_for(  # type: ignore[no-untyped-call]
            config.service, redis_class=redis_py.Redis, retry=retry, **config.kwargs
        )
        return master, [master, *sentinel.sentinels]
    client = redis_py.Redis(retry=retry, **config.kwargs)
    return client, [client]


class RedisBackend:
    """Sessions in Redis through redis-py's sync client; each primitive is one round trip.

    :param config: how to reach the server (:func:`._redis_common.client_config` reads it from a URL).
    :param name: the backend's URL without password, for messages.
    :param key_prefix: prepended to every key.
    """

    def __init__(self, config: C.ClientConfig, *, name: str, key_prefix: str = "sessmw:") -> None:
        self.name = name
        self.key_prefix = key_prefix
        self.config = config
        self._base: C.RedisBase[SyncClient] = C.RedisBase(name, C.Keys(key_prefix), self._connect)
        #: Whether one pipeline runs in order on one server (not Cluster, whose index sets live elsewhere).
        self._ordered = config.kind != "cluster"
        #: What runs the primitives' commands: built with the client (see :meth:`_connect`).
        self._runner: Connections | Pooled | None = None

    def _connect(self) -> tuple[SyncClient, list[Any]]:
        client, closing = connect(self.config)
        if self.config.own_connections:
            assert isinstance(client, redis_py.Redis)
            self._runner = Connections(client.connection_pool)
            closing.append(self._runner)
        else:
            self._runner = Pooled(client)
        return client, closing

    def _connected_runner(self) -> Connections | Pooled:
        self._base.connected()
        runner = self._runner
        if runner is None:  # closed by another thread meanwhile
            runner = self._runner = Pooled(self._base.connected())
        return runner

    def client(self) -> SyncClient:
        """The redis-py client, built on first use (for administration and tests)."""
        return self._base.connected()

    def _run(self, op: C.Op[T]) -> T:
        return op.parse(self._send((op.command,), op.script))

    def _run_batch(self, batch: C.Batch[T]) -> T:
        """Run a batch of plain commands in one round trip, and read it."""
        return batch.parse(self._send(batch.commands, None))

    def _send(self, commands: tuple[tuple[C.Arg, ...], ...], script: str | None) -> Any:
        """Send commands in one round trip (loading ``script`` if the server lost it); the raw reply."""
        base = self._base
        runner = self._runner or self._connected_runner()
        try:
            try:
                reply = runner.run(*commands)
            except NoScriptError:
                if script is None:
                    raise
                runner.load_script(script)  # a new or flushed server: load the script, then once more
                reply = runner.run(*commands)
        except C.ERRORS as exc:
            raise base.unavailable(exc) from exc
        if base.policy_pending:
            self._check_policy()
        return reply

    def _check_policy(self) -> None:
        """Ask once for the eviction policy (see :meth:`._redis_common.RedisBase.policy_result`)."""
        try:
            self._base.policy_result(self._base.connected().config_get("maxmemory-policy"), None)
        except C.ERRORS as exc:
            self._base.policy_result(None, exc)

    def _run_all(self, ops: Sequence[C.Op[Any]]) -> list[Any]:
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
            replies = pipe.execute(raise_on_error=False)
            loaded: set[str] = set()
            for i, (op, reply) in enumerate(zip(ops, replies, strict=True)):
                if isinstance(reply, NoScriptError) and op.script is not None:
                    if op.script not in loaded:
                        client.script_load(op.script)
                        loaded.add(op.script)
                    replies[i] = client.execute_command(*op.command)  # type: ignore[no-untyped-call]
                elif isinstance(reply, Exception):
                    raise reply
        except C.ERRORS as exc:
            raise base.unavailable(exc) from exc
        return [op.parse(reply) for op, reply in zip(ops, replies, strict=True)]

    def _scan(self, pattern: str, kind: str) -> Iterator[list[str]]:
        """SCAN keys of one type matching ``pattern`` (every primary in Cluster), in batches."""
        client = self.client()
        found = iter(client.scan_iter(match=pattern, count=C.BATCH, _type=kind))
        batch: list[str] = []
        while True:
            try:
                key = next(found)
            except StopIteration:
                break
            except C.ERRORS as exc:
                raise self._base.unavailable(exc) from exc
            batch.append(key.decode("utf-8") if isinstance(key, bytes) else str(key))
            if len(batch) >= C.BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    # -- primitives ----------------------------------------------------------------------------

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid``; when taken, return its record too (one script call)."""
        return self._run_batch(C.lock_and_load(self._base.keys, sid, token, expire))

    def probe(self) -> None:
        """Reach the server once: a PING, then the eviction-policy check (a warning when Redis may drop
        sessions); raises :class:`~sessionmw.errors.BackendUnavailable` when it is down."""
        self._run(C.ping())

    def load(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking (one GET)."""
        return self._run(C.load(self._base.keys, sid))

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Store a new session if ``sid`` is unused."""
        keys = self._base.keys
        op = C.create(keys, sid, record, ttl)
        if record.user_id is None:
            return self._run(op)
        if self._ordered:
            # One connection keeps the SET before the SADD, so the SADD rides in the same round trip; if
            # the SET loses (sid in use), the stray member names a session that user_sessions() removes.
            stored: bool = self._run_all((op, C.index_add(keys, sid, record.user_id)))[0]
            return stored
        stored = self._run(op)  # Cluster: another node, and a member must never precede its session
        if stored:
            self._run(C.index_add(keys, sid, record.user_id))
        return stored

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock, if ``token`` still holds it."""
        saved, then = self._run(C.save(self._base.keys, sid, record, token, ttl))
        if then:
            self._run_all(then)
        return saved

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, touching the record first."""
        return self._run(C.release(self._base.keys, sid, token, touch))

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access (the metadata line, server-side) without sending the data."""
        self._run(C.touch(self._base.keys, sid, touch))

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's expiry out, if ``token`` still holds it."""
        return self._run(C.extend(self._base.keys, sid, token, expire))

    def delete(self, sid: str) -> None:
        """Remove the session's record (the lock stays with its holder), then its index entry."""
        then = self._run(C.delete(self._base.keys, sid))
        if then:
            self._run_all(then)

    def close(self) -> None:
        """Close the connection pools; a later call opens new ones."""
        closing = self._base.take_closing()
        self._runner = None
        for client in closing:
            client.close()

    # -- administration ------------------------------------------------------------------------

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        """Yield ``(sid, record)`` for every live session under this key prefix (SCAN, then pipelined GETs)."""
        keys = self._base.keys
        for batch in self._scan(keys.scan_pattern(), "string"):
            sids = [keys.sid_of(key) for key in batch]
            records = self._run_all([C.load(keys, sid) for sid in sids])
            for sid, record in zip(sids, records, strict=True):
                if record is not None:
                    yield sid, record

    def user_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """Return the live sessions of ``user_id``: SMEMBERS of its index, then its sessions (stale members removed)."""
        keys = self._base.keys
        index = keys.user(user_id)
        sids = self._run(C.members(index))
        if not sids:
            return []
        found, stale = C.pick_user_sessions(user_id, sids, self._run_all([C.load(keys, sid) for sid in sids]))
        if stale:
            self._run(C.index_remove(index, stale))
        return found

    def gc(self, now: float) -> int:
        """Remove sessions whose expiry is before ``now`` with their index entry; return how many.

        Redis drops sessions past their TTL itself; this also drops index members left by those.
        """
        keys = self._base.keys
        removed = 0
        for batch in self._scan(keys.scan_pattern(), "string"):
            results = self._run_all([C.gc_one(keys, keys.sid_of(key), now) for key in batch])
            then = [op for r in results if r is not None for op in r]
            removed += sum(1 for r in results if r is not None)
            self._run_all(then)
        for batch in self._scan(keys.user_scan_pattern(), "set"):
            sets = self._run_all([C.members(index) for index in batch])
            pairs = [(index, sid) for index, sids in zip(batch, sets, strict=True) for sid in sids]
            alive = self._run_all([C.exists(keys, sid) for _, sid in pairs])
            stale: dict[str, list[str]] = {}
            for (index, sid), live in zip(pairs, alive, strict=True):
                if not live:
                    stale.setdefault(index, []).append(sid)
            self._run_all([C.index_remove(index, sids) for index, sids in stale.items()])
        return removed

    def stats(self) -> dict[str, float]:
        """Return Redis' ``evicted_keys``, ``expired_keys``, ``used_memory`` and ``maxmemory_policy_evicts``."""
        client = self.client()
        try:
            if isinstance(client, RedisCluster):
                stats = client.info("stats", target_nodes=RedisCluster.PRIMARIES)
                memory = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            else:
                stats = client.info("stats")
                memory = client.info("memory")
        except C.ERRORS as exc:
            raise self._base.unavailable(exc) from exc
        return C.figures(stats, memory)


def from_url(url: BackendURL, key_prefix: str) -> RedisBackend:
    """Build the sync backend for a ``redis://``, ``rediss://``, ``unix://``, sentinel or cluster URL."""
    return RedisBackend(C.client_config(url, key_prefix), name=url.display, key_prefix=key_prefix)


def async_from_url(url: BackendURL, key_prefix: str) -> AsyncRedisBackend:
    """Build the asyncio backend for the same URLs as :func:`from_url`."""
    return AsyncRedisBackend(C.client_config(url, key_prefix), name=url.display, key_prefix=key_prefix)
