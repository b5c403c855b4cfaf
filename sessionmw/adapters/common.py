"""What the adapters share, framework-neutral: the default backend, the 503 answer, Vary, start-up.

Rules of this module: no framework import (a Flask or WSGI app must not load Starlette or anyio),
no session policy (that is the core's). Every adapter imports from here; no adapter imports another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, AnyStr

from ..backends.base import WaitsForFailover
from ..core.config import Settings
from ..core.errors import ConfigError, SessionUnavailable

__all__ = [
    "ErrorResponse",
    "add_vary_cookie",
    "backend_spec",
    "bound_failover_wait",
    "default_backend_url",
    "unavailable_body",
]

logger = logging.getLogger("sessionmw")

#: Builds the answer to a request whose session cannot be had: ``(status, headers, body)``.
ErrorResponse = Callable[[SessionUnavailable], tuple[int, list[tuple[str, str]], bytes]]


def default_backend_url() -> str:
    """Return the default backend: a file backend in the system temp dir, shared by the host's workers."""
    from ..backends.file import default_directory

    return "file://" + str(default_directory())


def backend_spec(settings: Settings) -> Any:
    """Return the backend the settings name (a tiered pair with ``durable_backend``), or the default one."""
    if settings.durable_backend is None:
        return settings.backend if settings.backend is not None else default_backend_url()
    if settings.backend is None:
        raise ConfigError(
            "durable_backend needs a fast backend in front of it: set backend= too (memcached:// or redis://)",
            option="durable_backend",
        )
    from ..backends.tiered import TieredSpec

    return TieredSpec(
        settings.backend,
        settings.durable_backend,
        write_every=settings.durable_write_every,
        refresh_every=settings.effective_touch_interval,
    )


def unavailable_body(exc: SessionUnavailable) -> tuple[int, list[tuple[str, str]], bytes]:
    """The default 503 answer: ``Retry-After`` and a one-line plain-text body naming the cause."""
    body = f"503 Service Unavailable: {exc.message}\n".encode()
    return 503, [("content-type", "text/plain; charset=utf-8"), ("retry-after", str(exc.retry_after))], body


def add_vary_cookie(
    headers: list[tuple[AnyStr, AnyStr]], name: AnyStr, cookie: AnyStr, sep: AnyStr, star: AnyStr
) -> None:
    """Add ``Cookie`` to a response's Vary header, merged into one that exists (as Starlette does).

    One function for ``str`` headers (WSGI) and ``bytes`` headers (ASGI): ``name``, ``cookie``,
    ``sep`` and ``star`` are ``Vary``, ``Cookie``, ``", "`` and ``"*"`` in the headers' type; ``name``
    is also the spelling of a Vary header this adds.
    """
    lname = name.lower()
    for i, (key, value) in enumerate(headers):
        if key.lower() == lname:
            if cookie.lower() not in value.lower() and value.strip() != star:
                headers[i] = (key, value + sep + cookie)
            return
    headers.append((name, cookie))


def bound_failover_wait(backend: object, settings: Settings) -> None:
    """Keep a backend's wait for a failover (``failover_wait``) within ``lock_timeout``."""
    if isinstance(backend, WaitsForFailover):
        backend.cap_failover_wait(settings.lock_timeout)
