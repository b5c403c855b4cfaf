"""Marking routes read-only, and finding the marker for a request.

A read-only route reads the session without taking its lock and never writes it back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["is_read_only", "read_only"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__sessionmw_read_only__"


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
