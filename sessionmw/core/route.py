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

Besides these rules, which are configured, the ASGI adapter learns which endpoints leave their
session untouched, and defers (does not load, does not lock, does not even read the cookie of) the
session of a request to one of them until its first use (docs/untouched-routes.md). The adapter
finds where an endpoint's code can reach the session (:data:`Reach`); :class:`Predictions` keeps
what each endpoint (per HTTP method) was seen doing, and decides per request whether to defer:

===========================================  ================  ==================  =====================
endpoint (``Reach``)                         watched first     then deferred for   a first use on the
                                             (with a cookie)                       loop while deferred
===========================================  ================  ==================  =====================
cannot reach it (``"none"``)                 1 request         any method          a misprediction
loads it with ``load_session`` (``"loads"``) 1 request         any method          a misprediction
reaches it in a worker thread (``"thread"``) 1 request         any method          a misprediction
reaches it on the loop (``"loop"``)          3 requests        safe methods only   a misprediction
unknown, a WebSocket, or ``lazy_paths``      -                 never               -
===========================================  ================  ==================  =====================

A watched request is loaded as before and its first use noted; one use that does not follow an
``await load_session(request)`` loads the endpoint's sessions before it runs for good. A deferred
session first used in a worker thread is loaded there, under its lock: no misprediction. A
misprediction makes the session unusable for the rest of its request, so nothing of it is ever
written, and loads the endpoint's sessions for good; the adapter runs a request of a safe method
again with its session loaded (:func:`replayable`) and answers any other with a 503. A first use
seen before routing (a middleware inside the session middleware) turns every prediction off.
"""

from __future__ import annotations

import fnmatch
from typing import Literal, NamedTuple

from .config import Settings
from .errors import SessionUnavailable

__all__ = [
    "SAFE_METHODS",
    "WATCHED",
    "Mispredicted",
    "Predictions",
    "Reach",
    "Route",
    "RouteRules",
    "Usage",
    "path_matches",
    "replayable",
]


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


#: Where an endpoint's code can reach the request's session (found by the adapter, before routing):
#: ``"none"`` cannot (a FastAPI route with no request parameter anywhere in its dependencies),
#: ``"loads"`` only through ``await load_session()`` (a FastAPI dependency), ``"thread"`` only in a
#: worker thread (a sync endpoint), ``"loop"`` on the event loop (an async endpoint taking the request).
Reach = Literal["none", "loads", "thread", "loop"]

#: Requests of an endpoint whose session is loaded as usual and watched, before it is deferred.
#: One request shows a middleware that uses every request's session (a use before routing); an
#: endpoint that reaches its session on the loop is watched for three, since a misprediction there
#: costs a second run of the request: an endpoint that uses its session on every request shows it on
#: the first, and one that uses it on some requests only is caught by three with 1 - (1 - p)³ odds
#: (88 % for one request in two). However long the watch, an endpoint mispredicts at most once per
#: process (:meth:`Predictions.mispredicted`), so it need not be longer.
WATCHED: dict[str, int] = {"none": 1, "loads": 1, "thread": 1, "loop": 3}

#: Methods that RFC 9110 calls safe: a request of one may be run again, so a misprediction of an
#: endpoint that uses its session on the loop costs a second run instead of a 503.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def replayable(method: str) -> bool:
    """Tell whether a request of ``method`` may be run again after a misprediction (else: a 503)."""
    return method in SAFE_METHODS


class Mispredicted(SessionUnavailable):
    """A session predicted to stay untouched was used where it cannot be loaded: on the event loop.

    Every later use in the same request raises it too, and nothing of that session is written. The
    ASGI adapter runs a request of a safe method again with its session loaded, and answers any
    other with a 503 (``Retry-After: 1``); either way the endpoint loads its session from then on.
    """


class Usage:
    """What one endpoint, for one HTTP method, was seen doing with its session.

    :param watch: requests to watch before deferring; ``None``: never defer.
    """

    __slots__ = ("deferred", "endpoint", "seen", "used", "watch")

    def __init__(self, endpoint: object, watch: int | None) -> None:
        #: The endpoint (kept: its id is the key of this usage).
        self.endpoint = endpoint
        self.watch = watch
        #: Requests watched so far.
        self.seen = 0
        #: A use was seen (or mispredicted): the session is loaded as usual for good.
        self.used = watch is None
        #: The next request's session is deferred (kept current: it is read on every request).
        self.deferred = False

    def __repr__(self) -> str:
        return f"Usage(watch={self.watch}, seen={self.seen}, used={self.used}, deferred={self.deferred})"


class Predictions:
    """The endpoints' :class:`Usage`, and the decisions drawn from them (see the module's table).

    One per middleware; its adapter calls it on the event loop only.
    """

    def __init__(self) -> None:
        #: False once a use was seen before routing: then no session is deferred any more.
        self.enabled = True
        self._usages: dict[tuple[int, str], Usage] = {}

    def usage(self, endpoint: object, method: str, reach: Reach | None) -> Usage:
        """Return the usage of ``endpoint`` for ``method`` (one per pair, shared by every path to it).

        :param endpoint: what the app routes the request to (its route object, say); compared by identity.
        :param reach: where the endpoint reaches its session; ``None``: unknown (never deferred).
        """
        key = (id(endpoint), method)
        usage = self._usages.get(key)
        if usage is None:
            watch = None if reach is None else WATCHED[reach]
            if reach == "loop" and method not in SAFE_METHODS:
                watch = None  # a misprediction would be a 503 after the endpoint's side effects
            usage = self._usages[key] = Usage(endpoint, watch)
        return usage

    def observe(self, usage: Usage, *, used: bool, before_routing: bool, cookie: bool = True) -> None:
        """Record one request of ``usage``'s endpoint: whether its session was used, and where.

        :param cookie: the request carried a validly signed session cookie. A request without one
            shows a use, but its lack of use counts for nothing: an app may well leave the session
            of an anonymous visitor alone and use a returning one's.
        """
        if before_routing:
            self._disable()
        if usage.used:
            return
        if used:
            usage.used = True
            usage.deferred = False
            return
        if not cookie:
            return
        usage.seen += 1
        watch = usage.watch
        usage.deferred = self.enabled and watch is not None and usage.seen >= watch

    def mispredicted(self, usage: Usage, *, before_routing: bool) -> None:
        """Record a use of a deferred session where it could not be loaded: never defer it again."""
        self.observe(usage, used=True, before_routing=before_routing)

    def _disable(self) -> None:
        self.enabled = False
        for usage in self._usages.values():
            usage.deferred = False
