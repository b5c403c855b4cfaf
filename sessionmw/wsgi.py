"""The WSGI adapter: ``environ["sessionmw.session"]`` for any WSGI app.

The session loads on first access (a request that never touches it costs no backend call), is
written back and unlocked when the app calls ``start_response``, and is unlocked in the response
iterable's ``close()`` if the app failed (Werkzeug's ``ClosingIterator`` shape).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ._drive import SyncDriver
from ._handle import SyncHandle
from ._types import ExcInfo, StartResponse, WSGIApp, WSGIEnviron
from .asgi import ErrorResponse, check_unsupported, default_backend_url, unavailable_body
from .backends import Backend, open_backend
from .core.config import build_settings
from .core.cookies import format_delete_cookie, format_set_cookie
from .core.errors import SessionUnavailable
from .core.policy import CookieAction, RequestInfo, SessionCore

__all__ = ["ENVIRON_KEY", "WSGISessionMiddleware"]

#: Where the session is put in the WSGI environ.
ENVIRON_KEY = "sessionmw.session"


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
        check_unsupported(self.settings)
        self.core = SessionCore(self.settings)
        spec: str | Backend = self.settings.backend if self.settings.backend is not None else default_backend_url()
        self.backend = open_backend(spec, key_prefix=self.settings.key_prefix)
        self.driver = SyncDriver(self.backend, self.settings.lock_expire)
        self.error_response: ErrorResponse = error_response or unavailable_body

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        settings = self.settings
        path = environ.get("PATH_INFO", "") or "/"
        if core.path_matches(path, settings.exclude_paths):
            session = core.new_session(read_only=True)
            session._frozen_reason = "this path is in exclude_paths: it has no session"
            environ[ENVIRON_KEY] = session
            return self.app(environ, start_response)

        read_only = core.path_matches(path, settings.read_only_paths)
        enforced = read_only and not settings.read_only_debug
        req = RequestInfo(path=path, client_ip=environ.get("REMOTE_ADDR"), user_agent=environ.get("HTTP_USER_AGENT"))
        found = core.sid_from_cookie(environ.get("HTTP_COOKIE"), settings.max_age)
        handle = SyncHandle(core, self.driver, found, req)
        session = handle.make_session()
        core.set_read_only(session, enforced, read_only and not enforced)
        environ[ENVIRON_KEY] = session

        def session_start_response(status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None) -> Any:
            action = handle.finish(session)
            headers = list(headers)
            if session.accessed:
                _add_vary(headers)
            if action is not None:
                headers.append(("Set-Cookie", self._cookie_header(action)))
            return start_response(status, headers, exc_info)

        try:
            result = self.app(environ, session_start_response)
        except SessionUnavailable as exc:
            handle.abort(session)
            return self._unavailable(exc, start_response)
        except BaseException:
            handle.abort(session)
            raise
        return _Closing(result, handle, session)

    def _cookie_header(self, action: CookieAction) -> str:
        s = self.settings
        if action.kind == "set":
            return format_set_cookie(s.cookie_name, action.value, path=s.path, max_age=s.max_age, flags=s.cookie_flags)
        return format_delete_cookie(s.cookie_name, path=s.path, flags=s.cookie_flags)

    def _unavailable(self, exc: SessionUnavailable, start_response: StartResponse) -> list[bytes]:
        status, headers, body = self.error_response(exc)
        reason = "Service Unavailable" if status == 503 else "Error"
        start_response(f"{status} {reason}", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        """Stop the lock renewer and close the backend's connections."""
        self.driver.close()
        self.backend.close()


def _add_vary(headers: list[tuple[str, str]]) -> None:
    for i, (name, value) in enumerate(headers):
        if name.lower() == "vary":
            if "cookie" not in value.lower() and value.strip() != "*":
                headers[i] = (name, f"{value}, Cookie")
            return
    headers.append(("Vary", "Cookie"))


class _Closing:
    """The app's response iterable, which releases the session lock when closed."""

    def __init__(self, result: Iterable[bytes], handle: SyncHandle, session: Any) -> None:
        self._result = result
        self._handle = handle
        self._session = session

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._handle.abort(self._session)
