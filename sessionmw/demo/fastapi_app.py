"""The demo served by FastAPI (ASGI): ``build_fastapi_app(backend, secret_key)``.

Forms are read from the url-encoded body directly, so the demo needs no ``python-multipart``.
Store calls block, so they run in a worker thread; the slow page sleeps with ``asyncio.sleep``
while its request holds the session lock. A small ASGI middleware outside the session middleware
gives each request its notes (:func:`~sessionmw.demo.activity.noting`), and HTTP errors are pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..admin.store import SessionStore
from ..asgi import SessionMiddleware
from ..core.readonly import read_only
from ..core.session import Session
from . import COOKIE_PREFIX, EXCLUDE_PATHS, IDLE_TIMEOUT, KEY_PREFIX, LOCK_TIMEOUT, MAX_SESSIONS_PER_USER, pages
from .activity import Activity, metrics_listener, noting

__all__ = ["build_fastapi_app"]


def _response(reply: pages.Reply) -> Response:
    if reply.location is not None:
        response: Response = RedirectResponse(reply.location, status_code=reply.status)
    else:
        response = Response(reply.html, status_code=reply.status, media_type=reply.media_type)
    if reply.forget_cookie:
        response.delete_cookie(pages.COOKIE_NAME, path="/", httponly=True, samesite="lax")
    return response


def _respond(session: Session, reply: pages.Reply) -> Response:
    return _response(pages.finish(session, reply))


class _Noting:
    """Pure ASGI middleware: every HTTP request runs with notes of its own, for the demo's listener."""

    def __init__(self, app: ASGIApp, activity: Activity) -> None:
        self.app = app
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with noting(self.activity):
            await self.app(scope, receive, send)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _session(request: Request) -> Session:
    session = request.session
    assert isinstance(session, Session)
    return session


def build_fastapi_app(backend: str, secret_key: str) -> FastAPI:
    """Return the demo as a FastAPI app with sessionmw's ASGI middleware on ``backend``."""
    store = SessionStore(backend, key_prefix=KEY_PREFIX)  # opens the backend now: a bad URL fails here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    activity = Activity()
    prometheus = metrics_listener()
    app = FastAPI(title="sessionmw demo", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store = store
    app.state.activity = activity
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key,
        backend=backend,
        cookie_prefix=COOKIE_PREFIX,
        key_prefix=KEY_PREFIX,
        idle_timeout=IDLE_TIMEOUT,
        lock_timeout=LOCK_TIMEOUT,
        max_sessions_per_user=MAX_SESSIONS_PER_USER,
        exclude_paths=EXCLUDE_PATHS,
        listeners=[activity] if prometheus is None else [activity, prometheus],
    )
    app.add_middleware(_Noting, activity=activity)  # added last: outside the session middleware

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _response(pages.http_error(exc.status_code, request.url.path))

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> Response:
        session = _session(request)
        return _respond(session, pages.home(session, request.query_params.get("msg")))

    @app.post("/increment")
    async def increment(request: Request) -> Response:
        session = _session(request)
        return _respond(session, pages.increment(session))

    @app.post("/login")
    async def login(request: Request) -> Response:
        session = _session(request)
        return _respond(session, pages.login(session, await _form(request)))

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session = _session(request)
        return _respond(session, pages.logout(session))

    @app.get("/sessions", response_class=HTMLResponse)
    async def sessions(request: Request) -> Response:
        session, msg = _session(request), request.query_params.get("msg")
        return _respond(session, await run_in_threadpool(pages.sessions, session, store, msg))

    @app.post("/sessions/end")
    async def end_session(request: Request) -> Response:
        session, form = _session(request), await _form(request)
        return _respond(session, await run_in_threadpool(pages.end_session, session, store, form))

    @app.post("/sessions/end-others")
    async def end_others(request: Request) -> Response:
        session = _session(request)
        return _respond(session, await run_in_threadpool(pages.end_others, session, store))

    @app.get("/admin", response_class=HTMLResponse)
    async def admin(request: Request) -> Response:
        session, msg = _session(request), request.query_params.get("msg")
        return _respond(session, await run_in_threadpool(pages.admin, session, store, msg))

    @app.post("/admin/end-user")
    async def admin_end_user(request: Request) -> Response:
        session, form = _session(request), await _form(request)
        return _respond(session, await run_in_threadpool(pages.admin_end_user, session, store, form))

    @app.get("/status", response_class=HTMLResponse)
    @read_only
    async def status(request: Request) -> Response:
        session = _session(request)
        return _respond(session, pages.status(session))

    @app.get("/slow", response_class=HTMLResponse)
    async def slow(request: Request) -> Response:
        session = _session(request)
        seconds = pages.slow_seconds(request.query_params)
        pages.slow_start(session, seconds)
        await asyncio.sleep(seconds)
        return _respond(session, pages.slow_done(session, seconds))

    @app.get("/metrics")
    async def metrics() -> Response:
        return _response(pages.metrics(prometheus))

    return app
