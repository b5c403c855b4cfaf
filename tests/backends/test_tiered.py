"""Tiered storage under faults: a private memcached in front of SQLite or PostgreSQL, flushed, killed, paused.

What the tiered backend promises (sessionmw/backends/tiered): a fast-tier loss costs at most the last
``durable_write_every - 1`` changes of a session, never the session; the registry (listing, ending a
user's sessions) works while the fast tier is empty; an ended session never comes back; a fast tier
that is down is a degraded mode, not a 503. Driven through the middleware and at backend level.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from sessionmw import SessionStore
from sessionmw.backends import Record, TieredBackend, TieredSpec, open_backend
from sessionmw.core.cookies import new_session_id
from sessionmw.core.handles import handle_of
from sessionmw.core.locking import new_lock_token

from ..conftest import ServerProcess, missing, private_memcached
from ..integration.test_middleware_conformance import client_for, sid_of

pytestmark = pytest.mark.service("memcached")

DURABLES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.service("postgresql")),
]


@pytest.fixture
def memcached() -> Iterator[ServerProcess]:
    """A memcached of this test alone, which it may flush, kill, pause and restart."""
    srv = private_memcached("memcached (tiered)")
    if srv is None:
        missing("memcached", "memcached is not installed")
    assert srv is not None
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.running:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


@pytest.fixture(params=DURABLES)
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The durable tier: SQLite in this test's folder, or the PostgreSQL of the environment."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/durable.db"
    return str(request.getfixturevalue("postgres_url"))


def fast_url(srv: ServerProcess) -> str:
    # Short timeouts: a paused server must cost a request well under a second.
    return f"memcached://127.0.0.1:{srv.port}?connect_timeout=0.5&timeout=0.5"


def flush(srv: ServerProcess) -> None:
    """Empty the private memcached, as an eviction storm or an operator would."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"flush_all\r\n")
        assert s.recv(100).startswith(b"OK")
    # memcached counts in whole seconds: what is stored in the second of a flush_all is flushed too.
    time.sleep(1.05)


def durable_writes_kept(increments: int, write_every: int) -> int:
    """The count the durable tier holds after ``increments`` writes: creation (1), then every Nth version."""
    return max(v for v in range(1, increments + 1) if v == 1 or v % write_every == 0)


# -- through the middleware ----------------------------------------------------------------------


@pytest.mark.parametrize("write_every", [1, 3])
@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_flush_all_loses_no_session_and_at_most_n_minus_1_changes(
    adapter: str, write_every: int, memcached: ServerProcess, durable_url: str, key_prefix: str
) -> None:
    options: dict[str, Any] = {
        "backend": fast_url(memcached),
        "durable_backend": durable_url,
        "durable_write_every": write_every,
        "key_prefix": key_prefix,
    }
    with ExitStack() as stack:
        clients = []
        for k in range(1, 9):  # session k is incremented k times
            c = stack.enter_context(client_for(adapter, **options))
            clients.append(c)
            for i in range(1, k + 1):
                assert c.get("/inc").json() == {"n": i}
        fast = open_backend(fast_url(memcached), key_prefix=key_prefix)
        sids = [handle_of(sid_of(c.cookies["session"])) for c in clients]  # the names the store keeps
        assert all(fast.load(sid) is not None for sid in sids)
        flush(memcached)
        assert all(fast.load(sid) is None for sid in sids)
        for k, c in enumerate(clients, start=1):
            kept = durable_writes_kept(k, write_every)
            assert k - kept <= write_every - 1
            assert c.get("/inc").json() == {"n": kept + 1}, f"session {k}"
        if write_every == 1:
            assert all(durable_writes_kept(k, 1) == k for k in range(1, 9))
        else:
            assert any(durable_writes_kept(k, write_every) < k for k in range(1, 9)), "the test must lose something"
        # The misses refilled the fast tier: the next reads are served from it.
        assert all(fast.load(sid) is not None for sid in sids)
        fast.close()


@pytest.mark.parametrize("adapter", ["asgi", "wsgi", "flask"])
def test_killed_memcached_degrades_to_the_durable_tier_without_a_503(
    adapter: str,
    memcached: ServerProcess,
    durable_url: str,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = {"backend": fast_url(memcached), "durable_backend": durable_url, "key_prefix": key_prefix}
    with client_for(adapter, **options) as a, client_for(adapter, **options) as b:
        assert a.get("/inc").json() == {"n": 1}
        assert a.get("/inc").json() == {"n": 2}
        assert b.get("/login/bob").status_code == 200
        memcached.stop()
        with caplog.at_level(logging.WARNING, logger="sessionmw"):
            for n in range(3, 9):
                r = a.get("/inc")
                assert r.status_code == 200, r.text
                assert r.json() == {"n": n}
            assert b.get("/view").json()["user"] == "bob"
        down = [r for r in caplog.records if "fast tier" in r.getMessage() and "unavailable" in r.getMessage()]
        # One warning per outage and middleware (two apps here), not one per request (seven were made).
        assert len(down) == 2, [r.getMessage() for r in down]
        caplog.clear()
        memcached.start()  # back, empty
        with caplog.at_level(logging.WARNING, logger="sessionmw"):
            assert a.get("/inc").json() == {"n": 9}
            assert a.get("/inc").json() == {"n": 10}
        assert any("answers again" in r.getMessage() for r in caplog.records)
        assert b.get("/view").json()["user"] == "bob"


def test_listing_and_ending_a_users_sessions_while_memcached_is_empty(
    memcached: ServerProcess, durable_url: str, key_prefix: str
) -> None:
    options = {"backend": fast_url(memcached), "durable_backend": durable_url, "key_prefix": key_prefix}
    with (
        client_for("asgi", **options) as alice1,
        client_for("asgi", **options) as alice2,
        client_for("asgi", **options) as bob,
        SessionStore(fast_url(memcached), durable_backend=durable_url, key_prefix=key_prefix) as store,
    ):
        for c, user in ((alice1, "alice"), (alice2, "alice"), (bob, "bob")):
            assert c.get(f"/login/{user}").status_code == 200
            assert c.get("/inc").json() == {"n": 1}
        flush(memcached)
        listed = store.list_sessions(user_id="alice")
        assert len(listed) == 2 and {i.user_id for i in listed} == {"alice"}
        assert len(store.list_sessions()) == 3
        figures = store.stats()
        assert figures["sessions"] == 3 and figures["users"] == 2
        assert figures["fast_available"] == 1 and "evictions" in figures and "fast_curr_items" in figures
        assert "durable_rows" in figures
        assert store.terminate_user("alice") == 2
        # Ended: neither tier brings them back, even after another flush.
        flush(memcached)
        for c in (alice1, alice2):
            state = c.get("/view").json()
            assert state["user"] is None and "n" not in state["session"]
        assert bob.get("/inc").json() == {"n": 2}
        assert [i.user_id for i in store.list_sessions()] == ["bob"]


def test_a_terminated_session_never_comes_back(memcached: ServerProcess, durable_url: str, key_prefix: str) -> None:
    options = {"backend": fast_url(memcached), "durable_backend": durable_url, "key_prefix": key_prefix}
    with (
        client_for("asgi", **options) as c,
        SessionStore(fast_url(memcached), durable_backend=durable_url, key_prefix=key_prefix) as store,
    ):
        c.get("/inc")
        c.get("/inc")
        handle = store.list_sessions()[0].sid
        assert store.terminate(handle)
        for _ in range(2):
            assert c.get("/view").json()["session"] == {}
            flush(memcached)
        assert store.list_sessions() == []


# -- at backend level ----------------------------------------------------------------------------


def rec(n: int, version: int, **kw: Any) -> Record:
    now = time.time()
    return Record(data=b'{"n":%d}' % n, created=now, last_access=now, version=version, **kw)


@pytest.fixture
def pair(memcached: ServerProcess, durable_url: str, key_prefix: str) -> Iterator[tuple[TieredBackend, Any, Any]]:
    """A tiered backend (N=3), and each of its tiers opened on its own to look inside."""
    tiered = open_backend(TieredSpec(fast_url(memcached), durable_url, write_every=3), key_prefix=key_prefix)
    assert isinstance(tiered, TieredBackend)
    fast = open_backend(fast_url(memcached), key_prefix=key_prefix)
    durable = open_backend(durable_url, key_prefix=key_prefix)
    yield tiered, fast, durable
    for b in (tiered, fast, durable):
        b.close()


def test_writes_reach_the_durable_tier_every_nth_version(pair: tuple[TieredBackend, Any, Any]) -> None:
    tiered, fast, durable = pair
    sid = new_session_id()
    assert tiered.create(sid, rec(1, 1), ttl=600)
    assert durable.load(sid).version == 1 and fast.load(sid).version == 1
    for version in (2, 3, 4):
        token = new_lock_token()
        assert tiered.lock_and_load(sid, token, 30)[0]
        assert tiered.save(sid, rec(version, version), token, ttl=600)
        assert fast.load(sid).version == version
        assert durable.load(sid).version == (3 if version >= 3 else 1)


def test_a_write_the_fast_tier_lost_goes_to_the_durable_tier(
    pair: tuple[TieredBackend, Any, Any], memcached: ServerProcess
) -> None:
    """The record and the lock vanish while a request holds it (a flush): its write is not lost."""
    tiered, fast, durable = pair
    sid = new_session_id()
    tiered.create(sid, rec(1, 1), ttl=600)
    token = new_lock_token()
    assert tiered.lock_and_load(sid, token, 30)[0]
    flush(memcached)
    assert tiered.save(sid, rec(2, 2), token, ttl=600), "version 2 is not due, but the fast tier refused it"
    assert durable.load(sid).version == 2
    assert fast.load(sid).version == 2, "and the fast tier is refilled"


def test_a_fenced_write_reaches_neither_tier(pair: tuple[TieredBackend, Any, Any]) -> None:
    tiered, fast, durable = pair
    sid = new_session_id()
    tiered.create(sid, rec(1, 1), ttl=600)
    dead = new_lock_token()
    assert tiered.lock_and_load(sid, dead, 1.0)[0]
    time.sleep(1.3)
    alive = new_lock_token()
    assert tiered.lock_and_load(sid, alive, 30)[0]
    # The expired holder's write would be due (version 3): it must not reach the durable tier either.
    assert not tiered.save(sid, rec(99, 3), dead, ttl=600)
    assert durable.load(sid).data == b'{"n":1}' and fast.load(sid).data == b'{"n":1}'
    assert tiered.save(sid, rec(3, 3), alive, ttl=600)
    assert durable.load(sid).data == b'{"n":3}'


def test_fast_tier_down_locks_and_writes_in_the_durable_tier(
    pair: tuple[TieredBackend, Any, Any], memcached: ServerProcess
) -> None:
    tiered, _, durable = pair
    sid = new_session_id()
    tiered.create(sid, rec(1, 1), ttl=600)
    memcached.stop()
    t1, t2 = new_lock_token(), new_lock_token()
    locked, got = tiered.lock_and_load(sid, t1, 30)
    assert locked and got is not None and got.version == 1
    assert tiered.lock_and_load(sid, t2, 30) == (False, None), "the durable tier's lock excludes"
    assert tiered.extend(sid, t1, 30)
    assert tiered.save(sid, rec(2, 2), t1, ttl=600), "a write not due still lands, in the durable tier"
    assert durable.load(sid).version == 2
    assert tiered.load(sid).version == 2
    memcached.start()
    assert tiered.load(sid).version == 2, "the empty fast tier is refilled from the durable one"


def test_a_fast_server_back_with_old_memory_serves_nothing_stale(
    pair: tuple[TieredBackend, Any, Any], memcached: ServerProcess
) -> None:
    """Paused (SIGSTOP) while a session is written and another ended, then continued with its old memory."""
    tiered, _, durable = pair
    kept, ended = new_session_id(), new_session_id()
    for sid in (kept, ended):
        tiered.create(sid, rec(1, 1), ttl=600)
        assert tiered.load(sid) is not None
    assert memcached.proc is not None
    os.kill(memcached.proc.pid, signal.SIGSTOP)
    try:
        token = new_lock_token()
        assert tiered.lock_and_load(kept, token, 30)[0]
        assert tiered.save(kept, rec(2, 2), token, ttl=600)
        tiered.delete(ended)
    finally:
        os.kill(memcached.proc.pid, signal.SIGCONT)
    time.sleep(0.1)
    got = tiered.load(kept)
    assert got is not None and got.version == 2, "not the fast tier's old version 1"
    assert tiered.load(ended) is None, "an ended session never comes back"
    assert durable.load(ended) is None


def test_spec_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same store"):
        TieredSpec("memory://x", "memory://x")
    with pytest.raises(ValueError, match="durable_write_every"):
        TieredSpec("memory://x", f"sqlite:///{tmp_path}/a.db", write_every=0)
    with pytest.raises(ValueError, match="durable_backend") as info:
        open_backend(TieredSpec("memory://x", "nosuch://y"))
    assert getattr(info.value, "option", None) == "durable_backend"
