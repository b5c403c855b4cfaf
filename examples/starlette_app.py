"""Starlette: a drop-in for starlette.middleware.sessions.SessionMiddleware.

Routes: GET /  increment a counter in the session (holds the session lock)

Run:  uvicorn examples.starlette_app:app --port 8000   (sessions in files, in the system temp directory)
On Redis:      SESSIONMW_BACKEND=redis://127.0.0.1:6379/0 uvicorn examples.starlette_app:app
On memcached:  SESSIONMW_BACKEND=memcached://127.0.0.1:11211 uvicorn examples.starlette_app:app
"""

from __future__ import annotations

import os
import tempfile

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sessionmw import SessionMiddleware


async def counter(request: Request) -> JSONResponse:
    """Increment a counter in the session."""
    request.session["n"] = request.session.get("n", 0) + 1
    return JSONResponse({"n": request.session["n"]})


app = Starlette(
    routes=[Route("/", counter)],
    middleware=[
        Middleware(
            SessionMiddleware,
            secret_key=os.environ.get("APP_SECRET_KEY", "change-me"),
            backend=os.environ.get(
                "SESSIONMW_BACKEND", "file://" + os.path.join(tempfile.gettempdir(), "sessionmw-starlette-example")
            ),
        )
    ],
)
