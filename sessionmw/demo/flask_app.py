"""The demo served by Flask (WSGI): ``build_flask_app(backend, secret_key)``.

Options come from ``app.config`` (``SESSION_BACKEND``, ``SESSION_COOKIE_PREFIX``...), as a Flask
app would set them. Serve it with a threaded WSGI server, so the slow page's held lock can be seen
from a second tab. ``app.wsgi_app`` is wrapped so every request runs with notes of its own
(:func:`~sessionmw.demo.activity.noting`), and HTTP errors are the demo's pages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, redirect, request
from flask import session as flask_session
from werkzeug.exceptions import HTTPException

from ..admin.store import SessionStore
from ..core.readonly import read_only
from ..core.session import Session
from ..flask import FlaskSession
from . import COOKIE_PREFIX, EXCLUDE_PATHS, IDLE_TIMEOUT, KEY_PREFIX, LOCK_TIMEOUT, MAX_SESSIONS_PER_USER, pages
from .activity import Activity, metrics_listener, noting

__all__ = ["build_flask_app"]


def _response(reply: pages.Reply) -> Response:
    if reply.location is not None:
        response: Response = redirect(reply.location, code=reply.status)  # type: ignore[assignment]
    else:
        response = Response(reply.html, status=reply.status, content_type=reply.media_type)
    if reply.forget_cookie:
        response.delete_cookie(pages.COOKIE_NAME, path="/", httponly=True, samesite="Lax")
    return response


def _respond(session: Session, reply: pages.Reply) -> Response:
    return _response(pages.finish(session, reply))


def _noting(wsgi_app: Callable[..., Iterable[bytes]], activity: Activity) -> Callable[..., Iterable[bytes]]:
    """Wrap a WSGI app so every request runs with notes of its own, for the demo's listener."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with noting(activity):
            return wsgi_app(environ, start_response)

    return app


def _session() -> Session:
    session = flask_session._get_current_object()  # type: ignore[attr-defined]
    assert isinstance(session, Session)
    return session


def _form() -> dict[str, str]:
    return {k: str(v) for k, v in request.form.items()}


def build_flask_app(backend: str, secret_key: str) -> Flask:
    """Return the demo as a Flask app with :class:`~sessionmw.flask.FlaskSession` on ``backend``."""
    store = SessionStore(backend, key_prefix=KEY_PREFIX)  # opens the backend now: a bad URL fails here
    activity = Activity()
    prometheus = metrics_listener()
    app = Flask("sessionmw.demo")
    app.config.update(
        SECRET_KEY=secret_key,
        SESSION_BACKEND=backend,
        SESSION_COOKIE_PREFIX=COOKIE_PREFIX,
        SESSION_KEY_PREFIX=KEY_PREFIX,
        SESSION_IDLE_TIMEOUT=IDLE_TIMEOUT,
        SESSION_LOCK_TIMEOUT=LOCK_TIMEOUT,
        SESSION_MAX_SESSIONS_PER_USER=MAX_SESSIONS_PER_USER,
        SESSION_EXCLUDE_PATHS=EXCLUDE_PATHS,
        SESSION_LISTENERS=[activity] if prometheus is None else [activity, prometheus],
    )
    FlaskSession(app)
    app.extensions["sessionmw_demo_store"] = store
    app.extensions["sessionmw_demo_activity"] = activity
    app.wsgi_app = _noting(app.wsgi_app, activity)  # type: ignore[method-assign]

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _response(pages.http_error(exc.code or 500, request.path))

    @app.get("/")
    def home() -> Response:
        session = _session()
        return _respond(session, pages.home(session, request.args.get("msg")))

    @app.post("/increment")
    def increment() -> Response:
        session = _session()
        return _respond(session, pages.increment(session))

    @app.post("/login")
    def login() -> Response:
        session = _session()
        return _respond(session, pages.login(session, _form()))

    @app.post("/logout")
    def logout() -> Response:
        session = _session()
        return _respond(session, pages.logout(session))

    @app.get("/sessions")
    def sessions() -> Response:
        session = _session()
        return _respond(session, pages.sessions(session, store, request.args.get("msg")))

    @app.post("/sessions/end")
    def end_session() -> Response:
        session = _session()
        return _respond(session, pages.end_session(session, store, _form()))

    @app.post("/sessions/end-others")
    def end_others() -> Response:
        session = _session()
        return _respond(session, pages.end_others(session, store))

    @app.get("/admin")
    def admin() -> Response:
        session = _session()
        return _respond(session, pages.admin(session, store, request.args.get("msg")))

    @app.post("/admin/end-user")
    def admin_end_user() -> Response:
        session = _session()
        return _respond(session, pages.admin_end_user(session, store, _form()))

    @app.get("/status")
    @read_only
    def status() -> Response:
        session = _session()
        return _respond(session, pages.status(session))

    @app.get("/slow")
    def slow() -> Response:
        session = _session()
        seconds = pages.slow_seconds(request.args)
        pages.slow_start(session, seconds)
        time.sleep(seconds)
        return _respond(session, pages.slow_done(session, seconds))

    @app.get("/metrics")
    def metrics() -> Response:
        return _response(pages.metrics(prometheus))

    return app
