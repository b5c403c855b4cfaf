"""Calling the listeners: events, and the measurements metrics exporters take.

A listener that raises is logged on the ``sessionmw`` logger and never changes a response. The sync
side runs coroutine listeners on one daemon thread with its own event loop and waits for them; the
async side awaits them in the request's task.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ..core.events import Listeners, SessionEvent

__all__ = ["emit_async", "emit_sync", "observe"]

logger = logging.getLogger("sessionmw")


def _failed(listener: object, what: str) -> None:
    logger.error("session listener %r raised on %s; the request goes on", listener, what, exc_info=True)


def _call_plain(listeners: Listeners, event: SessionEvent) -> None:
    for f in listeners.plain:
        try:
            f(event)
        except Exception:
            _failed(f, event.kind)


def observe(methods: tuple[Callable[..., Any], ...], *args: object) -> None:
    """Call each of a listener's measurement methods (``backend_call``, ``lock_held``, ``waiting``)."""
    for m in methods:
        try:
            m(*args)
        except Exception:
            _failed(m, getattr(m, "__name__", "a measurement"))


async def emit_async(listeners: Listeners, event: SessionEvent) -> None:
    """Give ``event`` to every listener; coroutine listeners are awaited here."""
    _call_plain(listeners, event)
    for f in listeners.coroutines:
        try:
            await f(event)
        except Exception:
            _failed(f, event.kind)


def emit_sync(listeners: Listeners, event: SessionEvent) -> None:
    """Give ``event`` to every listener; coroutine listeners run on the listeners' loop thread."""
    _call_plain(listeners, event)
    for f in listeners.coroutines:
        try:
            _LoopThread.run(f(event))
        except Exception:
            _failed(f, event.kind)


class _LoopThread:
    """One daemon thread running an event loop, for coroutine listeners of sync apps."""

    _loop: asyncio.AbstractEventLoop | None = None
    _lock = threading.Lock()

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop thread and wait for it."""
        loop = cls._loop
        if loop is None:
            with cls._lock:
                loop = cls._loop
                if loop is None:
                    loop = asyncio.new_event_loop()
                    threading.Thread(target=loop.run_forever, name="sessionmw-listeners", daemon=True).start()
                    cls._loop = loop
        asyncio.run_coroutine_threadsafe(coro, loop).result()
