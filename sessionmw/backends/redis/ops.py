"""The Redis backend's commands as values: what to send in one round trip, and how to read the reply.

Rules of this module: no I/O. Each primitive of the backend is an :class:`Op` (one round trip: a Lua
script by EVALSHA, or one plain command, and its reader) or a :class:`Batch` (plain commands pipelined
in one round trip: the lock's SET NX PX and the record's GET). The backend (``_async.py``, and the
``_sync.py`` generated from it) builds one and runs it; key names come from :class:`.keys.Keys`,
scripts from :mod:`.scripts`.

The per-user index lives in another Cluster slot than its sessions, so a write that changes a
session's user reads as :data:`FollowUps`: the index ops to run after it, most often none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from ..base import Record, Touch
from .append import SAVE_TAIL, SAVE_TAIL_SHA
from .keys import LOCK_SUFFIX_BYTES, WAITERS_SUFFIX_BYTES, WAKEUPS_SUFFIX_BYTES, Keys
from .records import DUMPS, decode, encode, head_user, touch_args
from .scripts import (
    DELETE,
    DELETE_SHA,
    EXTEND,
    EXTEND_SHA,
    GC,
    GC_SHA,
    LEAVE,
    PASS_ON,
    RELEASE,
    RELEASE_SHA,
    SAVE,
    SAVE_SHA,
    TOUCH,
    TOUCH_SHA,
    WAIT,
    WAKEUPS_TTL_MS,
)
from .wire import Arg, flag, ms, nothing, strings

__all__ = [
    "BATCH",
    "Batch",
    "FollowUps",
    "Op",
    "create",
    "create_again",
    "delete",
    "exists",
    "extend",
    "gc_one",
    "index_add",
    "index_remove",
    "load",
    "lock_and_load",
    "leave",
    "lock_and_load_again",
    "members",
    "pass_on",
    "pick_user_sessions",
    "ping",
    "reindex",
    "release",
    "save",
    "save_tail",
    "touch",
    "wait_released",
]

T = TypeVar("T")

#: Keys per SCAN call and per pipeline of the administration side.
BATCH = 500


class Op(NamedTuple, Generic[T]):
    """One round trip: a command (for a script: ``EVALSHA sha numkeys keys... args...``) and its reader.

    A named tuple: one is built per call, and it costs a fraction of a (frozen) dataclass.
    """

    #: The command and its arguments, as ``execute_command`` takes them.
    command: tuple[Arg, ...]
    #: The Lua source behind an EVALSHA, loaded when the server answers NOSCRIPT; ``None`` for a plain command.
    script: str | None
    parse: Callable[[Any], T]


class Batch(NamedTuple, Generic[T]):
    """Plain commands sent together in one round trip (a pipeline, no transaction) and their reader."""

    #: The commands, each as ``execute_command`` takes it.
    commands: tuple[tuple[Arg, ...], ...]
    #: Reads the list of replies, one per command.
    parse: Callable[[list[Any]], T]


#: What a write leaves to do in the per-user index (another Cluster slot): ops to run after it, often none.
FollowUps = tuple[Op[Any], ...]
_NONE: FollowUps = ()

# The arguments of the hot ops go as bytes where that is free: the encoders pass bytes through. Their
# lock key is the data key's bytes plus LOCK_SUFFIX_BYTES: keys.lock(sid), without a second call.
_ONE = b"1"
_TWO = b"2"
_THREE = b"3"
_FOUR = b"4"
_NULL = b"null"
_NO_TTL = b"-"


def _locked(replies: list[Any]) -> tuple[bool, Record | None]:
    if not replies[0]:  # SET NX answered nil: another token holds the lock
        return False, None
    return True, decode(replies[1])


def lock_and_load(keys: Keys, sid: str, token: str, expire: float) -> Batch[tuple[bool, Record | None]]:
    """SET lock NX PX and GET the record, pipelined; the record counts only when the lock was taken.

    Two plain commands in one round trip, not a script: Redis runs them in order on one connection,
    and a script's call costs the server more than both commands together.
    """
    data = keys.data(sid).encode()
    lock = data + LOCK_SUFFIX_BYTES
    return Batch((("SET", lock, token.encode(), b"NX", b"PX", ms(expire)), ("GET", data)), _locked)


def lock_and_load_again(keys: Keys, sid: str, token: str, expire: float) -> Batch[tuple[bool, Record | None]]:
    """:func:`lock_and_load` sent again after a lost reply: the lock counts as taken if it holds ``token``.

    The first SET NX may have run (on the old master, and been replicated), so the lock may already
    be this request's own: plain SET NX would read that as another holder's and wait for it.
    """
    data = keys.data(sid).encode()
    lock = data + LOCK_SUFFIX_BYTES
    mine = token.encode()

    def parse(replies: list[Any]) -> tuple[bool, Record | None]:
        if replies[1] != mine:
            return False, None
        return True, decode(replies[2])

    return Batch((("SET", lock, mine, b"NX", b"PX", ms(expire)), ("GET", lock), ("GET", data)), parse)


def ping() -> Op[bool]:
    """PING: is the server there."""
    return Op(("PING",), None, flag)


def load(keys: Keys, sid: str) -> Op[Record | None]:
    """GET the record."""
    return Op(("GET", keys.data(sid)), None, decode)


def create(keys: Keys, sid: str, record: Record, ttl: float | None) -> Op[bool]:
    """SET the record NX (PX ttl): stored only if the key is unused."""
    if ttl is None:
        return Op(("SET", keys.data(sid), encode(record), "NX"), None, flag)
    return Op(("SET", keys.data(sid), encode(record), "NX", "PX", ms(ttl)), None, flag)


def create_again(keys: Keys, sid: str, record: Record, ttl: float | None) -> Batch[bool]:
    """:func:`create` sent again after a lost reply: stored if the key is unused, or holds this very record.

    The first SET NX may have run; plain SET NX would then call the id taken, and the caller would
    store the session again under another id, leaving this one behind.
    """
    data = keys.data(sid)
    value = encode(record)
    set_nx: tuple[Arg, ...] = ("SET", data, value, "NX") if ttl is None else ("SET", data, value, "NX", "PX", ms(ttl))

    def parse(replies: list[Any]) -> bool:
        return bool(replies[0]) or replies[1] == value

    return Batch((set_nx, ("GET", data)), parse)


def save(keys: Keys, sid: str, record: Record, token: str, ttl: float | None) -> Op[tuple[bool, FollowUps]]:
    """If the token holds the lock: write the record over an existing one and delete the lock.

    Reads as ``(saved, follow_ups)``: the index updates to run when the script saw the user change.
    Safe to send again after a lost reply: the script answers 2 when it finds its own record written,
    and the follow-up is then the SADD of the record's user (idempotent; a stale member in a former
    user's set is dropped by ``user_sessions`` and ``gc``).
    """
    data = keys.data(sid).encode()
    lock = data + LOCK_SUFFIX_BYTES

    def parse(reply: Any) -> tuple[bool, FollowUps]:
        if type(reply) is int:
            if reply == 2:
                return True, _NONE if record.user_id is None else (index_add(keys, sid, record.user_id),)
            return reply == 1, _NONE
        return True, reindex(keys, sid, head_user(reply), record.user_id)

    user = _NULL if record.user_id is None else DUMPS(record.user_id).encode()
    px = _NO_TTL if ttl is None else b"%d" % ms(ttl)
    waiters, wakeups = data + WAITERS_SUFFIX_BYTES, data + WAKEUPS_SUFFIX_BYTES
    command = ("EVALSHA", SAVE_SHA, _FOUR, data, lock, waiters, wakeups, px, token.encode(), user, encode(record))
    return Op(command, SAVE, parse)


def save_tail(keys: Keys, sid: str, head: Record, tail: bytes, token: str, ttl: float | None) -> Op[bool]:
    """If the token holds the lock: replace the metadata line by ``head``'s, append ``tail``, delete the lock.

    Reads as whether it was written. Safe to send again after a lost reply: the script answers 2 when
    it finds this very write done (append.py).
    """
    data = keys.data(sid).encode()
    lock = data + LOCK_SUFFIX_BYTES
    waiters, wakeups = data + WAITERS_SUFFIX_BYTES, data + WAKEUPS_SUFFIX_BYTES
    px = _NO_TTL if ttl is None else b"%d" % ms(ttl)
    command = ("EVALSHA", SAVE_TAIL_SHA, _FOUR, data, lock, waiters, wakeups, px, token.encode(), encode(head), tail)
    return Op(command, SAVE_TAIL, flag)


def release(keys: Keys, sid: str, token: str, touch: Touch | None) -> Op[bool]:
    """Delete the lock if the token holds it (waking one waiter), applying the touch too."""
    data = keys.data(sid).encode()
    lock = data + LOCK_SUFFIX_BYTES
    waiters, wakeups = data + WAITERS_SUFFIX_BYTES, data + WAKEUPS_SUFFIX_BYTES
    command: tuple[Arg, ...] = ("EVALSHA", RELEASE_SHA, _FOUR, data, lock, waiters, wakeups, token)
    if touch is not None:
        command += tuple(touch_args(touch))
    return Op(command, RELEASE, flag)


def wait_released(keys: Keys, sid: str, timeout: float) -> Batch[bool]:
    """Count this waiter while the lock is held (:data:`~.scripts.WAIT`), then BLPOP a wake-up for ``timeout`` s.

    One round trip; reads as whether a wake-up came (``False``: the BLPOP timed out, and the waiter
    must :func:`leave`). ``timeout`` is rounded to whole milliseconds, at least one: BLPOP's 0 blocks
    for ever.
    """
    data = keys.data(sid).encode()
    wakeups = data + WAKEUPS_SUFFIX_BYTES
    ttl = b"%d" % (WAKEUPS_TTL_MS + ms(timeout))
    count = ("EVAL", WAIT, _THREE, data + LOCK_SUFFIX_BYTES, data + WAITERS_SUFFIX_BYTES, wakeups, ttl)
    block = ("BLPOP", wakeups, b"%.3f" % (ms(timeout) / 1000))

    def parse(replies: list[Any]) -> bool:
        return replies[1] is not None

    return Batch((count, block), parse)


def leave(keys: Keys, sid: str) -> Op[bool]:
    """After a BLPOP that timed out: take a wake-up pushed since (reads ``True``), or uncount this waiter."""
    data = keys.data(sid).encode()
    return Op(("EVAL", LEAVE, _TWO, data + WAITERS_SUFFIX_BYTES, data + WAKEUPS_SUFFIX_BYTES), None, flag)


def pass_on(keys: Keys, sid: str) -> Op[None]:
    """For a waiter cancelled in its BLPOP: wake the next waiter if the lock is free (it may have taken the wake-up)."""
    data = keys.data(sid).encode()
    lock, waiters, wakeups = data + LOCK_SUFFIX_BYTES, data + WAITERS_SUFFIX_BYTES, data + WAKEUPS_SUFFIX_BYTES
    return Op(("EVAL", PASS_ON, _THREE, lock, waiters, wakeups), None, nothing)


def touch(keys: Keys, sid: str, t: Touch) -> Op[None]:
    """Rewrite the touched metadata of an existing session and refresh its TTL."""
    return Op(("EVALSHA", TOUCH_SHA, _ONE, keys.data(sid), *touch_args(t)), TOUCH, nothing)


def extend(keys: Keys, sid: str, token: str, expire: float) -> Op[bool]:
    """PEXPIRE the lock if the token holds it."""
    return Op(("EVALSHA", EXTEND_SHA, _ONE, keys.lock(sid), token, ms(expire)), EXTEND, flag)


def delete(keys: Keys, sid: str) -> Op[FollowUps]:
    """DEL the data (not the lock); reads as the index follow-ups (the sid out of its user's set)."""

    def parse(reply: Any) -> FollowUps:
        if reply is None:
            return _NONE
        return reindex(keys, sid, head_user(reply), None)

    return Op(("EVALSHA", DELETE_SHA, _ONE, keys.data(sid)), DELETE, parse)


def gc_one(keys: Keys, sid: str, now: float) -> Op[FollowUps | None]:
    """Delete the session if its expiry is before ``now``; reads as ``None`` (kept) or its index follow-ups."""

    def parse(reply: Any) -> FollowUps | None:
        if reply is None:
            return None
        return reindex(keys, sid, head_user(reply), None)

    return Op(("EVALSHA", GC_SHA, _ONE, keys.data(sid), repr(float(now))), GC, parse)


# -- the per-user index --------------------------------------------------------------------------


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
    return Op(("SADD", keys.user(user_id), sid), None, nothing)


def index_remove(index_key: str, sids: Sequence[str]) -> Op[Any]:
    """SREM sids from an index set (Redis drops a set that becomes empty)."""
    return Op(("SREM", index_key, *sids), None, nothing)


def members(index_key: str) -> Op[list[str]]:
    """SMEMBERS of an index set, as sorted sids."""
    return Op(("SMEMBERS", index_key), None, strings)


def exists(keys: Keys, sid: str) -> Op[bool]:
    """EXISTS of a session's data key."""
    return Op(("EXISTS", keys.data(sid)), None, flag)


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
