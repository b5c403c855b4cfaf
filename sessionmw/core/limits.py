"""The size limit of a stored session (``max_session_bytes``): what is too large, and what to say.

Rules of this module: no I/O. The core checks the size of a session's stored data (serialized, and
encrypted when ``encryption_key`` is set) before any backend call of a write, so a session over the
limit is never sent: no backend truncates it or drops it silently (memcached's item size, MySQL's
``max_allowed_packet``), and the record stored before stays as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import RecordTooLarge
from .serializers import Serializer

__all__ = ["WARN_FRACTION", "largest_keys", "near_limit_message", "too_large", "warn_size"]

#: A session whose size passes this fraction of the limit is logged at WARNING (once, as it passes).
WARN_FRACTION = 0.75
#: How many of the largest keys a message names.
NAMED_KEYS = 3


def largest_keys(data: Mapping[str, Any], serializer: Serializer, count: int = NAMED_KEYS) -> list[tuple[str, int]]:
    """Return the ``count`` keys of ``data`` whose values serialize largest, with their sizes in bytes."""
    sizes = []
    for key, value in data.items():
        try:
            size = len(serializer.dumps({key: value}))
        except Exception:  # pragma: no cover - the whole session serialized, so each key does
            size = 0
        sizes.append((size, key))
    sizes.sort(key=lambda pair: (-pair[0], pair[1]))
    return [(key, size) for size, key in sizes[:count]]


def _named(keys: list[tuple[str, int]]) -> str:
    return ", ".join(f"{key!r} ({size} bytes)" for key, size in keys) or "(none)"


def warn_size(size: int, previous: int, limit: int | None) -> bool:
    """Tell whether a write of ``size`` bytes, over a stored ``previous``, passes the warning line."""
    if limit is None:
        return False
    line = limit * WARN_FRACTION
    return size > line >= previous


def too_large(size: int, limit: int, data: Mapping[str, Any], serializer: Serializer, backend: str) -> RecordTooLarge:
    """Return the error for a session of ``size`` stored bytes over ``limit``, naming its largest keys."""
    keys = largest_keys(data, serializer)
    return RecordTooLarge(
        f"the session is {size} bytes stored, over max_session_bytes={limit}; its largest keys: {_named(keys)}. "
        "Nothing was stored and the session is as it was before this request: keep large values elsewhere "
        "(a database, a file store) and only their keys in the session, or raise max_session_bytes",
        size=size,
        limit=limit,
        backend=backend,
    )


def near_limit_message(size: int, limit: int, data: Mapping[str, Any], serializer: Serializer) -> str:
    """Return the warning for a session past three quarters of ``limit``."""
    return (
        f"a session grew to {size} bytes stored, past {WARN_FRACTION:.0%} of max_session_bytes={limit}; "
        f"its largest keys: {_named(largest_keys(data, serializer))}"
    )
