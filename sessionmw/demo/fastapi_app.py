"""The demo served by FastAPI (ASGI): ``build_fastapi_app(backend, secret_key)``.

Forms are read from the url-encoded body directly, so the demo needs no ``python-multipart``.
Store calls block, so they run in a worker thread; the slow page sleeps with ``asyncio.sleep``
while its request holds the session lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..admin.store import SessionStore
from ..asgi import SessionMiddleware
from ..core.readonly import read_only
from ..core.session import Session
from . import COOKIE_PREFIX, IDLE_TIMEOUT, KEY_PREFIX, LOCK_TIMEOUT, pages

__all__ = ["build_fastapi_app"]


def _respond(reply: pages.Reply) -> Response:
    if reply.location is not None:
        return RedirectResponse(reply.location, status_code=reply.status)
    return HTMLResponse(reply.html, status_code=reply.status)


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

    app = FastAPI(title="sessionmw demo", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store = store
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key,
        backend=backend,
        cookie_prefix=COOKIE_PREFIX,
        key_prefix=KEY_PREFIX,
        idle_timeout=IDLE_TIMEOUT,
        lock_timeout=LOCK_TIMEOUT,
    )

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> Response:
        return _respond(pages.home(_session(request), request.query_params.get("msg")))

    @app.post("/increment")
    async def increment(request: Request) -> Response:
        return _respond(pages.increment(_session(request)))

    @app.post("/login")
    async def login(request: Request) -> Response:
        return _respond(pages.login(_session(request), await _form(request)))

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        return _respond(pages.logout(_session(request)))

    @app.get("/sessions", response_class=HTMLResponse)
    async def sessions(request: Request) -> Response:
        session, msg = _session(request), request.query_params.get("msg")
        return _respond(await run_in_threadpool(pages.sessions, session, store, msg))

    @app.post("/sessions/end")
    async def end_session(request: Request) -> Response:
        session, form = _session(request), await _form(request)
        return _respond(await run_in_threadpool(pages.end_session, session, store, form))

    @app.post("/sessions/end-others")
    async def end_others(request: Request) -> Response:
        return _respond(await run_in_threadpool(pages.end_others, _session(request), store))

    @app.get("/admin", response_class=HTMLResponse)
    async def admin(request: Request) -> Response:
        session, msg = _session(request), request.query_params.get("msg")
        return _respond(await run_in_threadpool(pages.admin, session, store, msg))

    @app.post("/admin/end-user")
    async def admin_end_user(request: Request) -> Response:
        session, form = _session(request), await _form(request)
        return _respond(await run_in_threadpool(pages.admin_end_user, session, store, form))

    @app.get("/status", response_class=HTMLResponse)
    @read_only
    async def status(request: Request) -> Response:
        return _respond(pages.status(_session(request)))

    @app.get("/slow", response_class=HTMLResponse)
    async def slow(request: Request) -> Response:
        session = _session(request)
        seconds = pages.slow_seconds(request.query_params)
        pages.slow_start(session)
        await asyncio.sleep(seconds)
        return _respond(pages.slow_done(session, seconds))

    return app
