"""The operations the core's flows yield: one class per backend primitive, and three for the driver.

Rules of this module: no I/O. Each backend operation knows which method of the sync
:class:`~sessionmw.backends.base.Backend` (``run``) and of the async
:class:`~sessionmw.backends.base.AsyncBackend` (``arun``) performs it, so mypy checks every call
against the protocols. What a driver must do around an operation is said by its class attributes,
never guessed from its name:

=============  =========================================================================
``holds``      on a true first result, the lock ``token`` is held: start renewing it
``frees``      the lock ``token`` is let go (released, or found lost): stop renewing it
``wakes``      this process's waiters for ``sid`` should try again at once
=============  =========================================================================

The driver-side operations are :class:`Sleep` (wait for a lock), :class:`Queue` (join or leave the
per-process queue of waiters), :class:`Log` (a line for the ``sessionmw`` logger) and :class:`Emit` (an
event for the listeners).
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

if TYPE_CHECKING:
    from ..backends.base import AsyncBackend, Backend, Record, Touch
    from .events import SessionEvent

__all__ = [
    "BackendOp",
    "Create",
    "Delete",
    "Emit",
    "Extend",
    "Load",
    "LockAndLoad",
    "Log",
    "Op",
    "Queue",
    "Release",
    "Save",
    "SaveTail",
    "Sleep",
    "Refresh",
    "UserSessions",
]

T = TypeVar("T")


class BackendOp(Generic[T]):
    """One call of a backend primitive; the driver sends its result back into the flow."""

    __slots__ = ("sid",)

    #: The lock named by ``token`` is held after a true first result (lock-and-load).
    holds: ClassVar[bool] = False
    #: The lock named by ``token`` is let go, whatever the result (save, release).
    frees: ClassVar[bool] = False
    #: Local waiters for ``sid`` should try again at once.
    wakes: ClassVar[bool] = False
    sid: str
    #: The lock token (a slot of the ops that hold, free or extend a lock).
    token: str

    def __iter__(self) -> Generator[BackendOp[T], object, T]:
        """Hand the operation to the driver and return its result: ``result = yield from op``.

        This is what types the flows' results: the driver sends back what :meth:`run` or
        :meth:`arun` returned, so the value is a ``T``.
        """
        result = yield self
        return cast(T, result)

    def run(self, backend: Backend) -> T:
        """Perform the operation on a sync backend."""
        raise NotImplementedError

    def arun(self, backend: AsyncBackend) -> Awaitable[T]:
        """Return the awaitable that performs the operation on an async backend."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _slots(type(self)))
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in _slots(type(self)))

    __hash__ = None  # type: ignore[assignment]


def _slots(cls: type) -> list[str]:
    return [name for klass in reversed(cls.__mro__) for name in getattr(klass, "__slots__", ())]


class LockAndLoad(BackendOp["tuple[bool, Record | None]"]):
    """Try once to take ``sid``'s lock with ``token`` and, if taken, read its record."""

    __slots__ = ("token", "expire")
    holds = True

    def __init__(self, sid: str, token: str, expire: float) -> None:
        self.sid = sid
        self.token = token
        self.expire = expire

    def run(self, backend: Backend) -> tuple[bool, Record | None]:
        """See :meth:`Backend.lock_and_load`."""
        return backend.lock_and_load(self.sid, self.token, self.expire)

    def arun(self, backend: AsyncBackend) -> Awaitable[tuple[bool, Record | None]]:
        """See :meth:`AsyncBackend.alock_and_load`."""
        return backend.alock_and_load(self.sid, self.token, self.expire)


class Load(BackendOp["Record | None"]):
    """Read ``sid``'s record without the lock."""

    __slots__ = ()

    def __init__(self, sid: str) -> None:
        self.sid = sid

    def run(self, backend: Backend) -> Record | None:
        """See :meth:`Backend.load`."""
        return backend.load(self.sid)

    def arun(self, backend: AsyncBackend) -> Awaitable[Record | None]:
        """See :meth:`AsyncBackend.aload`."""
        return backend.aload(self.sid)


class Create(BackendOp[bool]):
    """Store a new session under ``sid`` only if the id is unused."""

    __slots__ = ("record", "ttl")

    def __init__(self, sid: str, record: Record, ttl: float | None) -> None:
        self.sid = sid
        self.record = record
        self.ttl = ttl

    def run(self, backend: Backend) -> bool:
        """See :meth:`Backend.create`."""
        return backend.create(self.sid, self.record, self.ttl)

    def arun(self, backend: AsyncBackend) -> Awaitable[bool]:
        """See :meth:`AsyncBackend.acreate`."""
        return backend.acreate(self.sid, self.record, self.ttl)


class Save(BackendOp[bool]):
    """Write ``record`` and release the lock, only if ``token`` still holds it (fenced)."""

    __slots__ = ("record", "token", "ttl")
    frees = True
    wakes = True

    def __init__(self, sid: str, record: Record, token: str, ttl: float | None) -> None:
        self.sid = sid
        self.record = record
        self.token = token
        self.ttl = ttl

    def run(self, backend: Backend) -> bool:
        """See :meth:`Backend.save`."""
        return backend.save(self.sid, self.record, self.token, self.ttl)

    def arun(self, backend: AsyncBackend) -> Awaitable[bool]:
        """See :meth:`AsyncBackend.asave`."""
        return backend.asave(self.sid, self.record, self.token, self.ttl)


class SaveTail(BackendOp["bool | None"]):
    """Append ``tail`` to the stored data and rewrite its metadata as ``head``, fenced as :class:`Save`.

    The optional primitive of :class:`~sessionmw.backends.appending.AppendsTail`. Its result is
    ``None`` when the backend does not offer it: nothing was done and the lock is still held (the
    core then writes the whole record with :class:`Save`).
    """

    __slots__ = ("head", "tail", "token", "ttl")
    frees = True
    wakes = True

    def __init__(self, sid: str, head: Record, tail: bytes, token: str, ttl: float | None) -> None:
        self.sid = sid
        self.head = head
        self.tail = tail
        self.token = token
        self.ttl = ttl

    def run(self, backend: Backend) -> bool | None:
        """See :meth:`AppendsTail.save_tail`; ``None`` when ``backend`` has no such primitive."""
        fn = getattr(backend, "save_tail", None)
        if fn is None:
            return None
        saved: bool = fn(self.sid, self.head, self.tail, self.token, self.ttl)
        return saved

    def arun(self, backend: AsyncBackend) -> Awaitable[bool | None]:
        """See :meth:`AsyncAppendsTail.asave_tail`; ``None`` when ``backend`` has no such primitive."""
        fn = getattr(backend, "asave_tail", None)
        if fn is None:
            return _none()
        saved: Awaitable[bool] = fn(self.sid, self.head, self.tail, self.token, self.ttl)
        return saved


async def _none() -> None:
    return None


class Release(BackendOp[bool]):
    """Release the lock if ``token`` holds it, refreshing last access first when ``touch`` is given."""

    __slots__ = ("token", "touch")
    frees = True
    wakes = True

    def __init__(self, sid: str, token: str, touch: Touch | None = None) -> None:
        self.sid = sid
        self.token = token
        self.touch = touch

    def run(self, backend: Backend) -> bool:
        """See :meth:`Backend.release`."""
        return backend.release(self.sid, self.token, self.touch)

    def arun(self, backend: AsyncBackend) -> Awaitable[bool]:
        """See :meth:`AsyncBackend.arelease`."""
        return backend.arelease(self.sid, self.token, self.touch)


class Refresh(BackendOp[None]):
    """Refresh ``sid``'s last access without the lock and without rewriting its data."""

    __slots__ = ("touch",)

    def __init__(self, sid: str, touch: Touch) -> None:
        self.sid = sid
        self.touch = touch

    def run(self, backend: Backend) -> None:
        """See :meth:`Backend.touch`."""
        backend.touch(self.sid, self.touch)

    def arun(self, backend: AsyncBackend) -> Awaitable[None]:
        """See :meth:`AsyncBackend.atouch`."""
        return backend.atouch(self.sid, self.touch)


class Extend(BackendOp[bool]):
    """Push the lock's expiry ``expire`` seconds ahead, if ``token`` still holds it."""

    __slots__ = ("token", "expire")

    def __init__(self, sid: str, token: str, expire: float) -> None:
        self.sid = sid
        self.token = token
        self.expire = expire

    def run(self, backend: Backend) -> bool:
        """See :meth:`Backend.extend`."""
        return backend.extend(self.sid, self.token, self.expire)

    def arun(self, backend: AsyncBackend) -> Awaitable[bool]:
        """See :meth:`AsyncBackend.aextend`."""
        return backend.aextend(self.sid, self.token, self.expire)


class Delete(BackendOp[None]):
    """Remove ``sid``'s data (not its lock)."""

    __slots__ = ()
    wakes = True

    def __init__(self, sid: str) -> None:
        self.sid = sid

    def run(self, backend: Backend) -> None:
        """See :meth:`Backend.delete`."""
        backend.delete(self.sid)

    def arun(self, backend: AsyncBackend) -> Awaitable[None]:
        """See :meth:`AsyncBackend.adelete`."""
        return backend.adelete(self.sid)


class UserSessions(BackendOp["list[tuple[str, Record]]"]):
    """List the live sessions bound to ``user_id`` (for ``max_sessions_per_user``)."""

    __slots__ = ("user_id",)

    def __init__(self, user_id: str | int) -> None:
        self.sid = ""
        self.user_id = user_id

    def run(self, backend: Backend) -> list[tuple[str, Record]]:
        """See :meth:`AdminBackend.user_sessions`."""
        fn = getattr(backend, "user_sessions", None)
        if fn is None:
            raise NotImplementedError(f"{backend.name} cannot list a user's sessions")
        sessions: list[tuple[str, Record]] = fn(self.user_id)
        return sessions

    def arun(self, backend: AsyncBackend) -> Awaitable[list[tuple[str, Record]]]:
        """See :meth:`AdminBackend.user_sessions` (``auser_sessions`` on an async backend)."""
        fn = getattr(backend, "auser_sessions", None)
        if fn is None:
            raise NotImplementedError(f"{backend.name} cannot list a user's sessions")
        sessions: Awaitable[list[tuple[str, Record]]] = fn(self.user_id)
        return sessions


class Sleep:
    """Wait up to ``delay`` seconds for ``sid``'s lock (a local release wakes earlier).

    The driver sends back the monotonic time after the wait.
    """

    __slots__ = ("sid", "delay")

    def __init__(self, sid: str, delay: float) -> None:
        self.sid = sid
        self.delay = delay

    def __iter__(self) -> Generator[Sleep, object, float]:
        """Hand the wait to the driver; return the monotonic time after it."""
        now = yield self
        return cast(float, now)


class Queue:
    """Join (``enter``) or leave the queue of this process's waiters for ``sid``.

    On joining, the driver sends back whether the queue had room (fewer than ``limit`` waiters).
    """

    __slots__ = ("sid", "enter", "limit")

    def __init__(self, sid: str, enter: bool, limit: int) -> None:
        self.sid = sid
        self.enter = enter
        self.limit = limit

    def __iter__(self) -> Generator[Queue, object, bool]:
        """Hand the queue change to the driver; on joining, return whether there was room."""
        room = yield self
        return bool(room)


class Log:
    """A line for the ``sessionmw`` logger at ``level``; the driver sends back ``None``."""

    __slots__ = ("level", "message", "args")

    def __init__(self, level: int, message: str, *args: Any) -> None:
        self.level = level
        self.message = message
        self.args = args

    def __repr__(self) -> str:
        return f"Log({self.level}, {self.message % self.args!r})"


class Emit:
    """A :class:`~sessionmw.core.events.SessionEvent` for the listeners; the driver sends back ``None``.

    The core yields one only when listeners are configured.
    """

    __slots__ = ("event",)

    def __init__(self, event: SessionEvent) -> None:
        self.event = event

    def __repr__(self) -> str:
        return f"Emit({self.event!r})"


Op = BackendOp[Any] | Sleep | Queue | Log | Emit
