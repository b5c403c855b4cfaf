"""The optional primitive of a backend that can append to a stored session instead of rewriting it.

Rules of this module: no I/O. A big session of which a request changed one key is written as a
*tail* (:mod:`sessionmw.core.patches`): a few bytes appended to the stored data, with the record's
metadata line rewritten. A backend without this primitive gets a whole :meth:`~.base.Backend.save`
instead, so offering it is never required.

The backend never looks inside the tail nor the data: it appends bytes. The metadata comes as a
:class:`~.base.Record` whose ``data`` is empty; a backend that stores :func:`~.base.encode_record`'s
blob writes ``encode_record(head)`` (the line and its newline) in place of the stored line.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .base import Record

__all__ = ["AppendsTail", "AsyncAppendsTail"]


@runtime_checkable
class AppendsTail(Protocol):
    """A sync backend that appends a tail to a stored session (:meth:`save_tail`)."""

    def save_tail(self, sid: str, head: Record, tail: bytes, token: str, ttl: float | None) -> bool:
        """Append ``tail`` to ``sid``'s data, store ``head``'s metadata, and release the lock, if ``token`` holds it.

        Fenced as :meth:`~.base.Backend.save`: returns ``False`` and writes nothing when the lock is
        lost or the session was deleted meanwhile (it is never resurrected), and releases the lock
        either way. The metadata and the appended bytes are written together or not at all, as far
        as the store allows (each backend says what a crash in the middle leaves).

        :param head: the new metadata; its ``data`` is empty and is ignored.
        :param ttl: seconds the store keeps the record from now (``None``: no TTL).
        """
        ...


@runtime_checkable
class AsyncAppendsTail(Protocol):
    """The asyncio twin of :class:`AppendsTail`."""

    async def asave_tail(self, sid: str, head: Record, tail: bytes, token: str, ttl: float | None) -> bool:
        """See :meth:`AppendsTail.save_tail`."""
        ...
