"""The ASGI adapter: a pure ASGI middleware, a drop-in for Starlette's ``SessionMiddleware``.

It only translates between ASGI and the core: find the cookie, learn whether the route is
read-only, load (and lock) before the app runs when a signed cookie is present (``request.session``
is synchronous; on a route in ``lazy_paths``, at ``await load_session(request)`` instead), write
back and release when ``http.response.start`` goes out, and release in a ``finally`` when the app
fails.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable, MutableMapping, Sequence
from types import FrameType
from typing import Any, Literal

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..backends import AsyncBackend, Backend, open_async_backend
from ..core.config import OPTION_NAMES, build_settings, unknown_option_error
from ..core.errors import BackendUnavailable, ConfigError, SessionError, SessionUnavailable
from ..core.hooks import failure_of, hooks_of
from ..core.policy import Outcome, SessionCore
from ..core.readonly import is_read_only
from ..core.route import Route
from ..core.session import Session
from ..drivers.aio import AsyncDriver, AsyncRequest
from .common import ErrorResponse, add_vary_cookie, backend_spec, bound_failover_wait, logger, unavailable_body

__all__ = ["SessionMiddleware", "find_starlette_endpoint", "load_session"]

#: How many (type, method, path) triples the route lookup remembers.
ROUTE_CACHE_SIZE = 4096
#: Returned by :func:`find_starlette_endpoint` for a mount of static files: no session at all.
STATIC = object()


async def load_session(request: HTTPConnection) -> Session:
    """Return the request's session, loading it now on a route in ``lazy_paths``.

    Also a FastAPI dependency: ``session: Session = Depends(load_session)``. It takes the lock unless
    the route is read-only. Elsewhere the session is loaded already and is returned as it is. Raises
    :class:`~sessionmw.SessionUnavailable` when it cannot be had (the middleware answers 503).
    """
    session = request.scope.get("session")
    if not isinstance(session, Session):
        raise SessionError("load_session() needs sessionmw's SessionMiddleware in front of the app")
    handle = hooks_of(session)
    if isinstance(handle, AsyncRequest):
        await handle.aload(session)
    error = failure_of(session)
    if error is not None:
        raise error
    return session


_KEYWORDS = (*OPTION_NAMES, "app", "error_response")


class SessionMiddleware:
    """Server-side, locked sessions for Starlette and FastAPI apps.

    Takes Starlette's ``SessionMiddleware`` keywords (``secret_key``, ``session_cookie``, ``max_age``,
    ``path``, ``same_site``, ``https_only``, ``domain``, ``partitioned``) and sessionmw's own (see the
    README's option table). ``request.session`` is a :class:`sessionmw.Session`.

    :param backend: a backend URL or instance; default: files under the system temp dir.
    :param durable_backend: a durable backend URL or instance behind ``backend`` (a tiered store:
        :mod:`sessionmw.backends.tiered`), written through every ``durable_write_every`` writes.
    :param error_response: builds the answer to a request whose session cannot be had (lock timeout,
        too many waiters, backend down): ``(status, headers, body)``; default a plain-text 503.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> SessionMiddleware:
        # Python would reject an unknown keyword with a bare TypeError before __init__ runs; answer it
        # with a ConfigError naming the closest option instead. (A **kwargs on __init__ would do the
        # same but break the typing of Starlette's Middleware(SessionMiddleware, ...).)
        if any(name not in _KEYWORDS for name in kwargs):
            error = _keywords_error(args, kwargs)
            if _built_by_starlette(sys._getframe(0)):
                return _Misconfigured.holding(error)
            raise error
        return super().__new__(cls)

    def __init__(
        self,
        app: ASGIApp,
        secret_key: str | Sequence[str] | Any = None,
        session_cookie: str = "session",
        max_age: int | None = 14 * 24 * 3600,
        path: str = "/",
        same_site: Literal["lax", "strict", "none"] = "lax",
        https_only: bool = False,
        domain: str | None = None,
        partitioned: bool = False,
        *,
        backend: str | Backend | AsyncBackend | None = None,
        cookie_prefix: str = "",
        idle_timeout: float | None = None,
        absolute_timeout: float | None = None,
        lock_timeout: float = 120.0,
        lock_expire: float = 7200.0,
        key_prefix: str = "sessmw:",
        read_only_paths: Sequence[str] = (),
        read_only_debug: bool = False,
        lock_warn: float | None = None,
        max_waiters: int = 32,
        touch_interval: float = 60.0,
        max_sessions_per_user: int | None = None,
        exclude_paths: Sequence[str] = (),
        lazy_paths: Sequence[str] = (),
        serializer: Any = "json",
        durable_backend: Any = None,
        durable_write_every: int = 1,
        listeners: Sequence[Callable[..., Any]] = (),
        rotate_every: float | None = None,
        rotate_grace: float = 5.0,
        encryption_key: str | Sequence[str] | None = None,
        max_session_bytes: int | None = 512 * 1024,
        error_response: ErrorResponse | None = None,
    ) -> None:
        self.app = app
        # Every keyword but the app and the error page is an option, named as the settings name it.
        options = {k: v for k, v in locals().items() if k not in ("self", "app", "error_response", "__class__")}
        try:
            self.settings = build_settings(**options)
            self.core = SessionCore(self.settings)
            self.backend = open_async_backend(backend_spec(self.settings), key_prefix=key_prefix)
            bound_failover_wait(self.backend, self.settings)
        except ConfigError as exc:
            if not _built_by_starlette(sys._getframe(0)):
                raise
            # Raised here, the error would leave Starlette's stack unbuilt: the server would take the
            # lifespan for unsupported, start, and answer every request 500. Become the stand-in that
            # fails the start-up with the message instead.
            self.__class__ = _Misconfigured
            self.error = exc
            return
        self.driver = AsyncDriver(self.backend, self.settings.lock_expire)
        self.driver.listeners = self.core.listeners
        self.error_response: ErrorResponse = error_response or unavailable_body
        self._routes: dict[tuple[str, str, str], Route] = {}

    def _route(self, scope: Scope) -> Route:
        """Return the core's route for the request: its endpoint's marker and the path patterns."""
        kind = scope["type"]
        key = (kind, scope.get("method", ""), scope["path"])
        route = self._routes.get(key)
        if route is None:
            path = scope["path"]
            rules = self.core.routes
            app = scope.get("app")
            endpoint = find_starlette_endpoint(app, scope) if app is not None and not rules.excluded(path) else None
            route = rules.decide(
                path,
                marked=endpoint is not None and endpoint is not STATIC and is_read_only(endpoint),
                static=endpoint is STATIC,
                websocket=kind == "websocket",
            )
            if len(self._routes) < ROUTE_CACHE_SIZE:
                self._routes[key] = route
        return route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self.app(scope, receive, self._closing_send(send))
            else:
                await self.app(scope, receive, send)
            return
        route = self._route(scope)
        if route.excluded:
            scope["session"] = self.core.new_session(route, None, None)
            await self.app(scope, receive, send)
            return
        handle = AsyncRequest(self.core, self.driver, scope)
        session, load = self._session(scope, route, handle)
        if load:
            try:
                await handle.open(session, lock=not route.read_only)
            except SessionUnavailable as exc:
                if kind == "websocket":
                    await self._unavailable(exc, kind, send)
                    return
                # Answer 503 only if the app uses the session: a page that never touches it still works.
                self.core.fail_later(session, exc)
        scope["session"] = session
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                outcome = await handle.finish(session)
                if outcome.vary or outcome.set_cookie is not None:
                    _add_headers(message, outcome)
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except SessionUnavailable as exc:
            await handle.abort(session)
            if started:
                raise
            await self._unavailable(exc, "http", send)
        except BaseException:
            await handle.abort(session)
            raise
        else:
            if not handle.finished:
                await handle.finish(session)

    def _session(self, scope: Scope, route: Route, handle: AsyncRequest) -> tuple[Session, bool]:
        """Return the request's session from its cookie, and whether to load it before the app runs."""
        cookie = None
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookie = value.decode("latin-1") if cookie is None else f"{cookie}; {value.decode('latin-1')}"
        found = self.core.sid_from_cookie(cookie, self.settings.max_age)
        session = self.core.new_session(route, found, handle)
        if found is None:
            return session, False
        if route.lazy:
            handle.defer(session, lock=not route.read_only)  # loaded by `await load_session(request)`
            return session, False
        return session, True

    def _closing_send(self, send: Send) -> Send:
        """Wrap a lifespan ``send``: probe the backend when the app has started, close it when it stops."""

        async def closing_send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                await self._probe()
            elif kind == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return closing_send

    async def _probe(self) -> None:
        """Reach a backend that can be probed (Redis) at start-up, so that a store that may drop
        sessions, or one that is down, is named in the log before the first request."""
        probe = getattr(self.backend, "aprobe", None)
        if probe is None:
            return
        try:
            await probe()
        except BackendUnavailable as exc:
            # One sentence: the cause may end with its own full stop ("... Connection refused.").
            cause = exc.message.rstrip().rstrip(".")
            logger.warning("at start-up: %s; requests that need their session get a 503 until it answers", cause)

    async def _unavailable(self, exc: SessionUnavailable, kind: str, send: Send) -> None:
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1013, "reason": exc.message[:120]})
            return
        status, headers, body = self.error_response(exc)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def aclose(self) -> None:
        """Close the backend's connections (for app shutdown)."""
        await self.backend.aclose()


class _Misconfigured(SessionMiddleware):
    """What Starlette's lazily built stack holds in place of a middleware whose options are wrong.

    Starlette builds its middleware on the first call, the lifespan start-up. A ``ConfigError`` raised
    there reads to uvicorn as "lifespan unsupported": the server starts and every request fails. This
    stand-in answers the start-up with ``lifespan.startup.failed`` and the one-line message (the server
    prints it and exits), then raises the error; every other scope raises it too.
    """

    error: ConfigError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing: a stand-in comes from :meth:`holding` or from a failed ``SessionMiddleware.__init__``."""

    @classmethod
    def holding(cls, error: ConfigError) -> _Misconfigured:
        """Return a stand-in that fails with ``error``."""
        failed = object.__new__(cls)
        failed.error = error
        return failed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": self.error.message})
        # A copy each time: raising one exception object again and again would grow its traceback.
        raise copy.copy(self.error)


def _keywords_error(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ConfigError:
    """Return the error for a construction with unknown keywords, naming every bad option at once."""
    options = dict(zip(_POSITIONAL, args, strict=False))
    options.update(kwargs)
    for name in ("app", "error_response"):
        options.pop(name, None)
    try:
        build_settings(**options)
    except ConfigError as exc:
        return exc
    # build_settings names unknown options; should it not, name the first one here.
    return unknown_option_error(next(n for n in kwargs if n not in _KEYWORDS), _KEYWORDS)  # pragma: no cover


#: The positional parameters of ``SessionMiddleware(app, secret_key, session_cookie, ...)``, in order.
_POSITIONAL = tuple(
    name
    for name, parameter in inspect.signature(SessionMiddleware.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and name != "self"
)


def _built_by_starlette(frame: FrameType | None) -> bool:
    """Whether the constructor running in ``frame`` was called by Starlette's ``build_middleware_stack``.

    Only there is a ``ConfigError`` turned into a failed lifespan start-up; a direct construction
    raises it. Constructors of subclasses calling ``super().__init__`` are looked through.
    """
    from starlette.applications import Starlette

    try:
        while frame is not None and frame.f_code.co_name in ("__new__", "__init__"):
            first = frame.f_locals.get("self", frame.f_locals.get("cls"))
            if not (
                isinstance(first, SessionMiddleware)
                or (isinstance(first, type) and issubclass(first, SessionMiddleware))
            ):
                break
            frame = frame.f_back
        return (
            frame is not None
            and frame.f_code.co_name == "build_middleware_stack"
            and isinstance(frame.f_locals.get("self"), Starlette)
        )
    finally:
        del frame  # a frame held in a local keeps its whole stack alive


def find_starlette_endpoint(app: Any, scope: MutableMapping[str, Any]) -> Any:
    """Return the endpoint Starlette's router would call for ``scope``, :data:`STATIC`, or ``None``.

    The middleware runs before routing, so it matches the routes itself (``route.matches``).
    """
    router = getattr(app, "router", None)
    routes = getattr(router, "routes", None) if router is not None else getattr(app, "routes", None)
    if routes is None:
        return None
    try:
        from starlette.routing import Match
    except ImportError:  # pragma: no cover - starlette is a dependency
        return None
    return _match(routes, scope, Match.FULL)


def _match(routes: Any, scope: MutableMapping[str, Any], full: Any) -> Any:
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # a custom route that cannot match this scope
            continue
        if match != full:
            continue
        endpoint = child.get("endpoint")
        if type(endpoint).__name__ == "StaticFiles":
            return STATIC
        sub_routes = getattr(route, "routes", None)  # a Mount of a router or an app with routes
        if sub_routes:
            return _match(sub_routes, {**scope, **child}, full)
        return endpoint
    return None


def _add_headers(message: Message, outcome: Outcome) -> None:
    """Copy the core's outcome into an ``http.response.start`` message: Vary, then Set-Cookie."""
    headers = message.get("headers")
    if type(headers) is not list:
        headers = message["headers"] = list(headers or ())
    if outcome.vary:
        add_vary_cookie(headers, b"vary", b"Cookie", b", ", b"*")
    if outcome.set_cookie is not None:
        headers.append((b"set-cookie", outcome.set_cookie.encode("latin-1")))
