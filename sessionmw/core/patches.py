"""Big sessions written as a tail: the changed keys only, appended to the stored data as a frame.

Rules of this module: no I/O, no clock reads. It reads and writes the layout of a serialized session
that carries frames, and decides when the frames are folded back into a whole document (compaction).

A serialized session (what :class:`~.envelope.AtRest` opens) is a *base* document, as the serializer
wrote it, followed by zero or more *frames*, oldest first::

    <base JSON> [<frame>]...
    frame   = <removed keys, a JSON list> \\n <changed keys, as the serializer writes a dict>
              <length of the two before, 4 bytes big-endian> \\0smwT

A frame is read from the end: the last five bytes are :data:`TAIL_MAGIC`, the four before them the
length of its body. It is unambiguous whatever the base holds: frames are written only with the
built-in JSON serializers, whose output is text with every control character escaped, so no base and
no frame body ends with a NUL byte, and a base never ends with :data:`TAIL_MAGIC`.

Compaction (:func:`compacts`): a tail that would grow past :data:`TAIL_SHARE` of the base, or past
:data:`MAX_FRAMES` frames, is not written; the core writes the whole session instead (base rewritten,
frames gone). So a read parses at most about 1.25 times the session's size, and the bytes written,
amortised, stay a small multiple of the bytes changed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .serializers import JSONSerializer, TaggedJSONSerializer

__all__ = [
    "JSON_SERIALIZERS",
    "MAX_FRAMES",
    "MIN_BASE",
    "TAIL_MAGIC",
    "TAIL_SHARE",
    "Tail",
    "compacts",
    "frame",
    "measure",
    "merge",
    "split",
]

#: What every frame ends with.
TAIL_MAGIC = b"\x00smwT"
_TRAILER = struct.Struct(">I5s")
#: Bytes a frame adds to its body.
TRAILER_SIZE = _TRAILER.size
#: The share of the base the frames may reach before the whole session is written again.
TAIL_SHARE = 0.25
#: The most frames a stored session carries before the whole session is written again.
MAX_FRAMES = 32
#: Bytes of stored data below which a session is written whole: its tail would save little, and
#: working it out costs a second serialization of the changed keys on every write.
MIN_BASE = 4096
#: The serializers whose output frames may follow (text with control characters escaped: no NUL byte).
JSON_SERIALIZERS: frozenset[type] = frozenset({TaggedJSONSerializer, JSONSerializer})
_LIST = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class Tail(NamedTuple):
    """The sizes of a serialized session's parts, read from its end (no parsing)."""

    #: Bytes of the base document.
    base: int
    #: Bytes of all the frames.
    tail: int
    #: How many frames.
    frames: int


def frame(removed: Iterable[str], changed: bytes) -> bytes:
    """Return the frame that removes the keys ``removed`` and sets those of ``changed``.

    :param changed: the changed keys and their values, as the serializer writes a dict.
    """
    body = _LIST.encode(sorted(removed)).encode("utf-8") + b"\n" + changed
    return body + _TRAILER.pack(len(body), TAIL_MAGIC)


def measure(payload: bytes) -> Tail:
    """Return the sizes of the base and the frames of ``payload``; raises ``ValueError`` if cut short."""
    end = len(payload)
    count = 0
    while payload.endswith(TAIL_MAGIC, 0, end):
        if end < TRAILER_SIZE:
            raise ValueError("a session tail is cut short")
        size: int = _TRAILER.unpack_from(payload, end - TRAILER_SIZE)[0]
        end -= TRAILER_SIZE + size
        if end < 0:
            raise ValueError("a session tail is cut short")
        count += 1
    return Tail(end, len(payload) - end, count)


def split(payload: bytes) -> tuple[bytes, list[bytes]]:
    """Return the base document of ``payload`` and its frames' bodies, oldest first.

    Raises ``ValueError`` when a frame is cut short.
    """
    end = len(payload)
    bodies: list[bytes] = []
    while payload.endswith(TAIL_MAGIC, 0, end):
        if end < TRAILER_SIZE:
            raise ValueError("a session tail is cut short")
        size: int = _TRAILER.unpack_from(payload, end - TRAILER_SIZE)[0]
        start = end - TRAILER_SIZE - size
        if start < 0:
            raise ValueError("a session tail is cut short")
        bodies.append(payload[start : end - TRAILER_SIZE])
        end = start
    bodies.reverse()
    return payload[:end] if bodies else payload, bodies


def merge(payload: bytes, loads: Callable[[bytes], dict[str, Any]]) -> dict[str, Any]:
    """Return the session in ``payload``: its base with every frame applied, oldest first.

    :param loads: the serializer's ``loads``. Raises what it raises, or ``ValueError``.
    """
    if not payload.endswith(TAIL_MAGIC):
        return loads(payload)
    base, bodies = split(payload)
    data = loads(base)
    removed: list[bytes] = []
    changed: list[bytes] = []
    for i, body in enumerate(bodies):
        gone, sep, values = body.partition(b"\n")
        if not sep:
            raise ValueError("a session frame has no separator")
        removed.append(gone)
        changed.append(b'"%d":%b' % (i, values))
    # Two parses for all the frames, not two per frame: the removed keys' lists as one JSON array, the
    # changed keys' dicts as the values of one dict (nested, a dict reads as it does at the top).
    gone_lists = json.loads(b"[%b]" % b",".join(removed))
    values_by_frame = loads(b"{%b}" % b",".join(changed))
    for i, gone in enumerate(gone_lists):
        if not isinstance(gone, list):
            raise ValueError("a session frame's removed keys are not a list")
        for key in gone:
            data.pop(key, None)
        values = values_by_frame[str(i)]
        if not isinstance(values, dict):
            raise ValueError("a session frame's changed keys are not a dict")
        data.update(values)
    return data


def compacts(stored: Tail, new_frame: int) -> bool:
    """Tell whether adding a frame of ``new_frame`` bytes to ``stored`` calls for writing it whole."""
    return stored.frames + 1 > MAX_FRAMES or stored.tail + new_frame > stored.base * TAIL_SHARE
