"""Async only: the asyncio backend's clients belong to the event loop that built them.

Hand-written, outside the generated pair: ``_async.py`` calls these on lines marked
``# unasync: remove``, so the sync backend generated from it (``_sync.py``) has none of this.

When another loop calls (Starlette's TestClient without ``with`` runs each request on a loop of its
own, then closes it), the backend gives up the clients of the old loop, closing them there if that
loop still runs, and builds new ones. And when a loop shuts down without the app's lifespan shutdown
(that TestClient, a script's ``asyncio.run``), a watch closes the clients while the loop can still
run their closing, so they are not left behind unclosed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # pragma: no cover - redis-py installs async-timeout on these versions
    from async_timeout import timeout as deadline

__all__ = ["Watch", "close_elsewhere", "close_soon", "deadline", "running_loop", "spawn", "watch_loop_end"]

#: A loop's watch: an async generator parked at its ``yield`` until the loop shuts down.
Watch = AsyncGenerator[None, None]


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running loop; ``None`` outside one (``client()`` in a test: the first command's loop owns it)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def watch_loop_end(still_current: Callable[[], bool], close: Callable[[], Awaitable[None]]) -> Watch:
    """Call ``close()`` when the running loop shuts down, if ``still_current()`` then.

    ``asyncio.run``, ``asyncio.Runner`` and anyio close every live async generator of a loop before
    closing the loop (``loop.shutdown_asyncgens()``). One such generator, stepped to its ``yield``
    here, closes the clients in its ``finally`` at that moment. Keep the returned generator alive
    until then (or until the next loop's clients replace it); a client closed meanwhile, and a
    later one, are not its to close: ``still_current`` says so.
    """

    async def until_loop_ends() -> Watch:
        try:
            yield
        finally:
            if still_current():
                await close()

    watch = until_loop_ends()
    with contextlib.suppress(StopIteration):
        watch.asend(None).send(None)  # runs to the yield: nothing is awaited before it
    return watch


def close_soon(owner: asyncio.AbstractEventLoop | None, closing: list[Any]) -> None:
    """Close clients given up by another loop on that loop, if it still runs; else they died with it."""
    if owner is not None and owner.is_running() and not owner.is_closed():
        for client in closing:
            asyncio.run_coroutine_threadsafe(client.aclose(), owner)


async def close_elsewhere(owner: asyncio.AbstractEventLoop | None, closing: list[Any]) -> bool:
    """Close clients of another loop there and wait for it; ``False`` (nothing done) when they are this loop's.

    One app served from two loops (two test clients of one app): another loop's streams cannot be
    awaited here. They are closed on their loop if it still runs; else they died with it.
    """
    if owner is None or owner is asyncio.get_running_loop():
        return False
    if owner.is_running() and not owner.is_closed():
        for client in closing:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(client.aclose(), owner))
    return True


def spawn(tasks: set[asyncio.Task[None]], work: Awaitable[Any]) -> None:
    """Run ``work`` in a task of its own, kept in ``tasks`` until done; what it raises is dropped.

    For a command that must outlive a cancelled request (passing a wake-up on); losing it costs a
    waiter one poll, so an error is not worth a log line per request.
    """

    async def run() -> None:
        with contextlib.suppress(Exception):
            await work

    task = asyncio.get_running_loop().create_task(run())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
