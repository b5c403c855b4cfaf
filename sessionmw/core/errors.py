"""Exceptions raised by sessionmw.

The tree::

    SessionError                      base of everything sessionmw raises
    ├── ConfigError (ValueError)      a bad option, found when the middleware is built
    ├── ReadOnlySessionError          a change to a session that may not be written
    ├── SerializationError (TypeError) a value the serializer cannot store
    ├── RecordTooLarge                 a session larger than the backend can hold (memcached's item size)
    └── SessionUnavailable            the request cannot have its session now: answer 503
        ├── SessionLockTimeout        the lock was not obtained within ``lock_timeout``
        │   └── TooManyWaiters        more than ``max_waiters`` requests queue for one session
        └── BackendUnavailable        the storage server is down, refused or timed out

``SessionUnavailable`` and its children are the errors the adapters turn into an HTTP 503 with
``Retry-After``; the others are programming or configuration errors.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "ReadOnlySessionError",
    "RecordTooLarge",
    "SerializationError",
    "SessionError",
    "SessionLockTimeout",
    "SessionUnavailable",
    "TooManyWaiters",
]


class SessionError(Exception):
    """Base class of every exception sessionmw raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: The human-readable message, one line.
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(SessionError, ValueError):
    """An option has a bad value or name; raised when the middleware is built.

    :param option: the option's name, as the user spelled it.
    """

    def __init__(self, message: str, *, option: str | None = None, options: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: The option at fault (the first, when several are), or ``None`` when none is named.
        self.option = option if option is not None else (options[0] if options else None)
        #: Every option at fault, in the order found.
        self.options: tuple[str, ...] = options or ((option,) if option is not None else ())

    @classmethod
    def combine(cls, errors: list[ConfigError]) -> ConfigError:
        """Return one error naming every option of ``errors`` (the error itself when there is one)."""
        if len(errors) == 1:
            return errors[0]
        names = tuple(n for e in errors for n in e.options)
        text = "; ".join(e.message for e in errors)
        return cls(f"{len(errors)} configuration errors: {text}", options=names)


class ReadOnlySessionError(SessionError):
    """The session was changed where it may not be: a read-only route, or after ``release()``."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        #: The key whose change was refused, if known.
        self.key = key


class SerializationError(SessionError, TypeError):
    """A session value cannot be serialized; the message names the key holding it."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        #: The path of the offending value, such as ``cart[2].added``.
        self.key = key


class RecordTooLarge(SessionError):
    """A session is larger than the backend can store; raised instead of losing it silently.

    :param size: the record's size in bytes.
    :param limit: the largest size the backend accepts.
    :param backend: the backend's address.
    """

    def __init__(self, message: str, *, size: int, limit: int, backend: str) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.backend = backend


class SessionUnavailable(SessionError):
    """The session cannot be had for this request now; adapters answer HTTP 503."""

    #: Seconds a client is told to wait before retrying (the ``Retry-After`` header).
    retry_after: int = 1


class SessionLockTimeout(SessionUnavailable):
    """The session's lock was not obtained within ``lock_timeout`` seconds.

    :param sid_hint: the first characters of the session's handle (``Session.handle``), for logs.
    :param timeout: the ``lock_timeout`` that ran out.
    """

    def __init__(self, message: str, *, sid_hint: str, timeout: float) -> None:
        super().__init__(message)
        self.sid_hint = sid_hint
        self.timeout = timeout
        self.retry_after = max(1, min(30, round(timeout) or 1))


class TooManyWaiters(SessionLockTimeout):
    """More than ``max_waiters`` requests of this process are already waiting for this session."""


class BackendUnavailable(SessionUnavailable):
    """The storage backend did not answer: server down, connection refused or timed out.

    :param backend: the backend's address, with any password removed.
    """

    def __init__(self, message: str, *, backend: str) -> None:
        super().__init__(message)
        self.backend = backend
        self.retry_after = 5
