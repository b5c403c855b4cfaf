"""What each adapter adds: failure paths, early release, upgrade, websockets, exclusions, config."""

from __future__ import annotations

import importlib
import re
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import sessionmw
from sessionmw import ConfigError, SessionMiddleware, WSGISessionMiddleware, options_from_config, read_only
from sessionmw.backends.memory import MemoryBackend
from sessionmw.flask import FlaskSession

from ..apps import SLOW_ENTERED, make_flask_app


def mem() -> str:
    return f"memory://adapters-{uuid.uuid4().hex[:8]}"


def starlette(routes: list[Any], **options: Any) -> Starlette:
    options.setdefault("secret_key", "k")
    options.setdefault("backend", mem())
    return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, **options)])


async def inc(request: Any) -> JSONResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return JSONResponse({"n": request.session["n"]})


def test_asgi_app_that_raises_releases_the_lock_and_saves_nothing() -> None:
    async def boom(request: Any) -> JSONResponse:
        request.session["n"] = 100
        raise RuntimeError("boom")

    app = starlette([Route("/inc", inc), Route("/boom", boom)], lock_timeout=1)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.get("/inc")
        assert c.get("/boom").status_code == 500
        started = time.monotonic()
        assert c.get("/inc").json() == {"n": 2}, "changes of a failed request are not saved"
        assert time.monotonic() - started < 0.5, "the failed request released its lock"


def test_asgi_release_lets_a_streaming_response_run_without_the_lock() -> None:
    released = threading.Event()

    async def stream(request: Any) -> StreamingResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        request.session.release()
        released.set()

        async def body() -> AsyncIterator[bytes]:
            for _ in range(10):
                await asyncio_sleep(0.1)
                yield b"."

        return StreamingResponse(body())

    from asyncio import sleep as asyncio_sleep

    app = starlette([Route("/inc", inc), Route("/stream", stream)], lock_timeout=0.3)
    with TestClient(app) as c:
        c.get("/inc")
        out: list[Any] = []
        t = threading.Thread(target=lambda: out.append(c.get("/stream")))
        t.start()
        assert released.wait(15)  # the stream runs for a second more, a lock_timeout of 0.3 is not enough
        assert c.get("/inc").json() == {"n": 3}, "the lock was released before the stream ended"
        t.join()
        assert out[0].text == ".........."


def test_asgi_change_after_release_raises() -> None:
    async def late(request: Any) -> PlainTextResponse:
        request.session["a"] = 1
        request.session.release()
        try:
            request.session["b"] = 2
        except sessionmw.ReadOnlySessionError:
            return PlainTextResponse("refused")
        return PlainTextResponse("accepted")

    app = starlette([Route("/late", late), Route("/inc", inc)])
    with TestClient(app) as c:
        assert c.get("/late").text == "refused"
        assert c.get("/inc").json() == {"n": 1}


def test_asgi_upgrade_re_reads_under_the_lock() -> None:
    @read_only
    async def maybe_write(request: Any) -> JSONResponse:
        await request.session.aupgrade()
        request.session["upgraded"] = True
        return JSONResponse(dict(request.session))

    app = starlette([Route("/inc", inc), Route("/up", maybe_write)])
    with TestClient(app) as c:
        c.get("/inc")
        assert c.get("/up").json() == {"n": 1, "upgraded": True}
        assert c.get("/inc").json() == {"n": 2}


def test_asgi_websocket_gets_the_session_read_only() -> None:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        session = websocket.session
        try:
            session["x"] = 1
            wrote = "yes"
        except sessionmw.ReadOnlySessionError:
            wrote = "no"
        await websocket.send_json({"n": session.get("n"), "wrote": wrote})
        await websocket.close()

    app = starlette([Route("/inc", inc), WebSocketRoute("/ws", ws)], lock_timeout=0.3)
    with TestClient(app) as c:
        c.get("/inc")
        with c.websocket_connect("/ws") as w:
            assert w.receive_json() == {"n": 1, "wrote": "no"}
        assert c.get("/inc").json() == {"n": 2}


def test_asgi_exclude_paths_and_static_files_never_load(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("static")
    calls: list[str] = []

    async def asset(request: Any) -> PlainTextResponse:
        try:
            request.session["x"] = 1
        except sessionmw.ReadOnlySessionError:
            return PlainTextResponse("no session here")
        return PlainTextResponse("session")

    app = starlette(
        [Route("/inc", inc), Route("/assets/x", asset), Mount("/static", StaticFiles(directory=tmp_path))],
        exclude_paths=["/assets/*"],
        lock_timeout=0.2,
    )
    with TestClient(app) as c:
        c.get("/inc")
        sid_cookie = c.cookies["session"]
        # hold the lock from outside: excluded and static paths must still answer at once
        mw = _find_middleware(app, c)
        from sessionmw.core.cookies import IdSigner

        sid = IdSigner(["k"]).unsign(sid_cookie, None)
        assert sid is not None
        backend = sessionmw.backends.open_backend(mw.settings.backend, key_prefix=mw.settings.key_prefix)
        from sessionmw.core.handles import handle_of

        handle = handle_of(sid)
        assert backend.lock_and_load(handle, "outside", 30)[0]
        assert c.get("/assets/x").text == "no session here"
        r = c.get("/static/a.txt")
        assert r.text == "static" and "set-cookie" not in r.headers
        assert c.get("/inc").status_code == 503
        backend.release(handle, "outside", None)
        assert calls == []


def _find_middleware(app: Starlette, client: TestClient) -> SessionMiddleware:
    client.get("/__nothing__")  # builds the middleware stack
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, SessionMiddleware):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, SessionMiddleware)
    return layer


def test_fastapi_read_only_path_function() -> None:
    api = FastAPI()
    api.add_middleware(SessionMiddleware, secret_key="k", backend=mem(), lock_timeout=0.3)

    @api.get("/inc")
    async def fa_inc(request: Request) -> dict[str, int]:
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    @api.get("/status")
    @read_only
    async def status(request: Request) -> dict[str, Any]:
        return {"n": request.session.get("n"), "read_only": request.session.read_only}  # type: ignore[attr-defined]

    @api.get("/slow")
    def slow(request: Request) -> dict[str, int]:
        request.session["n"] = request.session.get("n", 0) + 1
        time.sleep(1)
        return {"n": request.session["n"]}

    with TestClient(api) as c:
        c.get("/inc")
        t = threading.Thread(target=lambda: c.get("/slow"))
        t.start()
        time.sleep(0.3)
        assert c.get("/status").json() == {"n": 1, "read_only": True}
        t.join()
        assert c.get("/status").json()["n"] == 2


def test_unknown_keyword_is_a_config_error_with_the_closest_name() -> None:
    with pytest.raises(ConfigError) as info:
        SessionMiddleware(Starlette(), secret_key="k", backend=mem(), idle_timout=5)
    assert "idle_timeout" in str(info.value) and info.value.option == "idle_timout"
    with pytest.raises(ConfigError) as info:
        WSGISessionMiddleware(lambda e, s: [], secret_key="k", backend=mem(), lock_expiry=5)
    assert "lock_expire" in str(info.value)


@pytest.mark.parametrize(
    ("backend", "words"),
    [
        pytest.param("mongodb://x", "unknown backend URL scheme 'mongodb'", id="scheme"),
        pytest.param("memory://?colour=red", "unknown backend URL option 'colour'", id="option"),
        pytest.param("not a url", "not a backend URL", id="not a URL"),
        pytest.param("file://relative/dir", "absolute path", id="relative file path"),
    ],
)
def test_bad_backend_urls_fail_at_start_up(backend: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        SessionMiddleware(Starlette(), secret_key="k", backend=backend)
    assert words in str(info.value)


def test_custom_error_response() -> None:
    def teapot(exc: sessionmw.SessionUnavailable) -> tuple[int, list[tuple[str, str]], bytes]:
        return 503, [("content-type", "text/html"), ("retry-after", "9")], b"<p>busy</p>"

    app = starlette([Route("/inc", inc), Route("/slow", _slow)], lock_timeout=0.2, error_response=teapot)
    with TestClient(app) as c:
        c.get("/inc")
        seen = SLOW_ENTERED.count
        t = threading.Thread(target=lambda: c.get("/slow"))
        t.start()
        SLOW_ENTERED.past(seen)  # /slow holds the lock now, for 0.8 s
        r = c.get("/inc")
        t.join()
        assert (r.status_code, r.text, r.headers["retry-after"]) == (503, "<p>busy</p>", "9")


def _slow(request: Any) -> PlainTextResponse:
    request.session["s"] = 1
    SLOW_ENTERED.enter()
    time.sleep(0.8)
    return PlainTextResponse("done")


def test_wsgi_app_that_raises_releases_the_lock() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["sessionmw.session"]
        session["n"] = session.get("n", 0) + 1
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("boom")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(session["n"]).encode()]

    wsgi = WSGISessionMiddleware(app, secret_key="k", backend=mem(), lock_timeout=1)
    with httpx2.Client(transport=httpx2.WSGITransport(app=wsgi), base_url="http://t") as c:
        assert c.get("/").text == "1"
        with pytest.raises(RuntimeError):
            c.get("/boom")
        started = time.monotonic()
        assert c.get("/").text == "2"
        assert time.monotonic() - started < 0.5


def test_flask_session_transaction_and_teardown_release() -> None:
    app = make_flask_app(secret_key="k", backend=mem(), lock_timeout=1)

    @app.route("/boom")
    def boom() -> str:
        from flask import session

        session["n"] = 99
        raise RuntimeError("boom")

    c = app.test_client()
    c.get("/inc")
    with c.session_transaction() as sess:
        assert sess["n"] == 1
        sess["n"] = 10
    assert c.get("/inc").json == {"n": 11}
    # With exceptions propagating (testing), Flask skips save_session: teardown_request must unlock.
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError):
        c.get("/boom")
    started = time.monotonic()
    assert c.get("/inc").json == {"n": 12}, "the failed request's change was not saved"
    assert time.monotonic() - started < 0.5, "teardown_request released the lock"
    # Otherwise Flask turns the error into a 500 and saves the session with it, as its own sessions do.
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert c.get("/boom").status_code == 500
    assert c.get("/inc").json == {"n": 100}


def test_flask_lock_timeout_is_a_503() -> None:
    app = make_flask_app(secret_key="k", backend=mem(), lock_timeout=0.3)
    c = app.test_client()
    c.get("/inc")
    cookie = c.get_cookie("session")
    assert cookie is not None
    other = app.test_client()
    other.set_cookie("session", cookie.value)
    seen = SLOW_ENTERED.count
    t = threading.Thread(target=lambda: other.get("/slow?t=1"))
    t.start()
    SLOW_ENTERED.past(seen)  # it holds the lock now, for a second
    r = c.get("/inc")
    t.join()
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit() and r.mimetype == "text/plain"


def test_flask_permanent_session_cookie_has_an_expiry_and_refreshes() -> None:
    app = make_flask_app(secret_key="k", backend=mem())
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=2)

    @app.route("/perm")
    def perm() -> str:
        from flask import session

        session.permanent = True
        return "ok"

    c = app.test_client()
    assert "Expires=" in c.get("/perm").headers["Set-Cookie"]
    r = c.get("/view")
    assert "Expires=" in r.headers["Set-Cookie"], "SESSION_REFRESH_EACH_REQUEST refreshes a permanent cookie"
    app.config["SESSION_REFRESH_EACH_REQUEST"] = False
    assert "Set-Cookie" not in c.get("/view").headers


def test_flask_config_errors_and_warnings() -> None:
    from flask import Flask

    app = Flask("x")
    with pytest.raises(ConfigError) as info:
        FlaskSession(app)
    assert info.value.option == "SECRET_KEY"
    app.config.update(SECRET_KEY="k", SESSION_BACKEND=mem(), SESSION_LOCK_TIMOUT=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FlaskSession(app)
    assert any("SESSION_LOCK_TIMOUT" in str(w.message) and "SESSION_LOCK_TIMEOUT" in str(w.message) for w in caught)
    bad = Flask("y")
    bad.config.update(SECRET_KEY="k", SESSION_BACKEND=mem(), SESSION_LOCK_TIMEOUT="soon")
    with pytest.raises(ConfigError) as info:
        FlaskSession(bad)
    assert "SESSION_LOCK_TIMEOUT" in str(info.value)


def test_options_from_config_reads_mappings_objects_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONMW_IDLE_TIMEOUT", "600")
    monkeypatch.setenv("SESSIONMW_HTTPS_ONLY", "true")
    monkeypatch.setenv("SESSIONMW_TEST_SOMETHING", "ignored")
    opts = options_from_config({"SECRET_KEY": "s", "SESSION_BACKEND": "memory://", "session_lock_timeout": "5"})
    assert opts == {
        "secret_key": "s",
        "backend": "memory://",
        "lock_timeout": 5.0,
        "idle_timeout": 600.0,
        "https_only": True,
    }

    class Settings:
        SECRET_KEY = "s2"
        SESSION_COOKIE_PREFIX = "app_"

    monkeypatch.delenv("SESSIONMW_IDLE_TIMEOUT")
    monkeypatch.delenv("SESSIONMW_HTTPS_ONLY")
    assert options_from_config(Settings()) == {"secret_key": "s2", "cookie_prefix": "app_"}
    with pytest.raises(ConfigError) as info:
        options_from_config({"SESSION_IDEL_TIMEOUT": 1})
    assert "SESSION_IDLE_TIMEOUT" in str(info.value)
    SessionMiddleware(Starlette(), **options_from_config(Settings(), env=False))


def test_public_names_are_exported() -> None:
    assert sorted(sessionmw.__all__) == sessionmw.__all__
    for name in sessionmw.__all__:
        assert hasattr(sessionmw, name), name
    public = {n for n in vars(sessionmw) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(sessionmw.__all__) | {"TYPE_CHECKING"}


#: The public contract (shared/API.md, beside the project as ../shared/API.md).
API_MD = Path(__file__).resolve().parents[3] / "shared" / "API.md"


def test_every_name_the_api_page_gives_can_be_imported() -> None:
    if not API_MD.exists():
        pytest.skip(f"{API_MD} is not beside the project")
    text = API_MD.read_text()
    dotted = set(re.findall(r"(?<![\w\"\[.])sessionmw(?:\.[A-Za-z_]\w*)+", text))  # not "sessionmw.session" keys
    imported = {
        f"{module}.{name.strip()}"
        for module, names in re.findall(r"from (sessionmw(?:\.\w+)*) import ([\w, ]+)", text)
        for name in names.split(",")
    }
    named = dotted | imported
    assert {"sessionmw.SessionEvent", "sessionmw.SessionMiddleware", "sessionmw.flask.FlaskSession"} <= named
    for path in sorted(named):
        parts = path.split(".")
        target: Any = importlib.import_module(parts[0])
        for i, part in enumerate(parts[1:], 1):
            if not hasattr(target, part):
                target = importlib.import_module(".".join(parts[: i + 1]))  # a submodule not imported yet
            else:
                target = getattr(target, part)


def test_json_dumps_of_a_lazy_session_as_its_first_use() -> None:
    """CPython's json reads an empty dict's size in C; a lazy session must still dump its data."""
    import json

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["sessionmw.session"]
        if environ["PATH_INFO"] == "/set":
            session["a"] = [1, 2]
        body = json.dumps(session).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    wsgi = WSGISessionMiddleware(app, secret_key="k", backend=mem())
    with httpx2.Client(transport=httpx2.WSGITransport(app=wsgi), base_url="http://t") as c:
        c.get("/set")
        assert c.get("/dump").json() == {"a": [1, 2]}

    async def dump(request: Any) -> PlainTextResponse:
        return PlainTextResponse(json.dumps(request.scope["session"]))

    async def put(request: Any) -> PlainTextResponse:
        request.session["a"] = (1, 2)
        return PlainTextResponse("ok")

    with TestClient(starlette([Route("/set", put), Route("/dump", dump)])) as c:
        c.get("/set")
        assert c.get("/dump").json() == {"a": [1, 2]}


class CountingBackend(MemoryBackend):
    """The memory backend, counting the primitives called (to prove some requests make none)."""

    calls = 0

    def __getattribute__(self, name: str) -> Any:
        primitives = ("lock_and_load", "load", "create", "save", "release", "touch")
        if name in primitives or (name.startswith("a") and name[1:] in primitives):
            type(self).calls += 1
        return super().__getattribute__(name)


def test_unsigned_or_missing_cookies_cost_no_backend_call() -> None:
    from sessionmw.core.cookies import IdSigner

    backend = CountingBackend(uuid.uuid4().hex)
    app = starlette([Route("/inc", inc), Route("/none", _none)], backend=backend)
    forged = IdSigner(["not-the-key"]).sign("A" * 43)
    with TestClient(app) as c:
        for value in (None, "garbage", forged, "x" * 10_000):
            if value is not None:
                c.cookies.set("session", value, domain="testserver.local")
            before = CountingBackend.calls
            assert c.get("/none").status_code == 200
            assert CountingBackend.calls == before, value
        c.cookies.clear()
        c.get("/inc")
        before = CountingBackend.calls
        c.get("/none")
        assert CountingBackend.calls > before, "a signed cookie does load (the counter counts)"


async def _none(request: Any) -> PlainTextResponse:
    return PlainTextResponse("none")
