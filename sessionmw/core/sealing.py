"""Sealing a record that a close writes: at rest (dated, encrypted), then held to the size limit.

Rules of this module: those of :mod:`sessionmw.core.policy`; its flow yields operations
(:mod:`sessionmw.core.ops`) and does no I/O. :class:`Sealing` is a base of
:class:`~sessionmw.core.closing.Closing` (its method is the flows' own): every whole record written
goes through it before any backend call, so a session over ``max_session_bytes`` raises
:class:`~.errors.RecordTooLarge` with nothing sent (:mod:`.limits`).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from ..backends.base import Record
from .config import Settings
from .envelope import AtRest
from .events import emit
from .limits import near_limit_message, too_large, warn_size
from .ops import Log, Op
from .outcome import RequestFacts
from .serializers import Serializer
from .session import Session

__all__ = ["Sealing"]


class Sealing:
    """Seal the records the close flows write (a base of :class:`~sessionmw.core.closing.Closing`)."""

    settings: Settings
    serializer: Serializer
    at_rest: AtRest
    listening: bool

    def _sealed(
        self, s: Session, data: dict[str, Any], rec: Record, handle: str, since: float, req: RequestFacts
    ) -> Generator[Op, object, Record]:
        """Return ``rec`` as stored under ``handle``, or raise :class:`RecordTooLarge` (before any write).

        Logs a warning when the session passes three quarters of ``max_session_bytes``.
        """
        sealed = self.at_rest.seal(rec, handle, since)
        limit = self.settings.max_session_bytes
        if limit is None:
            return sealed
        size = len(sealed.data)
        st = s._state
        if size > limit:
            if self.listening:
                yield emit("too_large", req.path, st.handle or handle, st.user_id)
            raise too_large(size, limit, data, self.serializer, _backend_name(self.settings.backend))
        previous = len(st.record.data) if st.record is not None else 0
        if warn_size(size, previous, limit):
            message = near_limit_message(size, limit, data, self.serializer)
            yield Log(logging.WARNING, "%s (on %s)", message, req.path or "?")
        return sealed


def _backend_name(backend: Any) -> str:
    """A backend option for messages, with any password removed."""
    name = getattr(backend, "name", None)
    if isinstance(name, str):
        return name
    if isinstance(backend, str):
        from ..backends._url import parse_backend_url

        try:
            return parse_backend_url(backend).display
        except Exception:
            return backend.split("://", 1)[0] + "://..."
    return "the default file backend" if backend is None else type(backend).__name__
