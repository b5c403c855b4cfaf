"""What the ASGI middleware learns of the app's endpoints before it runs them.

The middleware runs before routing, so it finds the route Starlette's router would choose
(:func:`find_starlette_endpoint`), and tells where the code behind it can reach the request's session
(:func:`reach_of`): on the event loop, in a worker thread, through :func:`load_session`, or nowhere.
The core's :class:`~sessionmw.core.route.Predictions` turns that into "load it, or defer it".
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import MutableMapping
from typing import Any

from starlette.requests import HTTPConnection

from ..core.errors import SessionError
from ..core.hooks import failure_of, hooks_of
from ..core.route import Reach
from ..core.session import Session
from ..drivers.aio import AsyncRequest

__all__ = ["STATIC", "find_route", "find_starlette_endpoint", "load_session", "reach_of"]

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


def find_starlette_endpoint(app: Any, scope: MutableMapping[str, Any]) -> Any:
    """Return the endpoint Starlette's router would call for ``scope``, :data:`STATIC`, or ``None``.

    The middleware runs before routing, so it matches the routes itself (``route.matches``).
    """
    return find_route(app, scope)[1]


def find_route(app: Any, scope: MutableMapping[str, Any]) -> tuple[Any, Any]:
    """Return the route Starlette's router would choose for ``scope`` and its endpoint, or ``(None, None)``."""
    router = getattr(app, "router", None)
    routes = getattr(router, "routes", None) if router is not None else getattr(app, "routes", None)
    if routes is None:
        return None, None
    try:
        from starlette.routing import Match
    except ImportError:  # pragma: no cover - starlette is a dependency
        return None, None
    return _match(routes, scope, Match.FULL)


def _match(routes: Any, scope: MutableMapping[str, Any], full: Any) -> tuple[Any, Any]:
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # a custom route that cannot match this scope
            continue
        if match != full:
            continue
        endpoint = child.get("endpoint")
        if type(endpoint).__name__ == "StaticFiles":
            return route, STATIC
        sub_routes = getattr(route, "routes", None)  # a Mount of a router or an app with routes
        if sub_routes:
            return _match(sub_routes, {**scope, **child}, full)
        return route, endpoint
    return None, None


def reach_of(route: Any, endpoint: Any, method: str) -> Reach | None:
    """Tell where the code behind a Starlette or FastAPI route can reach the request's session.

    ``None`` when it cannot be told (the session of such a route is never deferred).
    """
    if endpoint is None or endpoint is STATIC:
        return None
    dependant = getattr(route, "dependant", None)
    if dependant is not None and hasattr(dependant, "dependencies"):
        return _fastapi_reach(dependant)
    from starlette.endpoints import HTTPEndpoint

    if inspect.isclass(endpoint):
        if not issubclass(endpoint, HTTPEndpoint):
            return "loop"  # an ASGI application class: it runs on the loop
        # HTTPEndpoint.dispatch: HEAD is served by `get` unless there is a `head`, a sync handler in a thread.
        name = "get" if method == "HEAD" and not hasattr(endpoint, "head") else method.lower()
        handler = getattr(endpoint, name, None)
        return "loop" if handler is None or _is_async(handler) else "thread"
    if inspect.isfunction(endpoint) or inspect.ismethod(endpoint):
        # starlette.routing.request_response: a sync function endpoint runs in a worker thread.
        return "loop" if _is_async(endpoint) else "thread"
    return "loop"  # any other ASGI application


def _fastapi_reach(root: Any) -> Reach:
    """Where a FastAPI route's endpoint and dependencies can reach the session.

    A parameter of type ``Request``, ``HTTPConnection`` or ``WebSocket`` reaches it; a dependency on
    :func:`load_session` loads it, and since FastAPI calls the endpoint after every dependency, an
    endpoint taking the request then finds its session loaded. The schemes of ``fastapi.security``
    take the request only to read its headers. FastAPI calls a sync dependency or endpoint in a
    worker thread.
    """
    loads = False
    endpoint: Reach | None = None
    dependencies: set[Reach] = set()
    stack = [(root, True)]
    seen: set[int] = set()
    while stack:
        dependant, is_endpoint = stack.pop()
        if id(dependant) in seen:
            continue
        seen.add(id(dependant))
        call = dependant.call
        if call is load_session:
            loads = True
            continue
        takes_request = (
            dependant.request_param_name or dependant.websocket_param_name or dependant.http_connection_param_name
        )
        if takes_request and not _is_security_scheme(call):
            where: Reach = "loop" if _is_async(call) else "thread"
            if is_endpoint:
                endpoint = where
            else:
                dependencies.add(where)
        stack.extend((d, False) for d in dependant.dependencies)
    if endpoint is not None and not loads:
        dependencies.add(endpoint)
    if "loop" in dependencies:
        return "loop"
    if "thread" in dependencies:
        return "thread"
    return "loads" if loads else "none"


def _is_async(call: Any) -> bool:
    """Tell whether Starlette or FastAPI runs ``call`` on the event loop (else in a worker thread)."""
    while isinstance(call, functools.partial):
        call = call.func
    if inspect.isclass(call):
        return False  # constructing it is a sync call
    # asyncio's test, not inspect's: it also sees the legacy `_is_coroutine` marker, as Starlette does.
    if asyncio.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    if inspect.isroutine(call):
        return False
    dunder = getattr(type(call), "__call__", None)  # noqa: B004
    return dunder is not None and (asyncio.iscoroutinefunction(dunder) or inspect.isasyncgenfunction(dunder))


def _is_security_scheme(call: Any) -> bool:
    """Tell whether ``call`` is one of ``fastapi.security``'s schemes, as FastAPI wrote it (reads headers only)."""
    dunder = getattr(type(call), "__call__", None)  # noqa: B004
    return str(getattr(dunder, "__module__", "")).startswith("fastapi.security.")
