"""Lifecycle events: each kind emitted exactly when it should be, on every backend and adapter.

Listeners are plain functions and coroutine functions; one that raises changes no response.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sessionmw.backends import open_backend
from sessionmw.core.events import EVENT_KINDS, SessionEvent
from sessionmw.core.handles import handle_of

from .test_middleware_conformance import ADAPTERS, client_for, sid_of


class Recorder:
    """A listener keeping every event; ``kinds()`` drops the ones a request's path does not matter for."""

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []
        self.lock = threading.Condition()

    def __call__(self, event: SessionEvent) -> None:
        with self.lock:
            self.events.append(event)
            self.lock.notify_all()

    def wait_for(self, kind: str, path: str, timeout: float = 10.0) -> None:
        """Return once an event ``kind`` of a request to ``path`` came (a holder has its lock: ``loaded``)."""
        with self.lock:
            came = self.lock.wait_for(lambda: any(e.kind == kind and e.path == path for e in self.events), timeout)
        assert came, f"no {kind!r} event of {path} within {timeout} s"

    def kinds(self) -> list[str]:
        with self.lock:
            return [e.kind for e in self.events]

    def take(self) -> list[str]:
        with self.lock:
            kinds = [e.kind for e in self.events]
            self.events.clear()
            return kinds

    def of(self, kind: str) -> list[SessionEvent]:
        with self.lock:
            return [e for e in self.events if e.kind == kind]


class AsyncRecorder(Recorder):
    """The same, as a coroutine function."""

    async def __call__(self, event: SessionEvent) -> None:  # type: ignore[override]
        super().__call__(event)


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def _holding(c: Any, rec: Recorder, seconds: float) -> threading.Thread:
    """Start ``/slow`` in a thread and return once it holds the session's lock (not after a guessed sleep)."""
    rec.take()
    holder, _ = _in_thread(lambda: c.get("/slow", params={"t": str(seconds)}))
    rec.wait_for("loaded", "/slow")
    return holder


def test_the_event_kinds_are_those_of_the_api() -> None:
    assert EVENT_KINDS == (
        "created",
        "loaded",
        "regenerated",
        "rotated",
        "bound",
        "invalidated",
        "terminated",
        "expired",
        "lock_waited",
        "lock_timeout",
        "too_many_waiters",
        "write_dropped",
        "backend_unavailable",
        "missing",
        "stale_id",
        "too_large",
    )
    event = SessionEvent("created", "h")
    with pytest.raises(AttributeError):
        event.kind = "loaded"  # type: ignore[misc]


@pytest.mark.parametrize("listener", ["plain", "coroutine"])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_session_life_emits_created_loaded_regenerated_bound_invalidated(
    adapter: str, listener: str, backend_url: str, key_prefix: str
) -> None:
    rec = Recorder() if listener == "plain" else AsyncRecorder()
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix, listeners=[rec]) as c:
        c.get("/none")
        c.get("/view")
        assert rec.take() == [], "no session, no event"
        c.get("/inc")
        assert rec.take() == ["created"]
        sid = sid_of(c.cookies["session"])
        c.get("/inc")
        events = list(rec.events)
        assert [e.kind for e in events] == ["loaded"]
        assert events[0].handle == handle_of(sid) and events[0].path == "/inc" and events[0].user_id is None
        rec.take()
        c.get("/view")
        assert rec.take() == ["loaded"], "a read-only request loads too"
        c.get("/regen")
        assert rec.take() == ["loaded", "regenerated"]
        c.get("/login/u7")
        bound = rec.of("bound")
        assert rec.take() == ["loaded", "regenerated", "bound"]
        new_sid = sid_of(c.cookies["session"])
        assert bound[0].user_id == "u7" and bound[0].handle == handle_of(new_sid)
        c.get("/invalidate")
        assert rec.take() == ["loaded", "invalidated"]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_expiry_emits_expired_with_its_reason(adapter: str, backend_url: str, key_prefix: str) -> None:
    for option, reason in (("idle_timeout", "idle"), ("absolute_timeout", "absolute")):
        rec = Recorder()
        with client_for(adapter, backend=backend_url, key_prefix=key_prefix, listeners=[rec], **{option: 1}) as c:
            c.get("/inc")
            handle = handle_of(sid_of(c.cookies["session"]))
            time.sleep(1.3)
            rec.take()
            assert c.get("/inc").json() == {"n": 1}
            (expired,) = rec.of("expired")
            assert expired.reason == reason and expired.handle == handle
            assert rec.take() == ["expired", "created"]


def test_a_session_gone_from_the_store_emits_missing(backend_url: str, key_prefix: str) -> None:
    rec = Recorder()
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix, listeners=[rec]) as c:
        c.get("/inc")
        handle = handle_of(sid_of(c.cookies["session"]))
        store = open_backend(backend_url, key_prefix=key_prefix)
        store.delete(handle)
        store.close()
        rec.take()
        assert c.get("/inc").json() == {"n": 1}
        assert [(e.kind, e.handle) for e in rec.events] == [("missing", handle), ("created", rec.events[1].handle)]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_lock_wait_and_lock_timeout_are_events_with_their_seconds(
    adapter: str, backend_url: str, key_prefix: str
) -> None:
    rec = Recorder()
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix, listeners=[rec], lock_timeout=0.4) as c:
        c.get("/inc")
        holder = _holding(c, rec, 1.2)
        assert c.get("/inc").status_code == 503
        holder.join()
        (timeout,) = rec.of("lock_timeout")
        assert timeout.seconds is not None and timeout.seconds >= 0.3
        assert timeout.path == "/inc"
    # A lock_timeout far above the hold: the waiter gets the lock however loaded the machine is.
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix, listeners=[rec], lock_timeout=20) as c:
        c.get("/inc")
        holder = _holding(c, rec, 0.3)
        waiter = c.get("/inc")
        holder.join()
        assert waiter.status_code == 200
        (waited,) = rec.of("lock_waited")
        assert waited.seconds is not None and 0 < waited.seconds < 20
        assert waited.path == "/inc"
        assert not rec.of("lock_timeout")


def test_too_many_waiters_is_an_event(backend_url: str, key_prefix: str) -> None:
    rec = Recorder()
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix, listeners=[rec], max_waiters=0) as c:
        c.get("/inc")
        holder = _holding(c, rec, 0.8)
        assert c.get("/inc").status_code == 503
        holder.join()
        assert len(rec.of("too_many_waiters")) == 1
        assert not rec.of("lock_timeout")


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_write_the_fence_drops_is_an_event(adapter: str, backend_url: str, key_prefix: str) -> None:
    rec = Recorder()
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix, listeners=[rec]) as c:
        c.get("/inc")
        handle = handle_of(sid_of(c.cookies["session"]))
        holder = _holding(c, rec, 0.8)
        store = open_backend(backend_url, key_prefix=key_prefix)
        store.delete(handle)  # ended elsewhere (an administrator) while the request runs
        store.close()
        holder.join()
        (dropped,) = rec.of("write_dropped")
        assert dropped.handle == handle and dropped.path == "/slow"


def test_max_sessions_per_user_emits_terminated_user_limit(backend_url: str, key_prefix: str) -> None:
    rec = Recorder()
    opts: dict[str, Any] = {"backend": backend_url, "key_prefix": key_prefix, "listeners": [rec]}
    with client_for("asgi", max_sessions_per_user=1, **opts) as first, client_for("asgi", **opts) as second:
        first.get("/login/ann")
        old = handle_of(sid_of(first.cookies["session"]))
        rec.take()
        with client_for("asgi", max_sessions_per_user=1, **opts) as third:
            third.get("/login/ann")
        (ended,) = rec.of("terminated")
        assert (ended.handle, ended.reason, ended.user_id) == (old, "user_limit", "ann")
        assert second.get("/view").json()["is_new"] is True
        assert first.get("/view").json()["is_new"] is True


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_dead_backend_emits_backend_unavailable(adapter: str) -> None:
    rec = Recorder()
    with client_for(adapter, backend="redis://127.0.0.1:1/0?connect_timeout=0.5", listeners=[rec]) as c:
        from sessionmw.core.cookies import IdSigner

        c.cookies.set("session", IdSigner(["test-secret"]).sign("A" * 43), domain="testserver.local")
        assert c.get("/inc").status_code == 503
        (down,) = rec.of("backend_unavailable")
        assert down.handle == handle_of("A" * 43) and down.path == "/inc"


class Boom:
    def __call__(self, event: SessionEvent) -> None:
        raise RuntimeError("listener bug")


class AsyncBoom:
    async def __call__(self, event: SessionEvent) -> None:
        raise RuntimeError("async listener bug")


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_raising_listener_is_logged_and_changes_no_response(adapter: str, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    with (
        client_for(adapter, backend="memory://", listeners=[Boom(), AsyncBoom(), rec]) as c,
        caplog.at_level(logging.ERROR, logger="sessionmw"),
    ):
        assert c.get("/inc").json() == {"n": 1}
        assert c.get("/inc").json() == {"n": 2}
    assert rec.kinds() == ["created", "loaded"], "the listeners after a raising one still hear every event"
    messages = [r.getMessage() for r in caplog.records if r.name == "sessionmw"]
    assert sum("raised on created" in m for m in messages) == 2
    assert sum("raised on loaded" in m for m in messages) == 2


@pytest.mark.parametrize("listener", ["plain", "coroutine"])
def test_sessions_ended_by_an_administrator_are_terminated_admin(
    listener: str, backend_url: str, key_prefix: str
) -> None:
    from sessionmw import SessionStore

    heard = Recorder() if listener == "plain" else AsyncRecorder()
    with (
        client_for("wsgi", backend=backend_url, key_prefix=key_prefix) as a,
        client_for("wsgi", backend=backend_url, key_prefix=key_prefix) as b,
    ):
        a.get("/login/ann")
        b.get("/login/bob")
        ann = handle_of(sid_of(a.cookies["session"]))
        bob = handle_of(sid_of(b.cookies["session"]))
        with SessionStore(backend_url, key_prefix=key_prefix, listeners=[heard]) as store:
            assert store.terminate(ann)
            assert not store.terminate(ann), "a session already ended is no event"
            assert store.terminate_user("bob") == 1
        assert [(e.kind, e.handle, e.user_id, e.reason) for e in heard.events] == [
            ("terminated", ann, "ann", "admin"),
            ("terminated", bob, "bob", "admin"),
        ]
