"""The backend conformance suite: every backend's primitives, sync and async, against a real server.

A backend passes this suite or is not done. The middleware-level suite is in test_conformance.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionmw.backends import AsyncBackend, Backend, Record, TieredSpec, Touch, open_async_backend, open_backend
from sessionmw.core.cookies import new_session_id
from sessionmw.core.locking import new_lock_token

from ..conftest import BACKENDS, REDIS_TOPOLOGIES, TIERED, backend_url_for


def rec(data: bytes = b'{"a":1}', **kw: Any) -> Record:
    now = time.time()
    base: dict[str, Any] = {
        "created": now,
        "last_access": now,
        "first_ip": "127.0.0.1",
        "last_ip": "127.0.0.1",
    }
    base.update(kw)
    return Record(data=data, **base)


@pytest.fixture(params=BACKENDS + REDIS_TOPOLOGIES + TIERED)
def backend_url(request: pytest.FixtureRequest, shared_tmp: Path) -> str | TieredSpec:
    """Every backend kind, Redis behind Sentinel and as a Cluster, and tiered pairs (a :class:`TieredSpec`)."""
    return backend_url_for(request.param, request, shared_tmp)


@pytest.fixture
def backend(backend_url: str | TieredSpec, key_prefix: str) -> Iterator[Backend]:
    b = open_backend(backend_url, key_prefix=key_prefix)
    yield b
    b.close()


def test_create_then_load_round_trips_data_and_metadata(backend: Backend) -> None:
    sid = new_session_id()
    r = rec(
        b'{"k":"\xc3\xa9"}',
        user_id=42,
        user_agent="ua/1",
        idle_override=True,
        idle_timeout=None,
        expires=None,
        version=3,
    )
    assert backend.create(sid, r, ttl=60)
    got = backend.load(sid)
    assert got is not None
    assert got.data == r.data
    assert got.version == 3
    assert got.user_id == 42
    assert got.user_agent == "ua/1"
    assert got.idle_override is True and got.idle_timeout is None
    assert abs(got.created - r.created) < 0.01


def test_create_refuses_an_existing_id(backend: Backend) -> None:
    sid = new_session_id()
    assert backend.create(sid, rec(b"{}"), ttl=60)
    assert not backend.create(sid, rec(b'{"other":1}'), ttl=60)
    got = backend.load(sid)
    assert got is not None and got.data == b"{}"


def test_missing_session_loads_none_and_deletes_quietly(backend: Backend) -> None:
    sid = new_session_id()
    assert backend.load(sid) is None
    backend.delete(sid)
    backend.delete(sid)


def test_lock_excludes_a_second_token_until_released(backend: Backend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(), ttl=60)
    t1, t2 = new_lock_token(), new_lock_token()
    locked, got = backend.lock_and_load(sid, t1, 30)
    assert locked and got is not None and got.data == b'{"a":1}'
    assert backend.lock_and_load(sid, t2, 30) == (False, None)
    assert not backend.release(sid, t2, None), "a wrong token must not release"
    assert backend.lock_and_load(sid, t2, 30)[0] is False
    assert backend.release(sid, t1, None)
    locked, _ = backend.lock_and_load(sid, t2, 30)
    assert locked
    assert backend.release(sid, t2, None)


def test_lock_on_unknown_id_loads_none(backend: Backend) -> None:
    sid = new_session_id()
    t = new_lock_token()
    locked, got = backend.lock_and_load(sid, t, 30)
    assert locked and got is None
    backend.release(sid, t, None)
    assert backend.load(sid) is None


def test_save_is_fenced_by_the_token(backend: Backend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(b'{"v":0}'), ttl=60)
    t1 = new_lock_token()
    assert backend.lock_and_load(sid, t1, 30)[0]
    assert not backend.save(sid, rec(b'{"v":"stale"}'), new_lock_token(), ttl=60)
    assert backend.save(sid, rec(b'{"v":1}'), t1, ttl=60)
    got = backend.load(sid)
    assert got is not None and got.data == b'{"v":1}'
    # save released the lock: another token gets it at once, and t1 can no longer write
    t2 = new_lock_token()
    assert backend.lock_and_load(sid, t2, 30)[0]
    assert not backend.save(sid, rec(b'{"v":"late"}'), t1, ttl=60)
    assert backend.release(sid, t2, None)
    got = backend.load(sid)
    assert got is not None and got.data == b'{"v":1}'


def test_save_never_resurrects_a_deleted_session(backend: Backend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(b'{"v":0}'), ttl=60)
    t = new_lock_token()
    assert backend.lock_and_load(sid, t, 30)[0]
    backend.delete(sid)  # an administrator ends the session while a request holds it
    assert not backend.save(sid, rec(b'{"v":1}'), t, ttl=60)
    assert backend.load(sid) is None
    t2 = new_lock_token()
    locked, got = backend.lock_and_load(sid, t2, 30)
    assert locked and got is None, "the failed save released the lock"
    backend.release(sid, t2, None)


def test_expired_lock_is_taken_over_and_the_old_holder_is_fenced(backend: Backend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(b'{"v":0}'), ttl=60)
    dead = new_lock_token()
    assert backend.lock_and_load(sid, dead, 1.0)[0]
    assert not backend.lock_and_load(sid, new_lock_token(), 30)[0]
    time.sleep(1.3)
    t2 = new_lock_token()
    locked, got = backend.lock_and_load(sid, t2, 30)
    assert locked and got is not None
    assert not backend.save(sid, rec(b'{"v":"dead"}'), dead, ttl=60), "the expired holder must not write"
    assert backend.save(sid, rec(b'{"v":2}'), t2, ttl=60)
    got = backend.load(sid)
    assert got is not None and got.data == b'{"v":2}'


def test_extend_keeps_the_lock_past_its_first_expiry(backend: Backend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(), ttl=60)
    t = new_lock_token()
    assert backend.lock_and_load(sid, t, 1.0)[0]
    assert backend.extend(sid, t, 30)
    assert not backend.extend(sid, new_lock_token(), 30)
    time.sleep(1.3)
    assert not backend.lock_and_load(sid, new_lock_token(), 30)[0]
    assert backend.release(sid, t, None)


def test_touch_refreshes_last_access_without_rewriting_data(backend: Backend) -> None:
    sid = new_session_id()
    r = rec(b'{"v":1}')
    backend.create(sid, r, ttl=60)
    later = r.last_access + 100
    backend.touch(sid, Touch(last_access=later, last_ip="10.0.0.9", expires=later + 50, ttl=60))
    got = backend.load(sid)
    assert got is not None
    assert got.data == b'{"v":1}'
    assert abs(got.last_access - later) < 0.01
    assert got.last_ip == "10.0.0.9"
    # touching a missing session does not create it
    other = new_session_id()
    backend.touch(other, Touch(last_access=later, last_ip=None, expires=None, ttl=60))
    assert backend.load(other) is None


def test_release_with_touch(backend: Backend) -> None:
    sid = new_session_id()
    r = rec(b'{"v":1}')
    backend.create(sid, r, ttl=60)
    t = new_lock_token()
    assert backend.lock_and_load(sid, t, 30)[0]
    later = r.last_access + 50
    assert backend.release(sid, t, Touch(last_access=later, last_ip="::1", expires=None, ttl=60))
    got = backend.load(sid)
    assert got is not None and got.data == b'{"v":1}' and abs(got.last_access - later) < 0.01


def test_delete_removes_data(backend: Backend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(), ttl=60)
    backend.delete(sid)
    assert backend.load(sid) is None
    assert backend.create(sid, rec(), ttl=60)


def test_ttl_is_a_safety_net(backend: Backend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(), ttl=1)
    assert backend.load(sid) is not None
    time.sleep(2.2)
    assert backend.load(sid) is None


def test_key_prefix_keeps_two_stores_apart(backend_url: str, key_prefix: str) -> None:
    a = open_backend(backend_url, key_prefix=key_prefix + "a:")
    b = open_backend(backend_url, key_prefix=key_prefix + "b:")
    try:
        sid = new_session_id()
        assert a.create(sid, rec(b'{"site":"a"}'), ttl=60)
        assert b.load(sid) is None
        assert b.create(sid, rec(b'{"site":"b"}'), ttl=60)
        ga, gb = a.load(sid), b.load(sid)
        assert ga is not None and ga.data == b'{"site":"a"}'
        assert gb is not None and gb.data == b'{"site":"b"}'
        ta = new_lock_token()
        assert a.lock_and_load(sid, ta, 30)[0]
        tb = new_lock_token()
        assert b.lock_and_load(sid, tb, 30)[0], "locks of two prefixes must not collide"
        a.release(sid, ta, None)
        b.release(sid, tb, None)
    finally:
        a.close()
        b.close()


def test_only_one_of_eight_threads_wins_the_lock(backend_url: str, key_prefix: str) -> None:
    sid = new_session_id()
    setup = open_backend(backend_url, key_prefix=key_prefix)
    setup.create(sid, rec(), ttl=60)
    barrier = threading.Barrier(8)
    wins: list[str] = []

    def contend() -> None:
        b = open_backend(backend_url, key_prefix=key_prefix)
        token = new_lock_token()
        barrier.wait()
        if b.lock_and_load(sid, token, 30)[0]:
            wins.append(token)
        # keep the backend (and a file lock's descriptor) alive until every thread has tried
        barrier.wait()
        if wins and wins[0] == token:
            assert b.release(sid, token, None)
        b.close()

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    setup.close()
    assert len(wins) == 1


def test_async_twin_behaves_the_same(backend_url: str, key_prefix: str) -> None:
    async def scenario() -> None:
        ab: AsyncBackend = open_async_backend(backend_url, key_prefix=key_prefix)
        try:
            sid = new_session_id()
            assert await ab.acreate(sid, rec(b'{"x":1}'), 60)
            got = await ab.aload(sid)
            assert got is not None and got.data == b'{"x":1}'
            t1, t2 = new_lock_token(), new_lock_token()
            assert (await ab.alock_and_load(sid, t1, 30))[0]
            assert (await ab.alock_and_load(sid, t2, 30)) == (False, None)
            assert await ab.aextend(sid, t1, 30)
            assert not await ab.asave(sid, rec(b'{"x":"no"}'), t2, 60)
            assert await ab.asave(sid, rec(b'{"x":2}'), t1, 60)
            assert (await ab.alock_and_load(sid, t2, 30))[0]
            later = time.time() + 10
            assert await ab.arelease(sid, t2, Touch(later, "127.0.0.2", None, 60))
            await ab.atouch(sid, Touch(later + 1, "127.0.0.3", None, 60))
            got = await ab.aload(sid)
            assert got is not None and got.data == b'{"x":2}' and got.last_ip == "127.0.0.3"
            await ab.adelete(sid)
            assert await ab.aload(sid) is None
        finally:
            await ab.aclose()

    asyncio.run(scenario())
