"""The two drivers that perform the core's operations: one sync, one async.

They differ only in ``await`` and in how they sleep; the policy is in :mod:`sessionmw.core.policy`. Besides
running operations, a driver keeps the per-process parts of locking:

* the queue of waiters per session (``max_waiters``),
* local wake-ups: a release in this process wakes this process's waiters at once, instead of at
  their next poll,
* lock renewal: while a request holds a lock, it is extended every third of ``lock_expire``, so a
  short ``lock_expire`` frees a dead worker's lock quickly without breaking long requests.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from collections.abc import Generator
from typing import Any, TypeVar

from .backends.base import AsyncBackend, Backend
from .core.policy import Call, Queue, Sleep

__all__ = ["AsyncDriver", "SyncDriver"]

logger = logging.getLogger("sessionmw")
T = TypeVar("T")

# Operations after which this process's waiters for that sid should try again at once.
_RELEASING = frozenset({"save", "release", "delete"})


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


class SyncDriver:
    """Runs core flows against a sync :class:`Backend`, from any number of threads."""

    def __init__(self, backend: Backend, lock_expire: float) -> None:
        self.backend = backend
        self._mutex = threading.Lock()
        self._waiters: dict[str, int] = {}
        self._events: dict[str, threading.Event] = {}
        self._renewer = _SyncRenewer(backend, lock_expire)

    def run(self, flow: Generator[Any, Any, T]) -> T:
        """Drive ``flow`` to its end and return its value; backend errors are thrown into it."""
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            error = None
            try:
                result = self._perform(op)
            except BaseException as exc:  # noqa: B036 - re-raised through the flow's finally blocks
                error = exc

    def _perform(self, op: Any) -> Any:
        if type(op) is Call:
            result = getattr(self.backend, op.method)(*op.args)
            method = op.method
            if method == "lock_and_load":
                if result[0]:
                    self._renewer.add(op.args[0], op.args[1])
            elif method in _RELEASING:
                if method != "delete":
                    self._renewer.discard(op.args[1])
                self._wake(op.args[0])
            return result
        if type(op) is Sleep:
            with self._mutex:
                event = self._events.get(op.sid)
                if event is None:
                    event = self._events[op.sid] = threading.Event()
            event.wait(op.delay)
            return time.monotonic()
        assert type(op) is Queue
        with self._mutex:
            answer = count_waiter(self._waiters, op)
            if op.sid not in self._waiters:
                self._events.pop(op.sid, None)
            return answer

    def _wake(self, sid: str) -> None:
        if sid in self._events:
            with self._mutex:
                event = self._events.pop(sid, None)
                if event is not None and sid in self._waiters:
                    self._events[sid] = threading.Event()
            if event is not None:
                event.set()

    def close(self) -> None:
        """Stop the renewal thread."""
        self._renewer.stop()


class _SyncRenewer:
    """One daemon thread that extends the locks this process holds, a third of the way to expiry."""

    def __init__(self, backend: Backend, lock_expire: float) -> None:
        self.backend = backend
        self.expire = lock_expire
        self.every = lock_expire / 3
        self._held: dict[str, str] = {}  # token -> sid
        self._heap: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def add(self, sid: str, token: str) -> None:
        with self._cond:
            self._held[token] = sid
            heapq.heappush(self._heap, (time.monotonic() + self.every, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sessionmw-lock-renewer", daemon=True)
                self._thread.start()
            elif len(self._heap) == 1:
                self._cond.notify()

    def discard(self, token: str) -> None:
        # The heap entry stays and is skipped when it comes due: O(1) here on the request path.
        self._held.pop(token, None)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap and self._heap[0][1] not in self._held:
                        heapq.heappop(self._heap)
                        continue
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped:
                    return
                _, token = heapq.heappop(self._heap)
                sid = self._held.get(token)
            if sid is None:
                continue
            try:
                still = self.backend.extend(sid, token, self.expire)
            except Exception as exc:
                logger.warning("could not extend a session lock: %s", exc)
                still = True  # try again next round; the lock may still be ours
            with self._cond:
                if still and token in self._held:
                    heapq.heappush(self._heap, (time.monotonic() + self.every, token))
                elif not still:
                    self._held.pop(token, None)


class AsyncDriver:
    """Runs core flows against an :class:`AsyncBackend` on one asyncio event loop."""

    def __init__(self, backend: AsyncBackend, lock_expire: float) -> None:
        self.backend = backend
        self.expire = lock_expire
        self._waiters: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}
        # token -> (sid, monotonic time of acquisition or last extension). One timer per driver
        # sweeps it, so holding a lock costs a dict entry, not a timer per request.
        self._held: dict[str, tuple[str, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # A backend that never blocks (memory) is called directly: no coroutine per primitive.
        self._inline: Any = backend if getattr(backend, "nonblocking", False) else None

    async def run(self, flow: Generator[Any, Any, T]) -> T:
        """Drive ``flow`` to its end and return its value; backend errors are thrown into it."""
        result: Any = None
        error: BaseException | None = None
        inline = self._inline
        while True:
            try:
                op = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            error = None
            try:
                if type(op) is Call:
                    method = op.method
                    if inline is not None:
                        result = getattr(inline, method)(*op.args)
                    else:
                        result = await getattr(self.backend, "a" + method)(*op.args)
                    if method == "lock_and_load":
                        if result[0]:
                            self._hold(op.args[0], op.args[1])
                    elif method in _RELEASING:
                        if method != "delete":
                            self._held.pop(op.args[1], None)
                        event = self._events.pop(op.args[0], None)
                        if event is not None:
                            event.set()
                elif type(op) is Sleep:
                    event = self._events.get(op.sid)
                    if event is None:
                        event = self._events[op.sid] = asyncio.Event()
                    try:
                        await asyncio.wait_for(event.wait(), op.delay)
                    except asyncio.TimeoutError:
                        pass
                    result = time.monotonic()
                else:
                    result = count_waiter(self._waiters, op)
            except BaseException as exc:  # noqa: B036 - re-raised through the flow's finally blocks
                error = exc

    def _hold(self, sid: str, token: str) -> None:
        self._held[token] = (sid, time.monotonic())
        if self._timer is None or self._timer_loop is None or self._timer_loop.is_closed():
            self._arm(asyncio.get_running_loop())

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer_loop = loop
        self._timer = loop.call_later(self.expire / 4, self._sweep)

    def _sweep(self) -> None:
        """Extend every lock held for a quarter of ``lock_expire`` or more (so at most half is ever used)."""
        self._timer = None
        if not self._held:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        due = [(token, sid) for token, (sid, since) in self._held.items() if now - since >= self.expire / 4]
        for token, sid in due:
            task = loop.create_task(self._renew(sid, token))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm(loop)

    async def _renew(self, sid: str, token: str) -> None:
        try:
            still = await self.backend.aextend(sid, token, self.expire)
        except Exception as exc:
            logger.warning("could not extend a session lock: %s", exc)
            return  # try again at the next sweep; the lock may still be ours
        if token in self._held:
            if still:
                self._held[token] = (sid, time.monotonic())
            else:
                del self._held[token]
