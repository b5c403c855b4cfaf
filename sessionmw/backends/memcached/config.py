"""The memcached backend's URL: ``memcached://host:11211`` or ``memcached://h1:11211,h2:11211``."""

from __future__ import annotations

from ...core.errors import ConfigError
from .._url import BackendURL, positive_float, positive_int
from .backend import MemcachedBackend

__all__ = ["DEFAULT_PORT", "from_url"]

DEFAULT_PORT = 11211


def from_url(url: BackendURL, key_prefix: str) -> MemcachedBackend:
    """Build the backend for ``memcached://host:11211`` or ``memcached://h1:11211,h2:11211``.

    Options: ``connect_timeout`` and ``socket_timeout`` (or its short name ``timeout``; seconds, default
    2), ``replicas`` (only 1 for now).
    """
    connect_timeout = url.take("connect_timeout", positive_float, 2.0)
    # socket_timeout is the name the Redis backend (and the API's examples) use for the same thing.
    socket_timeout: float | None = url.take("socket_timeout", positive_float, None)
    timeout = url.take("timeout", positive_float, socket_timeout if socket_timeout is not None else 2.0)
    replicas = url.take("replicas", positive_int, 1)
    if replicas > 1:
        raise ConfigError(
            f"memcached backend {url.display!r}: replicas>1 is not supported yet; use replicas=1",
            option="replicas",
        )
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
    return MemcachedBackend(servers, key_prefix=key_prefix, connect_timeout=connect_timeout, timeout=timeout)
