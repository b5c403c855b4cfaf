"""max_session_bytes: a write over it raises RecordTooLarge before any backend call; a warning at three quarters.

The core's flows with a scripted backend, then the three adapters on the memory backend: the request
fails (500), its lock is released, and the session stored before is intact.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute
from starlette.testclient import TestClient

from sessionmw import SessionMiddleware, WSGISessionMiddleware
from sessionmw.core.errors import RecordTooLarge
from sessionmw.core.handles import handle_of
from sessionmw.core.ops import Emit, Release
from sessionmw.core.route import READ_WRITE, Route

from .script import NOW, SID, Script, close, make_core, opened, record


class EventScript(Script):
    """A :class:`Script` that also keeps the events the flows emit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[Any] = []

    def _answer(self, op: Any) -> Any:
        if isinstance(op, Emit):
            self.events.append(op.event)
            return None
        return super()._answer(op)


def listener(event: Any) -> None:
    """A listener, so the core emits events."""


BIG = "x" * 3000


@pytest.mark.parametrize(
    ("stored", "act", "released"),
    [
        pytest.param(None, lambda s: s.update(cart=BIG, note="n"), False, id="new session"),
        pytest.param({"a": 1}, lambda s: s.__setitem__("cart", BIG), True, id="stored, changed"),
        pytest.param({"a": 1}, lambda s: (s.__setitem__("cart", BIG), s.regenerate()), True, id="regenerated"),
        pytest.param({"a": 1}, lambda s: (s.__setitem__("cart", BIG), s.bind_user("u")), True, id="bound"),
        pytest.param({"a": 1}, lambda s: (s.invalidate(), s.__setitem__("cart", BIG)), True, id="invalidated"),
    ],
)
def test_a_write_over_the_limit_raises_before_any_backend_call(stored: Any, act: Any, released: bool) -> None:
    core = make_core(max_session_bytes=2000, listeners=[listener])
    script = EventScript(record(core, stored) if stored is not None else None)
    s = opened(core, script) if stored is not None else core.new_session(Route(), None, None)
    act(s)
    with pytest.raises(RecordTooLarge) as info:
        close(core, script, s)
    err = info.value
    assert err.limit == 2000 and err.size > 3000
    assert "'cart' (30" in str(err) and str(err.size) in str(err) and "max_session_bytes=2000" in str(err)
    assert err.backend == "memory://" or err.backend  # named, never empty
    # Nothing was written: the only operation, if any, lets the lock go.
    assert script.names == (["Release"] if released else [])
    if released:
        assert script.ops[0] == Release(handle_of(SID), script.ops[0].token)
    (event,) = [e for e in script.events if e.kind == "too_large"]
    # The session the event names is the one stored, still intact; a new one's would-be handle otherwise.
    assert event.handle == (handle_of(SID) if stored is not None else s.handle)


def test_the_largest_keys_are_named_largest_first() -> None:
    core = make_core(max_session_bytes=1000)
    s = core.new_session(Route(), None, None)
    s.update(small="s" * 10, huge="h" * 900, mid="m" * 300)
    with pytest.raises(RecordTooLarge) as info:
        close(core, Script(None), s)
    text = str(info.value)
    assert text.index("'huge'") < text.index("'mid'") < text.index("'small'")


def test_the_limit_counts_the_stored_bytes_encryption_included() -> None:
    core = make_core(max_session_bytes=100)
    plain = core.serializer.dumps({"v": "x" * 80})
    assert len(plain) <= 100
    s = core.new_session(Route(), None, None)
    s["v"] = "x" * 80
    close(core, Script(None), s)  # fits in clear
    enc = make_core(max_session_bytes=100, encryption_key="k" * 32)
    t = enc.new_session(Route(), None, None)
    t["v"] = "x" * 80
    with pytest.raises(RecordTooLarge) as info:
        close(enc, Script(None), t)
    assert info.value.size > 100, "nonce, tag and header count"


def test_no_limit_when_max_session_bytes_is_none() -> None:
    core = make_core(max_session_bytes=None)
    script = Script(None)
    s = core.new_session(Route(), None, None)
    s["cart"] = "x" * 2_000_000
    close(core, script, s)
    assert script.names == ["Create"]


def test_the_default_limit_is_512_kib() -> None:
    core = make_core()
    assert core.settings.max_session_bytes == 512 * 1024
    s = core.new_session(Route(), None, None)
    s["cart"] = "x" * (512 * 1024)
    with pytest.raises(RecordTooLarge):
        close(core, Script(None), s)


def test_a_warning_when_a_session_passes_three_quarters_of_the_limit() -> None:
    core = make_core(max_session_bytes=1000)
    script = Script(record(core, {"a": "x" * 100}))
    s = opened(core, script)
    s["a"] = "x" * 800
    close(core, script, s)
    warnings = [log for log in script.logs if log.level == logging.WARNING]
    assert len(warnings) == 1 and "past 75% of max_session_bytes=1000" in script.messages()[0]
    assert script.names == ["Save"], "a warning only: the session is stored"
    # Once past the line, later writes do not warn again.
    again = Script(record(core, {"a": "x" * 800}))
    t = opened(core, again)
    t["a"] = "x" * 820
    close(core, again, t)
    assert not [log for log in again.logs if log.level == logging.WARNING]


def test_a_rotation_over_the_limit_raises_and_keeps_the_old_record() -> None:
    core = make_core(max_session_bytes=500, rotate_every=10)
    script = Script(record(core, {"a": 1}, created=NOW - 100))
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    script.ops.clear()
    s["cart"] = "x" * 600
    with pytest.raises(RecordTooLarge):
        close(core, script, s)
    assert script.names == ["Release"]


# -- through the adapters -----------------------------------------------------------------------


async def s_put(request: Request) -> JSONResponse:
    request.session["v"] = "x" * int(request.query_params["n"])
    return JSONResponse({"ok": True})


async def s_get(request: Request) -> JSONResponse:
    return JSONResponse({"len": len(request.session.get("v", ""))})


def _wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    from urllib.parse import parse_qs

    session = environ["sessionmw.session"]
    if environ["PATH_INFO"] == "/put":
        session["v"] = "x" * int(parse_qs(environ["QUERY_STRING"])["n"][0])
    body = json.dumps({"len": len(session.get("v", ""))}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def _flask(**options: Any) -> Any:
    from flask import Flask, jsonify, request, session

    from sessionmw.flask import FlaskSession

    app = Flask("size_limit")
    app.config.update(SECRET_KEY="k", **{f"SESSION_{k.upper()}": v for k, v in options.items()})
    FlaskSession(app)

    @app.route("/put")
    def put() -> Any:
        session["v"] = "x" * int(request.args["n"])
        return jsonify(ok=True)

    @app.route("/get")
    def get() -> Any:
        return jsonify(len=len(session.get("v", "")))

    return app


def _json(response: Any) -> Any:
    return response.json() if callable(response.json) else response.json  # Flask's is a property


@pytest.mark.parametrize("adapter", ["asgi", "wsgi", "flask"])
def test_adapters_answer_500_release_the_lock_and_keep_the_session(adapter: str, caplog: Any) -> None:
    options: dict[str, Any] = {
        "backend": f"memory://size-{uuid.uuid4().hex[:8]}",
        "max_session_bytes": 4000,
        "lock_timeout": 2,
    }
    if adapter == "asgi":
        routes = [StarletteRoute("/put", s_put), StarletteRoute("/get", s_get)]
        app = Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, secret_key="k", **options)])
        client: Any = TestClient(app, raise_server_exceptions=False)
    elif adapter == "wsgi":
        wsgi = WSGISessionMiddleware(_wsgi, secret_key="k", **options)
        client = httpx2.Client(
            transport=httpx2.WSGITransport(app=wsgi, raise_app_exceptions=False), base_url="http://t"
        )
    else:
        client = _flask(**options).test_client()
    with caplog.at_level(logging.WARNING, logger="sessionmw"):
        assert client.get("/put?n=100").status_code == 200
        # Over the limit: the request fails (a programming error, as an unserializable value is).
        try:
            status = client.get("/put?n=5000").status_code
        except RecordTooLarge:  # a test client that re-raises the app's errors
            status = 500
        assert status == 500
        # The lock was released (lock_timeout would make this a 503) and the stored session is intact.
        r = client.get("/get")
        assert r.status_code == 200 and _json(r)["len"] == 100
        # Three quarters of the limit: stored, with a warning.
        assert client.get("/put?n=3500").status_code == 200
        assert _json(client.get("/get"))["len"] == 3500
    assert any("past 75% of max_session_bytes=4000" in rec.getMessage() for rec in caplog.records)
