"""The memcached backend's URL: ``memcached://host:11211`` or ``memcached://h1:11211,h2:11211``."""

from __future__ import annotations

from ...core.errors import ConfigError
from .._url import BackendURL, positive_float, positive_int
from .backend import DEFAULT_FAIL_LIMIT, DEFAULT_RETRY_AFTER, MemcachedBackend

__all__ = ["DEFAULT_PORT", "from_url"]

DEFAULT_PORT = 11211


def from_url(url: BackendURL, key_prefix: str) -> MemcachedBackend:
    """Build the backend for ``memcached://host:11211`` or ``memcached://h1:11211,h2:11211``.

    Options: ``connect_timeout`` and ``socket_timeout`` (or its short name ``timeout``; seconds, default
    2), ``replicas`` (servers holding each session, default 1), ``fail_limit`` (failed calls in a row
    before a server is ejected, default 2) and ``retry_after`` (seconds before an ejected server is
    tried again, default 5).
    """
    connect_timeout = url.take("connect_timeout", positive_float, 2.0)
    # socket_timeout is the name the Redis backend (and the API's examples) use for the same thing.
    socket_timeout: float | None = url.take("socket_timeout", positive_float, None)
    timeout = url.take("timeout", positive_float, socket_timeout if socket_timeout is not None else 2.0)
    replicas = url.take("replicas", positive_int, 1)
    fail_limit = url.take("fail_limit", positive_int, DEFAULT_FAIL_LIMIT)
    retry_after = url.take("retry_after", positive_float, DEFAULT_RETRY_AFTER)
    if url.username is not None or url.password is not None:
        raise ConfigError(
            f"memcached backend {url.display!r}: credentials are not supported (pymemcache has no SASL)",
            option="backend",
        )
    if url.path not in ("", "/"):
        raise ConfigError(
            f"memcached backend URL {url.display!r} has a path; memcached has no databases: memcached://host:11211",
            option="backend",
        )
    servers: list[tuple[str, int]] = []
    for host, port in url.hosts:
        if not host:
            raise ConfigError(f"memcached backend URL {url.display!r} has an empty host name", option="backend")
        servers.append((host, DEFAULT_PORT if port is None else port))
    if not servers:
        raise ConfigError(
            f"memcached backend URL {url.display!r} names no server: memcached://host:11211", option="backend"
        )
    if replicas > len(servers):
        raise ConfigError(
            f"memcached backend {url.display!r}: replicas={replicas}, but the URL names {len(servers)} "
            f"server{'s' if len(servers) > 1 else ''}; use 1 to {len(servers)}",
            option="replicas",
        )
    return MemcachedBackend(
        servers,
        key_prefix=key_prefix,
        connect_timeout=connect_timeout,
        timeout=timeout,
        replicas=replicas,
        fail_limit=fail_limit,
        retry_after=retry_after,
    )
