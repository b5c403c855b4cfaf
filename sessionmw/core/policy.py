"""The sans-IO session core: every decision about a session's life, and no I/O.

Rules of this module:

1. No sockets, threads, clocks, event loops or log handlers. Times come in as arguments (``now`` is
   wall-clock seconds, ``mono`` is monotonic seconds); backend calls go out as typed operations
   (:mod:`sessionmw.core.ops`) that a driver performs, sync or async, and sends the result back;
   log lines go out as :class:`~sessionmw.core.ops.Log` operations.
2. ``open`` and ``close`` are generators: they yield operations and receive results, so one policy
   serves the sync and the async drivers (httpx's ``auth_flow`` shape). ``close`` returns an
   :class:`Outcome`: the adapter copies it into its framework's response and decides nothing.
3. The request's state is one :class:`~sessionmw.core.state.RequestState`; the ``Session`` the app
   sees records the app's intent in it.

The flows themselves are in :mod:`.opening` and :mod:`.closing`; this module joins them into
:class:`SessionCore` with what happens before the app runs (cookie, route, the new session).
"""

from __future__ import annotations

from typing import Any

from .closing import Closing
from .config import Settings
from .cookies import IdSigner, find_cookie
from .envelope import AtRest
from .events import Listeners
from .hooks import SessionHooks
from .lifetime import Lifetime
from .opening import Opening, set_route
from .outcome import QUIET, VARY, CookieAction, Outcome, RequestFacts, RequestInfo
from .route import Route, RouteRules
from .serializers import get_serializer
from .session import Session
from .state import RequestState

__all__ = ["CookieAction", "Outcome", "RequestFacts", "RequestInfo", "SessionCore"]

_EXCLUDED = "this path is in exclude_paths (or static files): it has no session"


class SessionCore(Opening, Closing):
    """Session policy for one configuration: cookies, routes, locking, timeouts, write-back.

    :param settings: the validated options.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.signer = IdSigner(settings.secret_key)
        self.serializer = get_serializer(settings.serializer)
        self.lifetime = Lifetime(settings)
        #: How session data is kept in the store: dated, encrypted (:mod:`.envelope`).
        self.at_rest = AtRest(settings)
        self.routes = RouteRules(settings)
        #: The configured listeners; the drivers call them (adapters give them to their driver).
        self.listeners = Listeners(settings.listeners)
        self.listening = bool(self.listeners.plain or self.listeners.coroutines)

    # -- before the app runs ------------------------------------------------------------------

    def sid_from_cookie(self, cookie_header: str | None, max_age: float | None = None) -> tuple[str, float] | None:
        """Return ``(sid, signed_at)`` from a request's Cookie header when it carries a valid signed id.

        A missing, forged, garbled, oversized or expired cookie gives ``None``: no session, and no
        backend look-up.
        """
        value = find_cookie(cookie_header, self.settings.cookie_name)
        if value is None:
            return None
        return self.signer.unsign_with_time(value, max_age)

    def new_session(
        self,
        route: Route,
        found: tuple[str, float | None] | None,
        hooks: SessionHooks | None,
        cls: type[Session] = Session,
    ) -> Session:
        """Return the request's session, before anything is loaded.

        :param route: the request's route (:meth:`RouteRules.decide`).
        :param found: ``(sid, signed_at)`` from a validly signed cookie, or ``None``.
        :param hooks: the request glue that loads, releases and upgrades the session.
        """
        st = RequestState()
        idle = self.settings.idle_timeout
        if idle is not None:
            st.idle_timeout = idle
        if route.excluded:
            st.read_only = True
            st.frozen_reason = _EXCLUDED
        else:
            if found is not None:
                st.cookie_sid, st.signed_at = found
            if route.read_only or route.declared:
                set_route(st, route)
        s = cls.__new__(cls)  # no dict __init__, no state of its own: this runs on every request
        s._state = st
        s._hooks = hooks
        return s

    def apply_route(self, s: Session, route: Route) -> None:
        """Make ``s`` read-only (enforced), declared read-only under ``read_only_debug``, or neither."""
        set_route(s._state, route)

    def defer(self, s: Session) -> None:
        """Leave ``s`` unloaded: its first use calls its hooks' ``load``."""
        s._make_lazy()

    def undefer(self, s: Session) -> None:
        """Take back :meth:`defer` without loading (the caller loads)."""
        s._unlazy()

    def settle(self, s: Session) -> Outcome | None:
        """Close ``s`` with no backend work if there is none to do: a new session nobody changed.

        Returns ``None`` when :meth:`close` must run.
        """
        st = s._state
        if st.stored_id is None and not s.modified and not s._lazy:
            st.released = True
            return VARY if s.accessed else QUIET
        return None

    def forget(self, s: Session) -> Outcome:
        """Close ``s`` without loading it: a lazy route's session that the app never asked for."""
        s._state.released = True
        return self.outcome(None, s)

    def holds_nothing(self, s: Session) -> bool:
        """Tell whether ``s`` was never loaded from the backend: no lock, no record, nothing to write."""
        return s._holds_nothing

    def fail_later(self, s: Session, error: BaseException) -> None:
        """Make every use of ``s`` raise ``error``; a route that never uses its session still runs."""
        s._poison(error)

    def peek(self, s: Session, key: str) -> Any:
        """Return ``s[key]`` if the session is loaded, else ``None``, without marking it accessed."""
        return None if s._lazy else dict.get(s, key)

    # -- loading ------------------------------------------------------------------------------
