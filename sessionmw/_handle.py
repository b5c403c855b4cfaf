"""Per-request handles: the glue between one request's session and the core and driver.

An adapter makes one handle per request; the handle runs the core's flows through the driver and
remembers the outcome (the cookie to send). Sync handles serve WSGI and Flask, async ones ASGI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ._drive import AsyncDriver, SyncDriver
from .core.errors import ReadOnlySessionError, SessionError
from .core.policy import CookieAction, RequestInfo, SessionCore
from .core.session import Session, SessionHooks

__all__ = ["AsyncHandle", "SyncHandle"]


class SyncHandle(SessionHooks):
    """One request's session on a sync backend; loads lazily on first access.

    :param read_only: tells, when the session is first loaded, whether the route is read-only and
        whether that is enforced (``(read_only, enforced)``); Flask knows its endpoint only then.
    """

    def __init__(
        self,
        core: SessionCore,
        driver: SyncDriver,
        found: tuple[str, float] | None,
        req: RequestInfo,
        read_only: Callable[[], tuple[bool, bool]] | None = None,
    ) -> None:
        self.core = core
        self.driver = driver
        self.found = found
        self.req = req
        self.resolve_read_only = read_only
        self.action: CookieAction | None = None
        self.finished = False

    def make_session(self, cls: type[Session] = Session) -> Session:
        """Return the request's session, lazy when there is a cookie to load."""
        s = self.core.new_session() if cls is Session else _new(self.core, cls)
        s._hooks = self
        if self.found is not None:
            s._make_lazy()
        elif self.resolve_read_only is not None:
            s._make_lazy()  # only to learn the route's read-only status on first access
        return s

    def load(self, session: Session) -> None:
        """Load the session (taking its lock unless the route is read-only)."""
        if self.resolve_read_only is not None:
            declared, enforced = self.resolve_read_only()
            self.core.set_read_only(session, declared and enforced, declared and not enforced)
        if self.found is None:
            return
        sid, signed_at = self.found
        self.driver.run(
            self.core.open(
                session,
                sid,
                lock=not session._read_only,
                now=time.time(),
                mono=time.monotonic(),
                signed_at=signed_at,
                req=self.req,
            )
        )

    def finish(self, session: Session) -> CookieAction | None:
        """Write back and release (once); return the cookie action."""
        if not self.finished:
            self.finished = True
            self.action = self.driver.run(
                self.core.close(session, now=time.time(), mono=time.monotonic(), req=self.req)
            )
        return self.action

    def abort(self, session: Session) -> None:
        """Release the lock without writing, if the session was not finished."""
        if not self.finished and not session._holds_nothing:
            self.finished = True
            self.driver.run(self.core.abort(session))

    def release(self, session: Session) -> None:
        """``session.release()``: write back and release now."""
        self.finish(session)

    def upgrade(self, session: Session) -> None:
        """``session.upgrade()``: re-read under the lock."""
        if self.finished:
            raise ReadOnlySessionError("the session was already released; it cannot take a lock now")
        sid = self.core.reset_for_upgrade(session)
        if sid is not None:
            self.driver.run(
                self.core.open(
                    session,
                    sid,
                    lock=True,
                    now=time.time(),
                    mono=time.monotonic(),
                    signed_at=session._cookie_signed_at,
                    req=self.req,
                )
            )


def _new(core: SessionCore, cls: type[Session]) -> Session:
    s = cls()
    base = core.new_session()
    s._new_id_factory = base._new_id_factory
    s._idle_timeout = base._idle_timeout
    return s


class AsyncHandle(SessionHooks):
    """One request's session on an async backend; the ASGI adapter loads it before the app runs."""

    def __init__(self, core: SessionCore, driver: AsyncDriver, scope: Any) -> None:
        self.core = core
        self.driver = driver
        self.scope = scope
        self.action: CookieAction | None = None
        self.finished = False
        self._pending: asyncio.Task[Any] | None = None
        #: On a route in ``lazy_paths``: the cookie's session, until the app asks for it to be loaded.
        self._deferred: tuple[tuple[str, float | None], bool] | None = None

    # The request facts the core reads (RequestFacts), taken from the scope only when asked: most
    # requests write nothing and never need them.
    @property
    def path(self) -> str:
        """The request path."""
        path: str = self.scope["path"]
        return path

    @property
    def client_ip(self) -> str | None:
        """The client's address as the server reported it."""
        client = self.scope.get("client")
        return client[0] if client else None

    @property
    def user_agent(self) -> str | None:
        """The User-Agent header, if any."""
        for name, value in self.scope["headers"]:
            if name == b"user-agent":
                agent: str = value.decode("latin-1")
                return agent
        return None

    async def open(self, session: Session, found: tuple[str, float | None], lock: bool) -> None:
        """Load the session before the app runs."""
        sid, signed_at = found
        await self.driver.run(
            self.core.open(
                session,
                sid,
                lock=lock,
                now=time.time(),
                mono=time.monotonic(),
                signed_at=signed_at,
                req=self,
                decode_later=True,
            )
        )

    def defer(self, session: Session, found: tuple[str, float | None], lock: bool) -> None:
        """Leave the session unloaded until :meth:`aload` (``await load_session(request)``)."""
        self._deferred = (found, lock)
        session._make_lazy()

    async def aload(self, session: Session) -> None:
        """Load a deferred session now (once); a failure is raised here and at every later use."""
        if self._deferred is None:
            return
        (found, lock), self._deferred = self._deferred, None
        session._unlazy()
        try:
            await self.open(session, found, lock=lock)
        except BaseException as exc:
            session._poison(exc)
            raise

    def load(self, session: Session) -> None:
        """The first use of a deferred session: loaded here from a worker thread (a sync endpoint)."""
        if self._deferred is None:
            return
        if self._in_loop():
            session._make_lazy()  # still unloaded: the app may load it and try again
            raise SessionError(
                f"{self.path} is in lazy_paths: load its session with 'await sessionmw.load_session(request)' "
                "(or Depends(load_session) in FastAPI) before an async endpoint uses it"
            )
        from anyio import from_thread

        from_thread.run(self.aload, session)
        session._ensure()  # decode what was loaded

    async def finish(self, session: Session) -> CookieAction | None:
        """Write back and release (once); return the cookie action."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if not self.finished:
            return await self._close(session)
        return self.action

    async def _close(self, session: Session) -> CookieAction | None:
        if not self.finished:
            self.finished = True
            if self._deferred is not None or (
                session._stored_id is None and not session.modified and not session._lazy
            ):
                # A new session nobody changed, or a lazy route's session nobody loaded: nothing to
                # write, nothing held (the common anonymous case).
                session._released = True
                return None
            self.action = await self.driver.run(
                self.core.close(session, now=time.time(), mono=time.monotonic(), req=self)
            )
        return self.action

    async def abort(self, session: Session) -> None:
        """Release the lock without writing, if the session was not finished."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if not self.finished:
            self.finished = True
            await self.driver.run(self.core.abort(session))

    def _in_loop(self) -> bool:
        """Tell whether the caller runs on the request's event loop (not in a worker thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def release(self, session: Session) -> None:
        """``session.release()``: frozen at once; written and unlocked now (or, on the loop, at once after)."""
        if self.finished or self._pending is not None:
            return
        if self._in_loop():
            session._frozen_reason = "the session was released; changes after release() are not saved"
            self._pending = asyncio.get_running_loop().create_task(self._close(session))
        else:
            from anyio import from_thread

            from_thread.run(self.finish, session)

    def upgrade(self, session: Session) -> None:
        """``session.upgrade()`` from a sync endpoint (in a worker thread); use ``aupgrade`` on the loop."""
        if self._in_loop():
            raise ReadOnlySessionError(
                "session.upgrade() needs I/O: in an async endpoint use 'await session.aupgrade()'"
            )
        from anyio import from_thread

        from_thread.run(self.aupgrade, session)

    async def aupgrade(self, session: Session) -> None:
        """Re-read the session under its lock."""
        if self.finished:
            raise ReadOnlySessionError("the session was already released; it cannot take a lock now")
        if self._deferred is not None:  # never loaded: load it under the lock straight away
            self._deferred = (self._deferred[0], True)
            self.core.set_read_only(session, False, False)
            await self.aload(session)
            return
        sid = self.core.reset_for_upgrade(session)
        if sid is not None:
            await self.open(session, (sid, session._cookie_signed_at), lock=True)
