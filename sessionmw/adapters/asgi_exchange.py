"""One HTTP request's messages through the ASGI middleware: the session closed as the response starts.

:class:`Exchange` wraps the app's ``send`` (and, for a request that may run again, its ``receive``);
:func:`replaying` gives a second run what the first received.
"""

from __future__ import annotations

from collections import deque

from starlette.types import Message, Receive, Send

from ..core.policy import Outcome
from ..core.session import Session
from ..drivers.aio import AsyncRequest
from .common import add_vary_cookie

__all__ = ["Exchange", "replaying"]


async def replaying(received: deque[Message], receive: Receive) -> Message:
    """Give a second run of the request what the first received, then ``receive`` again."""
    if received:
        return received.popleft()
    return await receive()


class Exchange:
    """One HTTP request's messages through the middleware: the response the app sends, what it receives.

    An object with slots rather than closures: one allocation per request, not a function and its cells.
    """

    __slots__ = ("_receive", "_send", "dropped", "handle", "received", "session", "started", "unanswered")

    def __init__(self, send: Send, handle: AsyncRequest, session: Session, receive: Receive | None) -> None:
        self._send = send
        self.handle = handle
        self.session = session
        #: The app's ``receive``, when what it receives is kept (:attr:`received`) for a second run.
        self._receive = receive
        self.received: list[Message] | None = None
        #: The response started (its start went out), or was dropped (a misprediction: run again).
        self.started = False
        self.dropped = False
        self.unanswered = False

    async def send(self, message: Message) -> None:
        """The app's ``send``: close the session as the response starts, then pass the message on."""
        if self.dropped:
            return
        handle = self.handle
        if message["type"] == "http.response.start":
            if handle.mispredicted is not None:
                self.dropped = True  # made without the session the app wanted: answered again instead
                return
            # A session never loaded is closed without a coroutine: the common untouched case.
            outcome = handle.finish_unloaded(self.session)
            if outcome is None:
                outcome = await handle.finish(self.session, True)
            if outcome.vary or outcome.set_cookie is not None:
                _add_headers(message, outcome)
            self.started = True
        await self._send(message)
        if handle.kept is not None and message["type"] == "http.response.body" and not message.get("more_body"):
            await handle.release_kept()  # the response is out

    async def receive(self) -> Message:
        """The app's ``receive``, keeping each message for a second run of the request."""
        assert self._receive is not None
        message = await self._receive()
        if self.received is None:
            self.received = []
        self.received.append(message)
        return message


def _add_headers(message: Message, outcome: Outcome) -> None:
    """Copy the core's outcome into an ``http.response.start`` message: Vary, then Set-Cookie."""
    headers = message.get("headers")
    if type(headers) is not list:
        headers = message["headers"] = list(headers or ())
    if outcome.vary:
        add_vary_cookie(headers, b"vary", b"Cookie", b", ", b"*")
    if outcome.set_cookie is not None:
        headers.append((b"set-cookie", outcome.set_cookie.encode("latin-1")))
