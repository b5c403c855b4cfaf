"""The WSGI adapter: ``environ["sessionmw.session"]`` for any WSGI app.

It only translates between WSGI and the core: the session loads on first access (a request that
never touches it costs no backend call), is written back and unlocked when the app calls
``start_response``, and is unlocked in the response iterable's ``close()`` if the app failed
(Werkzeug's ``ClosingIterator`` shape). After the response, a background gc may start
(``gc_interval``, :mod:`sessionmw.drivers.sweeper`). It imports no Starlette and no event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from ..backends import open_backend
from ..core.config import build_settings
from ..core.errors import SessionUnavailable
from ..core.policy import RequestInfo, SessionCore
from ..core.session import Session
from ..drivers.sweeper import SyncSweeper
from ..drivers.sync import SyncDriver, SyncRequest
from .common import ErrorResponse, add_vary_cookie, backend_spec, bound_failover_wait, unavailable_body

__all__ = ["ENVIRON_KEY", "StartResponse", "WSGIApp", "WSGIEnviron", "WSGISessionMiddleware"]

#: Where the session is put in the WSGI environ.
ENVIRON_KEY = "sessionmw.session"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]


class WSGISessionMiddleware:
    """Server-side, locked sessions for any WSGI app; takes the same keywords as :class:`SessionMiddleware`.

    :param app: the WSGI app to wrap.
    :param secret_key: signs the session id; a list rotates keys (the first signs, all verify).
    :param error_response: builds the answer when the session cannot be had (default: plain-text 503).
    :param options: every other keyword of :class:`sessionmw.SessionMiddleware`.
    """

    def __init__(
        self,
        app: WSGIApp,
        secret_key: Any = None,
        *,
        error_response: ErrorResponse | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.settings = build_settings(secret_key=secret_key, **options)
        self.core = SessionCore(self.settings)
        self.backend = open_backend(backend_spec(self.settings), key_prefix=self.settings.key_prefix)
        bound_failover_wait(self.backend, self.settings)
        self.driver = SyncDriver(self.backend, self.settings.lock_expire)
        self.driver.listeners = self.core.listeners
        self.sweeper = SyncSweeper(self.backend, self.settings.gc_interval)
        self.error_response: ErrorResponse = error_response or unavailable_body

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        path = environ.get("PATH_INFO", "") or "/"
        route = core.routes.decide(path)
        if route.excluded:
            environ[ENVIRON_KEY] = core.new_session(route, None, None)
            return self.app(environ, start_response)
        req = RequestInfo(path=path, client_ip=environ.get("REMOTE_ADDR"), user_agent=environ.get("HTTP_USER_AGENT"))
        found = core.sid_from_cookie(environ.get("HTTP_COOKIE"), self.settings.max_age)
        handle = SyncRequest(core, self.driver, req)
        session = handle.session(route, found)
        environ[ENVIRON_KEY] = session

        def session_start_response(status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None) -> Any:
            outcome = handle.finish(session)
            headers = list(headers)
            if outcome.vary:
                add_vary_cookie(headers, "Vary", "Cookie", ", ", "*")
            if outcome.set_cookie is not None:
                headers.append(("Set-Cookie", outcome.set_cookie))
            return start_response(status, headers, exc_info)

        try:
            result = self.app(environ, session_start_response)
        except SessionUnavailable as exc:
            handle.abort(session)
            return self._unavailable(exc, start_response)
        except BaseException:
            handle.abort(session)
            raise
        return _Closing(result, handle, session, self.sweeper)

    def _unavailable(self, exc: SessionUnavailable, start_response: StartResponse) -> list[bytes]:
        status, headers, body = self.error_response(exc)
        reason = "Service Unavailable" if status == 503 else "Error"
        start_response(f"{status} {reason}", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        """Stop the lock renewer and the background gc, and close the backend's connections."""
        self.sweeper.close()
        self.driver.close()
        self.backend.close()


class _Closing:
    """The app's response iterable, which releases the session lock when closed (and then may start a gc)."""

    def __init__(self, result: Iterable[bytes], handle: SyncRequest, session: Session, sweeper: SyncSweeper) -> None:
        self._result = result
        self._handle = handle
        self._session = session
        self._sweeper = sweeper

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._handle.abort(self._session)
            self._sweeper.poke()  # the response is out: a due gc starts in the background
