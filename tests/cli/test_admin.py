"""Knowing and ending sessions: SessionStore on every backend, per-user limits, timeout overrides, migrate."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sessionmw import SessionStore
from sessionmw.core.handles import handle_of

from ..apps import SLOW_ENTERED, make_starlette_app
from ..conftest import BACKENDS, REDIS_TOPOLOGIES, TIERED, backend_url_for
from ..integration.test_middleware_conformance import SECRET, client_for, put_cookie, sid_of


@pytest.fixture(params=BACKENDS + REDIS_TOPOLOGIES + TIERED)
def backend_url(request: pytest.FixtureRequest, shared_tmp: Path) -> Any:
    """Every backend kind, Redis behind Sentinel and as a Cluster, and tiered pairs (a TieredSpec)."""
    return backend_url_for(request.param, request, shared_tmp)


def login(c: httpx2.Client, user: str) -> str:
    """Sign in as ``user``; return the name the store keeps the session under (its handle, not its id)."""
    r = c.get(f"/login/{user}", headers={"user-agent": f"browser-of-{user}"})
    assert r.status_code == 200
    return handle_of(sid_of(c.cookies["session"]))


def test_list_sessions_with_metadata_and_by_user(backend_url: str, key_prefix: str) -> None:
    with (
        client_for("asgi", backend=backend_url, key_prefix=key_prefix) as a1,
        client_for("asgi", backend=backend_url, key_prefix=key_prefix) as a2,
        client_for("asgi", backend=backend_url, key_prefix=key_prefix) as b,
        client_for("asgi", backend=backend_url, key_prefix=key_prefix) as anon,
        SessionStore(backend_url, key_prefix=key_prefix) as store,
    ):
        started = time.time()
        s1 = login(a1, "alice")
        s2 = login(a2, "alice")
        s3 = login(b, "bob")
        anon.get("/inc")
        everyone = store.list_sessions()
        assert len(everyone) == 4
        assert [i.created for i in everyone] == sorted(i.created for i in everyone)
        alice = store.list_sessions(user_id="alice")
        assert {i.sid for i in alice} == {s1, s2}
        info = alice[0]
        assert info.user_id == "alice"
        assert started - 1 <= info.created <= time.time() and info.last_access >= info.created
        assert info.first_ip == "testclient" and info.last_ip == "testclient"
        assert info.user_agent == "browser-of-alice"
        assert [i.sid for i in store.list_sessions(user_id="bob")] == [s3]
        assert store.list_sessions(user_id="nobody") == []
        stats = store.stats()
        assert stats["sessions"] == 4 and stats["users"] == 2 and stats["oldest"] > 0


def test_terminate_one_user_and_all(backend_url: str, key_prefix: str) -> None:
    with (
        client_for("asgi", backend=backend_url, key_prefix=key_prefix) as a1,
        client_for("asgi", backend=backend_url, key_prefix=key_prefix) as a2,
        client_for("asgi", backend=backend_url, key_prefix=key_prefix) as b,
        SessionStore(backend_url, key_prefix=key_prefix) as store,
    ):
        s1 = login(a1, "alice")
        login(a2, "alice")
        login(b, "bob")
        assert store.terminate(s1) is True
        assert store.terminate(s1) is False
        assert a1.get("/view").json()["is_new"] is True
        assert a2.get("/view").json()["user"] == "alice"

        def no_full_scan() -> Any:
            raise AssertionError("terminate_user must not scan every session")

        store.admin.iter_records = no_full_scan  # type: ignore[method-assign]
        assert store.terminate_user("alice") == 1
        del store.admin.iter_records  # type: ignore[attr-defined]
        assert a2.get("/view").json()["is_new"] is True
        assert b.get("/view").json()["user"] == "bob"
        assert store.terminate_all() == 1
        assert b.get("/view").json()["is_new"] is True
        assert store.list_sessions() == []


def test_terminated_session_is_gone_for_a_request_waiting_on_its_lock(backend_url: str, key_prefix: str) -> None:
    with (
        client_for("asgi", backend=backend_url, key_prefix=key_prefix, lock_timeout=10) as c,
        SessionStore(backend_url, key_prefix=key_prefix) as store,
    ):
        sid = login(c, "carol")
        seen = SLOW_ENTERED.count
        holder = threading.Thread(target=lambda: c.get("/slow", params={"t": "1"}))
        holder.start()
        SLOW_ENTERED.past(seen)
        out: list[Any] = []
        waiter = threading.Thread(target=lambda: out.append(c.get("/id")))
        waiter.start()
        time.sleep(0.2)
        store.terminate(sid)
        holder.join()
        waiter.join()
        assert out[0].json()["id"] != sid, "the waiting request got a new session"
        state = c.get("/view").json()
        assert state["user"] is None and state["session"] == {}, "the holder did not resurrect it"


def test_gc_removes_only_expired_sessions(backend_url: str, key_prefix: str) -> None:
    with (
        client_for("asgi", backend=backend_url, key_prefix=key_prefix, idle_timeout=1, touch_interval=0.2) as short,
        client_for("asgi", backend=backend_url, key_prefix=key_prefix, idle_timeout=3600) as long,
        SessionStore(backend_url, key_prefix=key_prefix) as store,
    ):
        first_visit = time.monotonic()
        for _ in range(3):  # three anonymous visitors
            short.cookies.clear()
            short.get("/inc")
        login(long, "dave")
        long.get("/inc")
        listed = store.list_sessions()
        if time.monotonic() - first_visit < 1:  # on a slow machine the first visitor may be gone already
            assert len(listed) == 4
        time.sleep(1.3)
        assert len(store.list_sessions()) == 1, "expired sessions are not listed"
        assert store.gc() == 3
        assert store.gc() == 0
        remaining = store.list_sessions()
        assert [i.user_id for i in remaining] == ["dave"]
        assert store.list_sessions(user_id="dave")[0].sid == remaining[0].sid


def test_max_sessions_per_user_ends_the_oldest(backend_url: str, key_prefix: str) -> None:
    opts = {"backend": backend_url, "key_prefix": key_prefix, "max_sessions_per_user": 2}
    with (
        client_for("asgi", **opts) as c1,
        client_for("asgi", **opts) as c2,
        client_for("asgi", **opts) as c3,
        client_for("asgi", **opts) as other,
        SessionStore(backend_url, key_prefix=key_prefix) as store,
    ):
        login(c1, "erin")
        time.sleep(0.01)
        login(c2, "erin")
        login(other, "frank")
        time.sleep(0.01)
        login(c3, "erin")
        assert c1.get("/view").json()["is_new"] is True, "the oldest session was ended"
        assert c2.get("/view").json()["user"] == "erin"
        assert c3.get("/view").json()["user"] == "erin"
        assert other.get("/view").json()["user"] == "frank"
        assert len(store.list_sessions(user_id="erin")) == 2


def _timeout_app(backend_url: str, key_prefix: str, **options: Any) -> Any:
    async def forever(request: Request) -> JSONResponse:
        request.session["kept"] = True
        request.session.idle_timeout = None  # type: ignore[attr-defined]
        return JSONResponse({"idle": request.session.idle_timeout})  # type: ignore[attr-defined]

    async def short(request: Request) -> JSONResponse:
        request.session["kept"] = True
        request.session.idle_timeout = 1  # type: ignore[attr-defined]
        return JSONResponse({"idle": request.session.idle_timeout})  # type: ignore[attr-defined]

    app = make_starlette_app(secret_key=SECRET, backend=backend_url, key_prefix=key_prefix, **options)
    app.router.routes.extend([Route("/forever", forever), Route("/short", short)])
    return app


def test_per_session_idle_timeout_override(backend_url: str, key_prefix: str) -> None:
    app = _timeout_app(backend_url, key_prefix, idle_timeout=1, touch_interval=0.1)
    with TestClient(app) as never, TestClient(app) as shortened:
        assert never.get("/forever").json() == {"idle": None}
        time.sleep(1.3)
        assert never.get("/view").json()["session"] == {"kept": True}, "an auth flow cancelled the timeout"
    app = _timeout_app(backend_url, key_prefix, idle_timeout=3600)
    with TestClient(app) as shortened:
        assert shortened.get("/short").json() == {"idle": 1.0}
        assert shortened.get("/view").json()["session"] == {"kept": True}
        time.sleep(1.3)
        assert shortened.get("/view").json()["session"] == {}


@pytest.mark.parametrize(
    ("source", "target"),
    [
        pytest.param("file", "redis", id="file-to-redis"),
        pytest.param("sqlite", "memcached", id="sqlite-to-memcached"),
        pytest.param("memory", "file", id="memory-to-file"),
    ],
)
def test_migrate_keeps_every_session_readable_with_the_same_cookie(
    source: str, target: str, request: pytest.FixtureRequest, shared_tmp: Any, key_prefix: str
) -> None:
    src = backend_url_for(source, request, shared_tmp)
    dst = backend_url_for(target, request, shared_tmp)
    cookies = []
    for i in range(5):
        with client_for("asgi", backend=src, key_prefix=key_prefix) as c:
            if i % 2:
                login(c, f"user{i}")
            c.get("/set", params={"k": "i", "v": str(i)})
            cookies.append(c.cookies["session"])
    with SessionStore(src, key_prefix=key_prefix) as store:
        seen: list[int] = []
        assert store.migrate(dst, progress=seen.append) == 5
        assert sum(seen) == 5
        assert store.migrate(dst) == 0, "sessions already there are left alone"
    for i, cookie in enumerate(cookies):
        with client_for("asgi", backend=dst, key_prefix=key_prefix) as c:
            put_cookie(c, cookie)
            state = c.get("/view").json()
            assert state["session"]["i"] == str(i)
            assert state["user"] == (f"user{i}" if i % 2 else None)
    with SessionStore(dst, key_prefix=key_prefix) as moved:
        assert len(moved.list_sessions()) == 5
        assert {i.user_id for i in moved.list_sessions(user_id="user1")} == {"user1"}
