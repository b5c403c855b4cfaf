"""What a session asks of the request that opened it, and how the layers above reach it.

Rules of this module: no I/O. The drivers' request glue implements :class:`SessionHooks`; adapters
find a session's glue and its load failure through :func:`hooks_of` and :func:`failure_of`, never
through the session's private attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

__all__ = ["SessionHooks", "adopt_cookie_id", "failure_of", "hooks_of"]


class SessionHooks:
    """What a session asks of the request that opened it: load, release now, upgrade to a lock."""

    def load(self, session: Session) -> None:  # pragma: no cover - interface
        """Fill ``session`` from the backend."""
        raise NotImplementedError

    def release(self, session: Session) -> None:  # pragma: no cover - interface
        """Write ``session`` back now and release its lock."""
        raise NotImplementedError

    def upgrade(self, session: Session) -> None:  # pragma: no cover - interface
        """Take the lock of a read-only ``session`` and re-read it under the lock."""
        raise NotImplementedError

    async def aupgrade(self, session: Session) -> None:
        """The awaitable :meth:`upgrade`, for async endpoints."""
        self.upgrade(session)


def hooks_of(s: Session) -> SessionHooks | None:
    """Return the request glue that opened ``s`` (``None`` for a detached session)."""
    return s._hooks


def failure_of(s: Session) -> BaseException | None:
    """Return why ``s`` could not be loaded, or ``None``."""
    return s._state.error


def adopt_cookie_id(s: Session, found: tuple[str, float | None]) -> None:
    """Give ``s`` the id its request's cookie carries, as ``SessionCore.new_session`` does with ``found``.

    For a session made before the cookie was read (the ASGI adapter reads it only when a deferred
    session is first used), and only before it is loaded.
    """
    st = s._state
    st.cookie_sid, st.signed_at = found
