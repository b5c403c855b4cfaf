"""The driver loop: perform a core flow's operations until the flow returns.

Written once, by hand, in ``_run_async.py``; ``_run_sync.py`` is generated from it by
``scripts/unasync.py`` (CI fails when it is stale). What differs between the two sides (how a waiter
sleeps and is woken, how locks are renewed) is the I/O layer in ``aio.py`` and ``sync.py``.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any, TypeVar

from ..backends.base import AsyncBackend
from ..core.ops import BackendOp, Emit, Log, Op, Queue, Sleep
from .common import DriverBase
from .emit import emit_async, observe

__all__ = ["AsyncRunner"]

T = TypeVar("T")


class AsyncRunner(DriverBase):
    """Runs core flows against the driver's backend; the I/O layer supplies ``_sleep``."""

    backend: AsyncBackend
    #: A backend whose primitives never block (memory), called without a coroutine per primitive.
    _inline: Any = None

    async def run(self, flow: Generator[Op, object, T]) -> T:
        """Drive ``flow`` to its end and return its value; backend errors are thrown into it."""
        backend = self.backend
        inline = self._inline
        listeners = self.listeners
        timing = listeners.timing
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                value: T = stop.value
                return value
            error = None
            try:
                if isinstance(op, BackendOp):
                    if timing:
                        started = time.perf_counter()
                        try:
                            result = op.run(inline) if inline is not None else await op.arun(backend)
                        finally:
                            observe(listeners.backend_call, type(op).__name__, time.perf_counter() - started)
                        self._measure_lock(op, result)
                    else:
                        result = op.run(inline) if inline is not None else await op.arun(backend)
                    # What the op's type says must follow it (DriverBase._after, inlined: every op).
                    if op.holds:
                        if result[0]:
                            self._hold(op.sid, op.token)
                    else:
                        if op.frees:
                            self.renewals.discard(op.token)
                        if op.wakes:
                            self._wake(op.sid)
                elif type(op) is Sleep:
                    result = await self._sleep(op.sid, op.delay)
                elif type(op) is Queue:
                    result = self._queue(op)
                    if timing and (result or not op.enter):
                        observe(listeners.waiting, 1 if op.enter else -1)
                elif type(op) is Log:
                    self._log(op)
                    result = None
                elif type(op) is Emit:
                    await emit_async(listeners, op.event)
                    result = None
            except BaseException as exc:  # noqa: B036 - re-raised through the flow's finally blocks
                error = exc

    async def _sleep(self, sid: str, delay: float) -> float:  # pragma: no cover - supplied by the I/O layer
        """Wait up to ``delay`` seconds for ``sid``'s lock; return the monotonic time after."""
        raise NotImplementedError
