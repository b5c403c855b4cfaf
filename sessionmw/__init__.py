"""sessionmw: server-side, locked HTTP sessions for ASGI, WSGI and Flask apps.

The cookie carries only a signed session id; the data lives in a backend shared by every worker;
a per-session lock keeps two concurrent requests of one user from overwriting each other; read-only
routes skip the lock and the write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .adapters.wsgi import WSGISessionMiddleware as WSGISessionMiddleware
from .admin.store import SessionStore as SessionStore
from .backends import AsyncBackend as AsyncBackend
from .backends import Backend as Backend
from .backends import Record as Record
from .backends import SessionInfo as SessionInfo
from .core.config import options_from_config as options_from_config
from .core.errors import BackendUnavailable as BackendUnavailable
from .core.errors import ConfigError as ConfigError
from .core.errors import ReadOnlySessionError as ReadOnlySessionError
from .core.errors import RecordTooLarge as RecordTooLarge
from .core.errors import SerializationError as SerializationError
from .core.errors import SessionError as SessionError
from .core.errors import SessionLockTimeout as SessionLockTimeout
from .core.errors import SessionUnavailable as SessionUnavailable
from .core.errors import TooManyWaiters as TooManyWaiters
from .core.events import SessionEvent as SessionEvent
from .core.readonly import read_only as read_only
from .core.session import Session as Session

if TYPE_CHECKING:
    from .adapters.asgi import SessionMiddleware as SessionMiddleware
    from .adapters.asgi import load_session as load_session

__version__ = "0.1.0"

__all__ = [
    "AsyncBackend",
    "Backend",
    "BackendUnavailable",
    "ConfigError",
    "ReadOnlySessionError",
    "Record",
    "RecordTooLarge",
    "SerializationError",
    "Session",
    "SessionError",
    "SessionEvent",
    "SessionInfo",
    "SessionLockTimeout",
    "SessionMiddleware",
    "SessionStore",
    "SessionUnavailable",
    "TooManyWaiters",
    "WSGISessionMiddleware",
    "load_session",
    "options_from_config",
    "read_only",
]


def __getattr__(name: str) -> object:
    # The ASGI adapter imports Starlette and anyio: loaded on first use, so that a Flask or WSGI
    # app never imports them.
    if name in ("SessionMiddleware", "load_session"):
        from .adapters import asgi

        return getattr(asgi, name)
    raise AttributeError(f"module 'sessionmw' has no attribute {name!r}")
