"""A configuration error met while Starlette builds the middleware stack fails the lifespan start-up.

Starlette builds its middleware lazily, on the first call: the lifespan start-up under a server. A
``ConfigError`` raised there reads to uvicorn as "lifespan unsupported": the server starts and answers
every request 500. So a :class:`~.asgi.SessionMiddleware` with a bad option that Starlette's
``build_middleware_stack`` is constructing (:func:`built_by_starlette`) becomes a :class:`Misconfigured`
stand-in holding the error, which fails the start-up with its one-line message; constructed any other
way, it raises the error. :func:`keywords_error` names every unknown keyword at once.

:mod:`.asgi` imports this module inside the constructor, on the error paths only: the stand-in is a
:class:`~.asgi.SessionMiddleware`, so this module imports that one.
"""

from __future__ import annotations

import copy
import inspect
from types import FrameType
from typing import Any, cast

from starlette.types import Receive, Scope, Send

from ..core.config import build_settings, unknown_option_error
from ..core.errors import ConfigError
from .asgi import KEYWORDS, SessionMiddleware

__all__ = ["Misconfigured", "built_by_starlette", "keywords_error"]


class Misconfigured(SessionMiddleware):
    """What Starlette's lazily built stack holds in place of a middleware whose options are wrong.

    Starlette builds its middleware on the first call, the lifespan start-up. A ``ConfigError`` raised
    there reads to uvicorn as "lifespan unsupported": the server starts and every request fails. This
    stand-in answers the start-up with ``lifespan.startup.failed`` and the one-line message (the server
    prints it and exits), then raises the error; every other scope raises it too.
    """

    error: ConfigError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing: a stand-in comes from :meth:`holding` or :meth:`take_over`."""

    @classmethod
    def holding(cls, error: ConfigError) -> Misconfigured:
        """Return a stand-in that fails with ``error``."""
        failed = object.__new__(cls)
        failed.error = error
        return failed

    @classmethod
    def take_over(cls, middleware: SessionMiddleware, error: ConfigError) -> None:
        """Turn ``middleware``, whose ``__init__`` met ``error``, into a stand-in that fails with it."""
        middleware.__class__ = cls
        cast(Misconfigured, middleware).error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": self.error.message})
        # A copy each time: raising one exception object again and again would grow its traceback.
        raise copy.copy(self.error)


def keywords_error(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ConfigError:
    """Return the error for a construction with unknown keywords, naming every bad option at once."""
    options = dict(zip(_POSITIONAL, args, strict=False))
    options.update(kwargs)
    for name in ("app", "error_response"):
        options.pop(name, None)
    try:
        build_settings(**options)
    except ConfigError as exc:
        return exc
    # build_settings names unknown options; should it not, name the first one here.
    return unknown_option_error(next(n for n in kwargs if n not in KEYWORDS), KEYWORDS)  # pragma: no cover


#: The positional parameters of ``SessionMiddleware(app, secret_key, session_cookie, ...)``, in order.
_POSITIONAL = tuple(
    name
    for name, parameter in inspect.signature(SessionMiddleware.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and name != "self"
)


def built_by_starlette(frame: FrameType | None) -> bool:
    """Whether the constructor running in ``frame`` was called by Starlette's ``build_middleware_stack``.

    Only there is a ``ConfigError`` turned into a failed lifespan start-up; a direct construction
    raises it. Constructors of subclasses calling ``super().__init__`` are looked through.
    """
    from starlette.applications import Starlette

    try:
        while frame is not None and frame.f_code.co_name in ("__new__", "__init__"):
            first = frame.f_locals.get("self", frame.f_locals.get("cls"))
            if not (
                isinstance(first, SessionMiddleware)
                or (isinstance(first, type) and issubclass(first, SessionMiddleware))
            ):
                break
            frame = frame.f_back
        return (
            frame is not None
            and frame.f_code.co_name == "build_middleware_stack"
            and isinstance(frame.f_locals.get("self"), Starlette)
        )
    finally:
        del frame  # a frame held in a local keeps its whole stack alive
