"""A Redis backend URL read into a :class:`ClientConfig`: how to build the client, sync or asyncio alike.

Rules of this module: no I/O. URLs::

    redis://[[user]:password@]host:6379/0      rediss://...  (TLS)
    unix:///run/redis/redis.sock?db=0          redis+unix:///run/redis/redis.sock
    redis+sentinel://h1:26379,h2:26379/mymaster/0
    redis+cluster://h1:7000,h2:7001

Options (query string): ``connect_timeout`` and ``socket_timeout`` (seconds, default 2),
``max_connections``, ``health_check_interval``, ``db``, ``ssl`` and ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs`` (TLS), ``sentinel_password`` (Sentinel), ``failover_wait`` (Sentinel
and Cluster: seconds a command waits for a new master, default 5; 0 answers at once; see
``failover.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ...core.errors import ConfigError
from .._url import BackendURL, boolean, positive_float, positive_int
from .failover import DEFAULT_WAIT, seconds

__all__ = ["ClientConfig", "client_config"]


@dataclass(frozen=True)
class ClientConfig:
    """How to build the client of a backend URL, independent of sync or asyncio redis-py.

    ``kwargs`` go to ``Redis(...)``, ``Sentinel.master_for(...)`` or ``RedisCluster(...)``; ``connect``
    adds its own ``retry`` object (redis-py's sync or asyncio one).
    """

    kind: Literal["standalone", "sentinel", "cluster"]
    kwargs: dict[str, Any]
    #: Sentinel or Cluster start-up nodes.
    nodes: list[tuple[str, int]] = field(default_factory=list)
    #: The Sentinel service (master) name.
    service: str = ""
    #: Options of the connections to the sentinels themselves.
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)
    #: How often redis-py itself retries a command after a connection error: never, but on a Cluster
    #: without ``failover_wait``, once (to follow a slot's move). The backend's own waiting is below.
    retries: int = 0
    #: Seconds a failing command is tried again while Sentinel or Cluster replaces a dead master
    #: (``failover_wait``; 0 for one server, which has no replica to promote).
    failover_wait: float = 0.0

    @property
    def own_connections(self) -> bool:
        """Whether the primitives run on connections of the backend's own rather than redis-py's pool.

        Only for one standalone server with an unbounded pool: Sentinel follows failovers and Cluster
        routes by slot inside redis-py's clients, and a bounded pool must refuse the n+1st connection.
        """
        return self.kind == "standalone" and "max_connections" not in self.kwargs


_CERT_REQS = ("required", "optional", "none")


def _cert_reqs(value: str) -> str:
    if value not in _CERT_REQS:
        raise ValueError(value)
    return value


def _nonnegative_int(value: str) -> int:
    i = int(value)
    if i < 0:
        raise ValueError(value)
    return i


def _bad(url: BackendURL, what: str) -> ConfigError:
    return ConfigError(f"redis backend URL {url.display!r}: {what}", option="backend")


def _db(url: BackendURL, text: str) -> int:
    try:
        db = int(text)
    except ValueError:
        raise _bad(url, f"database {text!r} is not a number (redis://host:6379/0)") from None
    if db < 0:
        raise _bad(url, f"database {db} is negative")
    return db


def client_config(url: BackendURL, key_prefix: str) -> ClientConfig:
    """Read a ``redis://``, ``rediss://``, ``unix://``, ``redis+unix://``, ``redis+sentinel://`` or
    ``redis+cluster://`` URL and its query options into a :class:`ClientConfig`."""
    scheme = url.scheme
    common = _common(url)
    auth: dict[str, Any] = {}
    if url.username is not None:
        auth["username"] = url.username
    if url.password is not None:
        auth["password"] = url.password
    db_option: int | None = url.take("db", _nonnegative_int, None)
    wait: float | None = url.take("failover_wait", seconds, None)
    if wait is not None and scheme not in ("redis+sentinel", "redis+cluster"):
        raise ConfigError(
            f"backend URL option failover_wait is for redis+sentinel:// and redis+cluster:// only; {scheme}:// "
            "is one server, with no replica to wait for",
            option="failover_wait",
        )
    wait = DEFAULT_WAIT if wait is None else wait

    if scheme in ("unix", "redis+unix"):
        if not url.path or url.path == "/":
            raise _bad(url, "needs the socket's path: unix:///run/redis/redis.sock?db=0")
        if url.hosts:
            raise _bad(url, "a unix socket URL has no host: unix:///run/redis/redis.sock")
        return ClientConfig("standalone", {"unix_socket_path": url.path, "db": db_option or 0, **common, **auth})

    tls = _tls(url, default=scheme == "rediss")
    if scheme in ("redis", "rediss"):
        if len(url.hosts) > 1:
            raise _bad(url, "names several hosts; use redis+sentinel:// or redis+cluster:// for those")
        host, port = url.hosts[0] if url.hosts else ("localhost", None)
        path = url.path.strip("/")
        if path and db_option is not None:
            raise _bad(url, "gives the database twice, in the path and as ?db=")
        db = _db(url, path) if path else (db_option or 0)
        kwargs = {"host": host or "localhost", "port": port or 6379, "db": db, **common, **auth, **tls}
        return ClientConfig("standalone", kwargs)
    if scheme == "redis+sentinel":
        return replace(_sentinel(url, db_option, common, {**common, **auth, **tls}, tls), failover_wait=wait)
    if scheme == "redis+cluster":
        # Waiting, the backend sends a command again itself (and only if that is safe: failover.py).
        return replace(
            _cluster(url, key_prefix, db_option, {**common, **auth, **tls}),
            failover_wait=wait,
            retries=0 if wait else 1,
        )
    raise _bad(url, f"scheme {scheme!r} is not a Redis scheme")


def _common(url: BackendURL) -> dict[str, Any]:
    """The client options of every scheme: timeouts, pool size, health checks."""
    common: dict[str, Any] = {
        "socket_connect_timeout": url.take("connect_timeout", positive_float, 2.0),
        "socket_timeout": url.take("socket_timeout", positive_float, 2.0),
    }
    max_connections: int | None = url.take("max_connections", positive_int, None)
    if max_connections is not None:
        common["max_connections"] = max_connections
    health = url.take("health_check_interval", positive_float, 0.0)
    if health:
        common["health_check_interval"] = health
    return common


def _sentinel(
    url: BackendURL, db_option: int | None, common: dict[str, Any], options: dict[str, Any], tls: dict[str, Any]
) -> ClientConfig:
    """``redis+sentinel://h1:26379,h2:26379/mymaster/0``: ``options`` go to the master's client."""
    sentinel_password: str | None = url.take("sentinel_password", str, None)
    parts = [p for p in url.path.split("/") if p]
    if not parts or len(parts) > 2:
        raise _bad(url, "needs the service name, and optionally the database: redis+sentinel://h1:26379/mymaster/0")
    if len(parts) == 2 and db_option is not None:
        raise _bad(url, "gives the database twice, in the path and as ?db=")
    db = _db(url, parts[1]) if len(parts) == 2 else (db_option or 0)
    nodes = [(h or "localhost", p or 26379) for h, p in url.hosts] or [("localhost", 26379)]
    sentinel_kwargs: dict[str, Any] = {**common, **tls}
    sentinel_kwargs.pop("max_connections", None)
    if sentinel_password is not None:
        sentinel_kwargs["password"] = sentinel_password
    return ClientConfig(
        "sentinel", {"db": db, **options}, nodes=nodes, service=parts[0], sentinel_kwargs=sentinel_kwargs
    )


def _cluster(url: BackendURL, key_prefix: str, db_option: int | None, options: dict[str, Any]) -> ClientConfig:
    """``redis+cluster://h1:7000,h2:7001``: database 0 only, and no brace in the key prefix."""
    if url.path.strip("/") not in ("", "0") or db_option not in (None, 0):
        raise _bad(url, "Redis Cluster has database 0 only")
    if "{" in key_prefix or "}" in key_prefix:
        raise ConfigError(
            f"key_prefix {key_prefix!r} contains a brace; on Redis Cluster the backend adds the {{sid}} hash "
            "tag itself, and a brace in the prefix would move or merge the session slots",
            option="key_prefix",
        )
    nodes = [(h or "localhost", p or 6379) for h, p in url.hosts] or [("localhost", 6379)]
    return ClientConfig("cluster", options, nodes=nodes, retries=1)


def _tls(url: BackendURL, *, default: bool) -> dict[str, Any]:
    """The TLS client options: ``ssl`` (rediss:// sets it) and the ``ssl_*`` files and checks."""
    on = url.take("ssl", boolean, default)
    opts: dict[str, Any] = {
        "ssl_ca_certs": url.take("ssl_ca_certs", str, None),
        "ssl_certfile": url.take("ssl_certfile", str, None),
        "ssl_keyfile": url.take("ssl_keyfile", str, None),
        "ssl_cert_reqs": url.take("ssl_cert_reqs", _cert_reqs, None),
    }
    given = {k: v for k, v in opts.items() if v is not None}
    if not on:
        if given:
            name = next(iter(given))
            raise ConfigError(
                f"backend URL option {name} needs TLS: use rediss:// (or ?ssl=true for sentinel and cluster)",
                option=name,
            )
        return {}
    return {"ssl": True, **given}
