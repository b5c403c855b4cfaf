"""Lifecycle events: what the core tells listeners about a session's life.

Rules of this module: no I/O. The core's flows yield :class:`~sessionmw.core.ops.Emit` operations
carrying a :class:`SessionEvent`, only when listeners are configured (no listener, no cost); the
drivers call the listeners (:mod:`sessionmw.drivers.emit`).

A listener is a function or coroutine function taking one :class:`SessionEvent`. A listener object
may also have any of these methods, which the drivers call for measurements that are not events
(metrics exporters use them): ``backend_call(op: str, seconds: float)`` after each backend
operation, ``lock_held(seconds: float)`` when a lock is let go, ``waiting(delta: int)`` when a
request joins (+1) or leaves (-1) the queue for a lock.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .errors import BackendUnavailable
from .ops import Emit, Op

__all__ = ["EVENT_KINDS", "EventKind", "Listeners", "SessionEvent", "emit", "tell_unavailable"]

R = TypeVar("R")

EventKind = Literal[
    "created",
    "loaded",
    "regenerated",
    "rotated",
    "bound",
    "invalidated",
    "terminated",
    "expired",
    "lock_waited",
    "lock_timeout",
    "too_many_waiters",
    "write_dropped",
    "backend_unavailable",
    "missing",
    "stale_id",
    "too_large",
]

#: Every event kind, in the order of shared/API.md.
EVENT_KINDS: tuple[str, ...] = EventKind.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One thing that happened to a session; immutable.

    ``reason`` is ``"idle"`` or ``"absolute"`` for ``expired``; ``"admin"``, ``"user_limit"`` or
    ``"rotated"`` for ``terminated``. ``seconds`` is a wait or hold time, else ``None``.
    """

    kind: EventKind
    handle: str | None = None
    user_id: str | int | None = None
    path: str | None = None
    reason: str | None = None
    seconds: float | None = None


class Listeners:
    """The configured listeners, sorted once by how the drivers call them."""

    __slots__ = ("plain", "coroutines", "backend_call", "lock_held", "waiting", "timing")

    def __init__(self, listeners: Iterable[Callable[..., Any]] = ()) -> None:
        listeners = tuple(listeners)
        #: Functions called with each event.
        self.plain = tuple(f for f in listeners if not _is_coroutine_function(f))
        #: Coroutine functions called (and awaited) with each event.
        self.coroutines = tuple(f for f in listeners if _is_coroutine_function(f))
        #: Bound ``backend_call`` / ``lock_held`` / ``waiting`` methods of the listener objects that have them.
        self.backend_call = _methods(listeners, "backend_call")
        self.lock_held = _methods(listeners, "lock_held")
        self.waiting = _methods(listeners, "waiting")
        #: Whether the drivers time operations and locks at all.
        self.timing = bool(self.backend_call or self.lock_held or self.waiting)

    def __bool__(self) -> bool:
        return bool(self.plain or self.coroutines or self.timing)


def _is_coroutine_function(f: Any) -> bool:
    if inspect.iscoroutinefunction(f):
        return True
    call = type(f).__dict__.get("__call__")  # a listener object with ``async def __call__``
    return not inspect.isroutine(f) and inspect.iscoroutinefunction(call)


def _methods(listeners: tuple[Callable[..., Any], ...], name: str) -> tuple[Callable[..., Any], ...]:
    return tuple(m for m in (getattr(f, name, None) for f in listeners) if callable(m))


def emit(
    kind: EventKind,
    path: str,
    handle: str | None,
    user_id: str | int | None = None,
    reason: str | None = None,
    seconds: float | None = None,
) -> Emit:
    """Return the operation handing one event to the listeners (``path`` ``""`` means unknown)."""
    return Emit(SessionEvent(kind, handle, user_id, path or None, reason, seconds))


def tell_unavailable(
    flow: Generator[Op, object, R],
    path: str,
    handle: Callable[[], str | None],
    user_id: Callable[[], str | int | None],
) -> Generator[Op, object, R]:
    """Run ``flow``; when the backend is down, emit ``backend_unavailable`` before the error goes on."""
    try:
        return (yield from flow)
    except BackendUnavailable:
        yield emit("backend_unavailable", path, handle(), user_id())
        raise
