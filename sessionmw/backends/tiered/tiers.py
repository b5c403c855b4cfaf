"""How the tiered backend reaches its two tiers, and what it remembers between calls.

:class:`Tiers` is a base of :class:`~sessionmw.backends.tiered.TieredBackend` (its methods are the
backend's own): calls to the fast tier whose unavailability is noted as an outage (:class:`_Outage`,
logged once, not per request) and raised as :class:`_FastDown`; calls to the durable tier that may be
skipped while it is down; and the bounded memory (:data:`MAX_TRACKED`, least recently used go first,
one mutex) of the lock tokens held (:class:`_Held`) and of the ids whose fast copy may be stale.
See the package's notes (:mod:`sessionmw.backends.tiered`) for why.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, ParamSpec, TypeVar

from ...core.errors import BackendUnavailable
from ..base import Backend

__all__ = ["MAX_TRACKED", "Tiers"]

logger = logging.getLogger("sessionmw")

P = ParamSpec("P")
T = TypeVar("T")

#: How many lock tokens and possibly-stale ids a process remembers (least recently used go first).
MAX_TRACKED = 10_000


class _Held(NamedTuple):
    """What the backend remembers about one lock token between its lock and its save or release."""

    #: The lock was taken in the durable tier (the fast one was down).
    durable: bool
    #: Last access of the record loaded with the lock (``None``: no record), for the durable refresh.
    loaded_access: float | None
    #: The record came from the durable tier (a fast miss): the fast tier has no copy yet.
    missed: bool = False


class _FastDown(Exception):
    """The fast tier raised :class:`BackendUnavailable` (already logged and counted as an outage)."""


class _Outage:
    """One tier's up/down state, so that an outage is logged once, not once per request."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False
        self._mutex = threading.Lock()

    def failed(self, exc: BaseException, then: str) -> None:
        """Note a failure; log a warning if it starts an outage."""
        with self._mutex:
            first = not self.down
            self.down = True
        if first:
            logger.warning("tiered backend: the %s is unavailable (%s); %s", self.what, exc, then)

    def answered(self) -> None:
        """Note a success; log the end of an outage."""
        if not self.down:  # the common case: one attribute read, no lock
            return
        with self._mutex:
            was = self.down
            self.down = False
        if was:
            logger.warning("tiered backend: the %s answers again", self.what)


class Tiers:
    """The two tiers as the backend calls them, with its memory of locks and stale copies."""

    fast: Backend
    durable: Backend
    _mutex: threading.Lock
    _held: OrderedDict[str, _Held]
    _stale: OrderedDict[str, None]
    _fast_outage: _Outage
    _durable_outage: _Outage
    _degraded_note: str

    def _fast(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call the fast tier; its unavailability becomes :class:`_FastDown`, after being noted."""
        try:
            result = call(*args, **kwargs)
        except BackendUnavailable as exc:
            self._fast_outage.failed(exc, self._degraded_note)
            raise _FastDown() from exc
        self._fast_outage.answered()
        return result

    def _durable_best_effort(self, call: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> bool:
        """Call the durable tier for a refresh that may be skipped when it is down; return whether it answered."""
        try:
            call(*args, **kwargs)
        except BackendUnavailable as exc:
            self._durable_outage.failed(exc, "sessions live in the fast tier only until it answers")
            return False
        self._durable_outage.answered()
        return True

    def _remember(self, token: str, held: _Held) -> None:
        with self._mutex:
            self._held[token] = held
            if len(self._held) > MAX_TRACKED:
                self._held.popitem(last=False)  # a request that never ended; its lock expires anyway

    def _forget(self, token: str) -> _Held | None:
        with self._mutex:
            return self._held.pop(token, None)

    def _in_durable(self, token: str) -> bool:
        with self._mutex:
            held = self._held.get(token)
        return held is not None and held.durable

    def _mark_stale(self, sid: str) -> None:
        """Remember that the fast tier may hold an older copy of ``sid`` (or one of an ended session)."""
        with self._mutex:
            self._stale[sid] = None
            self._stale.move_to_end(sid)
            if len(self._stale) > MAX_TRACKED:
                self._stale.popitem(last=False)

    def _drop_stale(self, sid: str) -> None:
        """Before the fast tier serves ``sid``: delete a copy it may hold from before an outage."""
        if not self._stale:  # the common case: no outage happened in this process
            return
        with self._mutex:
            if sid not in self._stale:
                return
        self._fast(self.fast.delete, sid)
        with self._mutex:
            self._stale.pop(sid, None)

    def _release_fast(self, sid: str, token: str) -> None:
        """Release our fast lock, ignoring an unavailable fast tier (its lock then expires by itself)."""
        try:
            self._fast(self.fast.release, sid, token, None)
        except _FastDown:
            pass

    def _delete_fast(self, sid: str) -> None:
        """Remove the fast tier's copy; if it cannot be reached, remember to remove it before it is read."""
        try:
            self._fast(self.fast.delete, sid)
        except _FastDown:
            self._mark_stale(sid)
