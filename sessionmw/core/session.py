"""The session object the app sees: a ``dict`` that records what happened to it.

Rules of this module: no I/O. A session records intent (modified, regenerate, invalidate, bind a
user, release) and the core turns that into backend calls when the response starts. A session
opened lazily (WSGI, Flask) holds a loader that the first read or write calls; the ASGI adapter
hands the app an already loaded one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .cookies import new_session_id
from .errors import ReadOnlySessionError
from .handles import handle_of
from .hooks import SessionHooks
from .state import RequestState

__all__ = ["Session"]


class _NotLoaded:
    """The key a lazy session holds until it is loaded.

    CPython's C code reads a dict's size directly in places (``json.dumps`` answers ``{}`` for an
    empty dict without calling ``items()``); holding one private key until the real data is in makes
    every such path take the slow road through the overridden methods, which load first.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not loaded>"


_NOT_LOADED = _NotLoaded()


class Session(dict[str, Any]):
    """The session: a ``dict`` with an id, change tracking and a few server-side operations.

    ``Session({"a": 1})`` builds a detached session (no backend), as Starlette's ``Session`` does.
    In-place changes to nested values (``session["cart"].append(x)``) are not seen: reassign the key
    or set ``session.modified = True``.
    """

    # Class-level defaults, so the core's session (built once per request) sets only what differs.
    #: Starlette's flags: the session was read / changed during this request.
    accessed: bool = False
    modified: bool = False
    #: Everything about the request's session that is not the data; owned by the core.
    _state: RequestState
    #: The request that opened the session: loads it lazily, releases it, upgrades it.
    _hooks: SessionHooks | None = None
    #: The data is not in yet: the first use loads (or decodes) it.
    _lazy: bool = False
    _changed_keys: set[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state = st = RequestState()
        st.draws_id = False

    @property
    def timed_out(self) -> bool:
        """True when the stored session had timed out and this request started a new one."""
        return self._state.timed_out

    @property
    def _changed(self) -> set[str]:
        """The keys changed in this request (for read-only-debug and lost-write messages)."""
        if self._changed_keys is None:
            self._changed_keys = set()
        return self._changed_keys

    # -- lazy loading ---------------------------------------------------------------------------

    def _make_lazy(self) -> None:
        """Defer loading (or decoding) until the first read or write."""
        self._lazy = True
        dict.__setitem__(self, _NOT_LOADED, None)  # type: ignore[misc]

    def _unlazy(self) -> None:
        """Take back :meth:`_make_lazy` without loading (the caller loads)."""
        self._lazy = False
        dict.pop(self, _NOT_LOADED, None)  # type: ignore[misc]

    def _poison(self, error: BaseException) -> None:
        """Make every use of the session raise ``error``; a route that never uses it still runs."""
        self._state.error = error
        self._make_lazy()

    def _ensure(self) -> None:
        if self._lazy:
            error = self._state.error
            if error is not None:
                raise error
            self._unlazy()
            assert self._hooks is not None
            self._hooks.load(self)

    @property
    def _holds_nothing(self) -> bool:
        """True for a session never loaded from the backend: no lock, no record, nothing to write."""
        return self._lazy and self._state.pending is None

    def _guard(self, key: Any = None) -> None:
        if self._lazy:
            self._ensure()
        reason = self._state.frozen_reason
        if reason is not None:
            raise ReadOnlySessionError(reason, key=None if key is None else str(key))
        self.accessed = True
        self.modified = True
        if key is not None:
            self._changed.add(str(key))

    def mark_accessed(self) -> None:
        """Note that the app read the session (Starlette calls this from ``request.session``)."""
        self.accessed = True
        error = self._state.error
        if error is not None:
            raise error

    def mark_modified(self) -> None:
        """Note a change the session cannot see, such as an in-place edit of a nested value."""
        self._guard()

    # -- reads ----------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        if self._lazy:
            self._ensure()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.accessed = True
        if self._lazy:
            self._ensure()
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self.accessed = True
        if self._lazy:
            self._ensure()
        return super().__iter__()

    def __len__(self) -> int:
        self.accessed = True
        if self._lazy:
            self._ensure()
        return super().__len__()

    def __eq__(self, other: object) -> bool:
        self.accessed = True
        if self._lazy:
            self._ensure()
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None

    def __repr__(self) -> str:
        if self._lazy:
            return f"<{type(self).__name__} (not loaded)>"
        return f"{type(self).__name__}({super().__repr__()})"

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, or ``default``."""
        self.accessed = True
        if self._lazy:
            self._ensure()
        return super().get(key, default)

    def keys(self) -> Any:
        """Return the keys (loading the session first)."""
        self.accessed = True
        if self._lazy:
            self._ensure()
        return super().keys()

    def values(self) -> Any:
        """Return the values (loading the session first)."""
        self.accessed = True
        if self._lazy:
            self._ensure()
        return super().values()

    def items(self) -> Any:
        """Return the items (loading the session first)."""
        self.accessed = True
        if self._lazy:
            self._ensure()
        return super().items()

    def copy(self) -> dict[str, Any]:
        """Return a plain ``dict`` copy of the data."""
        self.accessed = True
        if self._lazy:
            self._ensure()
        return dict(super().items())

    def __or__(self, other: Any) -> dict[str, Any]:  # type: ignore[override]
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: Any) -> dict[str, Any]:  # type: ignore[override]
        merged = dict(other)
        merged.update(self.copy())
        return merged

    # -- writes ---------------------------------------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        self._guard(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._guard(key)
        super().__delitem__(key)

    def clear(self) -> None:
        """Remove every key; an emptied session is deleted and its cookie expired."""
        if self._lazy:
            self._ensure()
        self._guard()
        self._changed.update(super().keys())
        super().clear()

    def pop(self, key: str, *args: Any) -> Any:
        """Remove ``key`` and return its value (or the default)."""
        if self._lazy:
            self._ensure()
        if super().__contains__(key):
            self._guard(key)
        return super().pop(key, *args)

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the last inserted item."""
        if self._lazy:
            self._ensure()
        if super().__len__():
            self._guard()
        item = super().popitem()
        self._changed.add(item[0])
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return ``self[key]``, storing ``default`` there first if it is missing."""
        if self._lazy:
            self._ensure()
        if not super().__contains__(key):
            self._guard(key)
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Update from a mapping or pairs, as ``dict.update``."""
        if self._lazy:
            self._ensure()
        incoming = dict(*args, **kwargs)
        self._guard()
        self._changed.update(incoming)
        super().update(incoming)

    def __ior__(self, other: Any) -> Session:  # type: ignore[override]
        self.update(other)
        return self

    # -- identity and server-side operations ----------------------------------------------------

    @property
    def id(self) -> str | None:
        """The session id; a new session gets one when first asked or when it is saved."""
        if self._lazy:
            self._ensure()
        st = self._state
        if st.id is None and st.draws_id:
            st.id = new_session_id()
        return st.id

    @property
    def handle(self) -> str | None:
        """The name the store keeps this session under: a one-way hash of :attr:`id`, never the id.

        ``SessionStore`` lists sessions by it (``SessionInfo.sid``) and ``terminate()`` takes it, so
        a page listing a user's sessions can mark the current one. ``None`` when :attr:`id` is.
        """
        sid = self.id
        return None if sid is None else handle_of(sid)

    @property
    def is_new(self) -> bool:
        """True when no stored session was found for this request (or it was invalidated)."""
        if self._lazy:
            self._ensure()
        return self._state.stored_id is None or self._state.invalidated

    @property
    def read_only(self) -> bool:
        """True on a read-only route: the session is readable, and changing it raises."""
        return self._state.read_only

    @property
    def released(self) -> bool:
        """True once the session was written back and its lock released."""
        return self._state.released

    @property
    def user_id(self) -> str | int | None:
        """Whose session this is, as given to :meth:`bind_user`; ``None`` when anonymous."""
        if self._lazy:
            self._ensure()
        return self._state.user_id

    @property
    def idle_timeout(self) -> float | None:
        """This session's idle timeout in seconds (``None``: it never times out while idle)."""
        if self._lazy:
            self._ensure()
        return self._state.idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, value: float | None) -> None:
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ValueError(f"idle_timeout must be a number > 0 or None, not {value!r}")
        self._guard()
        self._state.idle_override = True
        self._state.idle_timeout = None if value is None else float(value)

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data; the old id is destroyed (call it at login)."""
        self._guard()
        st = self._state
        st.id = new_session_id() if st.draws_id else None

    def invalidate(self) -> None:
        """Destroy the session: its data, its id and its user; the response expires the cookie.

        What the app stores afterwards goes into a brand new session.
        """
        self._guard()
        self._changed.update(super().keys())
        super().clear()
        st = self._state
        st.invalidated = True
        st.user_id = None
        st.user_bound = False
        st.idle_override = False
        st.id = None

    def bind_user(self, user_id: str | int) -> None:
        """Record whose session this is and regenerate the id (no session fixation)."""
        if not isinstance(user_id, str | int) or isinstance(user_id, bool):
            raise TypeError(f"user_id must be a str or int, not {type(user_id).__name__}")
        self.regenerate()
        st = self._state
        st.user_id = user_id
        st.user_bound = True
        st.bound_now = True

    def release(self) -> None:
        """Write the session back now and release its lock (PHP's ``session_write_close``).

        Use it before a long or streaming response. Reading stays allowed; a later change raises
        :class:`ReadOnlySessionError`.
        """
        st = self._state
        if st.released:
            return
        if self._hooks is None:
            st.released = True
            st.frozen_reason = "the session was released; changes after release() are not saved"
            return
        self._hooks.release(self)

    def upgrade(self) -> None:
        """Turn a read-only session into a locked one, re-reading it under the lock.

        The data read without the lock is discarded. Use it when a read-only route finds it must
        write after all (Moodle's ``restart_with_write_lock``).
        """
        if not self._state.read_only:
            return
        if self._hooks is None:
            raise ReadOnlySessionError("a detached session cannot take a lock")
        self._hooks.upgrade(self)

    async def aupgrade(self) -> None:
        """The awaitable :meth:`upgrade`, for async endpoints under the ASGI middleware."""
        if not self._state.read_only:
            return
        if self._hooks is None:
            raise ReadOnlySessionError("a detached session cannot take a lock")
        await self._hooks.aupgrade(self)

    # -- used by the core -----------------------------------------------------------------------

    def _fill(self, data: dict[str, Any]) -> None:
        """Replace the contents without marking the session modified."""
        super().clear()
        super().update(data)

    def _data(self) -> dict[str, Any]:
        if self._lazy:
            self._ensure()
        return dict(super().items())

    def _is_empty(self) -> bool:
        if self._lazy:
            self._ensure()
        return not super().__len__()
