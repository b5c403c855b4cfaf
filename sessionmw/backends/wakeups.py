"""Waiters for the release of a lock in this process, woken one at a time, from any thread.

Rules of this module: no I/O of its own. A waiter takes a :class:`Ticket` (it joins the queue of its
key), waits on it, and leaves; whoever learns of a release (the process that released, a thread that
listens to the store) calls :meth:`Wakeups.wake`, which wakes the waiter that has waited longest,
and only it: the others stay queued for the next release. A woken waiter tries the lock at once;
one that leaves without trying (cancelled) passes its wake-up on to the next, so nobody is stranded
behind a wake-up nobody used.

Waiters are threads (:meth:`Ticket.wait`) or asyncio tasks (:meth:`Ticket.await_`) alike; a wake-up
from another thread reaches a task through its loop's ``call_soon_threadsafe``. asyncio is imported
only by a task's ticket, so a WSGI process never loads it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = ["Ticket", "Wakeups"]


class Ticket:
    """One wait of one waiter for one key's release."""

    __slots__ = ("key", "woken", "_gate", "_loop", "_future")

    def __init__(self, key: str, loop: asyncio.AbstractEventLoop | None) -> None:
        self.key = key
        #: Set (under the registry's mutex) when a release chose this ticket.
        self.woken = False
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self._gate: threading.Lock | None = None
        if loop is None:
            # A lock held from the start: releasing it is the wake-up, acquiring it the wait (what
            # threading.Event does, without its condition variable).
            self._gate = threading.Lock()
            self._gate.acquire()
        else:
            self._future = loop.create_future()

    def wait(self, timeout: float) -> bool:
        """Block this thread until woken or ``timeout`` seconds passed; return whether woken."""
        assert self._gate is not None, "an asyncio ticket is awaited"
        return self._gate.acquire(timeout=max(0.0, timeout)) or self.woken

    async def await_(self, timeout: float) -> bool:
        """Wait on the event loop until woken or ``timeout`` seconds passed; return whether woken."""
        future, loop = self._future, self._loop
        assert future is not None and loop is not None, "a thread's ticket is waited for"
        timer = loop.call_later(max(0.0, timeout), _settle, future)
        try:
            await future
        finally:
            timer.cancel()
        return self.woken

    def _fire(self) -> None:
        if self._gate is not None:
            self._gate.release()
            return
        loop, future = self._loop, self._future
        assert loop is not None and future is not None
        if _running_loop() is loop:
            _settle(future)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_settle, future)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Wakeups:
    """The queues of waiters of one process, per key (a session's lock), each woken one at a time."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._queues: dict[str, deque[Ticket]] = {}
        #: Keys released while no ticket waited, remembered for the next ticket (see :meth:`wake`).
        self._pending: set[str] = set()

    def join(self, key: str, *, on_loop: bool = False) -> Ticket:
        """Queue a new ticket for ``key`` (an asyncio one with ``on_loop``), woken at once by a kept wake-up."""
        ticket = Ticket(key, _running_loop() if on_loop else None)
        with self._mutex:
            if key in self._pending:
                self._pending.discard(key)
                ticket.woken = True
            else:
                self._queues.setdefault(key, deque()).append(ticket)
        if ticket.woken:
            ticket._fire()
        return ticket

    def leave(self, ticket: Ticket, *, used: bool = True) -> None:
        """Take ``ticket`` out of its queue; if it was woken but its waiter gives up (``used=False``), wake the next."""
        with self._mutex:
            if not ticket.woken:
                queue = self._queues.get(ticket.key)
                if queue is not None:
                    try:
                        queue.remove(ticket)
                    except ValueError:
                        pass
                    if not queue:
                        del self._queues[ticket.key]
                return
        if not used:
            self.wake(ticket.key)

    @contextmanager
    def ticket(self, key: str, *, on_loop: bool = False) -> Iterator[Ticket]:
        """A ticket for the length of a ``with`` block; leaving by an exception passes a wake-up on."""
        ticket = self.join(key, on_loop=on_loop)
        try:
            yield ticket
        except BaseException:
            self.leave(ticket, used=False)
            raise
        self.leave(ticket)

    def wake(self, key: str, *, keep: bool = False) -> bool:
        """Wake the waiter of ``key`` that has waited longest; return whether there was one.

        With ``keep``, a wake-up that finds nobody waiting is kept for the next ticket of ``key``
        (a waiter between its failed try and its wait) until :meth:`forget`.
        """
        if key not in self._queues and not keep:
            return False  # the common case, without the mutex: nobody waits
        with self._mutex:
            queue = self._queues.get(key)
            if not queue:
                if keep:
                    self._pending.add(key)
                return False
            ticket = queue.popleft()
            if not queue:
                del self._queues[key]
            ticket.woken = True
        ticket._fire()
        return True

    def forget(self, key: str) -> None:
        """Drop a kept wake-up of ``key`` (its last waiter left)."""
        if key in self._pending:
            with self._mutex:
                self._pending.discard(key)

    def waiting(self, key: str) -> int:
        """How many tickets of ``key`` wait and were not woken yet."""
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0
