"""The session cookie: signing the id, finding it in a Cookie header, building Set-Cookie.

Rules of this module: no I/O; the only clock read is the age check of a cookie already verified
(itsdangerous reads the clock for the others); this is the only place a cookie string is built.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence

import itsdangerous

from .errors import ConfigError

__all__ = ["IdSigner", "find_cookie", "format_delete_cookie", "format_set_cookie", "new_session_id"]

#: How many verified cookie values each signer remembers.
VERIFIED_CACHE_SIZE = 10_000
#: Signed values longer than this are refused before any HMAC is computed (a 10 KB cookie costs nothing).
MAX_COOKIE_VALUE = 256
_SID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_COOKIE_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def new_session_id() -> str:
    """Return a fresh 256-bit random session id (43 URL-safe characters, never starting with ``-``)."""
    while True:
        sid = secrets.token_urlsafe(32)
        # An id starting with "-" reads as an option on command lines (sessionmw kill SID).
        if sid[0] != "-":
            return sid


def is_session_id(value: str) -> bool:
    """Tell whether ``value`` has the shape of an id made by :func:`new_session_id`."""
    return _SID_RE.match(value) is not None


class IdSigner:
    """Signs session ids for the cookie and checks them; the first key signs, every key verifies.

    :param secret_keys: one key, or several for rotation (the first is the current one).
    :param salt: keeps these signatures apart from other uses of the same key.
    """

    def __init__(self, secret_keys: Sequence[str], *, salt: str = "sessionmw.sid") -> None:
        if not secret_keys or not all(isinstance(k, str) and k for k in secret_keys):
            raise ConfigError("secret_key must be a non-empty string or list of strings", option="secret_key")
        # itsdangerous signs with the *last* key of a list and verifies with all of them.
        self._signer = itsdangerous.TimestampSigner(list(reversed(secret_keys)), salt=salt)
        # Cookie values already verified -> (sid, signed_at). A signed user sends the same value on
        # every request, and itsdangerous derives its key and runs HMAC each time (about 10 µs);
        # only values whose signature checked out are remembered, so forged ones gain nothing.
        self._verified: dict[str, tuple[str, float]] = {}

    def sign(self, sid: str) -> str:
        """Return the cookie value for ``sid``."""
        return self._signer.sign(sid).decode("ascii")

    def unsign(self, value: str, max_age: float | None) -> str | None:
        """Return the id in a cookie value, or ``None`` if it is forged, garbled or older than ``max_age``."""
        found = self.unsign_with_time(value, max_age)
        return None if found is None else found[0]

    def unsign_with_time(self, value: str, max_age: float | None) -> tuple[str, float] | None:
        """Return ``(sid, signed_at)`` from a cookie value, or ``None`` if it is not valid."""
        if not value or len(value) > MAX_COOKIE_VALUE:
            return None
        known = self._verified.get(value)
        if known is not None:
            if max_age is not None and time.time() - known[1] > int(max_age):
                return None
            return known
        try:
            limit = None if max_age is None else int(max_age)
            raw, when = self._signer.unsign(value, max_age=limit, return_timestamp=True)
        except (itsdangerous.BadData, UnicodeError, ValueError, TypeError):
            return None
        sid = raw.decode("ascii", "replace")
        if not is_session_id(sid):
            return None
        found = (sid, when.timestamp())
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            try:
                self._verified.pop(next(iter(self._verified)))  # forget the oldest
            except (KeyError, RuntimeError, StopIteration):  # another thread got there first
                pass
        self._verified[value] = found
        return found


def find_cookie(header: str | None, name: str) -> str | None:
    """Return the value of cookie ``name`` in a Cookie request header, or ``None``."""
    if not header:
        return None
    start = 0
    needle = name + "="
    n = len(needle)
    while True:
        i = header.find(needle, start)
        if i < 0:
            return None
        # The match must begin a cookie-pair: at the start or right after "; " (or ";").
        if i == 0 or header[i - 1] in " ;":
            j = header.find(";", i + n)
            value = header[i + n :] if j < 0 else header[i + n : j]
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            return value
        start = i + 1


def check_cookie_name(name: str, *, secure: bool, path: str, domain: str | None) -> None:
    """Raise :class:`ConfigError` if ``name`` is not a valid cookie name or breaks a prefix rule."""
    if not _COOKIE_NAME_RE.match(name):
        raise ConfigError(
            f"cookie name {name!r} (cookie_prefix + session_cookie) has characters a cookie name may not have",
            option="session_cookie",
        )
    if name.startswith("__Secure-") and not secure:
        raise ConfigError(
            f"cookie name {name!r} starts with __Secure-, so browsers accept it only with Secure: set https_only=True",
            option="https_only",
        )
    if name.startswith("__Host-"):
        if not secure:
            raise ConfigError(
                f"cookie name {name!r} starts with __Host-, which requires Secure: set https_only=True",
                option="https_only",
            )
        if path != "/":
            raise ConfigError(
                f"cookie name {name!r} starts with __Host-, which requires path='/' (got {path!r})",
                option="path",
            )
        if domain:
            raise ConfigError(
                f"cookie name {name!r} starts with __Host-, which forbids a Domain: set domain=None",
                option="domain",
            )


def cookie_flags(
    *,
    httponly: bool,
    same_site: str | None,
    secure: bool,
    domain: str | None,
    partitioned: bool,
) -> str:
    """Return the attribute tail of a Set-Cookie value, in Starlette's order."""
    parts = []
    if httponly:
        parts.append("httponly")
    if same_site:
        parts.append("samesite=" + same_site)
    if secure:
        parts.append("secure")
    if domain:
        parts.append("domain=" + domain)
    if partitioned:
        parts.append("partitioned")
    return "; ".join(parts)


def format_set_cookie(name: str, value: str, *, path: str, max_age: int | None, flags: str) -> str:
    """Return a Set-Cookie value that stores ``value``, as Starlette writes it."""
    age = f"Max-Age={max_age}; " if max_age is not None else ""
    return f"{name}={value}; path={path}; {age}{flags}".rstrip("; ")


def format_delete_cookie(name: str, *, path: str, flags: str) -> str:
    """Return a Set-Cookie value that makes the browser drop the cookie, as Starlette writes it."""
    return f"{name}=null; path={path}; expires=Thu, 01 Jan 1970 00:00:00 GMT; {flags}".rstrip("; ")
