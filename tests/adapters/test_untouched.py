"""ASGI: a route that never touches its session takes no lock, loads nothing and never waits.

The middleware learns which endpoints leave their session untouched and defers (does not load, does
not lock) their sessions (docs/untouched-routes.md). These tests hold a session's lock from outside
(another holder on the same backend) and show that a deferred route answers while a touching one
waits; count the backend operations; force mispredictions and show that they never write without
the lock and lose nothing.

Waits are shown without clocks: the app's ``lock_timeout`` is short and the outside holder keeps the
lock far longer, so a request that waits for the lock is answered 503, and one that does not, 200.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.security import HTTPBearer
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionmw import Session, SessionMiddleware, load_session
from sessionmw.adapters.asgi import reach_of
from sessionmw.backends import open_backend
from sessionmw.core.cookies import IdSigner
from sessionmw.core.handles import handle_of
from sessionmw.core.route import WATCHED, Mispredicted, Predictions, Usage

SECRET = "untouched-secret"
#: Short, so that a request waiting for a lock held from outside is answered 503 soon.
LOCK_TIMEOUT = 0.5
#: Requests with a cookie after which an async endpoint that never used its session is deferred.
ASYNC_WATCH = WATCHED["loop"]


class Calls:
    """A listener object that records every backend operation the driver performs, and the events."""

    def __init__(self) -> None:
        self.ops: list[str] = []
        self.events: list[str] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event.kind)

    def backend_call(self, op: str, seconds: float) -> None:
        self.ops.append(op)

    def take(self) -> list[str]:
        ops, self.ops = self.ops, []
        return ops


# -- the app ------------------------------------------------------------------------------------

RUNS: dict[str, int] = {}


async def touch(request: Request) -> JSONResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return JSONResponse({"n": request.session["n"]})


async def untouched(request: Request) -> PlainTextResponse:
    return PlainTextResponse("untouched")


async def fifth(request: Request) -> JSONResponse:
    """Leaves its session alone on its first four calls, then increments ``fifth``."""
    RUNS["fifth"] = calls = RUNS.get("fifth", 0) + 1
    if calls < 5:
        return JSONResponse({"calls": calls})
    request.session["fifth"] = request.session.get("fifth", 0) + 1
    return JSONResponse({"calls": calls, "fifth": request.session["fifth"]})


async def swallows(request: Request) -> PlainTextResponse:
    """Uses its session only when asked to, and catches whatever that raises."""
    RUNS["swallows"] = RUNS.get("swallows", 0) + 1
    if "use" not in request.query_params:
        return PlainTextResponse("left alone")
    try:
        n = request.session.get("n")
    except Exception:  # an app that hides errors: its answer must not reach the client
        return PlainTextResponse("made without the session")
    return PlainTextResponse(f"n={n}")


async def echo_body(request: Request) -> PlainTextResponse:
    """Reads the body first, then (when asked) the session: a second run must get the same body."""
    body = await request.body()
    RUNS["echo"] = RUNS.get("echo", 0) + 1
    if "use" in request.query_params:
        request.session["body"] = body.decode()
    return PlainTextResponse(body)


def sync_endpoint(request: Request) -> JSONResponse:
    """A sync endpoint (run in a worker thread) that touches its session only when asked."""
    RUNS["sync"] = RUNS.get("sync", 0) + 1
    if "touch" in request.query_params:
        request.session["n"] = request.session.get("n", 0) + 1
        return JSONResponse({"n": request.session["n"]})
    return JSONResponse({"n": None})


def sync_endpoint_2(request: Request) -> JSONResponse:
    return sync_endpoint(request)


async def view(request: Request) -> JSONResponse:
    return JSONResponse({"session": dict(request.session)})


ROUTES = [
    Route("/touch", touch),
    Route("/untouched", untouched),
    Route("/fifth", fifth),
    Route("/swallows", swallows),
    Route("/echo", echo_body, methods=["GET", "POST"]),
    Route("/sync", sync_endpoint),
    Route("/sync2", sync_endpoint_2),
    Route("/view", view),
]


def app_with(*inner: Middleware, **options: Any) -> Starlette:
    options.setdefault("secret_key", SECRET)
    options.setdefault("lock_timeout", LOCK_TIMEOUT)
    return Starlette(routes=ROUTES, middleware=[Middleware(SessionMiddleware, **options), *inner])


def middleware_of(client: TestClient) -> SessionMiddleware:
    """The app's SessionMiddleware instance (its stack is built by the client's first request)."""
    layer: Any = client.app
    layer = layer.middleware_stack
    while layer is not None and not isinstance(layer, SessionMiddleware):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, SessionMiddleware)
    return layer


def sid_of(client: TestClient) -> str:
    sid = IdSigner([SECRET]).unsign(client.cookies["session"], None)
    assert sid is not None
    return sid


@contextmanager
def holding(url: Any, key_prefix: str, sid: str) -> Iterator[Any]:
    """Hold the session's lock from outside the app (another holder on the same backend)."""
    backend = open_backend(url, key_prefix=key_prefix)
    handle = handle_of(sid)
    locked, record = backend.lock_and_load(handle, "outside", 60)
    assert locked and record is not None
    try:
        yield backend
    finally:
        backend.release(handle, "outside", None)
        backend.close()


def stored(url: Any, key_prefix: str, sid: str) -> bytes | None:
    """The session's stored record (its bytes), read without the lock."""
    backend = open_backend(url, key_prefix=key_prefix)
    try:
        record = backend.load(handle_of(sid))
        return None if record is None else record.data
    finally:
        backend.close()


def warm(client: TestClient, path: str, times: int = ASYNC_WATCH) -> None:
    for _ in range(times):
        assert client.get(path).status_code == 200


# -- an untouched route takes no lock and never waits ----------------------------------------------


def test_untouched_route_takes_no_lock_and_never_waits(backend_url: Any, key_prefix: str) -> None:
    calls = Calls()
    with TestClient(app_with(backend=backend_url, key_prefix=key_prefix, listeners=[calls])) as c:
        assert c.get("/touch").json() == {"n": 1}
        sid = sid_of(c)
        calls.events.clear()
        with holding(backend_url, key_prefix, sid):
            # While it is watched, the untouched route is loaded as usual: it waits for the lock (in
            # vain; a route that does not use its session is answered all the same).
            assert c.get("/untouched").status_code == 200
            assert calls.events == ["lock_timeout"], "the watched route waited"
        warm(c, "/untouched", ASYNC_WATCH - 1)
        calls.events.clear()
        with holding(backend_url, key_prefix, sid):
            for _ in range(3):
                r = c.get("/untouched")
                assert r.status_code == 200 and r.text == "untouched"
                assert "set-cookie" not in r.headers and "vary" not in r.headers
            assert calls.events == [], "a deferred route waits for nothing"
            assert c.get("/touch").status_code == 503, "a route that uses its session still waits"
            assert calls.events == ["lock_timeout"]
        assert c.get("/touch").json() == {"n": 2}, "nothing was lost or left locked"


def test_untouched_route_costs_no_backend_operation_on_redis(redis_url: str, key_prefix: str) -> None:
    calls = Calls()
    with TestClient(app_with(backend=redis_url, key_prefix=key_prefix, listeners=[calls])) as c:
        c.get("/touch")
        calls.take()
        c.get("/untouched")
        assert calls.take() == ["LockAndLoad", "Release"], "watched: loaded as usual (the counter counts)"
        warm(c, "/untouched", ASYNC_WATCH - 1)
        calls.take()
        for _ in range(5):
            c.get("/untouched")
        assert calls.take() == []


# -- FastAPI: the dependency tree tells -----------------------------------------------------------


def test_fastapi_route_without_request_costs_no_backend_operation(backend_url: Any, key_prefix: str) -> None:
    api = FastAPI()
    bearer = HTTPBearer(auto_error=False)

    @api.get("/items/{item}")
    async def item(item: int, q: str = "", auth: Any = Depends(bearer)) -> dict[str, Any]:  # noqa: B008
        return {"item": item, "q": q}

    @api.post("/items")
    def add(body: dict[str, int]) -> dict[str, int]:
        return body

    @api.get("/touch")
    async def touch(request: Request) -> dict[str, int]:
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    calls = Calls()
    api.add_middleware(
        SessionMiddleware,
        secret_key=SECRET,
        backend=backend_url,
        key_prefix=key_prefix,
        listeners=[calls],
        lock_timeout=LOCK_TIMEOUT,
    )
    with TestClient(api) as c:
        c.get("/touch")
        c.get("/items/1")  # watched once: a middleware using every session would show here
        c.post("/items", json={"a": 1})
        calls.take()
        with holding(backend_url, key_prefix, sid_of(c)):
            for i in range(2, 6):  # other paths to the same route: one usage per endpoint, not per path
                assert c.get(f"/items/{i}", params={"q": "x"}).json() == {"item": i, "q": "x"}
                assert c.post("/items", json={"b": i}).json() == {"b": i}
            assert c.get("/touch").status_code == 503
        assert calls.take().count("LockAndLoad") >= 1, "only /touch asked the backend (the counter counts)"
        for i in range(3):
            c.get(f"/items/{i}")
        assert calls.take() == [], "no backend operation at all for a route that cannot reach its session"


def test_fastapi_load_session_dependency_is_lazy_and_takes_the_lock(backend_url: Any, key_prefix: str) -> None:
    api = FastAPI()

    @api.get("/count")
    async def count(session: Session = Depends(load_session)) -> dict[str, int]:  # noqa: B008
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    @api.get("/count-with-request")
    async def count_with_request(request: Request, _: Session = Depends(load_session)) -> dict[str, int]:  # noqa: B008
        # The endpoint runs after its dependencies: the session is loaded by now.
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    calls = Calls()
    api.add_middleware(
        SessionMiddleware,
        secret_key=SECRET,
        backend=backend_url,
        key_prefix=key_prefix,
        listeners=[calls],
        lock_timeout=LOCK_TIMEOUT,
    )
    with TestClient(api) as c:
        assert c.get("/count").json() == {"n": 1}
        assert c.get("/count").json() == {"n": 2}  # watched once: loaded before the app
        assert c.get("/count-with-request").json() == {"n": 3}
        mw = middleware_of(c)
        assert all(u.deferred for u in mw.predictions._usages.values())
        calls.take()
        assert c.get("/count").json() == {"n": 4}, "deferred: loaded by the dependency"
        assert c.get("/count-with-request").json() == {"n": 5}
        assert calls.take().count("LockAndLoad") == 2
        with holding(backend_url, key_prefix, sid_of(c)):
            assert c.get("/count").status_code == 503, "the dependency takes the lock"
        assert c.get("/count").json() == {"n": 6}


# -- sync endpoints load in their worker thread ---------------------------------------------------


def test_sync_endpoint_loads_its_deferred_session_in_its_thread_under_the_lock(
    backend_url: Any, key_prefix: str
) -> None:
    calls = Calls()
    with TestClient(app_with(backend=backend_url, key_prefix=key_prefix, listeners=[calls])) as c:
        c.get("/touch")
        c.get("/sync")
        c.get("/sync2")  # each watched once: now deferred
        sid = sid_of(c)
        calls.events.clear()
        with holding(backend_url, key_prefix, sid):
            assert c.get("/sync").json() == {"n": None}, "deferred: answered while the lock is held"
            assert calls.events == [], "and without waiting for it"
            # Its first use loads it in the worker thread, taking the lock: it waits, and times out.
            r = c.get("/sync2", params={"touch": "1"})
            assert r.status_code == 503 and "lock" in r.text
            assert calls.events == ["lock_timeout"]
        calls.take()
        RUNS.clear()
        assert c.get("/sync", params={"touch": "1"}).json() == {"n": 2}
        assert calls.take()[:1] == ["LockAndLoad"]
        assert RUNS["sync"] == 1, "loaded in its thread: no misprediction, no second run"
        assert c.get("/view").json() == {"session": {"n": 2}}
        mw = middleware_of(c)
        assert mw.predictions.enabled, "no misprediction: a worker thread loads the session"


# -- mispredictions fail safe --------------------------------------------------------------------


def test_a_misprediction_never_writes_without_the_lock_and_loses_nothing(backend_url: Any, key_prefix: str) -> None:
    RUNS.clear()
    with TestClient(app_with(backend=backend_url, key_prefix=key_prefix)) as c:
        c.get("/touch")
        sid = sid_of(c)
        for calls in range(1, 5):
            assert c.get("/fifth").json() == {"calls": calls}  # watched three times, then deferred
        before = stored(backend_url, key_prefix, sid)
        with holding(backend_url, key_prefix, sid):
            # The 5th call uses its deferred session on the loop: it cannot be loaded there. The
            # request runs again with its session loaded, which waits for the lock held outside.
            r = c.get("/fifth")
            assert r.status_code == 503 and "lock" in r.text
            assert stored(backend_url, key_prefix, sid) == before, "nothing written while the lock was held"
        assert RUNS["fifth"] == 6, "the 5th request ran twice: mispredicted, then with its session"
        r = c.get("/fifth")
        assert r.json() == {"calls": 7, "fifth": 1}, "loaded before the app now: no second run"
        assert c.get("/view").json() == {"session": {"n": 1, "fifth": 1}}, "nothing lost, nothing doubled"


def test_a_misprediction_on_a_safe_method_is_run_again_invisibly() -> None:
    RUNS.clear()
    with TestClient(app_with(backend="memory://")) as c:
        c.get("/touch")
        warm(c, "/fifth", 4)
        r = c.get("/fifth")
        assert r.json() == {"calls": 6, "fifth": 1}
        mw = middleware_of(c)
        usage = mw._route({"type": "http", "method": "GET", "path": "/fifth", "app": c.app})[1]
        assert usage is not None and usage.used and not usage.deferred, "never deferred again"
        assert mw.predictions.enabled, "one endpoint's misprediction leaves the others predicted"


def test_an_app_that_swallows_the_error_does_not_answer_with_it() -> None:
    RUNS.clear()
    with TestClient(app_with(backend="memory://")) as c:
        c.get("/touch")
        warm(c, "/swallows")
        r = c.get("/swallows", params={"use": "1"})
        assert r.status_code == 200 and r.text == "n=1", "the answer made without the session is dropped"
        assert RUNS["swallows"] == ASYNC_WATCH + 2, "mispredicted, then run again"


@pytest.mark.timeout(60)  # a second run given nothing to receive would wait for the body for ever
def test_a_second_run_gets_the_body_the_first_one_read() -> None:
    RUNS.clear()
    with TestClient(app_with(backend="memory://")) as c:
        c.get("/touch")
        warm(c, "/echo")
        r = c.request("GET", "/echo", params={"use": "1"}, content=b"hello")
        assert r.status_code == 200 and r.text == "hello"
        assert RUNS["echo"] == ASYNC_WATCH + 2, "mispredicted, then run again"
        assert c.get("/view").json() == {"session": {"n": 1, "body": "hello"}}


class PeekAfter:
    """A middleware inside the session middleware that reads the session as the response starts,
    when the request carries ``x-peek``: a use after routing that its endpoint does not make."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(k == b"x-peek" for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return

        async def peek(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-n", str(scope["session"].get("n")).encode()))
            await send(message)

        await self.app(scope, receive, peek)


def test_a_misprediction_on_an_unsafe_method_is_a_503_and_writes_nothing(backend_url: Any, key_prefix: str) -> None:
    api = FastAPI()
    done: list[int] = []

    @api.post("/order")
    async def order(n: int) -> dict[str, int]:
        done.append(n)
        return {"n": n}

    @api.get("/touch")
    async def touch(request: Request) -> dict[str, int]:
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    api.add_middleware(PeekAfter)
    api.add_middleware(SessionMiddleware, secret_key=SECRET, backend=backend_url, key_prefix=key_prefix)
    with TestClient(api) as c:
        c.get("/touch")
        sid = sid_of(c)
        assert c.post("/order", params={"n": 1}).status_code == 200  # watched once, then deferred
        before = stored(backend_url, key_prefix, sid)
        r = c.post("/order", params={"n": 2}, headers={"x-peek": "1"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "not loaded" in r.text and r.text.count("\n") == 1
        assert stored(backend_url, key_prefix, sid) == before
        r = c.post("/order", params={"n": 3}, headers={"x-peek": "1"})
        assert r.status_code == 200 and r.headers["x-n"] == "1", "loaded before the app from now on"
        assert done == [1, 2, 3], "the 503 came after the endpoint ran: it is not run again"


def test_a_use_after_the_response_started_is_an_error_and_never_locks() -> None:
    async def late(request: Request) -> Response:
        async def body() -> Any:
            yield b"a"
            if "use" in request.query_params:
                request.session["late"] = True  # after the response started
            yield b"b"

        from starlette.responses import StreamingResponse

        return StreamingResponse(body())

    app = Starlette(
        routes=[Route("/touch", touch), Route("/late", late)],
        middleware=[Middleware(SessionMiddleware, secret_key=SECRET, backend="memory://")],
    )
    with TestClient(app) as c:
        c.get("/touch")
        warm(c, "/late")
        with pytest.raises(Mispredicted, match="not loaded"):
            c.get("/late", params={"use": "1"})
        with pytest.raises(Exception, match="already written"):  # loaded as usual now: written at start
            c.get("/late", params={"use": "1"})
        assert c.get("/touch").json() == {"n": 2}, "nothing left locked"


# -- middleware around the app keep working ---------------------------------------------------------


class ReadsFirst:
    """A middleware inside the session middleware that reads every request's session before routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["n"] = scope["session"].get("n")
        await self.app(scope, receive, send)


def test_a_middleware_that_uses_every_session_turns_predictions_off(backend_url: Any, key_prefix: str) -> None:
    with TestClient(app_with(Middleware(ReadsFirst), backend=backend_url, key_prefix=key_prefix)) as c:
        c.get("/touch")
        warm(c, "/untouched", 5)
        mw = middleware_of(c)
        assert not mw.predictions.enabled
        with holding(backend_url, key_prefix, sid_of(c)):
            assert c.get("/untouched").status_code == 503, "loaded before the app: the middleware needs it"
        assert c.get("/touch").json() == {"n": 2}


def test_a_base_http_middleware_reading_the_session_keeps_working() -> None:
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

    class Header(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            response = await call_next(request)
            if "peek" in request.query_params:
                response.headers["x-n"] = str(request.session.get("n"))
            return response

    with TestClient(app_with(Middleware(Header), backend="memory://")) as c:
        c.get("/touch")
        warm(c, "/untouched")
        r = c.get("/untouched", params={"peek": "1"})
        assert r.status_code == 200 and r.headers["x-n"] == "1"
        assert c.get("/untouched", params={"peek": "1"}).headers["x-n"] == "1"


def test_lazy_paths_and_requests_without_a_cookie_are_unchanged() -> None:
    with TestClient(app_with(backend="memory://", lazy_paths=["/sync*"])) as c:
        for _ in range(5):
            assert c.get("/untouched").status_code == 200
        assert "session" not in c.cookies, "no cookie: nothing to load, nothing sent"
        assert c.get("/sync", params={"touch": "1"}).json() == {"n": 1}
        mw = middleware_of(c)
        assert mw._route({"type": "http", "method": "GET", "path": "/sync", "app": c.app})[1] is None


# -- the rules, without a server -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reach", "method", "uses", "deferred_after"),
    [
        pytest.param("none", "POST", [False], 1, id="cannot-reach-any-method"),
        pytest.param("loads", "GET", [False], 1, id="load-session-dependency"),
        pytest.param("thread", "PUT", [False], 1, id="sync-endpoint-any-method"),
        pytest.param("loop", "GET", [False, False, False], 3, id="async-watched-three"),
        pytest.param("loop", "POST", [False] * 10, None, id="async-unsafe-never"),
        pytest.param(None, "GET", [False] * 10, None, id="unknown-never"),
        pytest.param("loop", "GET", [False, True, False, False, False], None, id="a-use-is-for-good"),
    ],
)
def test_prediction_rules(reach: Any, method: str, uses: list[bool], deferred_after: int | None) -> None:
    predictions = Predictions()
    usage = predictions.usage(object(), method, reach)
    for i, used in enumerate(uses, 1):
        predictions.observe(usage, used=used, before_routing=False)
        assert usage.deferred == (deferred_after is not None and i >= deferred_after), i


def test_prediction_counts_only_requests_with_a_cookie_and_stops_at_a_use_before_routing() -> None:
    predictions = Predictions()
    a = predictions.usage(object(), "GET", "none")
    b = predictions.usage(object(), "GET", "thread")
    predictions.observe(a, used=False, before_routing=False, cookie=False)
    assert not a.deferred, "a request without a cookie shows no lack of use"
    predictions.observe(a, used=False, before_routing=False)
    predictions.observe(b, used=False, before_routing=False)
    assert a.deferred and b.deferred
    predictions.mispredicted(b, before_routing=False)
    assert a.deferred and not b.deferred and b.used
    predictions.observe(a, used=True, before_routing=True)
    assert not predictions.enabled and not a.deferred
    c = predictions.usage(object(), "GET", "none")
    predictions.observe(c, used=False, before_routing=False)
    assert not c.deferred, "no prediction once a use was seen before routing"
    assert isinstance(repr(c), str) and isinstance(c, Usage)


def _fastapi_route(api: FastAPI, path: str) -> Any:
    return next(r for r in api.routes if getattr(r, "path", None) == path)


def test_reach_of_fastapi_routes_and_starlette_endpoints() -> None:
    api = FastAPI()
    bearer = HTTPBearer()

    async def user(request: Request) -> str:
        return str(request.session.get("user"))

    def sync_user(conn: HTTPConnection) -> str:
        return "x"

    async def via_load(session: Session = Depends(load_session)) -> Any:  # noqa: B008
        return session

    @api.get("/plain")
    async def plain(q: int = 0) -> int:
        return q

    @api.get("/bearer")
    async def with_bearer(auth: Any = Depends(bearer)) -> int:  # noqa: B008
        return 1

    @api.get("/request")
    async def with_request(request: Request) -> int:
        return 1

    @api.get("/sync-request")
    def sync_with_request(request: Request) -> int:
        return 1

    @api.get("/dep-async")
    def dep_async(u: str = Depends(user)) -> int:
        return 1

    @api.get("/dep-sync")
    async def dep_sync(u: str = Depends(sync_user)) -> int:
        return 1

    @api.get("/loads")
    async def loads(s: Any = Depends(via_load)) -> int:  # noqa: B008
        return 1

    @api.get("/loads-and-request")
    async def loads_and_request(request: Request, s: Session = Depends(load_session)) -> int:  # noqa: B008
        return 1

    @api.get("/route-dependency", dependencies=[Depends(user)])
    async def route_dependency() -> int:
        return 1

    expected = {
        "/plain": "none",
        "/bearer": "none",
        "/request": "loop",
        "/sync-request": "thread",
        "/dep-async": "loop",
        "/dep-sync": "thread",
        "/loads": "loads",
        "/loads-and-request": "loads",
        "/route-dependency": "loop",
    }
    for path, reach in expected.items():
        route = _fastapi_route(api, path)
        assert reach_of(route, route.endpoint, "GET") == reach, path

    class Page(HTTPEndpoint):
        async def get(self, request: Request) -> Response:
            return Response()

        def post(self, request: Request) -> Response:
            return Response()

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        """An ASGI application."""

    starlette_routes = {
        "async": (Route("/a", untouched), "GET", "loop"),
        "sync": (Route("/s", sync_endpoint), "GET", "thread"),
        "class-async": (Route("/p", Page), "GET", "loop"),
        "class-sync": (Route("/p", Page, methods=["POST"]), "POST", "thread"),
        "class-head": (Route("/p", Page), "HEAD", "loop"),
        "app": (Route("/raw", raw_app), "GET", "loop"),
    }
    for name, (route, method, reach) in starlette_routes.items():
        assert reach_of(route, route.endpoint, method) == reach, name
    assert reach_of(None, None, "GET") is None


def test_a_worker_thread_of_another_loop_still_loads_on_the_request_loop() -> None:
    """A sync endpoint that runs an event loop of its own is still in a worker thread."""

    def nested(request: Request) -> JSONResponse:
        async def inner() -> Any:
            return request.session.get("n")  # a running loop in this thread, but not the request's

        return JSONResponse({"n": asyncio.run(inner()), "thread": threading.current_thread().name != "MainThread"})

    app = Starlette(
        routes=[Route("/touch", touch), Route("/nested", nested)],
        middleware=[Middleware(SessionMiddleware, secret_key=SECRET, backend="memory://")],
    )
    with TestClient(app) as c:
        c.get("/touch")
        c.get("/nested")  # watched once
        assert c.get("/nested").json()["n"] == 1


# -- an unchanged session is released after the response; a changed one written before it --------


async def _reads(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(request.session.get("n")))


def _asgi_get(app: Any, path: str, cookie: str | None, on_message: Any) -> dict[str, Any]:
    """Call ``app`` once for GET ``path``, calling ``on_message(message)`` before each message goes out."""
    headers = [(b"host", b"test")]
    if cookie:
        headers.append((b"cookie", f"session={cookie}".encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("test", 80)}  # fmt: skip
    out: dict[str, Any] = {}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        on_message(message)
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            for k, v in message.get("headers", []):
                if k == b"set-cookie":
                    out["cookie"] = v.decode().split(";", 1)[0].split("=", 1)[1]

    asyncio.run(app(scope, receive, send))
    return out


def test_an_unchanged_session_is_released_after_the_response(backend_url: Any, key_prefix: str) -> None:
    app = Starlette(
        routes=[Route("/touch", touch), Route("/reads", _reads)],
        middleware=[Middleware(SessionMiddleware, secret_key=SECRET, backend=backend_url, key_prefix=key_prefix)],
    )
    probe = open_backend(backend_url, key_prefix=key_prefix)

    def locked(handle: str) -> bool:
        took, _ = probe.lock_and_load(handle, "probe", 5)
        if took:
            probe.release(handle, "probe", None)
        return not took

    try:
        cookie = _asgi_get(app, "/touch", None, lambda m: None)["cookie"]
        handle = handle_of(IdSigner([SECRET]).unsign(cookie, None) or "")
        seen: list[tuple[str, bool, bytes | None]] = []

        def note(message: Message) -> None:
            record = probe.load(handle)
            seen.append((message["type"], locked(handle), None if record is None else record.data))

        _asgi_get(app, "/reads", cookie, note)  # read, not changed: the release follows the response
        assert [(kind, held) for kind, held, _ in seen] == [("http.response.start", True), ("http.response.body", True)]
        assert not locked(handle), "released once the response was out"
        before = seen[0][2]
        seen.clear()
        _asgi_get(app, "/touch", cookie, note)  # changed: written (and released) before the response starts
        assert seen[0][0] == "http.response.start" and not seen[0][1] and seen[0][2] != before
    finally:
        probe.close()


def test_a_deferred_route_without_a_cookie_uses_a_new_session_on_the_loop() -> None:
    RUNS.clear()
    app = app_with(backend="memory://")
    with TestClient(app) as c:
        c.get("/touch")
        warm(c, "/swallows")  # deferred now
        runs = RUNS["swallows"]
    with TestClient(app) as anonymous:
        r = anonymous.get("/swallows", params={"use": "1"})
        assert r.text == "n=None" and RUNS["swallows"] == runs + 1, "a new session needs no load: no second run"
        mw = middleware_of(anonymous)
        usage = mw._route({"type": "http", "method": "GET", "path": "/swallows", "app": anonymous.app})[1]
        assert usage is not None and usage.used, "but the endpoint was seen using its session"
