"""The ASGI adapter: a pure ASGI middleware, a drop-in for Starlette's ``SessionMiddleware``.

It only translates between ASGI and the core: find the cookie, learn whether the route is
read-only, load (and lock) before the app runs when a signed cookie is present (``request.session``
is synchronous; on a route in ``lazy_paths``, at ``await load_session(request)`` instead), write
back and release when ``http.response.start`` goes out, and release in a ``finally`` when the app
fails.

An endpoint that leaves its session untouched gets it deferred: not loaded, not locked
(docs/untouched-routes.md). :mod:`.asgi_endpoints` finds where an endpoint can reach its session
(its FastAPI dependencies, sync or async); this module tells the core's
:class:`~sessionmw.core.route.Predictions` what each request did, and answers a misprediction: the
request runs again with its session loaded (a safe method) or gets a 503 (:mod:`.asgi_exchange`
carries the messages). A configuration error met while Starlette builds the middleware stack fails
the lifespan start-up (:mod:`.asgi_startup`).
"""

from __future__ import annotations

import functools
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..backends import AsyncBackend, Backend, open_async_backend
from ..core.config import OPTION_NAMES, build_settings
from ..core.errors import BackendUnavailable, ConfigError, SessionUnavailable
from ..core.hooks import failure_of
from ..core.policy import SessionCore
from ..core.readonly import is_read_only
from ..core.route import Predictions, Route, Usage, replayable
from ..core.session import Session
from ..drivers.aio import AsyncDriver, AsyncRequest
from ..drivers.sweeper import AsyncSweeper
from .asgi_endpoints import STATIC, find_route, find_starlette_endpoint, load_session, reach_of
from .asgi_exchange import Exchange, replaying
from .common import ErrorResponse, backend_spec, bound_failover_wait, logger, unavailable_body

__all__ = ["SessionMiddleware", "find_starlette_endpoint", "load_session"]

#: How many (type, method, path) triples the route lookup remembers.
ROUTE_CACHE_SIZE = 4096


#: The keywords ``SessionMiddleware`` takes: its options, the app and the error page.
KEYWORDS = (*OPTION_NAMES, "app", "error_response")


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
        if any(name not in KEYWORDS for name in kwargs):
            from .asgi_startup import Misconfigured, built_by_starlette, keywords_error  # it imports this module

            error = keywords_error(args, kwargs)
            if built_by_starlette(sys._getframe(0)):
                return Misconfigured.holding(error)
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
        gc_interval: float | None = 300.0,
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
            from .asgi_startup import Misconfigured, built_by_starlette  # it imports this module

            if not built_by_starlette(sys._getframe(0)):
                raise
            # Raised here, the error would leave Starlette's stack unbuilt: the server would take the
            # lifespan for unsupported, start, and answer every request 500. Become the stand-in that
            # fails the start-up with the message instead.
            Misconfigured.take_over(self, exc)
            return
        self.driver = AsyncDriver(self.backend, self.settings.lock_expire)
        self.driver.listeners = self.core.listeners
        self.sweeper = AsyncSweeper(self.backend, self.settings.gc_interval)
        self.error_response: ErrorResponse = error_response or unavailable_body
        #: What each endpoint was seen doing with its session: which sessions to defer.
        self.predictions = Predictions()
        self._routes: dict[tuple[str, str, str], tuple[Route, Usage | None]] = {}

    def _route(self, scope: Scope) -> tuple[Route, Usage | None]:
        """Return the core's route for the request, and its endpoint's usage (``None``: never deferred)."""
        kind = scope["type"]
        method = scope.get("method", "")
        key = (kind, method, scope["path"])
        found = self._routes.get(key)
        if found is None:
            path = scope["path"]
            rules = self.core.routes
            app = scope.get("app")
            leaf, endpoint = (None, None)
            if app is not None and not rules.excluded(path):
                leaf, endpoint = find_route(app, scope)
            route = rules.decide(
                path,
                marked=endpoint is not None and endpoint is not STATIC and is_read_only(endpoint),
                static=endpoint is STATIC,
                websocket=kind == "websocket",
            )
            usage = None
            if kind == "http" and leaf is not None and not route.excluded and not route.lazy:
                try:
                    reach = reach_of(leaf, endpoint, method)
                except Exception:  # a route of a shape not foreseen: load its sessions as before
                    reach = None
                usage = self.predictions.usage(leaf, method, reach)
            found = (route, usage)
            if len(self._routes) < ROUTE_CACHE_SIZE:
                self._routes[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self.app(scope, receive, self._closing_send(send))
            else:
                await self.app(scope, receive, send)
            return
        found = self._routes.get((kind, scope.get("method", ""), scope["path"]))
        route, usage = found if found is not None else self._route(scope)
        if route.excluded:
            scope["session"] = self.core.new_session(route, None, None)
            await self.app(scope, receive, send)
            return
        if usage is not None:
            if usage.deferred:
                await self._deferred(scope, receive, send, route, usage)
            else:
                await self._watched(scope, receive, send, route, usage)
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
        try:
            if kind == "websocket":
                await self.app(scope, receive, send)
            else:
                await self._serve(scope, receive, send, session, handle)
        finally:
            handle.detach()

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, session: Session, handle: AsyncRequest, record: bool = False
    ) -> Exchange:
        """Run the app for an HTTP request; close the session when the response starts.

        :param record: keep what the app receives, for a second run of the request.
        Returns the request's :class:`Exchange`; its ``unanswered`` is True when a misprediction
        (:attr:`AsyncRequest.mispredicted`) left the request unanswered: the app's own response, if
        it made one, was not sent.
        """
        exchange = Exchange(send, handle, session, receive if record else None)
        try:
            await self.app(scope, exchange.receive if record else receive, exchange.send)
        except SessionUnavailable as exc:
            await handle.abort(session)
            if exchange.started:
                raise
            if handle.mispredicted is not None:
                exchange.unanswered = True
                return exchange
            await self._unavailable(exc, "http", send)
        except Exception:
            await handle.abort(session)
            if handle.mispredicted is not None and not exchange.started:
                exchange.unanswered = True  # the app failed on its unusable session (or by its own catch of that)
                return exchange
            raise
        except BaseException:
            await handle.abort(session)
            raise
        else:
            if not handle.finished:
                await handle.finish(session)
        finally:
            if handle.kept is not None:
                await handle.release_kept()
        self.sweeper.poke()  # the response is out: a due gc starts in the background
        exchange.unanswered = handle.mispredicted is not None and not exchange.started
        return exchange

    async def _watched(self, scope: Scope, receive: Receive, send: Send, route: Route, usage: Usage) -> None:
        """Serve a request to an endpoint still watched (:class:`Predictions`): loaded as usual, uses noted."""
        handle = AsyncRequest(self.core, self.driver, scope)
        session, load = self._session(scope, route, handle)
        if load:
            try:
                await handle.open(session, lock=not route.read_only)
            except SessionUnavailable as exc:
                self.core.fail_later(session, exc)  # a 503 only if the app uses its session
        watching = not usage.used
        if watching:
            handle.watch(session)
        scope["session"] = session
        try:
            await self._serve(scope, receive, send, session, handle)
        finally:
            handle.detach()
            if watching:
                # A session that could not be loaded raises at its first use before the use is noted.
                used = handle.used_unloaded or (session.accessed and failure_of(session) is not None)
                self.predictions.observe(usage, used=used, before_routing=handle.before_routing, cookie=load)

    async def _deferred(self, scope: Scope, receive: Receive, send: Send, route: Route, usage: Usage) -> None:
        """Serve a request to an endpoint predicted to leave its session untouched.

        Its session is not loaded unless used. A use on the event loop (a misprediction) leaves the
        request to be run again with its session loaded when its method is safe (what the app
        received is given to it again), and answered 503 otherwise.
        """
        handle = AsyncRequest(self.core, self.driver, scope)
        # Not even the cookie is read until the session is used (a new one, if it names none).
        session = self.core.new_session(route, None, handle)
        handle.defer(session, not route.read_only, True)
        again_ok = replayable(scope["method"])
        # The scope before the app's routing changes it, to run the request again from.
        entry = dict(scope) if again_ok else scope
        scope["session"] = session
        try:
            exchange = await self._serve(scope, receive, send, session, handle, again_ok)
        finally:
            handle.detach()
            if handle.mispredicted is not None:
                self.predictions.mispredicted(usage, before_routing=handle.before_routing)
            elif handle.used_unloaded:  # in a worker thread, or a new session (no cookie)
                self.predictions.observe(usage, used=True, before_routing=handle.before_routing)
        if not exchange.unanswered:
            return
        error = handle.mispredicted
        assert error is not None
        if not again_ok:
            logger.warning("%s %s: %s (answered 503)", scope["method"], scope["path"], error.message)
            await self._unavailable(error, "http", send)
            return
        received = exchange.received or []
        if any(m["type"] == "http.disconnect" for m in received):
            return  # the client is gone: nobody to answer
        logger.info("%s: the session was used after all; the request runs again with it loaded", scope["path"])
        scope = entry
        again = AsyncRequest(self.core, self.driver, scope)
        session, load = self._session(scope, route, again)
        if load:
            try:
                await again.open(session, lock=not route.read_only)
            except SessionUnavailable as exc:
                self.core.fail_later(session, exc)
        scope["session"] = session
        try:
            await self._serve(scope, functools.partial(replaying, deque(received), receive), send, session, again)
        finally:
            again.detach()

    def _session(self, scope: Scope, route: Route, handle: AsyncRequest) -> tuple[Session, bool]:
        """Return the request's session from its cookie, and whether to load it before the app runs."""
        found = handle.found_cookie()
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
        await self.sweeper.aclose()
        await self.backend.aclose()
