"""What the two drivers share: the effects of an operation, the waiter queue, the renewal schedule.

Rules of this module: no I/O of its own. A driver performs the core's operations; around each one
it does what the operation's type says (:mod:`sessionmw.core.ops`): start renewing a lock it now
holds, stop renewing one it let go, wake this process's waiters for a session. The sync and the
async driver differ only in how they wait, wake and schedule (their I/O layer), not in this.
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any

from ..core.events import Listeners
from ..core.ops import BackendOp, Log, Queue
from .emit import observe

__all__ = ["DriverBase", "Renewals", "count_waiter"]

logger = logging.getLogger("sessionmw")


def count_waiter(waiters: dict[str, int], op: Queue) -> bool | None:
    """Join or leave the queue of waiters for ``op.sid``; on joining, tell whether there was room."""
    n = waiters.get(op.sid, 0)
    if op.enter:
        if n >= op.limit:
            return False
        waiters[op.sid] = n + 1
        return True
    if n <= 1:
        waiters.pop(op.sid, None)
    else:
        waiters[op.sid] = n - 1
    return None


class Renewals:
    """Which held locks to extend, and when: every third of ``lock_expire`` while a request holds one.

    So a short ``lock_expire`` frees a dead worker's lock quickly without breaking long requests.
    Times are monotonic seconds, passed in.
    """

    def __init__(self, lock_expire: float) -> None:
        self.expire = lock_expire
        self.every = lock_expire / 3
        self.held: dict[str, str] = {}  # token -> sid
        self._heap: list[tuple[float, str]] = []

    def add(self, sid: str, token: str, now: float) -> None:
        """Start renewing ``token``'s lock on ``sid``."""
        self.held[token] = sid
        heapq.heappush(self._heap, (now + self.every, token))

    def discard(self, token: str) -> None:
        """Stop renewing ``token``'s lock (its heap entry is skipped when it comes due)."""
        self.held.pop(token, None)

    def next_due(self) -> float | None:
        """Return when the next renewal is due, or ``None`` when no lock is held."""
        heap = self._heap
        while heap and heap[0][1] not in self.held:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def take_due(self, now: float) -> list[tuple[str, str]]:
        """Return ``(sid, token)`` of every lock whose renewal is due at ``now``."""
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            token = heapq.heappop(heap)[1]
            sid = self.held.get(token)
            if sid is not None:
                due.append((sid, token))
        return due

    def renewed(self, token: str, still_held: bool, now: float) -> None:
        """Record the result of extending ``token``'s lock: schedule the next one, or forget it."""
        if token not in self.held:
            return
        if still_held:
            heapq.heappush(self._heap, (now + self.every, token))
        else:
            del self.held[token]


def log_failed_renewal(exc: BaseException) -> None:
    """Log a renewal that raised; the lock may still be ours, so it is tried again next round."""
    logger.warning("could not extend a session lock: %s", exc)


class DriverBase:
    """The driver state both sides share; subclasses supply ``_hold`` and ``_wake`` (their I/O).

    Around each backend operation the loop (``_run_async.py``) does what the operation's type says:
    ``holds`` (on success) starts renewing the lock, ``frees`` stops it, ``wakes`` wakes local waiters.
    """

    #: The listeners to call (set by the adapter from the options); none by default.
    listeners: Listeners = Listeners()

    def __init__(self, lock_expire: float) -> None:
        self.renewals = Renewals(lock_expire)
        self._waiters: dict[str, int] = {}
        #: Lock token -> monotonic time it was taken, while listeners measure lock hold times.
        self._held_since: dict[str, float] = {}

    def _measure_lock(self, op: BackendOp[Any], result: Any) -> None:
        """Record when a lock is taken, and tell the listeners how long it was held when let go."""
        if op.holds:
            if result[0]:
                self._held_since[op.token] = time.monotonic()
        elif op.frees:
            since = self._held_since.pop(op.token, None)
            if since is not None:
                observe(self.listeners.lock_held, time.monotonic() - since)

    def _queue(self, op: Queue) -> bool | None:
        return count_waiter(self._waiters, op)

    @staticmethod
    def _log(op: Log) -> None:
        logger.log(op.level, op.message, *op.args)

    def _hold(self, sid: str, token: str) -> None:  # pragma: no cover - supplied by each side
        raise NotImplementedError

    def _wake(self, sid: str) -> None:  # pragma: no cover - supplied by each side
        raise NotImplementedError
