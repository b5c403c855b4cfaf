"""Configuration errors stop an app at start-up, and the start-up warnings read as one sentence.

Starlette builds its middleware lazily, on the first call (the lifespan start-up under a server). A
``ConfigError`` raised there must fail the start-up with its one-line message (uvicorn then exits),
not pass for "lifespan unsupported" and leave a server answering every request 500. Built any other
way, the middleware raises the error at construction.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from sessionmw import ConfigError, SessionMiddleware, WSGISessionMiddleware

from ..conftest import free_port

REPO = Path(__file__).resolve().parents[2]
#: Seconds after which a uvicorn that neither failed nor said it started is killed.
UVICORN_TIMEOUT = 60


async def _home(request: Any) -> PlainTextResponse:
    return PlainTextResponse(str(request.session.get("n", 0)))


async def _socket(websocket: WebSocket) -> None:  # pragma: no cover - the stand-in never lets it run
    await websocket.accept()
    await websocket.close()


def _starlette(**options: Any) -> Starlette:
    app = Starlette(routes=[Route("/", _home), WebSocketRoute("/ws", _socket)])
    app.add_middleware(SessionMiddleware, secret_key="k", backend="memory://", **options)
    return app


def _fastapi(**options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, secret_key="k", backend="memory://", **options)
    return app


# -- under a real uvicorn, default settings (--lifespan auto) --------------------------------------

APP_MODULE = """
from {framework} import {cls}
from sessionmw import SessionMiddleware

app = {cls}()
app.add_middleware(SessionMiddleware, secret_key="k", {options})
"""


def _uvicorn(tmp_path: Path, framework: str, options: str) -> tuple[int, str]:
    """Serve a misconfigured app with ``python -m uvicorn`` and its defaults; return its exit status and output.

    A server that starts anyway is stopped as soon as it says so, and its status is then ``None``.
    """
    cls = {"fastapi": "FastAPI", "starlette.applications": "Starlette"}[framework]
    (tmp_path / "misconfigured.py").write_text(
        textwrap.dedent(APP_MODULE).format(framework=framework, cls=cls, options=options)
    )
    argv = [sys.executable, "-m", "uvicorn", "misconfigured:app", "--host", "127.0.0.1", "--port", str(free_port())]
    lines = []
    started = False
    with subprocess.Popen(
        argv, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        watchdog = threading.Timer(UVICORN_TIMEOUT, proc.kill)  # a server that hangs and says nothing
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if "Application startup complete" in line:
                    started = True
                    proc.kill()
            status = proc.wait()
        finally:
            watchdog.cancel()
            proc.kill()
    said = "".join(lines)
    assert not started, f"uvicorn started the misconfigured app: {said}"
    return status, said


@pytest.mark.parametrize("framework", ["fastapi", "starlette.applications"])
def test_uvicorn_exits_at_start_up_with_the_message(tmp_path: Path, framework: str) -> None:
    status, said = _uvicorn(tmp_path, framework, "backend='memory://', idle_timout=60")
    assert status != 0, said
    assert "unknown option 'idle_timout'; did you mean 'idle_timeout'?" in said
    assert "Application startup failed" in said
    assert "appears unsupported" not in said and "Application startup complete" not in said, said
    assert "Traceback" not in said, "the one-line message, not a traceback"


def test_uvicorn_names_every_wrong_option_at_once(tmp_path: Path) -> None:
    status, said = _uvicorn(tmp_path, "fastapi", "backend='memory://', idle_timout=60, lock_timeout=-1")
    assert status != 0, said
    line = next(line for line in said.splitlines() if "idle_timout" in line)
    assert "did you mean 'idle_timeout'" in line and "lock_timeout must be" in line, line
    assert "Traceback" not in said


def test_uvicorn_exits_on_a_bad_backend_url(tmp_path: Path) -> None:
    status, said = _uvicorn(tmp_path, "starlette.applications", "backend='memory://?colour=red'")
    assert status != 0 and "unknown backend URL option 'colour'" in said, said


# -- Starlette's TestClient and direct construction ----------------------------------------------------


@pytest.mark.parametrize("make", [_starlette, _fastapi], ids=["starlette", "fastapi"])
def test_test_client_raises_at_start_up(make: Any) -> None:
    app = make(idle_timout=60, max_waiters=-1)
    with pytest.raises(ConfigError) as info:
        with TestClient(app):
            pytest.fail("the app started")
    assert set(info.value.options) == {"idle_timout", "max_waiters"}
    assert "did you mean 'idle_timeout'" in str(info.value)


@pytest.mark.parametrize("make", [_starlette, _fastapi], ids=["starlette", "fastapi"])
def test_test_client_without_lifespan_raises_at_every_request(make: Any) -> None:
    client = TestClient(make(lock_timeout=-1))
    for _ in range(2):  # the app never half-starts: the second request fails the same way
        with pytest.raises(ConfigError) as info:
            client.get("/")
        assert info.value.options == ("lock_timeout",)


def test_a_websocket_raises_too() -> None:
    client = TestClient(_starlette(idle_timout=60))
    with pytest.raises(ConfigError, match="did you mean 'idle_timeout'"):
        with client.websocket_connect("/ws"):
            pytest.fail("connected")


def test_starlette_middleware_list_and_a_subclass_fail_at_start_up_too() -> None:
    class Mine(SessionMiddleware):
        def __init__(self, app: Any, **options: Any) -> None:
            super().__init__(app, secret_key="k", backend="memory://", **options)

    for middleware in (
        Middleware(SessionMiddleware, secret_key="k", backend="memory://", idle_timout=60),
        Middleware(Mine, lock_timeout=-1),
    ):
        app = Starlette(routes=[Route("/", _home)], middleware=[middleware])
        with pytest.raises(ConfigError):
            with TestClient(app):
                pytest.fail("the app started")


def test_direct_construction_raises() -> None:
    with pytest.raises(ConfigError) as info:
        SessionMiddleware(Starlette(), idle_timout=1)
    assert set(info.value.options) == {"idle_timout", "secret_key"}
    with pytest.raises(ConfigError, match="lock_timeout"):
        SessionMiddleware(Starlette(), "k", lock_timeout=-1)


def test_direct_construction_raises_in_a_running_event_loop() -> None:
    async def build(**options: Any) -> None:
        SessionMiddleware(Starlette(), secret_key="k", backend="memory://", **options)

    with pytest.raises(ConfigError, match="did you mean 'idle_timeout'"):
        asyncio.run(build(idle_timout=1))
    with pytest.raises(ConfigError, match="lock_timeout"):
        asyncio.run(build(lock_timeout=-1))


def test_a_good_app_still_starts_and_serves() -> None:
    with TestClient(_fastapi()) as client:
        assert client.get("/docs").status_code == 200
    with TestClient(_starlette()) as client:
        assert client.get("/").text == "0"


def test_wsgi_and_flask_raise_at_construction() -> None:
    from flask import Flask

    from sessionmw.flask import FlaskSession

    with pytest.raises(ConfigError, match="did you mean 'idle_timeout'"):
        WSGISessionMiddleware(lambda environ, start: [], secret_key="k", backend="memory://", idle_timout=1)
    app = Flask("bad")
    app.config.update(SECRET_KEY="k", SESSION_BACKEND="memory://", SESSION_LOCK_TIMEOUT=-1)
    with pytest.raises(ConfigError, match="lock_timeout"):
        FlaskSession(app)


# -- the start-up warning for a backend that does not answer --------------------------------------------


def test_an_unreachable_redis_is_one_warning_sentence_on_the_sessionmw_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{free_port()}/0?connect_timeout=1"  # nothing listens there
    caplog.set_level(logging.WARNING, logger="sessionmw")
    app = Starlette(routes=[Route("/", _home)])
    app.add_middleware(SessionMiddleware, secret_key="k", backend=url)
    with TestClient(app):
        pass
    said = [r for r in caplog.records if r.name == "sessionmw"]
    assert len(said) == 1, [r.getMessage() for r in said]
    record = said[0]
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert message.startswith(f"at start-up: redis backend {url.split('?')[0]} is unavailable: "), message
    assert message.endswith("; requests that need their session get a 503 until it answers"), message
    assert ".;" not in message and "\n" not in message, message
