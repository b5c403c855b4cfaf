"""The same small app in three shapes (Starlette, plain WSGI, Flask), for the conformance and socket tests.

Routes:
    /inc          increment session["n"] and return it
    /view         read-only: return the session
    /none         never touch the session
    /set?k=&v=    store a value
    /regen        regenerate the id
    /invalidate   destroy the session
    /login/<uid>  bind the session to a user
    /slow?t=1     increment, then hold the lock for t seconds
    /ro-write     read-only, but tries to write (ReadOnlySessionError)
    /id           return the session id

For servers started as separate processes (uvicorn, gunicorn) the factories read their options from
``SESSIONMW_*`` environment variables through ``options_from_config``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from sessionmw import ReadOnlySessionError, SessionMiddleware, WSGISessionMiddleware, options_from_config, read_only


class _Entries:
    """Counts the requests that entered ``/slow`` (so hold their session's lock), for tests to wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0

    def enter(self) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def past(self, seen: int, timeout: float = 15.0) -> None:
        """Return once more than ``seen`` requests entered ``/slow`` (in this process)."""
        with self.cond:
            assert self.cond.wait_for(lambda: self.count > seen, timeout), "no request entered /slow"


#: In-process tests wait on this instead of guessing how long a holder takes to get its lock.
SLOW_ENTERED = _Entries()


def _state(session: Any) -> dict[str, Any]:
    return {"session": dict(session), "id": session.id, "user": session.user_id, "is_new": session.is_new}


# -- Starlette ---------------------------------------------------------------------------------


async def s_inc(request: Request) -> JSONResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return JSONResponse({"n": request.session["n"]})


@read_only
async def s_view(request: Request) -> JSONResponse:
    return JSONResponse(_state(request.session))


async def s_none(request: Request) -> PlainTextResponse:
    return PlainTextResponse("untouched")


async def s_set(request: Request) -> JSONResponse:
    request.session[request.query_params["k"]] = request.query_params["v"]
    return JSONResponse(_state(request.session))


async def s_regen(request: Request) -> JSONResponse:
    request.session.regenerate()  # type: ignore[attr-defined]
    return JSONResponse(_state(request.session))


async def s_invalidate(request: Request) -> JSONResponse:
    request.session.invalidate()  # type: ignore[attr-defined]
    return JSONResponse({"ok": True})


async def s_login(request: Request) -> JSONResponse:
    request.session.bind_user(request.path_params["uid"])  # type: ignore[attr-defined]
    return JSONResponse(_state(request.session))


def s_slow(request: Request) -> JSONResponse:
    # A sync endpoint: Starlette runs it in a worker thread, so sleeping does not block the loop.
    request.session["n"] = request.session.get("n", 0) + 1
    SLOW_ENTERED.enter()
    time.sleep(float(request.query_params.get("t", "1")))
    return JSONResponse({"n": request.session["n"]})


@read_only
async def s_ro_write(request: Request) -> JSONResponse:
    try:
        request.session["x"] = 1
    except ReadOnlySessionError as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    return JSONResponse({"error": None})


async def s_id(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.session.id})  # type: ignore[attr-defined]


STARLETTE_ROUTES = [
    Route("/inc", s_inc),
    Route("/view", s_view),
    Route("/none", s_none),
    Route("/set", s_set),
    Route("/regen", s_regen),
    Route("/invalidate", s_invalidate),
    Route("/login/{uid}", s_login),
    Route("/slow", s_slow),
    Route("/ro-write", s_ro_write),
    Route("/id", s_id),
]


def make_starlette_app(**options: Any) -> Starlette:
    """The test app on Starlette with ``SessionMiddleware(**options)``."""
    return Starlette(routes=STARLETTE_ROUTES, middleware=[Middleware(SessionMiddleware, **options)])


def starlette_from_env() -> Starlette:
    """Factory for uvicorn: options from SESSIONMW_* environment variables."""
    return make_starlette_app(**options_from_config(None))


# -- plain WSGI --------------------------------------------------------------------------------


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    from urllib.parse import parse_qs

    session = environ["sessionmw.session"]
    path = environ.get("PATH_INFO", "/")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    status = "200 OK"
    body: Any
    if path == "/inc":
        session["n"] = session.get("n", 0) + 1
        body = {"n": session["n"]}
    elif path == "/view":
        body = _state(session)
    elif path == "/none":
        body = "untouched"
    elif path == "/set":
        session[query["k"]] = query["v"]
        body = _state(session)
    elif path == "/regen":
        session.regenerate()
        body = _state(session)
    elif path == "/invalidate":
        session.invalidate()
        body = {"ok": True}
    elif path.startswith("/login/"):
        session.bind_user(path.rsplit("/", 1)[1])
        body = _state(session)
    elif path == "/slow":
        session["n"] = session.get("n", 0) + 1
        SLOW_ENTERED.enter()
        time.sleep(float(query.get("t", "1")))
        body = {"n": session["n"]}
    elif path == "/ro-write":
        try:
            session["x"] = 1
            body = {"error": None}
        except ReadOnlySessionError as exc:
            status, body = "409 Conflict", {"error": str(exc)}
    elif path == "/id":
        body = {"id": session.id}
    else:
        status, body = "404 Not Found", {"error": "not found"}
    if isinstance(body, str):
        data, ctype = body.encode(), "text/plain"
    else:
        data, ctype = json.dumps(body).encode(), "application/json"
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data)))])
    return [data]


def make_wsgi_app(**options: Any) -> WSGISessionMiddleware:
    """The test app as plain WSGI; ``/view`` and ``/ro-write`` are read-only through read_only_paths."""
    options.setdefault("read_only_paths", ("/view", "/ro-write"))
    return WSGISessionMiddleware(_wsgi_app, **options)


# -- Flask -------------------------------------------------------------------------------------


def make_flask_app(**options: Any) -> Any:
    """The test app on Flask with FlaskSession; options become SESSION_* config keys."""
    from flask import Flask, jsonify, request, session

    from sessionmw.flask import FlaskSession

    app = Flask("sessionmw_test")
    config: dict[str, Any] = {"SECRET_KEY": options.pop("secret_key")}
    cookie_keys = {
        "session_cookie": "SESSION_COOKIE_NAME",
        "path": "SESSION_COOKIE_PATH",
        "domain": "SESSION_COOKIE_DOMAIN",
        "https_only": "SESSION_COOKIE_SECURE",
        "same_site": "SESSION_COOKIE_SAMESITE",
    }
    for key, value in options.items():
        config[cookie_keys.get(key, "SESSION_" + key.upper())] = value
    app.config.update(config)
    FlaskSession(app)
    s: Any = session

    @app.route("/inc")
    def inc() -> Any:
        s["n"] = s.get("n", 0) + 1
        return jsonify(n=s["n"])

    @app.route("/view")
    @read_only
    def view() -> Any:
        return jsonify(_state(s._get_current_object()))

    @app.route("/none")
    def none() -> Any:
        return "untouched"

    @app.route("/set")
    def set_() -> Any:
        s[request.args["k"]] = request.args["v"]
        return jsonify(_state(s._get_current_object()))

    @app.route("/regen")
    def regen() -> Any:
        s.regenerate()
        return jsonify(_state(s._get_current_object()))

    @app.route("/invalidate")
    def invalidate() -> Any:
        s.invalidate()
        return jsonify(ok=True)

    @app.route("/login/<uid>")
    def login(uid: str) -> Any:
        s.bind_user(uid)
        return jsonify(_state(s._get_current_object()))

    @app.route("/slow")
    def slow() -> Any:
        s["n"] = s.get("n", 0) + 1
        SLOW_ENTERED.enter()
        time.sleep(float(request.args.get("t", "1")))
        return jsonify(n=s["n"])

    @app.route("/ro-write")
    @read_only
    def ro_write() -> Any:
        try:
            s["x"] = 1
        except ReadOnlySessionError as exc:
            return jsonify(error=str(exc)), 409
        return jsonify(error=None)

    @app.route("/id")
    def id_() -> Any:
        return jsonify(id=s.id)

    return app


def flask_from_env() -> Any:
    """Factory for gunicorn: options from SESSIONMW_* environment variables."""
    options = options_from_config(None)
    return make_flask_app(**options)


if os.environ.get("SESSIONMW_TEST_APP") == "flask":  # pragma: no cover - gunicorn imports tests.apps:flask_app
    flask_app = flask_from_env()
