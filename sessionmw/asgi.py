"""The ASGI adapter: a pure ASGI middleware, a drop-in for Starlette's ``SessionMiddleware``.

It only translates between ASGI and the core: find the cookie, learn whether the route is
read-only, load (and lock) before the app runs when a signed cookie is present (``request.session``
is synchronous; on a route in ``lazy_paths``, at ``await load_session(request)`` instead), write
back and release when ``http.response.start`` goes out, and release in a ``finally`` when the app
fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from starlette.requests import HTTPConnection

from ._drive import AsyncDriver
from ._handle import AsyncHandle
from ._types import ASGIApp, Message, Receive, Scope, Send
from .backends import AsyncBackend, Backend, open_async_backend
from .core.config import OPTION_NAMES, build_settings, unknown_option_error
from .core.cookies import format_delete_cookie, format_set_cookie
from .core.errors import BackendUnavailable, ConfigError, SessionError, SessionUnavailable
from .core.policy import CookieAction, SessionCore
from .core.readonly import STATIC, find_starlette_endpoint, is_read_only
from .core.session import Session

__all__ = ["SessionMiddleware", "default_backend_url", "load_session", "unavailable_body"]

logger = logging.getLogger("sessionmw")

#: How many (method, path) pairs the read-only route lookup remembers.
ROUTE_CACHE_SIZE = 4096

ErrorResponse = Callable[[SessionUnavailable], tuple[int, list[tuple[str, str]], bytes]]


def _add_vary_cookie(headers: list[tuple[bytes, bytes]]) -> None:
    """Add ``Cookie`` to the response's Vary header (merged into one that exists, as Starlette does)."""
    for i, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            if b"cookie" not in value.lower() and value.strip() != b"*":
                headers[i] = (name, value + b", Cookie")
            return
    headers.append((b"vary", b"Cookie"))


def default_backend_url() -> str:
    """Return the default backend: a file backend in the system temp dir, shared by the host's workers."""
    from .backends.file import default_directory

    return "file://" + str(default_directory())


def unavailable_body(exc: SessionUnavailable) -> tuple[int, list[tuple[str, str]], bytes]:
    """The default 503 answer: ``Retry-After`` and a one-line plain-text body naming the cause."""
    body = f"503 Service Unavailable: {exc.message}\n".encode()
    return 503, [("content-type", "text/plain; charset=utf-8"), ("retry-after", str(exc.retry_after))], body


def check_unsupported(settings: Any) -> None:
    """Reject options whose feature is not built yet, rather than ignoring them."""
    if settings.durable_backend is not None:
        raise ConfigError(
            "durable_backend is not supported in this version of sessionmw; leave it None",
            option="durable_backend",
        )


async def load_session(request: HTTPConnection) -> Session:
    """Return the request's session, loading it now on a route in ``lazy_paths``.

    Also a FastAPI dependency: ``session: Session = Depends(load_session)``. It takes the lock unless
    the route is read-only. Elsewhere the session is loaded already and is returned as it is. Raises
    :class:`~sessionmw.SessionUnavailable` when it cannot be had (the middleware answers 503).
    """
    session = request.scope.get("session")
    if not isinstance(session, Session):
        raise SessionError("load_session() needs sessionmw's SessionMiddleware in front of the app")
    hooks = session._hooks
    if isinstance(hooks, AsyncHandle):
        await hooks.aload(session)
    if session._error is not None:
        raise session._error
    return session


_KEYWORDS = (*OPTION_NAMES, "app", "error_response")


class SessionMiddleware:
    """Server-side, locked sessions for Starlette and FastAPI apps.

    Takes Starlette's ``SessionMiddleware`` keywords (``secret_key``, ``session_cookie``, ``max_age``,
    ``path``, ``same_site``, ``https_only``, ``domain``, ``partitioned``) and sessionmw's own (see the
    README's option table). ``request.session`` is a :class:`sessionmw.Session`.

    :param backend: a backend URL or instance; default: files under the system temp dir.
    :param error_response: builds the answer to a request whose session cannot be had (lock timeout,
        too many waiters, backend down): ``(status, headers, body)``; default a plain-text 503.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> SessionMiddleware:
        # Python would reject an unknown keyword with a bare TypeError before __init__ runs; answer it
        # with a ConfigError naming the closest option instead. (A **kwargs on __init__ would do the
        # same but break the typing of Starlette's Middleware(SessionMiddleware, ...).)
        for name in kwargs:
            if name not in _KEYWORDS:
                raise unknown_option_error(name, _KEYWORDS)
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
        error_response: ErrorResponse | None = None,
    ) -> None:
        self.app = app
        self.settings = build_settings(
            secret_key=secret_key,
            backend=backend,
            session_cookie=session_cookie,
            max_age=max_age,
            path=path,
            same_site=same_site,
            https_only=https_only,
            domain=domain,
            partitioned=partitioned,
            cookie_prefix=cookie_prefix,
            idle_timeout=idle_timeout,
            absolute_timeout=absolute_timeout,
            lock_timeout=lock_timeout,
            lock_expire=lock_expire,
            key_prefix=key_prefix,
            read_only_paths=read_only_paths,
            read_only_debug=read_only_debug,
            lock_warn=lock_warn,
            max_waiters=max_waiters,
            touch_interval=touch_interval,
            max_sessions_per_user=max_sessions_per_user,
            exclude_paths=exclude_paths,
            lazy_paths=lazy_paths,
            serializer=serializer,
            durable_backend=durable_backend,
            durable_write_every=durable_write_every,
        )
        check_unsupported(self.settings)
        self.core = SessionCore(self.settings)
        self.backend = open_async_backend(
            backend if backend is not None else default_backend_url(), key_prefix=key_prefix
        )
        self.driver = AsyncDriver(self.backend, self.settings.lock_expire)
        self.error_response: ErrorResponse = error_response or unavailable_body
        self._routes: dict[tuple[str, str, str], tuple[bool, bool, bool]] = {}

    def _route_info(self, scope: Scope) -> tuple[bool, bool, bool]:
        """Return ``(read_only, excluded, lazy)`` for the request, from its route and the path patterns."""
        key = (scope["type"], scope.get("method", ""), scope["path"])
        info = self._routes.get(key)
        if info is None:
            settings = self.settings
            path = scope["path"]
            excluded = self.core.path_matches(path, settings.exclude_paths)
            read_only = self.core.path_matches(path, settings.read_only_paths)
            app = scope.get("app")
            if not excluded and app is not None:
                endpoint = find_starlette_endpoint(app, scope)
                if endpoint is STATIC:
                    excluded = True
                elif endpoint is not None and is_read_only(endpoint):
                    read_only = True
            lazy = self.core.path_matches(path, settings.lazy_paths)
            info = (read_only, excluded, lazy)
            if len(self._routes) < ROUTE_CACHE_SIZE:
                self._routes[key] = info
        return info

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self.app(scope, receive, self._closing_send(send))
            else:
                await self.app(scope, receive, send)
            return
        core = self.core
        settings = self.settings
        read_only, excluded, lazy = self._route_info(scope)
        if excluded:
            session = core.new_session(read_only=True)
            session._frozen_reason = "this path is in exclude_paths (or static files): it has no session"
            scope["session"] = session
            await self.app(scope, receive, send)
            return

        cookie = None
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookie = value.decode("latin-1") if cookie is None else f"{cookie}; {value.decode('latin-1')}"
        if kind == "websocket":
            read_only = True  # no lock is held for the life of a connection
        enforced = read_only and (kind == "websocket" or not settings.read_only_debug)
        session = core.new_session(read_only=enforced, declared_read_only=read_only and not enforced)
        handle = AsyncHandle(core, self.driver, scope)
        session._hooks = handle
        found = core.sid_from_cookie(cookie, settings.max_age)
        if found is not None and lazy and kind == "http":
            handle.defer(session, found, lock=not enforced)  # loaded by `await load_session(request)`
        elif found is not None:
            try:
                await handle.open(session, found, lock=not enforced)
            except SessionUnavailable as exc:
                if kind == "websocket":
                    await self._unavailable(exc, kind, send)
                    return
                # Answer 503 only if the app uses the session: a page that never touches it still works.
                session._poison(exc)
        scope["session"] = session

        if kind == "websocket":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                action = await handle.finish(session)
                if action is not None or session.accessed:
                    headers = message.get("headers")
                    if type(headers) is not list:
                        headers = message["headers"] = list(headers or ())
                    if session.accessed:
                        _add_vary_cookie(headers)
                    if action is not None:
                        headers.append((b"set-cookie", self._cookie_header(action).encode("latin-1")))
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except SessionUnavailable as exc:
            await handle.abort(session)
            if started:
                raise
            await self._unavailable(exc, kind, send)
        except BaseException:
            await handle.abort(session)
            raise
        else:
            if not handle.finished:
                await handle.finish(session)

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
            logger.warning("at start-up: %s; requests that need their session get a 503 until it answers", exc)

    def _cookie_header(self, action: CookieAction) -> str:
        s = self.settings
        if action.kind == "set":
            return format_set_cookie(s.cookie_name, action.value, path=s.path, max_age=s.max_age, flags=s.cookie_flags)
        return format_delete_cookie(s.cookie_name, path=s.path, flags=s.cookie_flags)

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
