"""The Redis backend: sessions in Redis, Redis Sentinel or Redis Cluster, through redis-py.

URLs::

    redis://[[user]:password@]host:6379/0      rediss://...  (TLS)
    unix:///run/redis/redis.sock?db=0          redis+unix:///run/redis/redis.sock
    redis+sentinel://h1:26379,h2:26379/mymaster/0
    redis+cluster://h1:7000,h2:7001

Options (query string): ``connect_timeout`` and ``socket_timeout`` (seconds, default 2),
``max_connections``, ``health_check_interval``, ``db``, ``ssl`` and ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs`` (TLS), ``sentinel_password`` (Sentinel).

Every primitive is one round trip (see :mod:`._redis_common` for keys and scripts). redis-py's own
retries are off (the core decides about waiting), so a server that is down answers at once with
:class:`~sessionmw.errors.BackendUnavailable`; the connection pool reconnects when it is back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import redis as redis_py
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError
from redis.retry import Retry
from redis.sentinel import Sentinel

from . import _redis_common as C
from ._url import BackendURL
from .base import Record, Touch
from .redis_async import AsyncRedisBackend

__all__ = ["AsyncRedisBackend", "RedisBackend", "async_from_url", "connect", "from_url"]

T = TypeVar("T")

SyncClient = redis_py.Redis | RedisCluster


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
        self._base: C.RedisBase[SyncClient] = C.RedisBase(name, C.Keys(key_prefix), lambda: connect(config))

    def client(self) -> SyncClient:
        """The redis-py client, built on first use (for administration and tests)."""
        return self._base.connected()

    def _run(self, op: C.Op[T]) -> T:
        base = self._base
        client = base.client
        if client is None:
            client = base.connected()
        try:
            try:
                reply = client.execute_command(*op.command)  # type: ignore[no-untyped-call]
            except NoScriptError:
                if op.script is None:
                    raise
                client.script_load(op.script)  # a new or flushed server: load the script, then once more
                reply = client.execute_command(*op.command)  # type: ignore[no-untyped-call]
        except C.ERRORS as exc:
            raise base.unavailable(exc) from exc
        if base.policy_pending:
            try:
                base.policy_result(client.config_get("maxmemory-policy"), None)
            except C.ERRORS as exc:
                base.policy_result(None, exc)
        return op.parse(reply)

    # -- primitives ----------------------------------------------------------------------------

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid``; when taken, return its record too (one script call)."""
        return self._run(C.lock_and_load(self._base.keys, sid, token, expire))

    def load(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking (one MGET of data and touch)."""
        return self._run(C.load(self._base.keys, sid))

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Store a new session if ``sid`` is unused."""
        return self._run(C.create(self._base.keys, sid, record, ttl))

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock, if ``token`` still holds it."""
        return self._run(C.save(self._base.keys, sid, record, token, ttl))

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, touching the record first."""
        return self._run(C.release(self._base.keys, sid, token, touch))

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access without rewriting the data."""
        self._run(C.touch(self._base.keys, sid, touch))

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's expiry out, if ``token`` still holds it."""
        return self._run(C.extend(self._base.keys, sid, token, expire))

    def delete(self, sid: str) -> None:
        """Remove the session's data and touch (one DEL; the lock stays with its holder)."""
        self._run(C.delete(self._base.keys, sid))

    def close(self) -> None:
        """Close the connection pools; a later call opens new ones."""
        for client in self._base.take_closing():
            client.close()

    # -- administration ------------------------------------------------------------------------

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        """Yield ``(sid, record)`` for every live session under this key prefix (SCAN, then MGET each)."""
        keys = self._base.keys
        client = self.client()
        try:
            found = list(client.scan_iter(match=keys.scan_pattern(), count=500))
        except C.ERRORS as exc:
            raise self._base.unavailable(exc) from exc
        for key in found:
            sid = keys.sid_of(key)
            record = self._run(C.load(keys, sid))
            if record is not None:
                yield sid, record


def from_url(url: BackendURL, key_prefix: str) -> RedisBackend:
    """Build the sync backend for a ``redis://``, ``rediss://``, ``unix://``, sentinel or cluster URL."""
    return RedisBackend(C.client_config(url, key_prefix), name=url.display, key_prefix=key_prefix)


def async_from_url(url: BackendURL, key_prefix: str) -> AsyncRedisBackend:
    """Build the asyncio backend for the same URLs as :func:`from_url`."""
    return AsyncRedisBackend(C.client_config(url, key_prefix), name=url.display, key_prefix=key_prefix)
