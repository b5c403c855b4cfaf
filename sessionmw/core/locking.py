"""The lock-waiting policy, written once for every backend and both drivers.

Rules of this module: no I/O, no clock reads, no sleeping. A release wakes one waiter of the session:
in this process (the driver's own wake-up) and, where the backend can, in any process
(:class:`~sessionmw.backends.base.WaitsForRelease`: a blocking pop on Redis, ``LISTEN`` on
PostgreSQL, a blocking ``flock`` for files, a queue in the memory store). Between two tries, a waiter
waits for that wake-up at most the delay :func:`wait_delays` hands out, from :data:`FIRST_DELAY`
growing to :data:`POLL_INTERVAL`: what polling gives where nothing wakes a waiter in another process
(SQLite, MySQL/MariaDB, memcached) or a lock is left to expire. A waiter the backend wakes skips the
short first delays (:func:`woken_wait`): they are its fallback for a wake-up that is lost. A test
sets both long to prove that a waiter was woken, not polled.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator

__all__ = ["BACKOFF", "FIRST_DELAY", "POLL_INTERVAL", "new_lock_token", "wait_delays", "woken_wait"]

#: Seconds of the first wait for a lock, growing by :data:`BACKOFF` with the time already waited.
FIRST_DELAY = 0.001
BACKOFF = 1.5
#: The longest wait between two tries of a lock, in seconds: the poll interval where nothing wakes a
#: waiter, and the fallback for a wake-up that never comes.
POLL_INTERVAL = 0.05


class _Tokens:
    """Lock tokens: a random 96-bit prefix per process, then a counter.

    Each acquisition gets its own token (never host+pid, which threads and tasks share), and a new
    prefix is drawn in every forked child, so workers forked from one parent never share tokens.
    Drawing 128 random bits per request costs a system call; this costs a counter step.
    """

    def __init__(self) -> None:
        self.reseed()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(12)
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):x}"


_TOKENS = _Tokens()


def new_lock_token() -> str:
    """Return a token identifying one lock acquisition, unique across threads, tasks and processes."""
    return _TOKENS.next()


def wait_delays(started: float, timeout: float, now: float) -> float | None:
    """Return how long to sleep before the next try, or ``None`` when the timeout has run out.

    :param started: monotonic time of the first try.
    :param timeout: ``lock_timeout`` in seconds.
    :param now: monotonic time now.
    """
    remaining = started + timeout - now
    if remaining <= 0:
        return None
    waited = now - started
    # Grow with the time already waited: 1 ms at first, 50 ms at most, never past the deadline.
    delay = min(POLL_INTERVAL, max(FIRST_DELAY, waited * (BACKOFF - 1)))
    return min(delay, remaining)


def woken_wait(delay: float) -> float:
    """Return how long a waiter that a release wakes waits for it, given the core's ``delay``.

    The back-off's short first delays are for polling; a waiter that is woken needs none, and
    trying the lock every millisecond would cost the store round trips for nothing. It waits
    :data:`POLL_INTERVAL` at least, so its last wait may end up to that long after ``lock_timeout``.
    """
    return max(delay, POLL_INTERVAL)


def delay_series(timeout: float) -> Iterator[float]:
    """Yield the delays a waiter that never wins would sleep, for tests and documentation."""
    now = 0.0
    while (d := wait_delays(0.0, timeout, now)) is not None:
        yield d
        now += d
