"""What the core reads of a request, and what it tells the response: plain values, no I/O."""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

__all__ = ["NO_REQUEST", "CookieAction", "Outcome", "RequestFacts", "RequestInfo"]


class RequestFacts(Protocol):
    """What the core reads of a request (for metadata and log lines); adapters may compute it lazily."""

    @property
    def path(self) -> str: ...

    @property
    def client_ip(self) -> str | None: ...

    @property
    def user_agent(self) -> str | None: ...


class RequestInfo(NamedTuple):
    """Request facts given as plain values."""

    path: str = ""
    client_ip: str | None = None
    user_agent: str | None = None


NO_REQUEST = RequestInfo()


class CookieAction(NamedTuple):
    """What the response must do with the session cookie: set ``value``, or expire it."""

    kind: Literal["set", "delete"]
    value: str = ""


class Outcome(NamedTuple):
    """What the response must carry, decided when it starts."""

    #: The cookie change, or ``None`` to leave the browser's cookie as it is.
    cookie: CookieAction | None = None
    #: The complete ``Set-Cookie`` header value for ``cookie`` (Starlette's format), or ``None``.
    set_cookie: str | None = None
    #: Add ``Cookie`` to the response's ``Vary`` header: the session was read.
    vary: bool = False


QUIET = Outcome()
VARY = Outcome(vary=True)
