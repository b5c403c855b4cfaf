"""The Flask adapter: ``FlaskSession(app)`` makes ``flask.session`` a server-side, locked session.

Flask opens the session before it matches the URL, so ``open_session`` does no I/O and returns a
lazy session; the first access loads it, when ``request.endpoint`` (and so ``@read_only``) is known.
``save_session`` writes back, releases the lock and sets the cookie with Flask's own
``response.set_cookie``; ``teardown_request`` releases the lock when an exception skipped
``save_session``. Cookie settings are read from ``app.config`` per request, as Flask does. At
teardown, after the response was made, a background gc may start (``SESSION_GC_INTERVAL``,
:mod:`sessionmw.drivers.sweeper`).
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask, Request, Response, current_app, request
from flask.sessions import SessionInterface, SessionMixin

from ..backends import Backend, open_backend
from ..core.config import OPTION_NAMES, build_settings, closest_option, options_from_config
from ..core.cookies import IdSigner, check_cookie_name, find_cookie
from ..core.errors import ConfigError, SessionUnavailable
from ..core.hooks import hooks_of
from ..core.policy import RequestInfo, SessionCore
from ..core.readonly import is_read_only
from ..core.route import EXCLUDED, READ_WRITE, Route
from ..core.session import Session
from ..drivers.sweeper import SyncSweeper
from ..drivers.sync import SyncDriver, SyncRequest
from .common import backend_spec, bound_failover_wait

if TYPE_CHECKING:
    from werkzeug.wrappers import Response as BaseResponse

__all__ = ["FlaskServerSession", "FlaskSession", "FlaskSessionInterface"]

_ENVIRON_KEY = "sessionmw.session"
# Options Flask itself owns (cookie attributes), read per request through SessionInterface getters.
_FLASK_OWNED = {
    "session_cookie",
    "path",
    "domain",
    "https_only",
    "httponly",
    "same_site",
    "partitioned",
    "max_age",
}
_FLASK_KEYS = {
    "SESSION_COOKIE_NAME",
    "SESSION_COOKIE_DOMAIN",
    "SESSION_COOKIE_PATH",
    "SESSION_COOKIE_HTTPONLY",
    "SESSION_COOKIE_SECURE",
    "SESSION_COOKIE_SAMESITE",
    "SESSION_COOKIE_PARTITIONED",
    "SESSION_REFRESH_EACH_REQUEST",
}


class FlaskServerSession(Session, SessionMixin):
    """The session Flask's ``session`` proxy returns: a :class:`sessionmw.Session` that is a ``SessionMixin``."""

    @property
    def new(self) -> bool:  # type: ignore[override]
        """Flask's name for :attr:`is_new`."""
        return self.is_new


#: How many key sets (SECRET_KEY + SECRET_KEY_FALLBACKS) keep a signer each.
_SIGNERS = 8


class _State:
    """What FlaskSession keeps per app, in ``app.extensions["sessionmw"]``."""

    def __init__(self, core: SessionCore, driver: SyncDriver, backend: Backend) -> None:
        self.core = core
        self.driver = driver
        self.backend = backend
        self.sweeper = SyncSweeper(backend, core.settings.gc_interval)
        self._signers: dict[tuple[str | bytes, ...], IdSigner] = {}

    def signer(self, app: Flask) -> IdSigner:
        """Return the signer of the app's keys now: ``SECRET_KEY`` signs, it and the fallbacks verify.

        Flask reads its keys per request, and so does this. Each key set has its own signer and
        so its own cache of verified cookies: an entry never outlives the keys that verified it.
        """
        secret = app.config["SECRET_KEY"]
        if not secret:
            raise ConfigError("SECRET_KEY must be set in app.config: it signs the session id", option="SECRET_KEY")
        fallbacks = app.config.get("SECRET_KEY_FALLBACKS")
        # The keys as configured (str or bytes) find the signer; a list of fallbacks changed in place
        # makes another tuple, so it finds (or makes) another signer.
        raw = (secret, *fallbacks) if fallbacks else (secret,)
        signer = self._signers.get(raw)
        if signer is None:
            if len(self._signers) >= _SIGNERS:
                self._signers.clear()
            signer = self._signers[raw] = IdSigner(tuple(_text(k) for k in raw))
        return signer


def _text(key: str | bytes) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


class FlaskSessionInterface(SessionInterface):
    """A Flask ``SessionInterface`` that delegates every session decision to sessionmw's core."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def get_cookie_name(self, app: Flask) -> str:
        """Return ``SESSION_COOKIE_PREFIX + SESSION_COOKIE_NAME``."""
        return self.state.core.settings.cookie_prefix + str(app.config["SESSION_COOKIE_NAME"])

    def open_session(self, app: Flask, request: Request) -> FlaskServerSession:
        """Return a lazy session for the request (no I/O here)."""
        state = self.state
        core = state.core
        path = request.path
        signer = state.signer(app)
        environ = request.environ
        # What request.remote_addr and request.headers.get("User-Agent") return, without their lookups.
        req = RequestInfo(path, environ.get("REMOTE_ADDR"), environ.get("HTTP_USER_AGENT"))
        if core.routes.excluded(path):
            route: Route = EXCLUDED
            found = None
            handle = SyncRequest(core, state.driver, req, signer=signer)
        else:
            route = READ_WRITE
            # The cookie as the WSGI and ASGI adapters find it, without parsing every cookie of the
            # header into request.cookies (about 7 µs); an app that reads request.cookies still can.
            value = find_cookie(environ.get("HTTP_COOKIE"), self.get_cookie_name(app))
            found = signer.unsign_with_time(value, app.permanent_session_lifetime.total_seconds()) if value else None

            def resolve() -> Route:
                endpoint = request.endpoint
                view = app.view_functions.get(endpoint) if endpoint is not None else None
                return core.routes.decide(path, marked=is_read_only(view))

            handle = SyncRequest(core, state.driver, req, resolve, signer)
        session = handle.session(route, found, FlaskServerSession)
        environ[_ENVIRON_KEY] = session
        return session  # type: ignore[return-value]

    def save_session(self, app: Flask, session: SessionMixin, response: BaseResponse) -> None:
        """Write the session back, release its lock and set or delete the cookie, as Flask would."""
        handle = hooks_of(session) if isinstance(session, FlaskServerSession) else None
        if not isinstance(handle, SyncRequest):
            return
        assert isinstance(session, FlaskServerSession)
        # Flask's should_set_cookie: a modified session, or a permanent one refreshed on every request.
        permanent = bool(self.state.core.peek(session, "_permanent"))
        outcome = handle.finish(
            session, on_modified=True, refresh=permanent and bool(app.config["SESSION_REFRESH_EACH_REQUEST"])
        )
        if outcome.vary:
            headers = response.headers
            if "Vary" in headers:
                response.vary.add("Cookie")  # merged into the app's Vary as Flask merges it
            else:
                headers["Vary"] = "Cookie"  # what vary.add gives here, without parsing a header set
        cookie = outcome.cookie
        if cookie is None:
            return
        name = self.get_cookie_name(app)
        attributes: dict[str, Any] = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "partitioned": self.get_cookie_partitioned(app),
            "samesite": self.get_cookie_samesite(app),
            "httponly": self.get_cookie_httponly(app),
        }
        if cookie.kind == "delete":
            response.delete_cookie(name, **attributes)
        else:
            response.set_cookie(name, cookie.value, expires=self.get_expiration_time(app, session), **attributes)


class FlaskSession:
    """Flask extension: server-side, locked sessions configured from ``app.config``.

    ``FlaskSession(app)`` or ``ext = FlaskSession(); ext.init_app(app)``. Options are the
    ``SESSION_*`` keys (``SESSION_BACKEND``, ``SESSION_LOCK_TIMEOUT``, ``SESSION_IDLE_TIMEOUT``...),
    ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS``, and ``SESSIONMW_*`` environment variables.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Install the session interface, the lock fallback and the 503 handler on ``app``."""
        config = app.config
        for key in config:
            if key.startswith("SESSION_") and key not in _FLASK_KEYS:
                name = key[len("SESSION_") :].lower()
                if name not in OPTION_NAMES and key not in ("SESSION_COOKIE_PREFIX",):
                    hint = closest_option(name)
                    more = f"; did you mean SESSION_{hint.upper()}?" if hint else ""
                    warnings.warn(f"sessionmw: unknown config key {key}{more}", stacklevel=2)
        opts = {k: v for k, v in options_from_config(config, strict=False).items() if k not in _FLASK_OWNED}
        secret = config.get("SECRET_KEY")
        if not secret:
            raise ConfigError("SECRET_KEY must be set in app.config: it signs the session id", option="SECRET_KEY")
        keys = [secret, *(config.get("SECRET_KEY_FALLBACKS") or [])]
        opts["secret_key"] = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
        settings = build_settings(max_age=None, **opts)
        lifetime = config.get("PERMANENT_SESSION_LIFETIME")
        if not isinstance(lifetime, timedelta | int | float):
            raise ConfigError(
                "PERMANENT_SESSION_LIFETIME must be a timedelta or seconds",
                option="PERMANENT_SESSION_LIFETIME",
            )
        check_cookie_name(
            settings.cookie_prefix + str(config.get("SESSION_COOKIE_NAME") or "session"),
            secure=bool(config.get("SESSION_COOKIE_SECURE")),
            path=config.get("SESSION_COOKIE_PATH") or config.get("APPLICATION_ROOT") or "/",
            domain=config.get("SESSION_COOKIE_DOMAIN") or None,
        )
        core = SessionCore(settings)
        backend = open_backend(backend_spec(settings), key_prefix=settings.key_prefix)
        bound_failover_wait(backend, settings)
        driver = SyncDriver(backend, settings.lock_expire)
        driver.listeners = core.listeners
        state = _State(core, driver, backend)
        app.extensions["sessionmw"] = state
        app.session_interface = FlaskSessionInterface(state)
        app.teardown_request(_release_on_teardown)
        app.register_error_handler(SessionUnavailable, _unavailable)


def _release_on_teardown(exc: BaseException | None) -> None:
    session = request.environ.get(_ENVIRON_KEY)
    handle = hooks_of(session) if isinstance(session, Session) else None
    if isinstance(handle, SyncRequest):
        assert isinstance(session, Session)
        handle.abort(session)
    state = current_app.extensions.get("sessionmw")
    if isinstance(state, _State):
        state.sweeper.poke()  # the response is made: a due gc starts in the background


def _unavailable(exc: SessionUnavailable) -> Response:
    return Response(
        f"503 Service Unavailable: {exc.message}\n",
        status=503,
        mimetype="text/plain",
        headers={"Retry-After": str(exc.retry_after)},
    )
