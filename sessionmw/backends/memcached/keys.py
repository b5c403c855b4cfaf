"""The memcached key format, written once.

For a session ``sid`` under key prefix ``p``::

    <p><sid>        the record
    <p><sid>:lock   the lock
    <p>u:<uid>      the user index of ``uid`` (base64url of ``str(uid)``; ``~`` and its SHA-256 when too long)

Rules of this module: no I/O; every other module of the package builds and reads keys through it.
"""

from __future__ import annotations

import base64
import hashlib

from ...core.errors import ConfigError

__all__ = [
    "INDEX_INFIX",
    "LOCK_SUFFIX",
    "MAX_KEY_LENGTH",
    "MAX_SID_LENGTH",
    "check_key_prefix",
    "data_key",
    "index_key",
    "index_user",
    "key_text",
    "lock_key",
    "sid_of",
]

#: memcached rejects longer keys.
MAX_KEY_LENGTH = 250
#: The longest session id a key prefix must leave room for (ids from ``new_session_id`` have 43).
MAX_SID_LENGTH = 64
#: What follows the data key in a lock key.
LOCK_SUFFIX = ":lock"
#: What follows the key prefix in a user index key.
INDEX_INFIX = "u:"


def data_key(prefix: str, sid: str) -> str:
    """The key of the record of ``sid``."""
    return prefix + sid


def lock_key(key: str) -> str:
    """The key of the lock of the session whose record is at ``key`` (a :func:`data_key`)."""
    return key + LOCK_SUFFIX


def key_text(key: str | bytes) -> str:
    """A key as pymemcache returns it (``bytes`` or ``str``), as text."""
    return key.decode("ascii") if isinstance(key, bytes) else key


def sid_of(prefix: str, key: str | bytes) -> str:
    """The session id of the data key ``key`` (the inverse of :func:`data_key`)."""
    return key_text(key)[len(prefix) :]


def index_key(prefix: str, user_id: str | int) -> str:
    """The key of ``user_id``'s index: base64url of ``str(user_id)``, or ``~`` and its SHA-256 when too long."""
    raw = str(user_id).encode("utf-8")
    key = prefix + INDEX_INFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    if len(key) > MAX_KEY_LENGTH:  # "~" is not in base64url: no clash with a short id's key
        key = prefix + INDEX_INFIX + "~" + hashlib.sha256(raw).hexdigest()
    return key


def index_user(prefix: str, key: str) -> str | None:
    """The user id (``str(user_id)``) of the index at ``key``; ``None`` when the key holds its hash."""
    encoded = key[len(prefix) + len(INDEX_INFIX) :]
    if encoded.startswith("~"):
        return None
    try:
        return base64.urlsafe_b64decode(encoded + "==").decode("utf-8")
    except ValueError:
        return None


def check_key_prefix(key_prefix: str) -> None:
    """Raise :class:`ConfigError` unless ``key_prefix`` makes valid memcached keys with room for a session id."""
    try:
        raw = key_prefix.encode("ascii")
    except UnicodeEncodeError:
        raise ConfigError(
            f"memcached backend: key_prefix {key_prefix!r} must be ASCII (memcached keys are bytes)",
            option="key_prefix",
        ) from None
    if any(b <= 32 or b == 127 for b in raw):
        raise ConfigError(
            f"memcached backend: key_prefix {key_prefix!r} must not contain spaces or control characters",
            option="key_prefix",
        )
    room = MAX_KEY_LENGTH - MAX_SID_LENGTH - len(LOCK_SUFFIX)
    if len(raw) > room:
        raise ConfigError(
            f"memcached backend: key_prefix is {len(raw)} bytes long; at most {room} leave room for the "
            f"session id in memcached's {MAX_KEY_LENGTH}-byte keys",
            option="key_prefix",
        )
