"""Waiting out a Sentinel or Cluster failover: which errors mean "the master is changing", and for how long.

Rules of this module: no I/O, and no sleeping of its own. Both backends (``_async.py`` and the
``_sync.py`` generated from it) send a command once; when it fails with one of
:data:`FAILOVER_ERRORS` and the URL's ``failover_wait`` is above zero, the error they raise is a
:class:`Failover`, which carries the deadline of the wait. The primitive then sends its command again
through redis-py's ``Retry`` (its own loop and sleep, sync or asyncio) with :class:`UntilDeadline` as the
back-off, until it succeeds or the deadline has passed; each attempt reconnects, and a Sentinel
connection asks the sentinels for the master's address when it connects, a Cluster client reloads
its slot table after a failed node. Past the deadline the primitive raises the usual
:class:`~sessionmw.core.errors.BackendUnavailable`, naming the wait.

A command retried this way may have run on the old master before it died (the reply was lost, not
the command): every command that is sent again is safe to run twice, or is sent again as a variant
that is (``ops.lock_and_load_again``, ``ops.create_again``; the save script recognises its own write).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from redis.backoff import AbstractBackoff, EqualJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    MaxConnectionsError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...core.errors import BackendUnavailable

__all__ = ["DEFAULT_WAIT", "Attempt", "FAILOVER_ERRORS", "Failover", "UntilDeadline", "is_failover", "seconds"]

#: One attempt of a command, sent again while waiting: returns the reply (sync), or its awaitable (asyncio).
Attempt = Callable[[], Any]

#: ``failover_wait`` when the URL does not give it: above a Sentinel or Cluster promotion with short
#: timeouts (2 to 3 s), and far below the default ``lock_timeout``.
DEFAULT_WAIT = 5.0

#: The errors of a master that died or is being replaced: refused or lost connections, timeouts, no
#: master known to the sentinels (a ``ConnectionError``), a demoted master (``READONLY``, which
#: Sentinel's connections also turn into a ``ConnectionError``), a Cluster without its slot's master
#: (``CLUSTERDOWN``, ``MASTERDOWN``, ``TRYAGAIN``). ``Type[Any]``: redis-py's ``Retry`` types them as
#: its own errors.
FAILOVER_ERRORS: tuple[type[Any], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    ClusterError,
    TryAgainError,
)

#: Errors of those classes that no failover cures: refused credentials, a full bounded pool.
_NOT_FAILOVER: tuple[type[Exception], ...] = (AuthenticationError, AuthorizationError, MaxConnectionsError)

#: The back-off between attempts: 50 ms doubling to at most 0.5 s, half of it random (so waiting
#: requests do not retry in step); short, since a request waits out the new master by this much at most.
_BASE = 0.05
_CAP = 0.5


def is_failover(exc: BaseException) -> bool:
    """Whether a redis-py error may be a failover under way (worth waiting for a new master)."""
    return isinstance(exc, FAILOVER_ERRORS) and not isinstance(exc, _NOT_FAILOVER)


def seconds(value: str) -> float:
    """Convert the ``failover_wait`` URL option: seconds, finite and not negative (0: do not wait)."""
    f = float(value)
    if not (f >= 0 and math.isfinite(f)):
        raise ValueError(value)
    return f


class Failover(BackendUnavailable):
    """A command failed as a failover would make it fail: the primitive may try again until ``deadline``.

    A :class:`~sessionmw.core.errors.BackendUnavailable` itself, so that a caller that does not wait
    reads it as the backend being down.

    :param unavailable: the error to raise if the wait is not taken.
    :param deadline: the monotonic time after which no attempt is made.
    :param wait: the ``failover_wait`` it stands for, for messages.
    """

    def __init__(self, unavailable: BackendUnavailable, deadline: float, wait: float) -> None:
        super().__init__(str(unavailable), backend=unavailable.backend)
        self.deadline = deadline
        self.wait = wait


class UntilDeadline(AbstractBackoff):
    """redis-py's equal-jitter exponential back-off, never sleeping past a deadline.

    :param deadline: a ``clock()`` time.
    :param clock: the monotonic clock (injected in tests).
    """

    def __init__(self, deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._inner = EqualJitterBackoff(cap=_CAP, base=_BASE)
        self.deadline = deadline
        self._clock = clock

    def compute(self, failures: int) -> float:
        """The pause before the next attempt: the back-off, or the time left if that is shorter."""
        return max(0.0, min(self._inner.compute(failures), self.deadline - self._clock()))

    def late(self) -> bool:
        """Whether the deadline has passed: no further attempt."""
        return self._clock() >= self.deadline
