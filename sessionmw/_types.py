"""Type aliases for ASGI (Starlette's own, so ``Middleware(SessionMiddleware, ...)`` type-checks) and WSGI."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

__all__ = ["ASGIApp", "ExcInfo", "Message", "Receive", "Scope", "Send", "StartResponse", "WSGIApp", "WSGIEnviron"]
