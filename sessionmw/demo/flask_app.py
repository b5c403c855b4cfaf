"""The demo served by Flask (WSGI): ``build_flask_app(backend, secret_key)``.

Options come from ``app.config`` (``SESSION_BACKEND``, ``SESSION_COOKIE_PREFIX``...), as a Flask
app would set them. Serve it with a threaded WSGI server, so the slow page's held lock can be seen
from a second tab.
"""

from __future__ import annotations

import time

from flask import Flask, Response, redirect, request
from flask import session as flask_session

from ..admin.store import SessionStore
from ..core.readonly import read_only
from ..core.session import Session
from ..flask import FlaskSession
from . import COOKIE_PREFIX, IDLE_TIMEOUT, KEY_PREFIX, LOCK_TIMEOUT, pages

__all__ = ["build_flask_app"]


def _respond(reply: pages.Reply) -> Response:
    if reply.location is not None:
        return redirect(reply.location, code=reply.status)  # type: ignore[return-value]
    return Response(reply.html, status=reply.status, mimetype="text/html")


def _session() -> Session:
    session = flask_session._get_current_object()  # type: ignore[attr-defined]
    assert isinstance(session, Session)
    return session


def _form() -> dict[str, str]:
    return {k: str(v) for k, v in request.form.items()}


def build_flask_app(backend: str, secret_key: str) -> Flask:
    """Return the demo as a Flask app with :class:`~sessionmw.flask.FlaskSession` on ``backend``."""
    store = SessionStore(backend, key_prefix=KEY_PREFIX)  # opens the backend now: a bad URL fails here
    app = Flask("sessionmw.demo")
    app.config.update(
        SECRET_KEY=secret_key,
        SESSION_BACKEND=backend,
        SESSION_COOKIE_PREFIX=COOKIE_PREFIX,
        SESSION_KEY_PREFIX=KEY_PREFIX,
        SESSION_IDLE_TIMEOUT=IDLE_TIMEOUT,
        SESSION_LOCK_TIMEOUT=LOCK_TIMEOUT,
    )
    FlaskSession(app)
    app.extensions["sessionmw_demo_store"] = store

    @app.get("/")
    def home() -> Response:
        return _respond(pages.home(_session(), request.args.get("msg")))

    @app.post("/increment")
    def increment() -> Response:
        return _respond(pages.increment(_session()))

    @app.post("/login")
    def login() -> Response:
        return _respond(pages.login(_session(), _form()))

    @app.post("/logout")
    def logout() -> Response:
        return _respond(pages.logout(_session()))

    @app.get("/sessions")
    def sessions() -> Response:
        return _respond(pages.sessions(_session(), store, request.args.get("msg")))

    @app.post("/sessions/end")
    def end_session() -> Response:
        return _respond(pages.end_session(_session(), store, _form()))

    @app.post("/sessions/end-others")
    def end_others() -> Response:
        return _respond(pages.end_others(_session(), store))

    @app.get("/admin")
    def admin() -> Response:
        return _respond(pages.admin(_session(), store, request.args.get("msg")))

    @app.post("/admin/end-user")
    def admin_end_user() -> Response:
        return _respond(pages.admin_end_user(_session(), store, _form()))

    @app.get("/status")
    @read_only
    def status() -> Response:
        return _respond(pages.status(_session()))

    @app.get("/slow")
    def slow() -> Response:
        session = _session()
        seconds = pages.slow_seconds(request.args)
        pages.slow_start(session)
        time.sleep(seconds)
        return _respond(pages.slow_done(session, seconds))

    return app
