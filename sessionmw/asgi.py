"""The ASGI middleware's public import path (the adapter lives in :mod:`sessionmw.adapters.asgi`)."""

from __future__ import annotations

from .adapters.asgi import SessionMiddleware as SessionMiddleware
from .adapters.asgi import load_session as load_session

__all__ = ["SessionMiddleware", "load_session"]
