"""Marking routes read-only, and finding the marker for a request.

A read-only route reads the session without taking its lock and never writes it back.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

__all__ = ["find_starlette_endpoint", "is_read_only", "read_only"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__sessionmw_read_only__"

#: Returned by :func:`find_starlette_endpoint` for a mount of static files: no session at all.
STATIC = object()


def read_only(func: F) -> F:
    """Mark a Flask view, Starlette endpoint or FastAPI path function as read-only for the session."""
    try:
        setattr(func, _MARK, True)
    except AttributeError:  # pragma: no cover - a callable that takes no attributes
        raise TypeError(f"@read_only cannot mark {func!r}: it does not accept attributes") from None
    return func


def is_read_only(endpoint: Any) -> bool:
    """Tell whether ``endpoint`` (or a function it wraps) was marked with :func:`read_only`."""
    seen = 0
    while endpoint is not None and seen < 10:
        if getattr(endpoint, _MARK, False) is True:
            return True
        endpoint = getattr(endpoint, "__wrapped__", None) or getattr(endpoint, "func", None)
        seen += 1
    return False


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
