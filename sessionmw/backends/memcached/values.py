"""What the memcached backend stores in its items: records, lock values, user index lists, expiries.

Rules of this module: no I/O; anything unreadable decodes to "nothing" (no session, an expired lock, an
empty index), never to an error.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..base import Record, decode_record

__all__ = [
    "FETCH_BATCH",
    "MAX_RELATIVE_EXPTIME",
    "TOMBSTONE",
    "TOMBSTONE_VERSION",
    "batches",
    "decode",
    "encode_index",
    "exptime",
    "lock_value",
    "now_ms",
    "parse_index",
    "parse_lock",
    "same_user",
    "version_of",
]

#: Relative expiries above this are read by memcached as absolute Unix times.
MAX_RELATIVE_EXPTIME = 30 * 24 * 3600
#: What an ended session's copies are replaced with, so a server that comes back with an old copy
#: cannot bring the session back (see the package's notes).
TOMBSTONE = b"\x00ended"
#: A tombstone's version: above every write.
TOMBSTONE_VERSION = 2**62
#: Keys per ``get_many`` when fetching many records.
FETCH_BATCH = 100


def exptime(seconds: float | None, now: float | None = None) -> int:
    """Return memcached's ``exptime`` keeping an item at least ``seconds`` (``None``: forever).

    :param seconds: how long to keep the item; ``None`` or less means no expiry.
    :param now: the wall-clock time (``time.time()``) for absolute expiries, for tests.
    """
    if seconds is None:
        return 0
    if seconds <= 0:
        return -1  # already expired: memcached drops the item at once
    # memcached's clock ticks once a second: exptime=n keeps an item between n-1 and n seconds.
    relative = math.ceil(seconds) + 1
    if relative <= MAX_RELATIVE_EXPTIME:
        return relative
    return math.ceil((time.time() if now is None else now) + seconds) + 1


def now_ms() -> int:
    """The wall-clock time in epoch milliseconds, the unit of lock deadlines."""
    return int(time.time() * 1000)


def lock_value(token: str, deadline_ms: int) -> bytes:
    """The value of a lock held by ``token`` until ``deadline_ms``."""
    return f"{token} {deadline_ms}".encode("ascii")


def parse_lock(value: Any) -> tuple[str, int]:
    """Return ``(token, deadline_ms)`` of a lock value; anything unreadable counts as expired."""
    try:
        token, deadline = bytes(value).decode("ascii").split(" ")
        return token, int(deadline)
    except (TypeError, ValueError):
        return "", 0


def version_of(blob: bytes | None) -> tuple[int, Record | None]:
    """Return ``(version, record)`` of a stored copy: -1 for none or an unreadable one, a tombstone above all."""
    if blob is None:
        return -1, None
    if blob == TOMBSTONE:
        return TOMBSTONE_VERSION, None
    record = decode(blob)
    return (-1, None) if record is None else (record.version, record)


def decode(blob: Any) -> Record | None:
    """The record in an item's value, or ``None`` for a missing, unreadable or ended one."""
    if blob is None:
        return None
    try:
        return decode_record(bytes(blob))
    except ValueError:
        return None  # not ours, or damaged: no session


def parse_index(value: Any) -> list[str]:
    """Return the sids in a user index value; anything unreadable (a released marker) is empty."""
    if value is None:
        return []
    try:
        sids = json.loads(bytes(value))
    except (TypeError, ValueError):
        return []
    if not isinstance(sids, list):
        return []
    return [sid for sid in sids if isinstance(sid, str)]


def encode_index(sids: Iterable[str]) -> bytes:
    """The value of a user index listing ``sids``."""
    return json.dumps(list(sids), separators=(",", ":")).encode("ascii")


def same_user(a: str | int | None, b: str | int) -> bool:
    """Whether the user id ``a`` of a record is ``b``, as an index compares them (``str()`` of both)."""
    return a is not None and (a == b or str(a) == str(b))


def batches(items: list[str], size: int = FETCH_BATCH) -> Iterator[list[str]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
