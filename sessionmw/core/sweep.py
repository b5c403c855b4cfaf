"""Background gc: when this process collects expired sessions, which worker does, and how much at once.

Rules of this module: no I/O, no clock reads, no threads. Times are passed in: monotonic seconds for
this process's schedule, wall-clock seconds (``now``) for what has expired. The drivers
(:mod:`sessionmw.drivers.sweeper`) perform the operations a collection yields and send back, for each,
its result and the monotonic time after it.

How a collection goes, and why:

* **When.** A process tries at its first request, then at most once per ``gc_interval`` (the adapters
  ask :meth:`Sweep.due` after each response, a single comparison). Trying at the first request, not an
  interval after start, keeps the store collected by workers that live shorter than an interval
  (gunicorn's ``max_requests``).
* **Which worker.** Before collecting, a worker claims the store-wide turn (:class:`Claim`): a lease
  under the key prefix that the backend grants only when nobody holds it, for nine tenths of
  ``gc_interval`` (:data:`LEASE_SHARE`). The lease is never released: its expiry is the throttle, so
  all workers on all hosts together collect about once per interval, whatever their number. It is a
  little shorter than the interval so that the worker that collected last, trying again an interval
  later, finds it run out (its clock started before the lease's). A worker that is refused tries
  again an interval later; a worker that dies while collecting blocks no one for longer than that.
* **How much.** A collection removes batches of :data:`BATCH` sessions (:class:`Collect`, one short
  transaction or one bounded directory walk each), until a batch comes back short (nothing left) or
  half the interval is spent, so it ends before the lease does. Between two batches it pauses as long
  as the last batch took (:class:`Pause`): a backlog of millions never holds the store for more than
  half of the time, and requests in between find it free.
* A failure ends the collection; the driver logs it, and the next is an interval later.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

__all__ = ["BATCH", "LEASE_SHARE", "MAX_PAUSE", "Claim", "Collect", "Collects", "Pause", "Sweep", "SweepOp", "Swept"]

#: Sessions one :class:`Collect` removes at most: one short transaction (SQL) or walk (files).
BATCH = 1000

#: The longest pause between two batches, in seconds, however long the last one took.
MAX_PAUSE = 1.0

#: The share of the interval a claimed turn lasts.
LEASE_SHARE = 0.9


@runtime_checkable
class Collects(Protocol):
    """A backend whose store keeps expired sessions until they are collected (file, SQL, memory, tiered).

    Stores that expire records themselves (Redis, memcached: a TTL on every key) do not offer it, and
    the middleware never collects them.
    """

    def claim_gc(self, every: float) -> bool:
        """Take this store's turn to collect for ``every`` seconds; ``False`` while another holds it.

        The turn is a lease under the backend's key prefix, never released: it expires.
        """
        ...

    def gc(self, now: float, limit: int | None = None) -> int:
        """Remove sessions expired at ``now``, at most ``limit`` of them; return how many."""
        ...


class Claim:
    """Claim the store's turn to collect for ``every`` seconds; the driver sends back ``(claimed, mono)``."""

    __slots__ = ("every",)

    def __init__(self, every: float) -> None:
        self.every = every

    def __iter__(self) -> Generator[Claim, object, tuple[bool, float]]:
        """Hand the claim to the driver; return whether it was granted, and the time after it."""
        answer = yield self
        return cast("tuple[bool, float]", answer)

    def run(self, backend: Collects) -> bool:
        """See :meth:`Collects.claim_gc`."""
        return backend.claim_gc(self.every)

    def __repr__(self) -> str:
        return f"Claim({self.every!r})"


class Collect:
    """Remove at most ``limit`` sessions expired at ``now``; the driver sends back ``(removed, mono)``."""

    __slots__ = ("now", "limit")

    def __init__(self, now: float, limit: int) -> None:
        self.now = now
        self.limit = limit

    def __iter__(self) -> Generator[Collect, object, tuple[int, float]]:
        """Hand the batch to the driver; return how many it removed, and the time after it."""
        answer = yield self
        return cast("tuple[int, float]", answer)

    def run(self, backend: Collects) -> int:
        """See :meth:`Collects.gc`."""
        return backend.gc(self.now, limit=self.limit)

    def __repr__(self) -> str:
        return f"Collect({self.now!r}, {self.limit!r})"


class Pause:
    """Leave the store to the requests for ``seconds``; the driver sends back ``(None, mono)``."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __iter__(self) -> Generator[Pause, object, float]:
        """Hand the pause to the driver; return the time after it."""
        answer = yield self
        return cast("tuple[None, float]", answer)[1]

    def __repr__(self) -> str:
        return f"Pause({self.seconds!r})"


SweepOp = Claim | Collect | Pause


@dataclass(frozen=True)
class Swept:
    """What one collection did."""

    #: Whether this worker had the turn (else it did nothing).
    claimed: bool
    #: Sessions removed.
    removed: int = 0
    #: Batches run.
    batches: int = 0
    #: Whether the last batch came back short: nothing expired was left (or the walk was done).
    complete: bool = False
    #: Monotonic seconds from the claim to the end.
    seconds: float = 0.0


class Sweep:
    """One middleware's schedule of background collections in this process, and the collection itself.

    :param interval: seconds between two collections (``gc_interval``).
    :param batch: sessions per batch.
    :param budget: seconds a collection may last (default: half the interval, so it ends before its
        lease does and no other worker starts one meanwhile; a batch begun before the budget is spent
        is finished).
    """

    def __init__(self, interval: float, *, batch: int = BATCH, budget: float | None = None) -> None:
        self.interval = interval
        self.batch = batch
        self.budget = interval / 2 if budget is None else budget
        #: Seconds a claimed turn lasts.
        self.lease = interval * LEASE_SHARE
        #: The monotonic time of the next try; the first request's response is the first.
        self.next_at = float("-inf")

    def due(self, mono: float) -> bool:
        """Tell whether this process should try a collection now."""
        return mono >= self.next_at

    def begin(self, mono: float) -> None:
        """Record that a collection starts at ``mono``: the next try is an interval later, whatever its outcome."""
        self.next_at = mono + self.interval

    def collect(self, now: float, mono: float) -> Generator[SweepOp, object, Swept]:
        """Claim the turn and remove batches of expired sessions until none are left or the budget is spent.

        :param now: wall-clock time: what expired before it is removed.
        :param mono: monotonic time at the start.
        """
        claimed, started = yield from Claim(self.lease)
        if not claimed:
            return Swept(claimed=False, seconds=started - mono)
        deadline = mono + self.budget
        removed = batches = 0
        before = started
        while True:
            n, after = yield from Collect(now, self.batch)
            removed += n
            batches += 1
            if n < self.batch:
                return Swept(True, removed, batches, complete=True, seconds=after - mono)
            if after >= deadline:
                return Swept(True, removed, batches, complete=False, seconds=after - mono)
            before = yield from Pause(min(max(after - before, 0.0), MAX_PAUSE, deadline - after))
