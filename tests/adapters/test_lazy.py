"""Routes in ``lazy_paths``: the ASGI middleware loads their session only when the app asks.

``await load_session(request)`` (or FastAPI's ``Depends(load_session)``) loads it, taking the lock
unless the route is read-only; a sync endpoint may also just use ``request.session``. A lazy request
that never asks costs no backend round trip and waits for no lock.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sessionmw import Session, SessionError, SessionMiddleware, load_session, read_only

from ..apps import SLOW_ENTERED, STARLETTE_ROUTES
from ..conftest import free_port

SECRET = "lazy-secret"


async def lazy_inc(request: Request) -> JSONResponse:
    session = await load_session(request)
    session["n"] = session.get("n", 0) + 1
    return JSONResponse({"n": session["n"], "same": session is request.session})


async def lazy_none(request: Request) -> PlainTextResponse:
    return PlainTextResponse("untouched")


async def lazy_forgot(request: Request) -> JSONResponse:
    return JSONResponse({"n": request.session.get("n")})


def lazy_sync(request: Request) -> JSONResponse:
    # A sync endpoint runs in a worker thread: the first use loads the session there.
    request.session["n"] = request.session.get("n", 0) + 1
    return JSONResponse({"n": request.session["n"]})


@read_only
async def lazy_view(request: Request) -> JSONResponse:
    session = await load_session(request)
    return JSONResponse({"n": session.get("n"), "read_only": session.read_only})


@read_only
async def lazy_upgrade(request: Request) -> JSONResponse:
    await request.session.aupgrade()  # type: ignore[attr-defined]
    request.session["n"] = request.session.get("n", 0) + 10
    return JSONResponse({"n": request.session["n"]})


LAZY_ROUTES = [
    Route("/lazy/inc", lazy_inc),
    Route("/lazy/none", lazy_none),
    Route("/lazy/forgot", lazy_forgot),
    Route("/lazy/sync", lazy_sync),
    Route("/lazy/view", lazy_view),
    Route("/lazy/upgrade", lazy_upgrade),
]


def lazy_app(**options: Any) -> Starlette:
    options.setdefault("secret_key", SECRET)
    options.setdefault("lazy_paths", ["/lazy/*"])
    return Starlette(routes=LAZY_ROUTES + STARLETTE_ROUTES, middleware=[Middleware(SessionMiddleware, **options)])


def _holding_the_lock(c: TestClient, seconds: float) -> threading.Thread:
    """Start a request that holds the session's lock for ``seconds`` (the eager /slow route)."""
    seen = SLOW_ENTERED.count
    t = threading.Thread(target=lambda: c.get("/slow", params={"t": str(seconds)}))
    t.start()
    SLOW_ENTERED.past(seen)
    return t


def test_lazy_route_loads_when_asked_and_writes_back(backend_url: str, key_prefix: str) -> None:
    with TestClient(lazy_app(backend=backend_url, key_prefix=key_prefix)) as c:
        assert c.get("/lazy/inc").json() == {"n": 1, "same": True}
        assert c.get("/lazy/inc").json() == {"n": 2, "same": True}
        assert c.get("/lazy/sync").json() == {"n": 3}
        assert c.get("/inc").json() == {"n": 4}, "eager routes see what lazy ones wrote"
        assert c.get("/lazy/view").json() == {"n": 4, "read_only": True}


def test_lazy_route_that_never_asks_takes_no_lock_and_sends_no_cookie(backend_url: str, key_prefix: str) -> None:
    with TestClient(lazy_app(backend=backend_url, key_prefix=key_prefix, lock_timeout=10)) as c:
        c.get("/inc")
        started = time.monotonic()  # the holder takes the lock after this, and keeps it 1.5 s
        holder = _holding_the_lock(c, 1.5)
        lazy = c.get("/lazy/none")
        viewed = c.get("/lazy/view")
        answered_while_held = holder.is_alive()
        eager = c.get("/none")
        # The lock is free only 1.5 s after `started`; the holder's thread may still be reading its
        # response when the eager request, woken at the release, is done, so time decides, not it.
        eager_waited = time.monotonic() >= started + 1.5
        holder.join()
        assert answered_while_held, "the lazy route answered without waiting for the lock"
        assert lazy.status_code == 200 and lazy.text == "untouched"
        assert "set-cookie" not in lazy.headers and "vary" not in lazy.headers
        assert viewed.json() == {"n": 1, "read_only": True}, "read-only: loaded without the lock"
        assert eager.status_code == 200 and eager_waited, "an eager route waits for the lock even if unused"
        assert c.get("/view").json()["session"] == {"n": 2}


def test_lazy_read_only_route_upgrades_under_the_lock(backend_url: str, key_prefix: str) -> None:
    with TestClient(lazy_app(backend=backend_url, key_prefix=key_prefix)) as c:
        c.get("/inc")
        assert c.get("/lazy/upgrade").json() == {"n": 11}
        assert c.get("/view").json()["session"] == {"n": 11}


def test_untouched_lazy_route_costs_no_redis_command(redis_url: str, key_prefix: str) -> None:
    import redis

    raw = redis.Redis.from_url(redis_url)

    def calls() -> int:
        stats = raw.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    with TestClient(lazy_app(backend=redis_url, key_prefix=key_prefix)) as c:
        c.get("/lazy/inc")
        before = calls()
        for _ in range(5):
            assert c.get("/lazy/none").status_code == 200
        untouched = calls() - before
        before = calls()
        c.get("/none")
        eager = calls() - before
    raw.close()
    assert untouched == 0
    assert eager >= 2, "the check can see commands: an eager route that never uses its session locks and unlocks"


def test_async_endpoint_that_forgets_to_load_gets_a_clear_error() -> None:
    with TestClient(lazy_app(backend="memory://")) as c:
        c.get("/lazy/inc")
        with pytest.raises(SessionError, match=re.escape("await sessionmw.load_session(request)")):
            c.get("/lazy/forgot")
        assert c.get("/lazy/inc").json()["n"] == 2, "nothing was lost or left locked"


def test_without_a_cookie_a_lazy_route_starts_a_new_session() -> None:
    with TestClient(lazy_app(backend="memory://")) as c:
        assert c.get("/lazy/forgot").json() == {"n": None}, "no cookie: nothing to load, the session is new"
        assert c.get("/lazy/inc").json()["n"] == 1


def test_backend_down_is_a_503_only_when_the_session_is_loaded() -> None:
    with TestClient(lazy_app(backend=f"redis://127.0.0.1:{free_port()}/0?connect_timeout=0.5")) as c:
        c.cookies.set("session", _signed("a" * 43))
        assert c.get("/lazy/none").status_code == 200
        r = c.get("/lazy/inc")
        assert r.status_code == 503 and "redis" in r.text.lower() and r.text.count("\n") == 1


def _signed(sid: str) -> str:
    from sessionmw.core.cookies import IdSigner

    return IdSigner([SECRET]).sign(sid)


def test_fastapi_dependency() -> None:
    api = FastAPI()

    @api.get("/lazy/count")
    async def count(session: Session = Depends(load_session)) -> dict[str, int]:  # noqa: B008
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    @api.get("/lazy/status")
    @read_only
    async def status(session: Session = Depends(load_session)) -> dict[str, Any]:  # noqa: B008
        return {"n": session.get("n"), "read_only": session.read_only}

    @api.get("/eager")
    async def eager(session: Session = Depends(load_session)) -> dict[str, Any]:  # noqa: B008
        return {"n": session.get("n")}

    api.add_middleware(SessionMiddleware, secret_key=SECRET, backend="memory://", lazy_paths=["/lazy/*"])
    with TestClient(api) as c:
        assert c.get("/lazy/count").json() == {"n": 1}
        assert c.get("/lazy/count").json() == {"n": 2}
        assert c.get("/lazy/status").json() == {"n": 2, "read_only": True}
        assert c.get("/eager").json() == {"n": 2}, "on an eager route the dependency returns the loaded session"


def test_load_session_without_the_middleware_says_so() -> None:
    async def endpoint(request: Request) -> JSONResponse:
        await load_session(request)
        return JSONResponse({})

    with TestClient(Starlette(routes=[Route("/", endpoint)])) as c:
        with pytest.raises(SessionError, match="SessionMiddleware"):
            c.get("/")


def test_lazy_paths_is_checked_like_the_other_path_options() -> None:
    app = SessionMiddleware(Starlette(), secret_key="k", backend="memory://", lazy_paths="/a/*, /b")
    assert app.settings.lazy_paths == ("/a/*", "/b")
