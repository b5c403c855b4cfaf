"""The WSGI middleware's public import path (the adapter lives in :mod:`sessionmw.adapters.wsgi`)."""

from __future__ import annotations

from .adapters.wsgi import ENVIRON_KEY as ENVIRON_KEY
from .adapters.wsgi import WSGISessionMiddleware as WSGISessionMiddleware

__all__ = ["ENVIRON_KEY", "WSGISessionMiddleware"]
