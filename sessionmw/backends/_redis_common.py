"""What the sync and asyncio Redis backends share: keys, Lua scripts, record encoding, URL options.

Rules of this module: no I/O. Everything the two twins (``redis.py`` on :class:`redis.Redis`,
``redis_async.py`` on :mod:`redis.asyncio`) do is described here as an :class:`Op` (one round trip:
a Lua script by EVALSHA, or one plain command, and how to read the reply) or a :class:`Batch` (plain
commands pipelined in one round trip: the lock's SET NX PX and the record's GET). A twin's method
builds an op and runs it; the only difference between the twins is ``await``.

Layout, for a session ``sid`` under key prefix ``p``::

    p{sid}        the record: one string, encode_record(record) (a JSON line of metadata, then the data)
    p{sid}:lock   the lock: a string holding the owner's token, with a PX expiry
    puser:{uid}   the per-user index: a set of the sids of user ``uid`` (``str(user_id)``), no TTL

The ``{sid}`` hash tag puts the two keys of one session in one Cluster slot, so every script may use
both, and a pipeline of both goes to one node. The record is one string, so a save is one SET and a
load one GET of one bulk reply. A touch rewrites the record's metadata line in place, server-side
(last access, expiry, last IP; the other elements keep their exact text) and refreshes its TTL: the
data never crosses the wire, and no second key is read or written by a lock, a load or a save.
(Versions before kept the last touch in a ``p{sid}:a`` key; one left over is ignored and expires
with its TTL.)

The per-user index has its own hash tag, so in Cluster it lives in another slot than the session: it
is updated by a separate command, never inside a session's script. ``create`` of a session with a
user adds the sid (pipelined with the SET: still one round trip on a single server); ``save`` adds
and removes only when its script sees that the user changed (it compares the user of the record it
overwrites, server-side), so an ordinary save stays one round trip; ``delete`` removes the sid, with
a second round trip only when the deleted session had a user. Index sets get no TTL: a touch
extends a session's TTL without a round trip to the index, so no TTL set at create could be known
to outlive the session. Members whose session Redis dropped on its own (TTL, eviction) are skipped
and removed by ``user_sessions`` and by ``gc``, which also drops emptied sets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar

from redis.exceptions import AuthenticationError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core.errors import BackendUnavailable, ConfigError
from ._url import BackendURL, boolean, positive_float, positive_int
from .base import Record, Touch, decode_record

__all__ = [
    "BATCH",
    "ERRORS",
    "FORKS",
    "FollowUps",
    "SCRIPTS",
    "SHAS",
    "Batch",
    "ClientConfig",
    "Keys",
    "Op",
    "RedisBase",
    "client_config",
    "create",
    "delete",
    "exists",
    "extend",
    "figures",
    "gc_one",
    "head_user",
    "index_add",
    "index_remove",
    "load",
    "pick_user_sessions",
    "ping",
    "lock_and_load",
    "members",
    "decode",
    "encode",
    "ms",
    "reindex",
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

#: Keys per SCAN call and per pipeline of the administration side.
BATCH = 500

# -- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one key prefix."""

    prefix: str

    def data(self, sid: str) -> str:
        """The string holding the record of ``sid``."""
        return f"{self.prefix}{{{sid}}}"

    def lock(self, sid: str) -> str:
        """The lock of ``sid``; same hash tag as its data, so same Cluster slot."""
        return f"{self.prefix}{{{sid}}}:lock"

    def user(self, user_id: str | int) -> str:
        """The set of the sids of ``user_id``; its own hash tag, so in Cluster another slot than the sessions."""
        return f"{self.prefix}user:{{{user_id}}}"

    def _escaped(self) -> str:
        return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix)

    def scan_pattern(self) -> str:
        """A SCAN MATCH pattern for every data key under this prefix (lock keys do not end in ``}``)."""
        return self._escaped() + "{*}"

    def user_scan_pattern(self) -> str:
        """A SCAN MATCH pattern for every per-user index set under this prefix."""
        return self._escaped() + "user:{*}"

    def sid_of(self, key: bytes | str) -> str:
        """The session id in a data key."""
        text = key.decode("utf-8") if isinstance(key, bytes) else key
        return text[len(self.prefix) + 1 : -1]


# -- Lua -----------------------------------------------------------------------------------------
#
# The scripts read a record's metadata line as text, never through cjson: they split the JSON array
# that Python's json.dumps wrote (no spaces, so only a string element can hold a ',' or ']') into its
# elements' texts and compare or replace those, so every element they do not replace keeps its exact
# text (cjson would round floats to 14 digits and big integers to doubles).
#
# fields(value, n): the texts of the first n elements of the JSON array at the start of value, and the
# position of the ',' or ']' after the nth one; nil when value does not start with such an array.
_FIELDS_FN = r"""
local function fields(value, n)
  if string.byte(value, 1) ~= 91 then return nil end
  local out, i, j = {}, 2, 0
  for k = 1, n do
    if string.byte(value, i) == 34 then
      j = i + 1
      while true do
        local q = string.find(value, '["\\]', j)
        if not q then return nil end
        if string.byte(value, q) == 34 then j = q + 1; break end
        j = q + 2
      end
    else
      j = string.find(value, '[,%]]', i)
      if not j then return nil end
    end
    local c = string.byte(value, j)
    if c ~= 44 and (c ~= 93 or k < n) then return nil end
    out[k] = string.sub(value, i, j - 1)
    i = j + 1
  end
  return out, j
end
"""

# touch(at): apply the touch in ARGV[at..] to the session whose record is KEYS[1]:
#   ARGV[at]      "<last_access> <expires|null> <TTL in ms|->" (- = no TTL: PERSIST)
#   ARGV[at+1]    the last IP; absent = unknown, keep the record's
# When the touch is newer than the record's last access, rewrites the record with last_access, expires
# and (if given) last_ip replaced in its metadata line; else only refreshes the TTL (a newer write won).
# Returns 1 when the session exists (touched), 0 when it does not (nothing created).
_TOUCH_FN = (
    _FIELDS_FN
    + r"""
local function touch(at)
  local value = redis.call('GET', KEYS[1])
  if not value then return 0 end
  local at_, ex, ttl = string.match(ARGV[at], '^(%S+) (%S+) (%S+)$')
  local f, j = fields(value, 9)
  local old = f and tonumber(f[2])
  if old and old < tonumber(at_) then
    f[2] = at_
    f[9] = ex
    if ARGV[at + 1] then f[5] = cjson.encode(ARGV[at + 1]) end
    value = '[' .. table.concat(f, ',') .. string.sub(value, j)
    if ttl == '-' then
      redis.call('SET', KEYS[1], value)
    else
      redis.call('SET', KEYS[1], value, 'PX', ttl)
    end
  elseif ttl == '-' then
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  return 1
end
"""
)

# head(value): the JSON metadata line of a stored record (before its first newline), or '' if none.
_HEAD_FN = r"""
local function head(value)
  local nl = string.find(value, '\n', 1, true)
  if not nl then return '' end
  return string.sub(value, 1, nl - 1)
end
"""

# KEYS[1] data, KEYS[2] lock; ARGV[1] the TTL in ms ('-': none), ARGV[2] the token, ARGV[3] the record's
# user id as its metadata line has it (JSON text), ARGV[4] the record.
# Returns 0 (and writes nothing) when another token holds the lock. Else deletes the lock and returns 0
# when the session was deleted meanwhile (SET XX: an ended session is never resurrected), 1 when the
# record was written over one of the same user, and the overwritten record's metadata line when the
# user changed (the caller then moves the sid between index sets: another slot in Cluster).
# The user id is the metadata line's third element, after two numbers that hold no comma: two plain
# finds locate it, where parsing the JSON in Lua cost this hot script half its time.
_SAVE = (
    _HEAD_FN
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
local old
if ARGV[1] == '-' then
  old = redis.call('SET', KEYS[1], ARGV[4], 'XX', 'GET')
else
  old = redis.call('SET', KEYS[1], ARGV[4], 'XX', 'GET', 'PX', ARGV[1])
end
redis.call('DEL', KEYS[2])
if not old then return 0 end
local a = string.find(old, ',', 1, true)
local b = a and string.find(old, ',', a + 1, true)
if b then
  local e = b + #ARGV[3]
  if string.sub(old, b + 1, e) == ARGV[3] and string.byte(old, e + 1) == 44 then return 1 end
end
return head(old)
"""
)

# KEYS[1] data. Deletes it; returns the deleted record's metadata line (for its user), or nil when there
# was no record.
_DELETE = (
    _HEAD_FN
    + """
local old = redis.call('GETDEL', KEYS[1])
if not old then return false end
return head(old)
"""
)

# KEYS[1] data; ARGV[1] now. Deletes the session when its expiry (element 9 of the metadata line) is
# before now; returns its metadata line then, else nil. The check and the delete are atomic, so a
# session touched or saved since it was listed is kept.
_GC = (
    _FIELDS_FN
    + _HEAD_FN
    + """
local data = redis.call('GET', KEYS[1])
if not data then return false end
local f = fields(data, 9)
if not f or not tonumber(f[2]) then return false end
local expires = tonumber(f[9])
if not expires or expires >= tonumber(ARGV[1]) then return false end
redis.call('DEL', KEYS[1])
return head(data)
"""
)

# KEYS[1] data, KEYS[2] lock; ARGV[1] token, ARGV[2..] an optional touch (see touch()).
# Returns 1 when the token held the lock (deleted; the touch applied if the data still exists), else 0.
_RELEASE = (
    _TOUCH_FN
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if #ARGV > 1 then touch(2) end
return 1
"""
)

# KEYS[1] data; ARGV[1..] a touch (see touch()).
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
    "save": _SAVE,
    "release": _RELEASE,
    "touch": _TOUCH,
    "extend": _EXTEND,
    "delete": _DELETE,
    "gc": _GC,
}

#: Script name -> SHA1 of its source, as EVALSHA wants it (computed once, here).
SHAS: dict[str, str] = {name: hashlib.sha1(src.encode("utf-8")).hexdigest() for name, src in SCRIPTS.items()}

# -- records and touches -------------------------------------------------------------------------

Arg = str | bytes | int


def pack(commands: tuple[tuple[Arg, ...], ...]) -> bytes:
    """Encode commands in RESP for the backends' own connections: their arguments are bytes, str or int.

    redis-py's packer takes any type, and walking its chain of type checks per argument was the
    largest single cost of a request on the client (about 9% of its instructions).
    """
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            a = arg if isinstance(arg, bytes) else arg.encode() if isinstance(arg, str) else b"%d" % arg
            out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds * 1000))


def touch_args(t: Touch) -> list[Arg]:
    """The arguments of the Lua ``touch()``: "<last_access> <expires|null> <ttl ms|->", and the IP when known."""
    expires = "null" if t.expires is None else repr(float(t.expires))
    head = f"{float(t.last_access)!r} {expires} {'-' if t.ttl is None else ms(t.ttl)}"
    return [head] if t.last_ip is None else [head, t.last_ip]


#: What encode_record's json.dumps(..., separators=(",", ":")) does, without building an encoder per call.
_DUMPS = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def encode(record: Record) -> bytes:
    """``encode_record(record)``, byte for byte (a test holds them equal), at half its cost.

    The metadata line is the record's fields after ``data``, in order, as ``encode_record`` lists them.
    """
    return b"%b\n%b" % (_DUMPS(record[1:]).encode(), record.data)


def decode(data: bytes | None) -> Record | None:
    """The record in a data value; ``None`` if missing or foreign."""
    if data is None:
        return None
    try:
        return decode_record(data)
    except (ValueError, IndexError, TypeError):
        return None


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


class Batch(NamedTuple, Generic[T]):
    """Plain commands sent together in one round trip (a pipeline, no transaction) and their reader."""

    #: The commands, each as ``execute_command`` takes it.
    commands: tuple[tuple[Arg, ...], ...]
    #: Reads the list of replies, one per command.
    parse: Callable[[list[Any]], T]


def _locked(replies: list[Any]) -> tuple[bool, Record | None]:
    if not replies[0]:  # SET NX answered nil: another token holds the lock
        return False, None
    return True, decode(replies[1])


def _nothing(reply: Any) -> None:
    return None


# The arguments of the hot ops go as bytes where that is free: redis-py's encoder passes bytes
# through and walks a chain of type checks for anything else, per argument, per call.
_SAVE_SHA = SHAS["save"].encode()
_RELEASE_SHA = SHAS["release"].encode()
_TOUCH_SHA = SHAS["touch"].encode()
_EXTEND_SHA = SHAS["extend"].encode()
_DELETE_SHA = SHAS["delete"].encode()
_GC_SHA = SHAS["gc"].encode()
_ONE = b"1"
_TWO = b"2"
_NULL = b"null"
_NO_TTL = b"-"


def lock_and_load(keys: Keys, sid: str, token: str, expire: float) -> Batch[tuple[bool, Record | None]]:
    """SET lock NX PX and GET the record, pipelined; the record counts only when the lock was taken.

    Two plain commands in one round trip, not a script: Redis runs them in order on one connection,
    and a script's call costs the server more than both commands together.
    """
    k = f"{keys.prefix}{{{sid}}}".encode()
    return Batch((("SET", k + b":lock", token.encode(), b"NX", b"PX", ms(expire)), ("GET", k)), _locked)


def ping() -> Op[bool]:
    """PING: is the server there."""
    return Op(("PING",), None, _flag)


def load(keys: Keys, sid: str) -> Op[Record | None]:
    """GET the record."""
    return Op(("GET", f"{keys.prefix}{{{sid}}}"), None, decode)


def create(keys: Keys, sid: str, record: Record, ttl: float | None) -> Op[bool]:
    """SET the record NX (PX ttl): stored only if the key is unused."""
    k = f"{keys.prefix}{{{sid}}}"
    if ttl is None:
        return Op(("SET", k, encode(record), "NX"), None, _flag)
    return Op(("SET", k, encode(record), "NX", "PX", ms(ttl)), None, _flag)


#: What a write leaves to do in the per-user index (another Cluster slot): ops to run after it, often none.
FollowUps = tuple[Op[Any], ...]
_NONE: FollowUps = ()


def save(keys: Keys, sid: str, record: Record, token: str, ttl: float | None) -> Op[tuple[bool, FollowUps]]:
    """If the token holds the lock: write the record over an existing one and delete the lock.

    Reads as ``(saved, follow_ups)``: the index updates to run when the script saw the user change.
    """
    k = f"{keys.prefix}{{{sid}}}".encode()

    def parse(reply: Any) -> tuple[bool, FollowUps]:
        if type(reply) is int:
            return reply == 1, _NONE
        return True, reindex(keys, sid, head_user(reply), record.user_id)

    user = _NULL if record.user_id is None else _DUMPS(record.user_id).encode()
    px = _NO_TTL if ttl is None else b"%d" % ms(ttl)
    command = ("EVALSHA", _SAVE_SHA, _TWO, k, k + b":lock", px, token.encode(), user, encode(record))
    return Op(command, _SAVE, parse)


def head_user(head: bytes | str | None) -> str | int | None:
    """The user id in a record's metadata line, or ``None`` (anonymous, missing or foreign)."""
    if not head:
        return None
    try:
        user = json.loads(head)[2]
    except (ValueError, IndexError, TypeError, KeyError):
        return None
    return user if isinstance(user, (str, int)) and not isinstance(user, bool) else None


def reindex(keys: Keys, sid: str, old: str | int | None, new: str | int | None) -> FollowUps:
    """The index ops that move ``sid`` from ``old``'s set to ``new``'s (none when both name one set)."""
    if (None if old is None else str(old)) == (None if new is None else str(new)):
        return _NONE
    ops: list[Op[Any]] = []
    if old is not None:
        ops.append(index_remove(keys.user(old), [sid]))
    if new is not None:
        ops.append(index_add(keys, sid, new))
    return tuple(ops)


def index_add(keys: Keys, sid: str, user_id: str | int) -> Op[Any]:
    """SADD the sid to its user's index set."""
    return Op(("SADD", keys.user(user_id), sid), None, _nothing)


def index_remove(index_key: str, sids: Sequence[str]) -> Op[Any]:
    """SREM sids from an index set (Redis drops a set that becomes empty)."""
    return Op(("SREM", index_key, *sids), None, _nothing)


def _members(reply: Any) -> list[str]:
    return sorted(m.decode("utf-8") if isinstance(m, bytes) else str(m) for m in reply or ())


def members(index_key: str) -> Op[list[str]]:
    """SMEMBERS of an index set, as sorted sids."""
    return Op(("SMEMBERS", index_key), None, _members)


def exists(keys: Keys, sid: str) -> Op[bool]:
    """EXISTS of a session's data key."""
    return Op(("EXISTS", keys.data(sid)), None, _flag)


def pick_user_sessions(
    user_id: str | int, sids: Sequence[str], records: Sequence[Record | None]
) -> tuple[list[tuple[str, Record]], list[str]]:
    """Split an index set's sessions into the live ones of ``user_id`` and stale sids (gone or rebound)."""
    wanted = str(user_id)
    found: list[tuple[str, Record]] = []
    stale: list[str] = []
    for sid, record in zip(sids, records, strict=True):
        if record is None or record.user_id is None or str(record.user_id) != wanted:
            stale.append(sid)
        else:
            found.append((sid, record))
    return found, stale


def gc_one(keys: Keys, sid: str, now: float) -> Op[FollowUps | None]:
    """Delete the session if its expiry is before ``now``; reads as ``None`` (kept) or its index follow-ups."""
    k = f"{keys.prefix}{{{sid}}}"

    def parse(reply: Any) -> FollowUps | None:
        if reply is None:
            return None
        return reindex(keys, sid, head_user(reply), None)

    return Op(("EVALSHA", _GC_SHA, _ONE, k, repr(float(now))), _GC, parse)


def release(keys: Keys, sid: str, token: str, touch: Touch | None) -> Op[bool]:
    """Delete the lock if the token holds it, applying the touch too."""
    k = f"{keys.prefix}{{{sid}}}".encode()
    command: tuple[Arg, ...] = ("EVALSHA", _RELEASE_SHA, _TWO, k, k + b":lock", token)
    if touch is not None:
        command += tuple(touch_args(touch))
    return Op(command, _RELEASE, _flag)


def touch(keys: Keys, sid: str, t: Touch) -> Op[None]:
    """Rewrite the touched metadata of an existing session and refresh its TTL."""
    return Op(("EVALSHA", _TOUCH_SHA, _ONE, keys.data(sid), *touch_args(t)), _TOUCH, _nothing)


def extend(keys: Keys, sid: str, token: str, expire: float) -> Op[bool]:
    """PEXPIRE the lock if the token holds it."""
    return Op(("EVALSHA", _EXTEND_SHA, _ONE, keys.lock(sid), token, ms(expire)), _EXTEND, _flag)


def delete(keys: Keys, sid: str) -> Op[FollowUps]:
    """DEL the data (not the lock); reads as the index follow-ups (the sid out of its user's set)."""
    k = f"{keys.prefix}{{{sid}}}"

    def parse(reply: Any) -> FollowUps:
        if reply is None:
            return _NONE
        return reindex(keys, sid, head_user(reply), None)

    return Op(("EVALSHA", _DELETE_SHA, _ONE, k), _DELETE, parse)


# -- figures -------------------------------------------------------------------------------------

_POLICY_KEY = "maxmemory_policy"


def _nodes(reply: Any) -> list[Mapping[str, Any]]:
    """The INFO sections of each node: a Cluster answers with a dict per node."""
    if not isinstance(reply, Mapping):
        return []
    if any(isinstance(v, Mapping) for v in reply.values()):
        return [v for v in reply.values() if isinstance(v, Mapping)]
    return [reply]


def figures(stats: Any, memory: Any) -> dict[str, float]:
    """``evicted_keys``, ``expired_keys``, ``used_memory`` (summed over nodes) and ``maxmemory_policy_evicts``."""
    out: dict[str, float] = {"evicted_keys": 0.0, "expired_keys": 0.0, "used_memory": 0.0}
    for node in _nodes(stats):
        for name in ("evicted_keys", "expired_keys"):
            out[name] += float(node.get(name, 0) or 0)
    evicts = 0.0
    for node in _nodes(memory):
        out["used_memory"] += float(node.get("used_memory", 0) or 0)
        policy = node.get(_POLICY_KEY)
        if isinstance(policy, bytes):
            policy = policy.decode()
        if policy is not None and str(policy) != "noeviction":
            evicts = 1.0  # allkeys-*: any key; volatile-*: keys with a TTL, as sessions usually have
    out["maxmemory_policy_evicts"] = evicts
    return out


# -- the state both twins keep -------------------------------------------------------------------


class ForkAware(Protocol):
    """Holds connections that a forked child must drop (their sockets belong to the parent)."""

    def after_fork(self) -> None:
        """Forget the connections without closing them."""


#: Every live holder of connections of the twins' own; a forked child tells each to forget them.
FORKS: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def _after_fork() -> None:
    for holder in list(FORKS):
        holder.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


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
        if _auth_failed(exc):
            cause = f"authentication failed ({cause}); the URL carries the password: redis://:PASSWORD@host:6379/0"
        return BackendUnavailable(f"redis backend {self.name} is unavailable: {cause}", backend=self.name)

    def timed_out(self, seconds: float | None) -> BackendUnavailable:
        """The :class:`BackendUnavailable` for a round trip that outlived the socket timeout."""
        return BackendUnavailable(
            f"redis backend {self.name} is unavailable: no answer within {seconds:g} s (socket_timeout)",
            backend=self.name,
        )

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


def _auth_failed(exc: BaseException | None) -> bool:
    """Whether an error is, or was raised from, a refused authentication (asyncio redis-py wraps it)."""
    for _ in range(5):
        if exc is None:
            return False
        if isinstance(exc, AuthenticationError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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

    @property
    def own_connections(self) -> bool:
        """Whether the primitives run on connections of the twin's own rather than redis-py's pool.

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
