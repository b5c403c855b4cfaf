"""What the sync and asyncio Redis backends share: keys, Lua scripts, record encoding, URL options.

Rules of this module: no I/O. Everything the two twins (``redis.py`` on :class:`redis.Redis`,
``redis_async.py`` on :mod:`redis.asyncio`) do is described here as an :class:`Op`: one round trip
(a registered Lua script, or one plain command), its keys and arguments, and how to read the reply.
A twin's method builds an op and runs it; the only difference between the twins is ``await``.

Layout, for a session ``sid`` under key prefix ``p``::

    p{sid}        a hash: d (data), c, a, u, fi, li, ua, io, it, x (metadata; absent = None)
    p{sid}:lock   the lock: a string holding the owner's token, with a PX expiry

The ``{sid}`` hash tag puts both keys of one session in one Cluster slot, so every script may touch
both. The record is a hash so that a touch rewrites three small fields, never the data.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BackendUnavailable, ConfigError
from ._url import BackendURL, boolean, positive_float, positive_int
from .base import Record, Touch

__all__ = [
    "ERRORS",
    "SCRIPTS",
    "ClientConfig",
    "Keys",
    "Op",
    "RedisBase",
    "client_config",
    "create",
    "delete",
    "extend",
    "hgetall",
    "load",
    "lock_and_load",
    "ms",
    "record_from_hash",
    "release",
    "save",
    "touch",
    "touch_args",
    "write_args",
]

logger = logging.getLogger("sessionmw")

T = TypeVar("T")
ClientT = TypeVar("ClientT")

#: Every exception redis-py raises for a server that is down, refused, slow or confused.
ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
#: The errors after which the eviction-policy check is worth trying again on the next call.
_TRANSIENT: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, RedisClusterException)

# -- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one key prefix."""

    prefix: str

    def data(self, sid: str) -> str:
        """The hash holding the record of ``sid``."""
        return f"{self.prefix}{{{sid}}}"

    def lock(self, sid: str) -> str:
        """The lock of ``sid``; same hash tag as its data, so same Cluster slot."""
        return f"{self.prefix}{{{sid}}}:lock"

    def scan_pattern(self) -> str:
        """A SCAN MATCH pattern for every data key under this prefix (lock keys do not end in ``}``)."""
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix)
        return escaped + "{*}"

    def sid_of(self, key: bytes | str) -> str:
        """The session id in a data key."""
        text = key.decode("utf-8") if isinstance(key, bytes) else key
        return text[len(self.prefix) + 1 : -1]


# -- Lua -----------------------------------------------------------------------------------------

# write(key, at): apply one record write described by ARGV[at..]:
#   ARGV[at]              the key's TTL in ms, or "" for no TTL (PERSIST)
#   ARGV[at+1]            n, the number of field/value pairs that follow
#   ARGV[at+2 .. +2n+1]   field, value, ... (HSET)
#   ARGV[at+2n+2 ..]      fields whose value is None (HDEL)
_WRITE = """
local function write(key, at)
  local n = tonumber(ARGV[at + 1])
  if n > 0 then redis.call('HSET', key, unpack(ARGV, at + 2, at + 1 + 2 * n)) end
  if #ARGV >= at + 2 + 2 * n then redis.call('HDEL', key, unpack(ARGV, at + 2 + 2 * n)) end
  if ARGV[at] == '' then redis.call('PERSIST', key) else redis.call('PEXPIRE', key, ARGV[at]) end
end
"""

# KEYS[1] data, KEYS[2] lock; ARGV[1] token, ARGV[2] lock expiry in ms.
# Returns nil when another token holds the lock, else the data hash as a flat list ({} = no session).
_LOCK_AND_LOAD = """
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] data, KEYS[2] lock; ARGV[1] token, ARGV[2..] a write (see write()).
# Returns 1 when the token held the lock (record written, lock deleted), else 0 and writes nothing.
_SAVE = (
    _WRITE
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
write(KEYS[1], 2)
redis.call('DEL', KEYS[2])
return 1
"""
)

# KEYS[1] data, KEYS[2] lock; ARGV[1] token, ARGV[2..] an optional touch (see write()).
# Returns 1 when the token held the lock (deleted; the touch applied if the data still exists), else 0.
_RELEASE = (
    _WRITE
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if #ARGV > 1 and redis.call('EXISTS', KEYS[1]) == 1 then write(KEYS[1], 2) end
return 1
"""
)

# KEYS[1] data; ARGV[1..] a write (see write()).
# Returns 1 when the record was stored, 0 when the key exists already (nothing written).
_CREATE = (
    _WRITE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
write(KEYS[1], 1)
return 1
"""
)

# KEYS[1] data; ARGV[1..] a touch (see write()).
# Returns 1 when the session existed and was touched, 0 when there is none (nothing created).
_TOUCH = (
    _WRITE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
write(KEYS[1], 1)
return 1
"""
)

# KEYS[1] lock; ARGV[1] token, ARGV[2] new expiry in ms.
# Returns 1 when the token held the lock and its expiry was pushed out, else 0.
_EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

#: Script name -> Lua source; each twin registers them once per client (EVALSHA, EVAL on NOSCRIPT).
SCRIPTS: dict[str, str] = {
    "lock_and_load": _LOCK_AND_LOAD,
    "save": _SAVE,
    "release": _RELEASE,
    "create": _CREATE,
    "touch": _TOUCH,
    "extend": _EXTEND,
}

# -- record <-> hash -----------------------------------------------------------------------------

Arg = str | bytes


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds * 1000))


def _ttl_arg(ttl: float | None) -> str:
    return "" if ttl is None else str(ms(ttl))


def _write(ttl: float | None, fields: Sequence[tuple[str, Arg | None]], keep: Sequence[str] = ()) -> list[Arg]:
    """ARGV for the Lua ``write()``: set the fields with a value, delete those with None (unless kept)."""
    present = [(k, v) for k, v in fields if v is not None]
    absent = [k for k, v in fields if v is None and k not in keep]
    args: list[Arg] = [_ttl_arg(ttl), str(len(present))]
    for k, v in present:
        assert v is not None
        args += [k, v]
    return args + absent


def _num(value: float | None) -> str | None:
    return None if value is None else repr(float(value))


def write_args(record: Record, ttl: float | None) -> list[Arg]:
    """The Lua ``write()`` arguments storing all of ``record`` with a TTL (``None`` = none)."""
    return _write(
        ttl,
        [
            ("d", record.data),
            ("c", _num(record.created)),
            ("a", _num(record.last_access)),
            ("u", None if record.user_id is None else json.dumps(record.user_id)),
            ("fi", record.first_ip),
            ("li", record.last_ip),
            ("ua", record.user_agent),
            ("io", "1" if record.idle_override else "0"),
            ("it", _num(record.idle_timeout)),
            ("x", _num(record.expires)),
        ],
    )


def touch_args(touch: Touch) -> list[Arg]:
    """The Lua ``write()`` arguments of a touch: last access, expiry, and last IP when it is known."""
    return _write(
        touch.ttl,
        [("a", _num(touch.last_access)), ("li", touch.last_ip), ("x", _num(touch.expires))],
        keep=("li",),
    )


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def record_from_hash(h: Mapping[bytes, bytes]) -> Record | None:
    """The record in a data hash, or ``None`` for an empty (missing) or foreign one."""
    data, created, last_access = h.get(b"d"), _float(h.get(b"c")), _float(h.get(b"a"))
    if data is None or created is None or last_access is None:
        return None
    user = h.get(b"u")
    return Record(
        data=data,
        created=created,
        last_access=last_access,
        user_id=None if user is None else json.loads(user),
        first_ip=_text(h.get(b"fi")),
        last_ip=_text(h.get(b"li")),
        user_agent=_text(h.get(b"ua")),
        idle_override=h.get(b"io") == b"1",
        idle_timeout=_float(h.get(b"it")),
        expires=_float(h.get(b"x")),
    )


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


# -- operations: one round trip each ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    """One round trip: a registered script (or, when ``script`` is None, the command in ``args``)."""

    script: str | None
    keys: list[str]
    args: list[Arg]
    parse: Callable[[Any], T]


def _flag(reply: Any) -> bool:
    return bool(int(reply))


def _locked(reply: Any) -> tuple[bool, Record | None]:
    if reply is None:
        return False, None
    return True, record_from_hash(_pairs(reply))


def _record(reply: Any) -> Record | None:
    return record_from_hash(reply) if reply else None


def _nothing(reply: Any) -> None:
    return None


def lock_and_load(keys: Keys, sid: str, token: str, expire: float) -> Op[tuple[bool, Record | None]]:
    """SET lock NX PX, and HGETALL the data when that worked."""
    return Op("lock_and_load", [keys.data(sid), keys.lock(sid)], [token, str(ms(expire))], _locked)


def load(keys: Keys, sid: str) -> Op[Record | None]:
    """HGETALL the data."""
    return Op(None, [keys.data(sid)], ["HGETALL", keys.data(sid)], _record)


def create(keys: Keys, sid: str, record: Record, ttl: float | None) -> Op[bool]:
    """Write the record unless the key exists."""
    return Op("create", [keys.data(sid)], write_args(record, ttl), _flag)


def save(keys: Keys, sid: str, record: Record, token: str, ttl: float | None) -> Op[bool]:
    """Write the record and delete the lock, if the token holds it."""
    return Op("save", [keys.data(sid), keys.lock(sid)], [token, *write_args(record, ttl)], _flag)


def release(keys: Keys, sid: str, token: str, touch: Touch | None) -> Op[bool]:
    """Delete the lock if the token holds it, applying the touch first."""
    extra = [] if touch is None else touch_args(touch)
    return Op("release", [keys.data(sid), keys.lock(sid)], [token, *extra], _flag)


def touch(keys: Keys, sid: str, t: Touch) -> Op[None]:
    """Refresh last access of an existing session."""
    return Op("touch", [keys.data(sid)], touch_args(t), _nothing)


def extend(keys: Keys, sid: str, token: str, expire: float) -> Op[bool]:
    """PEXPIRE the lock if the token holds it."""
    return Op("extend", [keys.lock(sid)], [token, str(ms(expire))], _flag)


def delete(keys: Keys, sid: str) -> Op[None]:
    """DEL the data (not the lock)."""
    return Op(None, [keys.data(sid)], ["DEL", keys.data(sid)], _nothing)


def hgetall(key: bytes | str) -> Op[Record | None]:
    """HGETALL one data key found by SCAN."""
    k = key.decode("utf-8") if isinstance(key, bytes) else key
    return Op(None, [k], ["HGETALL", k], _record)


# -- the state both twins keep -------------------------------------------------------------------


class RedisBase(Generic[ClientT]):
    """What a twin holds besides its client: name, keys, lazy client creation and the policy check.

    :param connect: builds the client and the list of clients to close; it runs on the first call, so
        a backend can be built while the server is down (sync Cluster's constructor talks to it).
    """

    def __init__(self, name: str, keys: Keys, connect: Callable[[], tuple[ClientT, list[Any]]]) -> None:
        self.name = name
        self.keys = keys
        self.connect = connect
        self._client: ClientT | None = None
        self._closing: list[Any] = []
        self._scripts: dict[str, Any] = {}
        self._policy_pending = True
        self._mutex = threading.Lock()

    def connected(self) -> tuple[ClientT, dict[str, Any]]:
        """The client and its registered scripts, built on first use."""
        client = self._client
        if client is None:
            with self._mutex:
                if self._client is None:
                    try:
                        built, closing = self.connect()
                    except ERRORS as exc:
                        raise self.unavailable(exc) from exc
                    register: Callable[[str], Any] = built.register_script  # type: ignore[attr-defined]
                    self._scripts = {name: register(src) for name, src in SCRIPTS.items()}
                    self._closing = closing
                    self._client = built
                client = self._client
        return client, self._scripts

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        """The :class:`BackendUnavailable` for a redis-py error: this backend and the cause, one line."""
        cause = " ".join(str(exc).split()) or type(exc).__name__
        return BackendUnavailable(f"redis backend {self.name} is unavailable: {cause}", backend=self.name)

    def take_closing(self) -> list[Any]:
        """Forget the clients (a later call builds new ones) and return those to close."""
        with self._mutex:
            closing, self._closing = self._closing, []
            self._client = None
            self._scripts = {}
        return closing

    def policy_result(self, reply: Any, exc: BaseException | None) -> None:
        """Digest the reply (or error) of ``CONFIG GET maxmemory-policy``; warn once if keys may be evicted."""
        if exc is not None and isinstance(exc, _TRANSIENT):
            return  # try again on the next call
        self._policy_pending = False
        policy = _find_policy(reply) if exc is None else None
        if policy is not None and policy != "noeviction":
            logger.warning(
                "redis backend %s: maxmemory-policy is %r, so Redis may evict session keys (users are logged "
                "out, locks vanish) when memory runs short; set maxmemory-policy noeviction on this server",
                self.name,
                policy,
            )

    @property
    def policy_pending(self) -> bool:
        """Whether the eviction policy is still to be checked."""
        return self._policy_pending


def _find_policy(reply: Any) -> str | None:
    """The policy in a CONFIG GET reply (a dict, or a dict per node from a Cluster)."""
    if isinstance(reply, Mapping):
        for k, v in reply.items():
            if k in (b"maxmemory-policy", "maxmemory-policy"):
                return v.decode() if isinstance(v, bytes) else str(v)
            found = _find_policy(v)
            if found is not None:
                return found
    return None


# -- URL -> client configuration -----------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    """How to build the client of a backend URL, independent of sync or asyncio redis-py.

    ``kwargs`` go to ``Redis(...)``, ``Sentinel.master_for(...)`` or ``RedisCluster(...)``; the twin
    adds its own ``retry`` object.
    """

    kind: Literal["standalone", "sentinel", "cluster"]
    kwargs: dict[str, Any]
    #: Sentinel or Cluster start-up nodes.
    nodes: list[tuple[str, int]] = field(default_factory=list)
    #: The Sentinel service (master) name.
    service: str = ""
    #: Options of the connections to the sentinels themselves.
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)
    #: How often a command is retried after a connection error (Cluster: once, to follow a failover).
    retries: int = 0


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
    auth: dict[str, Any] = {}
    if url.username is not None:
        auth["username"] = url.username
    if url.password is not None:
        auth["password"] = url.password
    db_option: int | None = url.take("db", _nonnegative_int, None)

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
            "sentinel",
            {"db": db, **common, **auth, **tls},
            nodes=nodes,
            service=parts[0],
            sentinel_kwargs=sentinel_kwargs,
        )

    if scheme == "redis+cluster":
        if url.path.strip("/") not in ("", "0") or db_option not in (None, 0):
            raise _bad(url, "Redis Cluster has database 0 only")
        if "{" in key_prefix or "}" in key_prefix:
            raise ConfigError(
                f"key_prefix {key_prefix!r} contains a brace; on Redis Cluster the backend adds the {{sid}} hash "
                "tag itself, and a brace in the prefix would move or merge the session slots",
                option="key_prefix",
            )
        nodes = [(h or "localhost", p or 6379) for h, p in url.hosts] or [("localhost", 6379)]
        return ClientConfig("cluster", {**common, **auth, **tls}, nodes=nodes, retries=1)

    raise _bad(url, f"scheme {scheme!r} is not a Redis scheme")


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
