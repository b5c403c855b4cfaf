"""Background gc, performed: a daemon thread (WSGI, Flask) or an asyncio task (ASGI) per collection.

The policy is :mod:`sessionmw.core.sweep`'s; this module only runs it. An adapter calls ``poke()``
after each response: one comparison when no collection is due. When one is, and none of this
middleware runs, the sweeper starts one in the background and returns; the request never waits
for it. A failure is logged at WARNING on the ``sessionmw`` logger and tried again an interval later.

Both sides run the backend calls in a thread: ``gc`` is sync on every backend (one batch is short,
but it is I/O, or a walk over a dict under the memory store's mutex). The async side runs them in the
event loop's default executor, so a collection on the loop parks no request's thread and ends with
the loop (a test client's loop per request cancels it), and ``aclose()`` lets a running batch finish
before the backend closes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Generator
from typing import Any

from ..core.sweep import Collects, Pause, Sweep, SweepOp, Swept

__all__ = ["AsyncSweeper", "SyncSweeper", "collector_of"]

logger = logging.getLogger("sessionmw")

#: Seconds ``close()`` waits for a running collection to finish its batch.
CLOSE_WAIT = 10.0


def collector_of(backend: object) -> Collects | None:
    """Return what collects ``backend``'s store (the sync backend behind a threaded wrapper), or ``None``."""
    target = getattr(backend, "sync", backend)  # ThreadedAsyncBackend: the sync backend it wraps
    return target if isinstance(target, Collects) else None


def _log_done(swept: Swept) -> None:
    if swept.claimed:
        logger.debug(
            "background gc: %d expired sessions removed in %d batches (%.3f s)%s",
            swept.removed,
            swept.batches,
            swept.seconds,
            "" if swept.complete else "; more are left for the next collection",
        )


def _log_failed(exc: BaseException, interval: float) -> None:
    logger.warning("background gc failed (tried again in %g s): %s", interval, exc)


class _Base:
    """What both sweepers share: the schedule, and whether a collection may start now."""

    def __init__(self, backend: object, interval: float | None) -> None:
        self.target = collector_of(backend) if interval is not None else None
        #: ``None`` when this middleware never collects (``gc_interval=None``, or a store that expires
        #: its records itself).
        self.sweep = Sweep(interval) if self.target is not None and interval is not None else None
        self._closed = False

    def _start(self, mono: float) -> Generator[SweepOp, object, Swept]:
        assert self.sweep is not None
        self.sweep.begin(mono)
        return self.sweep.collect(time.time(), mono)


class SyncSweeper(_Base):
    """Collects expired sessions in a daemon thread, one collection at a time (WSGI, Flask).

    :param backend: the middleware's backend.
    :param interval: ``gc_interval``: seconds between collections, ``None`` for never.
    """

    def __init__(self, backend: object, interval: float | None) -> None:
        super().__init__(backend, interval)
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Start a collection in the background if one is due and none runs (call after a response)."""
        sweep = self.sweep
        if sweep is None:
            return
        mono = time.monotonic()
        if not sweep.due(mono):
            return
        with self._mutex:
            running = self._thread is not None and self._thread.is_alive()
            if self._closed or running or not sweep.due(mono):
                return
            flow = self._start(mono)
            thread = threading.Thread(target=self._run, args=(flow,), name="sessionmw-gc", daemon=True)
            self._thread = thread
            thread.start()

    def _run(self, flow: Generator[SweepOp, object, Swept]) -> None:
        assert self.sweep is not None and self.target is not None
        target, stop = self.target, self._stop
        try:
            op = next(flow)
            while True:
                if stop.is_set():
                    flow.close()
                    return
                result: Any = None
                if isinstance(op, Pause):
                    stop.wait(op.seconds)
                else:
                    result = op.run(target)
                op = flow.send((result, time.monotonic()))
        except StopIteration as done:
            _log_done(done.value)
        except Exception as exc:
            _log_failed(exc, self.sweep.interval)

    @property
    def running(self) -> bool:
        """Whether a collection of this sweeper runs now."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Start no more collections; let a running one finish its batch (waiting at most ``timeout`` s)."""
        with self._mutex:
            self._closed = True
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class AsyncSweeper(_Base):
    """Collects expired sessions in an asyncio task, one collection at a time (ASGI).

    :param backend: the middleware's (async) backend; a threaded wrapper's sync backend is collected.
    :param interval: ``gc_interval``: seconds between collections, ``None`` for never.
    """

    def __init__(self, backend: object, interval: float | None) -> None:
        super().__init__(backend, interval)
        self._task: asyncio.Task[None] | None = None
        #: Strong references to running tasks (the loop keeps only weak ones).
        self._tasks: set[asyncio.Task[None]] = set()

    def poke(self) -> None:
        """Start a collection on the running loop if one is due and none runs (call after a response)."""
        sweep = self.sweep
        if sweep is None:
            return
        mono = time.monotonic()
        if self._closed or not sweep.due(mono) or self.running:
            return
        task = asyncio.get_running_loop().create_task(self._run(self._start(mono)), name="sessionmw-gc")
        self._task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, flow: Generator[SweepOp, object, Swept]) -> None:
        assert self.sweep is not None and self.target is not None
        target = self.target
        try:
            op = next(flow)
            while True:
                if self._closed:
                    flow.close()
                    return
                result: Any = None
                if isinstance(op, Pause):
                    await asyncio.sleep(op.seconds)
                else:
                    result = await asyncio.to_thread(op.run, target)
                op = flow.send((result, time.monotonic()))
        except StopIteration as done:
            _log_done(done.value)
        except Exception as exc:
            _log_failed(exc, self.sweep.interval)

    @property
    def running(self) -> bool:
        """Whether a collection of this sweeper runs now (one on a loop that was closed does not)."""
        task = self._task
        return task is not None and not task.done() and not task.get_loop().is_closed()

    async def aclose(self, timeout: float = CLOSE_WAIT) -> None:
        """Start no more collections; let a running one finish its batch (waiting at most ``timeout`` s)."""
        self._closed = True
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            return
        # asyncio.wait, not wait_for: it never raises the task's outcome (a cancellation by the loop's end).
        await asyncio.wait({task}, timeout=timeout)
        if not task.done():
            task.cancel()
