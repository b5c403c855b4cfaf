"""The lock-waiting policy, written once for every backend and both drivers.

Rules of this module: no I/O, no clock reads, no sleeping. The drivers sleep for the delays this
module hands out; a release in the same process wakes its waiters at once, and waiters in other
processes poll with a back-off that starts at a millisecond.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator

__all__ = ["new_lock_token", "wait_delays"]

FIRST_DELAY = 0.001
BACKOFF = 1.5
MAX_DELAY = 0.05


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
    delay = min(MAX_DELAY, max(FIRST_DELAY, waited * (BACKOFF - 1)))
    return min(delay, remaining)


def delay_series(timeout: float) -> Iterator[float]:
    """Yield the delays a waiter that never wins would sleep, for tests and documentation."""
    now = 0.0
    while (d := wait_delays(0.0, timeout, now)) is not None:
        yield d
        now += d
