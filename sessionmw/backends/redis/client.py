"""What both Redis backends hold besides their commands: the lazily built client and its errors.

Rules of this module: no I/O of its own. :class:`RedisBase` builds the client on first use (so a
backend can be built while the server is down), turns redis-py's errors into
:class:`~sessionmw.core.errors.BackendUnavailable`, and digests the one eviction-policy check. It also
re-exports the redis-py names both backends use, so that ``_async.py`` and the ``_sync.py``
generated from it import them alike.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...core.errors import BackendUnavailable
from .figures import eviction_warning, find_policy
from .keys import Keys

__all__ = ["ERRORS", "NoBackoff", "NoScriptError", "RedisBase", "RedisConnectionError", "ResponseError"]

logger = logging.getLogger("sessionmw")

ClientT = TypeVar("ClientT")

#: Every exception redis-py raises for a server that is down, refused, slow or confused.
ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
#: The errors after which the eviction-policy check is worth trying again on the next call.
_TRANSIENT: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, RedisClusterException)


class RedisBase(Generic[ClientT]):
    """What a backend holds besides its client: name, keys, lazy client creation and the policy check.

    :param connect: builds the client and the list of clients to close; it runs on the first call, so
        a backend can be built while the server is down (sync Cluster's constructor talks to it).
    """

    def __init__(self, name: str, keys: Keys, connect: Callable[[], tuple[ClientT, list[Any]]]) -> None:
        self.name = name
        self.keys = keys
        self.connect = connect
        #: The client once built (read directly on the hot path; :meth:`connected` builds it).
        self.client: ClientT | None = None
        self._closing: list[Any] = []
        #: Whether the eviction policy is still to be checked (a plain attribute: read on every call).
        self.policy_pending = True
        self._mutex = threading.Lock()

    def connected(self) -> ClientT:
        """The client, built on first use."""
        client = self.client
        if client is None:
            with self._mutex:
                if self.client is None:
                    try:
                        built, closing = self.connect()
                    except ERRORS as exc:
                        raise self.unavailable(exc) from exc
                    self._closing = closing
                    self.client = built
                client = self.client
        return client

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        """The :class:`BackendUnavailable` for a redis-py error: this backend and the cause, one line."""
        cause = " ".join(str(exc).split()) or type(exc).__name__
        if _auth_failed(exc):
            cause = f"authentication failed ({cause}); the URL carries the password: redis://:PASSWORD@host:6379/0"
        return BackendUnavailable(f"redis backend {self.name} is unavailable: {cause}", backend=self.name)

    def gave_up(self, exc: BaseException, wait: float) -> BackendUnavailable:
        """The :class:`BackendUnavailable` for a master that no failover replaced within ``failover_wait``."""
        cause = " ".join(str(exc).split()) or type(exc).__name__
        return BackendUnavailable(
            f"redis backend {self.name} is unavailable: no master answered within failover_wait={wait:g} s "
            f"(last error: {cause})",
            backend=self.name,
        )

    def timed_out(self, seconds: float | None) -> BackendUnavailable:
        """The :class:`BackendUnavailable` for a round trip that outlived the socket timeout."""
        return BackendUnavailable(
            f"redis backend {self.name} is unavailable: no answer within {seconds:g} s (socket_timeout)",
            backend=self.name,
        )

    def take_closing(self) -> list[Any]:
        """Forget the clients (a later call builds new ones) and return those to close."""
        with self._mutex:
            closing, self._closing = self._closing, []
            self.client = None
        return closing

    def policy_result(self, reply: Any, exc: BaseException | None) -> None:
        """Digest the reply (or error) of ``CONFIG GET maxmemory-policy``; warn once if keys may be evicted."""
        if exc is not None and isinstance(exc, _TRANSIENT):
            return  # try again on the next call
        self.policy_pending = False
        warning = eviction_warning(find_policy(reply) if exc is None else None)
        if warning is not None:
            logger.warning("redis backend %s: %s", self.name, warning)


def _auth_failed(exc: BaseException | None) -> bool:
    """Whether an error is, or was raised from, a refused authentication (asyncio redis-py wraps it)."""
    for _ in range(5):
        if exc is None:
            return False
        if isinstance(exc, AuthenticationError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
