"""What the demo learns from sessionmw's events, for its pages to show.

:class:`Activity` is the demo's listener (``listeners=[activity]``): it counts events by kind, keeps
the recent lock waits for the admin page, and keeps each session's last lock wait until a page of
that session shows it. Which request an event belongs to is known from where the listener runs: in
the request's task (ASGI, before the app sees the session) or the request's thread (WSGI and Flask,
at the session's first access). The frameworks' glue starts every request with a fresh
:class:`RequestNotes` in a context variable (:func:`noting`); the listener writes this request's
``missing`` and ``expired`` events there, so the page can say that its session ended elsewhere or
timed out.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.events import SessionEvent

if TYPE_CHECKING:
    from ..metrics import PrometheusListener

__all__ = ["Activity", "RequestNotes", "Wait", "current_notes", "metrics_listener", "noting"]

#: How many lock waits the admin page lists.
RECENT_WAITS = 10
#: Seconds after the slow page's planned end during which a wait is still put down to it.
SLOW_MARGIN = 1.0


@dataclass(frozen=True, slots=True)
class Wait:
    """One lock wait: when it ended (``time.time()``), how long, on which path, which session, what held the lock."""

    at: float
    seconds: float
    path: str
    handle: str
    holder: str | None = None


class Activity:
    """The demo's session listener: event counts, recent lock waits, each session's last wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Events seen since the demo started, by kind.
        self.counts: Counter[str] = Counter()
        self._recent: deque[Wait] = deque(maxlen=RECENT_WAITS)
        self._last_wait: dict[str, Wait] = {}
        self._slow: dict[str, tuple[float, float]] = {}

    def __call__(self, event: SessionEvent) -> None:
        """Take one session event (the middleware calls this)."""
        notes = _NOTES.get()
        with self._lock:
            self.counts[event.kind] += 1
            if event.kind == "lock_waited" and event.handle is not None:
                seconds = event.seconds or 0.0
                wait = Wait(time.time(), seconds, event.path or "?", event.handle, self._holder(event.handle, seconds))
                self._recent.append(wait)
                self._last_wait[event.handle] = wait
        if notes is not None and event.kind in ("missing", "expired"):
            notes.ended = "expired" if event.kind == "expired" else "elsewhere"

    def _holder(self, handle: str, waited: float) -> str | None:
        """What held the lock during a wait that ends now: the session's slow page, if it ran meanwhile."""
        slow = self._slow.get(handle)
        if slow is None:
            return None
        now = time.monotonic()
        started, seconds = slow
        return "slow" if started <= now and started + seconds + SLOW_MARGIN >= now - waited else None

    def slow_started(self, handle: str, seconds: float) -> None:
        """Note that session ``handle``'s slow page now holds its lock for ``seconds``."""
        with self._lock:
            self._slow[handle] = (time.monotonic(), seconds)

    def slow_holding(self, handle: str) -> bool:
        """Tell whether session ``handle``'s slow page holds its lock now."""
        with self._lock:
            slow = self._slow.get(handle)
        return slow is not None and time.monotonic() <= slow[0] + slow[1]

    def pop_wait(self, handle: str) -> Wait | None:
        """Return session ``handle``'s last lock wait not shown yet, and forget it."""
        with self._lock:
            return self._last_wait.pop(handle, None)

    def recent_waits(self) -> list[Wait]:
        """Return the last lock waits of every session, newest first."""
        with self._lock:
            return list(reversed(self._recent))

    def event_counts(self) -> dict[str, int]:
        """Return how many events of each kind were seen since the demo started."""
        with self._lock:
            return dict(self.counts)


@dataclass(slots=True)
class RequestNotes:
    """What one request learnt from its own events; ``ended`` is ``"elsewhere"`` or ``"expired"``."""

    activity: Activity
    ended: str | None = None


_NOTES: ContextVar[RequestNotes | None] = ContextVar("sessionmw_demo_notes", default=None)
_NO_NOTES = RequestNotes(Activity())


def current_notes() -> RequestNotes:
    """Return the current request's notes (empty ones outside a request of the demo)."""
    return _NOTES.get() or _NO_NOTES


@contextmanager
def noting(activity: Activity) -> Iterator[RequestNotes]:
    """Give the request run inside this block its own, empty notes."""
    notes = RequestNotes(activity)
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def metrics_listener() -> PrometheusListener | None:
    """Return a Prometheus listener on a registry of the demo's own, or ``None`` without prometheus_client."""
    try:
        from prometheus_client import CollectorRegistry

        from ..metrics import PrometheusListener
    except ImportError:
        return None
    return PrometheusListener(registry=CollectorRegistry())
