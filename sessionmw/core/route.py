"""The request-level rules, decided once from the facts an adapter passes in.

Rules of this module: no I/O, no framework. An adapter tells what it knows of the request (its
kind, its path, whether its endpoint is marked ``@read_only`` or serves static files); this module
decides what the session of that request is:

=====================================  ========  =========  ========  =====
request                                excluded  read-only  declared  lazy
=====================================  ========  =========  ========  =====
path in ``exclude_paths``, or static   yes       (frozen)   -         -
WebSocket                              -         yes        -         -
read-only route                        -         yes        -         -
read-only route, ``read_only_debug``   -         -          yes       -
path in ``lazy_paths`` (HTTP)          -         -          -         yes
anything else                          -         -          -         -
=====================================  ========  =========  ========  =====
"""

from __future__ import annotations

import fnmatch
from typing import NamedTuple

from .config import Settings

__all__ = ["Route", "RouteRules", "path_matches"]


def path_matches(path: str, patterns: tuple[str, ...]) -> bool:
    """Tell whether ``path`` matches one of the shell-style ``patterns``."""
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


class Route(NamedTuple):
    """What a request's session is: see the module's table."""

    #: No session at all: the app gets a frozen, empty one and no backend is asked.
    excluded: bool = False
    #: Read-only, enforced: no lock, no write-back; a change raises.
    read_only: bool = False
    #: Declared read-only under ``read_only_debug``: locked and written, and a change is logged.
    declared: bool = False
    #: Loaded only when the app asks (``await load_session(request)``).
    lazy: bool = False


EXCLUDED = Route(excluded=True)
READ_WRITE = Route()


class RouteRules:
    """Decides :class:`Route` for one configuration.

    :param settings: the validated options.
    """

    def __init__(self, settings: Settings) -> None:
        self.exclude_paths = settings.exclude_paths
        self.read_only_paths = settings.read_only_paths
        self.lazy_paths = settings.lazy_paths
        self.debug = settings.read_only_debug

    def excluded(self, path: str, *, static: bool = False) -> bool:
        """Tell whether a request to ``path`` has no session at all."""
        return static or path_matches(path, self.exclude_paths)

    def decide(self, path: str, *, marked: bool = False, static: bool = False, websocket: bool = False) -> Route:
        """Return the route of a request to ``path``.

        :param marked: the endpoint is marked ``@read_only``.
        :param static: the endpoint serves static files.
        :param websocket: a WebSocket connection (read-only: no lock is held for its life).
        """
        if self.excluded(path, static=static):
            return EXCLUDED
        declared = marked or websocket or path_matches(path, self.read_only_paths)
        enforced = declared and (websocket or not self.debug)
        lazy = not websocket and path_matches(path, self.lazy_paths)
        if not declared and not lazy:
            return READ_WRITE
        return Route(read_only=enforced, declared=declared and not enforced, lazy=lazy)
