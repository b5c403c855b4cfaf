"""The Redis backend: sessions in Redis, Redis Sentinel or Redis Cluster, through redis-py.

URLs and their options: see ``config.py``. A file is one responsibility:

- ``keys.py``: the key layout, defined once in :class:`~.keys.Keys`, and the per-user index;
- ``scripts.py``: the Lua scripts, with their KEYS, ARGV and replies, and their SHAs;
- ``wire.py``: the RESP encoder of the backend's own connections, and reply readers;
- ``records.py``: the stored record's encoding, and the touch the scripts apply;
- ``ops.py``: each primitive as one round trip, the command(s) and the reader of the reply;
- ``config.py``: a URL read into a :class:`~.config.ClientConfig`;
- ``client.py``: the lazily built client, redis-py's errors, the eviction-policy check;
- ``failover.py``: which errors mean a failover under way, and the bounded back-off that waits it out;
- ``figures.py``: the figures of ``stats`` and the maxmemory policy;
- ``forks.py``: the connections a forked child must drop;
- ``_async.py`` (:class:`AsyncRedisBackend`: primitives and administration) and ``_async_runners.py``
  (how its commands reach the server): the one hand-written source of both sides;
- ``_sync.py`` (:class:`RedisBackend`) and ``_sync_runners.py``: generated from those two by
  ``scripts/unasync.py``, never edited by hand;
- ``_loop.py``: what only asyncio needs (clients belong to the event loop that built them).
"""

from __future__ import annotations

from .._url import BackendURL
from ._async import AsyncRedisBackend
from ._sync import RedisBackend
from .config import ClientConfig, client_config

__all__ = ["AsyncRedisBackend", "ClientConfig", "RedisBackend", "async_from_url", "client_config", "from_url"]


def from_url(url: BackendURL, key_prefix: str) -> RedisBackend:
    """Build the sync backend for a ``redis://``, ``rediss://``, ``unix://``, sentinel or cluster URL."""
    return RedisBackend(client_config(url, key_prefix), name=url.display, key_prefix=key_prefix)


def async_from_url(url: BackendURL, key_prefix: str) -> AsyncRedisBackend:
    """Build the asyncio backend for the same URLs as :func:`from_url`."""
    return AsyncRedisBackend(client_config(url, key_prefix), name=url.display, key_prefix=key_prefix)
