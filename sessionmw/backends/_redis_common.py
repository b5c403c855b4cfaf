"""What the sync and asyncio Redis backends share: keys, Lua scripts, record encoding, URL options.

Rules of this module: no I/O. Everything the two twins (``redis.py`` on :class:`redis.Redis`,
``redis_async.py`` on :mod:`redis.asyncio`) do is described here as an :class:`Op`: one round trip
(a Lua script by EVALSHA, or one plain command), the command's arguments, and how to read the reply.
A twin's method builds an op and runs it; the only difference between the twins is ``await``.

Layout, for a session ``sid`` under key prefix ``p``::

    p{sid}        the record: one string, encode_record(record) (a JSON line of metadata, then the data)
    p{sid}:a      the last touch, if newer than the record: "<last_access> <expires|-> [<last_ip>]"
    p{sid}:lock   the lock: a string holding the owner's token, with a PX expiry

The ``{sid}`` hash tag puts the three keys of one session in one Cluster slot, so every script (and
MGET, DEL) may use all of them. The record is one string, so a save is one SET and a load one bulk
reply; a touch writes only the small ``:a`` key (and refreshes the record's TTL), never the data,
and a load merges it when its last access is newer, as the file backend does with its ``.touch``
file. A save rewrites the whole record, so it deletes the ``:a`` key.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BackendUnavailable, ConfigError
from ._url import BackendURL, boolean, positive_float, positive_int
from .base import Record, Touch, decode_record, encode_record

__all__ = [
    "ERRORS",
    "SCRIPTS",
    "SHAS",
    "ClientConfig",
    "Keys",
    "Op",
    "RedisBase",
    "client_config",
    "create",
    "delete",
    "extend",
    "load",
    "lock_and_load",
    "merge",
    "ms",
    "release",
    "save",
    "touch",
    "touch_args",
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
        """The string holding the record of ``sid``."""
        return f"{self.prefix}{{{sid}}}"

    def touch(self, sid: str) -> str:
        """The last touch of ``sid``; same hash tag as its data, so same Cluster slot."""
        return f"{self.prefix}{{{sid}}}:a"

    def lock(self, sid: str) -> str:
        """The lock of ``sid``; same hash tag as its data, so same Cluster slot."""
        return f"{self.prefix}{{{sid}}}:lock"

    def scan_pattern(self) -> str:
        """A SCAN MATCH pattern for every data key under this prefix (touch and lock keys do not end in ``}``)."""
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix)
        return escaped + "{*}"

    def sid_of(self, key: bytes | str) -> str:
        """The session id in a data key."""
        text = key.decode("utf-8") if isinstance(key, bytes) else key
        return text[len(self.prefix) + 1 : -1]


# -- Lua -----------------------------------------------------------------------------------------

# touch(at): apply the touch in ARGV[at..] to the session whose data is KEYS[1] and touch key KEYS[2]:
#   ARGV[at]      "<last_access> <expires|->", the new touch value without its IP
#   ARGV[at+1]    the TTL in ms for both keys, or "" for none (PERSIST)
#   ARGV[at+2]    the last IP; absent = unknown, keep the IP of the touch stored before (if any)
# Returns 1 when the session exists (touched), 0 when it does not (nothing created).
_TOUCH_FN = """
local function touch(at)
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  local ip = ARGV[at + 2]
  if ip == nil then
    local old = redis.call('GET', KEYS[2])
    if old then ip = string.match(old, '^%S+ %S+ (.*)$') end
  end
  local value = ARGV[at]
  if ip then value = value .. ' ' .. ip end
  if ARGV[at + 1] == '' then
    redis.call('SET', KEYS[2], value)
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('SET', KEYS[2], value, 'PX', ARGV[at + 1])
    redis.call('PEXPIRE', KEYS[1], ARGV[at + 1])
  end
  return 1
end
"""

# KEYS[1] data, KEYS[2] touch, KEYS[3] lock; ARGV[1] token, ARGV[2] lock expiry in ms.
# Returns nil when another token holds the lock, else {data, touch} (each nil when absent).
_LOCK_AND_LOAD = """
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('MGET', KEYS[1], KEYS[2])
"""

# KEYS[1] data, KEYS[2] touch, KEYS[3] lock; ARGV[1] token, ARGV[2] the record, ARGV[3] TTL in ms or "".
# Returns 0 (and writes nothing) when another token holds the lock. Else deletes the lock and the touch
# and returns 1 when the record was written, 0 when the session was deleted meanwhile (SET XX: an ended
# session is never resurrected).
_SAVE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
local stored
if ARGV[3] == '' then
  stored = redis.call('SET', KEYS[1], ARGV[2], 'XX')
else
  stored = redis.call('SET', KEYS[1], ARGV[2], 'XX', 'PX', ARGV[3])
end
redis.call('DEL', KEYS[2], KEYS[3])
if stored then return 1 end
return 0
"""

# KEYS[1] data, KEYS[2] touch, KEYS[3] lock; ARGV[1] token, ARGV[2..] an optional touch (see touch()).
# Returns 1 when the token held the lock (deleted; the touch applied if the data still exists), else 0.
_RELEASE = (
    _TOUCH_FN
    + """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[3])
if #ARGV > 1 then touch(2) end
return 1
"""
)

# KEYS[1] data, KEYS[2] touch; ARGV[1..] a touch (see touch()).
# Returns 1 when the session existed and was touched, 0 when there is none (nothing created).
_TOUCH = (
    _TOUCH_FN
    + """
return touch(1)
"""
)

# KEYS[1] lock; ARGV[1] token, ARGV[2] new expiry in ms.
# Returns 1 when the token held the lock and its expiry was pushed out, else 0.
_EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

#: Script name -> Lua source. Run by EVALSHA; on NOSCRIPT the twin loads the source and retries.
SCRIPTS: dict[str, str] = {
    "lock_and_load": _LOCK_AND_LOAD,
    "save": _SAVE,
    "release": _RELEASE,
    "touch": _TOUCH,
    "extend": _EXTEND,
}

#: Script name -> SHA1 of its source, as EVALSHA wants it (computed once, here).
SHAS: dict[str, str] = {name: hashlib.sha1(src.encode("utf-8")).hexdigest() for name, src in SCRIPTS.items()}

# -- records and touches -------------------------------------------------------------------------

Arg = str | bytes | int


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds * 1000))


def touch_args(t: Touch) -> list[Arg]:
    """The arguments of the Lua ``touch()``: the value without IP, the TTL, and the IP when known."""
    head = f"{float(t.last_access)!r} {'-' if t.expires is None else repr(float(t.expires))}"
    ttl = "" if t.ttl is None else ms(t.ttl)
    return [head, ttl] if t.last_ip is None else [head, ttl, t.last_ip]


def merge(data: bytes | None, touched: bytes | None) -> Record | None:
    """The record in a data value, with the touch value applied when it is newer; ``None`` if missing or foreign."""
    if data is None:
        return None
    try:
        record = decode_record(data)
    except (ValueError, IndexError, TypeError):
        return None
    if touched is not None:
        try:
            parts = touched.split(b" ", 2)
            last_access = float(parts[0])
            if last_access > record.last_access:
                expires = None if parts[1] == b"-" else float(parts[1])
                last_ip = parts[2].decode("utf-8") if len(parts) > 2 else None
                record = record.touched(Touch(last_access, last_ip, expires, None))
        except (ValueError, IndexError):
            pass
    return record


# -- operations: one round trip each ------------------------------------------------------------


class Op(NamedTuple, Generic[T]):
    """One round trip: a command (for a script: ``EVALSHA sha numkeys keys... args...``) and its reader.

    A named tuple: one is built per call, and it costs a fraction of a (frozen) dataclass.
    """

    #: The command and its arguments, as ``execute_command`` takes them.
    command: tuple[Arg, ...]
    #: The Lua source behind an EVALSHA, loaded when the server answers NOSCRIPT; ``None`` for a plain command.
    script: str | None
    parse: Callable[[Any], T]


def _flag(reply: Any) -> bool:
    return bool(reply)


def _locked(reply: Any) -> tuple[bool, Record | None]:
    if reply is None:
        return False, None
    return True, merge(reply[0], reply[1])


def _record(reply: Any) -> Record | None:
    return merge(reply[0], reply[1])


def _nothing(reply: Any) -> None:
    return None


_LOCK_AND_LOAD_SHA = SHAS["lock_and_load"]
_SAVE_SHA = SHAS["save"]
_RELEASE_SHA = SHAS["release"]
_TOUCH_SHA = SHAS["touch"]
_EXTEND_SHA = SHAS["extend"]


def lock_and_load(keys: Keys, sid: str, token: str, expire: float) -> Op[tuple[bool, Record | None]]:
    """SET lock NX PX, and MGET data and touch when that worked."""
    k = f"{keys.prefix}{{{sid}}}"
    return Op(("EVALSHA", _LOCK_AND_LOAD_SHA, 3, k, k + ":a", k + ":lock", token, ms(expire)), _LOCK_AND_LOAD, _locked)


def load(keys: Keys, sid: str) -> Op[Record | None]:
    """MGET data and touch."""
    k = f"{keys.prefix}{{{sid}}}"
    return Op(("MGET", k, k + ":a"), None, _record)


def create(keys: Keys, sid: str, record: Record, ttl: float | None) -> Op[bool]:
    """SET the record NX (PX ttl): stored only if the key is unused."""
    k = f"{keys.prefix}{{{sid}}}"
    if ttl is None:
        return Op(("SET", k, encode_record(record), "NX"), None, _flag)
    return Op(("SET", k, encode_record(record), "NX", "PX", ms(ttl)), None, _flag)


def save(keys: Keys, sid: str, record: Record, token: str, ttl: float | None) -> Op[bool]:
    """If the token holds the lock: write the record over an existing one, delete the touch and the lock."""
    k = f"{keys.prefix}{{{sid}}}"
    px = "" if ttl is None else ms(ttl)
    return Op(("EVALSHA", _SAVE_SHA, 3, k, k + ":a", k + ":lock", token, encode_record(record), px), _SAVE, _flag)


def release(keys: Keys, sid: str, token: str, touch: Touch | None) -> Op[bool]:
    """Delete the lock if the token holds it, applying the touch too."""
    k = f"{keys.prefix}{{{sid}}}"
    command: tuple[Arg, ...] = ("EVALSHA", _RELEASE_SHA, 3, k, k + ":a", k + ":lock", token)
    if touch is not None:
        command += tuple(touch_args(touch))
    return Op(command, _RELEASE, _flag)


def touch(keys: Keys, sid: str, t: Touch) -> Op[None]:
    """Write the touch key and refresh the TTL of an existing session."""
    k = f"{keys.prefix}{{{sid}}}"
    return Op(("EVALSHA", _TOUCH_SHA, 2, k, k + ":a", *touch_args(t)), _TOUCH, _nothing)


def extend(keys: Keys, sid: str, token: str, expire: float) -> Op[bool]:
    """PEXPIRE the lock if the token holds it."""
    return Op(("EVALSHA", _EXTEND_SHA, 1, keys.lock(sid), token, ms(expire)), _EXTEND, _flag)


def delete(keys: Keys, sid: str) -> Op[None]:
    """DEL the data and the touch (not the lock)."""
    k = f"{keys.prefix}{{{sid}}}"
    return Op(("DEL", k, k + ":a"), None, _nothing)


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
        #: The client once built (read directly on the hot path; :meth:`connected` builds it).
        self.client: ClientT | None = None
        self._closing: list[Any] = []
        #: Whether the eviction policy is still to be checked (a plain attribute: read on every call).
        self.policy_pending = True
        self._mutex = threading.Lock()

    def connected(self) -> ClientT:
        """The client, built on first use."""
        client = self.client
        if client is None:
            with self._mutex:
                if self.client is None:
                    try:
                        built, closing = self.connect()
                    except ERRORS as exc:
                        raise self.unavailable(exc) from exc
                    self._closing = closing
                    self.client = built
                client = self.client
        return client

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        """The :class:`BackendUnavailable` for a redis-py error: this backend and the cause, one line."""
        cause = " ".join(str(exc).split()) or type(exc).__name__
        return BackendUnavailable(f"redis backend {self.name} is unavailable: {cause}", backend=self.name)

    def take_closing(self) -> list[Any]:
        """Forget the clients (a later call builds new ones) and return those to close."""
        with self._mutex:
            closing, self._closing = self._closing, []
            self.client = None
        return closing

    def policy_result(self, reply: Any, exc: BaseException | None) -> None:
        """Digest the reply (or error) of ``CONFIG GET maxmemory-policy``; warn once if keys may be evicted."""
        if exc is not None and isinstance(exc, _TRANSIENT):
            return  # try again on the next call
        self.policy_pending = False
        policy = _find_policy(reply) if exc is None else None
        if policy is not None and policy != "noeviction":
            logger.warning(
                "redis backend %s: maxmemory-policy is %r, so Redis may evict session keys (users are logged "
                "out, locks vanish) when memory runs short; set maxmemory-policy noeviction on this server",
                self.name,
                policy,
            )


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
