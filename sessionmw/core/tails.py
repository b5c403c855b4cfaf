"""Which changed keys a big session writes as a tail, or ``None`` to write it whole.

Rules of this module: no I/O, no clock reads. :func:`changed_tail` decides, for a changed session
that keeps its id, whether its write is a tail (:mod:`.patches`: the changed keys appended to the
stored data as a frame) and builds that frame; :class:`~.closing.Closing` sends it with ``SaveTail``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import date, datetime
from typing import Any

from ..backends.base import Record
from .envelope import AtRest
from .patches import JSON_SERIALIZERS, MIN_BASE, compacts, frame, measure, merge
from .serializers import Serializer

__all__ = ["changed_tail"]

#: Value types that cannot change in place: a key holding one changed only if it was set.
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes, datetime, date, uuid.UUID})


def changed_tail(
    data: dict[str, Any],
    changed: Collection[str],
    user_id: str | int | None,
    rec: Record,
    key: str,
    *,
    serializer: Serializer,
    at_rest: AtRest,
    max_session_bytes: int | None,
) -> bytes | None:
    """Return the frame holding what changed in ``data`` since ``rec`` was loaded, or ``None`` to write it whole.

    :param data: the session's data now.
    :param changed: the keys set or removed in this request.
    :param user_id: the session's user now.
    :param rec: the record loaded with the lock, stored under ``key``.

    Whole, not a tail: for stored data under :data:`.patches.MIN_BASE` bytes, with encryption at
    rest (it seals the whole data) or another serializer than the built-in JSON ones, when the user
    changed, when the stored data cannot be measured, when the tail would call for compaction
    (:func:`.patches.compacts`), and within a quarter of
    ``max_session_bytes`` (the whole write checks the limit and warns). A changed key is one
    set or removed in this request, or one whose value is mutable and serializes otherwise
    than it did when loaded (an in-place change of a nested value).
    """
    if len(rec.data) < MIN_BASE:
        return None  # a small session: written whole, at no extra cost
    if at_rest.cipher is not None or type(serializer) not in JSON_SERIALIZERS or user_id != rec.user_id:
        return None
    payload = at_rest.open(rec, key).payload
    if payload is None:
        return None
    try:
        stored = measure(payload)
    except ValueError:
        return None
    keys: list[str] = []
    suspects: list[str] = []
    for k, v in data.items():
        if type(k) is not str:
            return None  # its name in the changed set is str(k): write it whole
        if k in changed:
            keys.append(k)
        elif type(v) not in _IMMUTABLE:
            suspects.append(k)
    if suspects:
        try:
            loaded = merge(payload, serializer.loads)
        except Exception:
            return None
        dumps = serializer.dumps
        for k in suspects:
            if k not in loaded or dumps({k: data[k]}) != dumps({k: loaded[k]}):
                keys.append(k)
    removed = [k for k in changed if k not in data]
    tail = frame(removed, serializer.dumps({k: data[k] for k in keys}))
    if compacts(stored, len(tail)):
        return None
    limit = max_session_bytes
    if limit is not None and len(rec.data) + len(tail) > limit * 0.75:
        return None
    return tail
