"""What the core stores in a record's ``data``: the session, dated, maybe encrypted, or a forward.

Rules of this module: no I/O, no clock reads. The backends never look inside ``Record.data``; this
module is the one place that writes and reads its layout. Four forms::

    <serialized session>                      bare: no rotation, no encryption (the layout of every
                                              record written before this module; costs nothing)
    \\0smw1 P <since> <serialized session>     dated: when the id was issued (``rotate_every``)
    \\0smw1 E <since> <nonce> <ciphertext>     encrypted (``encryption_key``), see below
    \\0smw1 F <until> <new id, masked>         a forward left by rotation: the old id leads to the new
                                              one until ``until``, and is a stale id after it

``<since>`` and ``<until>`` are big-endian IEEE doubles (wall-clock seconds). No serializer's output
starts with a NUL byte (JSON starts with ``{``), so a bare record is never taken for another form.

**Encrypted** data is AES-256-GCM (:mod:`.crypto`) whose associated data is the record's handle, its
header, and the metadata that says who and how long: ``created``, ``user_id``, ``idle_override``,
``idle_timeout``. A record copied under another handle, or whose user or lifetime was edited in the
store, does not decrypt and is treated as unreadable. What stays readable in the store: the handle,
the times (created, last access, expiry), the user id (the per-user index needs it), the first and
last IP and the user agent (the administration listing shows them), the version, and the data's size.
With ``encryption_key`` set, data that is not encrypted is not trusted either (anyone who can write
to the store could plant it): such a session starts afresh.

**Forwards** hold the new id masked with a pad derived from the *old* raw id (SHAKE-256 under a
label of its own). The store holds only the old id's handle, from which the old id, hence the pad,
cannot be computed: a copy of the store gives no live id, and a request carrying the old cookie
recovers the new id.
"""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, NamedTuple

from ..backends.base import Record
from .crypto import RecordCipher

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["MAGIC", "AtRest", "Forward", "Opened", "is_forward"]

#: What every non-bare data blob starts with.
MAGIC = b"\x00smw1"
_DATED = b"P"
_SEALED = b"E"
_FORWARD = b"F"
_HEAD = struct.Struct(">5scd")
#: Bytes of the header of a non-bare blob: magic, form, a double.
HEADER_SIZE = _HEAD.size
_AAD_LABEL = b"sessionmw.record.v1\x00"
#: created, idle_override, idle_timeout (NaN for none) in an encrypted record's associated data.
_AAD_TIMES = struct.Struct(">d?d")
_NAN = float("nan")
_PAD_LABEL = b"sessionmw.forward.v1\x00"
_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
#: The longest id a forward carries (ids are 43 characters).
_MAX_ID = 128


class Opened(NamedTuple):
    """A stored record's data, opened: the serialized session, or why there is none."""

    #: The serialized session; ``None`` when unreadable (see ``problem``) or a forward.
    payload: bytes | None
    #: When the session's current id was issued; ``None`` when the record does not say (use ``created``).
    since: float | None = None
    #: Why the data cannot be used (a log line's words), or ``None``.
    problem: str | None = None


class Forward(NamedTuple):
    """A forward left by rotation, as read with the old id."""

    #: The id the old one now leads to; ``None`` when the mask does not give a well-formed id.
    new_id: str | None
    #: Until when the old id leads there (wall-clock seconds); after it, the old id is stale.
    until: float


def is_forward(record: Record) -> bool:
    """Tell whether ``record`` is a forward left by rotation rather than a session (for listings)."""
    data = record.data
    return data[:5] == MAGIC and data[5:6] == _FORWARD


def _mask(old_id: str, data: bytes) -> bytes:
    pad = hashlib.shake_256(_PAD_LABEL + old_id.encode("utf-8", "surrogateescape")).digest(len(data))
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(len(data), "big")


class AtRest:
    """The data layout of one configuration: dated when rotating, encrypted under ``encryption_key``.

    :param settings: the validated options.
    """

    __slots__ = ("cipher", "dated")

    def __init__(self, settings: Settings) -> None:
        #: Encrypts and decrypts data; ``None`` without ``encryption_key``.
        self.cipher = RecordCipher(settings.encryption_key) if settings.encryption_key else None
        #: Records carry when their id was issued (``rotate_every`` needs it).
        self.dated = settings.rotate_every is not None

    def seal(self, record: Record, handle: str, since: float) -> Record:
        """Return ``record`` (whose data is the serialized session) as stored under ``handle``.

        :param since: when the session's id was issued (its creation or last rotation).
        """
        cipher = self.cipher
        if cipher is not None:
            head = _HEAD.pack(MAGIC, _SEALED, since)
            return Record(head + cipher.encrypt(record.data, _aad(handle, head, record)), *record[1:])
        if self.dated:
            return Record(_HEAD.pack(MAGIC, _DATED, since) + record.data, *record[1:])
        return record

    def open(self, record: Record, handle: str, *, bare_ok: bool = False) -> Opened:
        """Return the serialized session in ``record``, stored under ``handle``; never raises.

        :param bare_ok: take bare data even with ``encryption_key`` set: a record stored under its raw
            id, before handles (no one can plant one without knowing the id it is stored under).
        """
        data = record.data
        if data[:5] != MAGIC:
            if self.cipher is not None and not bare_ok:
                return Opened(None, None, "is not encrypted, and encryption_key is set")
            return Opened(data)
        if len(data) < HEADER_SIZE:
            return Opened(None, None, "is cut short")
        _, form, since = _HEAD.unpack_from(data)
        if form == _SEALED:
            if self.cipher is None:
                return Opened(None, since, "is encrypted, and no encryption_key is set")
            try:
                aad = _aad(handle, data[:HEADER_SIZE], record)
            except (struct.error, TypeError):  # metadata of the wrong types: edited in the store
                return Opened(None, since, "has metadata of the wrong types")
            plain = self.cipher.decrypt(data[HEADER_SIZE:], aad)
            if plain is None:
                return Opened(None, since, "does not decrypt with any encryption_key (another key, or altered)")
            return Opened(plain, since)
        if form == _DATED:
            if self.cipher is not None:
                return Opened(None, since, "is not encrypted, and encryption_key is set")
            return Opened(data[HEADER_SIZE:], since)
        if form == _FORWARD:
            return Opened(None, None, "is a forward")
        return Opened(None, None, "has an unknown layout")

    def adopt(self, record: Record, handle: str, since: float) -> Record:
        """Return a record stored under a raw id (before handles) as it is stored under ``handle``.

        Its data was never encrypted nor dated: it is sealed now, its id issued at ``since``.
        """
        if record.data[:5] == MAGIC:
            return record
        return self.seal(record, handle, since)

    @staticmethod
    def forward(record: Record, old_id: str, new_id: str, until: float) -> Record:
        """Return the forward to store under ``old_id``'s handle in place of ``record``, until ``until``.

        The forward keeps the record's metadata (so its user index entry and its times stay as they
        were) with ``expires`` at ``until``, so listings and gc drop it when the grace ends.
        """
        body = _mask(old_id, new_id.encode("ascii"))
        return record._replace(data=_HEAD.pack(MAGIC, _FORWARD, until) + body, expires=until)

    @staticmethod
    def follow(record: Record, old_id: str) -> Forward | None:
        """Return the forward in ``record`` read with the id ``old_id``, or ``None`` if it is none."""
        data = record.data
        if data[:5] != MAGIC or data[5:6] != _FORWARD or len(data) < HEADER_SIZE:
            return None
        until: float = _HEAD.unpack_from(data)[2]
        body = data[HEADER_SIZE:]
        if not 0 < len(body) <= _MAX_ID:
            return Forward(None, until)
        new = _mask(old_id, body)
        if not _ID_CHARS.issuperset(new):
            return Forward(None, until)
        return Forward(new.decode("ascii"), until)


def _aad(handle: str, head: bytes, record: Record) -> bytes:
    """The associated data of an encrypted record: what may not change without it failing to decrypt."""
    idle = record.idle_timeout
    times = _AAD_TIMES.pack(record.created, record.idle_override, _NAN if idle is None else idle)
    # repr() tells 1 from "1" (and None from "None").
    return b"%b%b\x00%b%b%b" % (_AAD_LABEL, handle.encode(), head, times, repr(record.user_id).encode())
