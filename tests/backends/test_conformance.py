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
from sessionmw.backends.appending import AppendsTail, AsyncAppendsTail
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


# -- the optional tail primitive (sessionmw.backends.appending) ------------------------------------

#: The backend kinds that offer ``save_tail`` / ``asave_tail``; the others get whole saves.
APPENDS = {"memory", "file", "redis", "redis-sentinel", "redis-cluster"}
#: Those kinds as parameters: the tests of what the primitive does run on them only (nothing skipped).
APPENDING = [p for p in BACKENDS + REDIS_TOPOLOGIES + TIERED if p.values[0] in APPENDS]
on_appending = pytest.mark.parametrize("backend_url", APPENDING, indirect=True)


def _kind(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["backend_url"])


def test_the_tail_primitive_is_offered_where_expected(
    request: pytest.FixtureRequest, backend_url: str | TieredSpec, key_prefix: str
) -> None:
    kind = _kind(request)
    sync = open_backend(backend_url, key_prefix=key_prefix)
    ab = open_async_backend(backend_url, key_prefix=key_prefix)
    try:
        assert isinstance(ab, AsyncAppendsTail) is (kind in APPENDS)
        assert isinstance(sync, AppendsTail) is (kind in APPENDS)
    finally:
        sync.close()
        asyncio.run(ab.aclose())


def _appending(request: pytest.FixtureRequest, backend_url: str | TieredSpec, key_prefix: str) -> AsyncBackend:
    assert _kind(request) in APPENDS
    return open_async_backend(backend_url, key_prefix=key_prefix)


def _head(base: Record, **kw: Any) -> Record:
    return base._replace(data=b"", **kw)


@on_appending
@pytest.mark.parametrize("size", [pytest.param(20, id="small"), pytest.param(64_000, id="64KB")])
@pytest.mark.parametrize(
    "agent", [pytest.param("ua/1", id="same head size"), pytest.param("ua/" + "2" * 300, id="longer head")]
)
def test_save_tail_appends_and_rewrites_the_metadata(
    request: pytest.FixtureRequest, backend_url: str | TieredSpec, key_prefix: str, size: int, agent: str
) -> None:
    ab = _appending(request, backend_url, key_prefix)

    async def scenario() -> None:
        sid = new_session_id()
        data = b'{"a":"' + b"x" * size + b'"}'
        first = rec(data, user_id=5, user_agent="ua/1", version=1, expires=time.time() + 600)
        assert await ab.acreate(sid, first, 60)
        t1, t2 = new_lock_token(), new_lock_token()
        assert (await ab.alock_and_load(sid, t1, 30))[0]
        later = first.last_access + 10
        head = _head(first, last_access=later, last_ip="10.0.0.9", user_agent=agent, version=2, expires=later + 600)
        assert await ab.asave_tail(sid, head, b"<one>", t1, 60)  # type: ignore[attr-defined]
        assert (await ab.alock_and_load(sid, t2, 30))[0], "the tail write released the lock"
        assert await ab.asave_tail(sid, _head(head, version=3), b"<two>", t2, 60)  # type: ignore[attr-defined]
        got = await ab.aload(sid)
        assert got is not None
        assert got.data == data + b"<one><two>"
        assert (got.version, got.last_access, got.last_ip, got.user_agent, got.user_id) == (
            3,
            later,
            "10.0.0.9",
            agent,
            5,
        )
        assert got.created == first.created and got.expires == later + 600
        # A whole save afterwards replaces the data and its tail (compaction).
        t3 = new_lock_token()
        assert (await ab.alock_and_load(sid, t3, 30))[0]
        assert await ab.asave(sid, rec(b'{"b":2}', version=4), t3, 60)
        got = await ab.aload(sid)
        assert got is not None and got.data == b'{"b":2}' and got.version == 4
        await ab.adelete(sid)

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(ab.aclose())


@on_appending
def test_save_tail_is_fenced_and_never_resurrects(
    request: pytest.FixtureRequest, backend_url: str | TieredSpec, key_prefix: str
) -> None:
    ab = _appending(request, backend_url, key_prefix)

    async def scenario() -> None:
        sid = new_session_id()
        first = rec(b'{"v":0}', version=1)
        assert await ab.acreate(sid, first, 60)
        t1, t2 = new_lock_token(), new_lock_token()
        assert (await ab.alock_and_load(sid, t1, 30))[0]
        assert not await ab.asave_tail(sid, _head(first, version=9), b"<stale>", t2, 60)  # type: ignore[attr-defined]
        got = await ab.aload(sid)
        assert got is not None and got.data == b'{"v":0}' and got.version == 1
        # The holder's lock is taken over after it expired: its tail is dropped.
        assert await ab.arelease(sid, t1, None)
        assert (await ab.alock_and_load(sid, t2, 30))[0]
        assert not await ab.asave_tail(sid, _head(first, version=9), b"<late>", t1, 60)  # type: ignore[attr-defined]
        assert await ab.arelease(sid, t2, None)
        # Ended while a request held it: the tail writes nothing, and releases the lock.
        t3 = new_lock_token()
        assert (await ab.alock_and_load(sid, t3, 30))[0]
        await ab.adelete(sid)
        assert not await ab.asave_tail(sid, _head(first, version=2), b"<ghost>", t3, 60)  # type: ignore[attr-defined]
        assert await ab.aload(sid) is None
        t4 = new_lock_token()
        locked, got = await ab.alock_and_load(sid, t4, 30)
        assert locked and got is None, "the refused tail released the lock"
        await ab.arelease(sid, t4, None)

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(ab.aclose())


@on_appending
def test_save_tail_then_touch_keeps_the_tail(
    request: pytest.FixtureRequest, backend_url: str | TieredSpec, key_prefix: str
) -> None:
    ab = _appending(request, backend_url, key_prefix)

    async def scenario() -> None:
        sid = new_session_id()
        first = rec(b'{"v":0}' + b" " * 2000, version=1)
        assert await ab.acreate(sid, first, 60)
        t1 = new_lock_token()
        assert (await ab.alock_and_load(sid, t1, 30))[0]
        assert await ab.asave_tail(sid, _head(first, version=2), b"<t>", t1, 60)  # type: ignore[attr-defined]
        later = time.time() + 30
        await ab.atouch(sid, Touch(later, "127.0.0.7", None, 60))
        got = await ab.aload(sid)
        assert got is not None and got.data == first.data + b"<t>" and got.version == 2
        assert got.last_ip == "127.0.0.7"
        await ab.adelete(sid)

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(ab.aclose())


@on_appending
def test_sync_save_tail_matches_the_async_one(
    request: pytest.FixtureRequest, backend_url: str | TieredSpec, key_prefix: str
) -> None:
    assert _kind(request) in APPENDS
    b = open_backend(backend_url, key_prefix=key_prefix)
    try:
        assert isinstance(b, AppendsTail)
        sid = new_session_id()
        first = rec(b'{"v":0}', version=1)
        assert b.create(sid, first, 60)
        t1, t2 = new_lock_token(), new_lock_token()
        assert b.lock_and_load(sid, t1, 30)[0]
        assert not b.save_tail(sid, _head(first, version=5), b"<no>", t2, 60)
        assert b.save_tail(sid, _head(first, version=2), b"<yes>", t1, 60)
        assert not b.save_tail(sid, _head(first, version=3), b"<again>", t1, 60), "the lock went with the write"
        got = b.load(sid)
        assert got is not None and got.data == b'{"v":0}<yes>' and got.version == 2
        assert [r.data for s, r in b.iter_records() if s == sid] == [b'{"v":0}<yes>']  # type: ignore[attr-defined]
        b.delete(sid)
    finally:
        b.close()


def test_file_tail_survives_a_crash_mid_append(shared_tmp: Path, key_prefix: str) -> None:
    """A crash during the append leaves bytes past the committed length: never read, then written over."""
    from sessionmw.backends.file import FileBackend

    b = FileBackend(shared_tmp / "crash", key_prefix=key_prefix)
    try:
        sid = new_session_id()
        first = rec(b'{"v":0}', version=1)
        assert b.create(sid, first, 60)
        t1 = new_lock_token()
        assert b.lock_and_load(sid, t1, 30)[0]
        assert b.save_tail(sid, _head(first, version=2), b"<one>", t1, 60)
        path = shared_tmp / "crash" / f"{key_prefix}{sid}.session"
        with open(path, "ab") as f:
            f.write(b"<torn ta")  # the tail of a write that never committed its .head
        got = b.load(sid)
        assert got is not None and got.data == b'{"v":0}<one>' and got.version == 2
        t2 = new_lock_token()
        assert b.lock_and_load(sid, t2, 30)[0]
        assert b.save_tail(sid, _head(first, version=3), b"<two>", t2, 60)
        got = b.load(sid)
        assert got is not None and got.data == b'{"v":0}<one><two>' and got.version == 3
        # A whole save replaces the file: the .head of the old one is gone (or ignored: another inode).
        head_file = path.with_suffix(".head")
        stale = head_file.read_bytes()
        t3 = new_lock_token()
        assert b.lock_and_load(sid, t3, 30)[0]
        assert b.save(sid, rec(b'{"w":1}', version=4), t3, 60)
        assert not head_file.exists()
        head_file.write_bytes(stale)
        got = b.load(sid)
        assert got is not None and got.data == b'{"w":1}' and got.version == 4
        assert b.gc(time.time() + 10**6) == 1
        assert not head_file.exists() and not path.exists()
    finally:
        b.close()


def test_redis_tail_sent_again_after_a_lost_reply_reads_as_written(redis_url: str, key_prefix: str) -> None:
    """A failover may lose the reply of a tail write that ran: sent again, it must not read as dropped."""
    from sessionmw.backends.redis import ops as redis_ops

    b = open_backend(redis_url, key_prefix=key_prefix)
    try:
        sid = new_session_id()
        first = rec(b'{"v":0}', version=1)
        assert b.create(sid, first, 60)
        t1 = new_lock_token()
        assert b.lock_and_load(sid, t1, 30)[0]
        op = redis_ops.save_tail(b._base.keys, sid, _head(first, version=2), b"<once>", t1, 60)  # type: ignore[attr-defined]
        assert b._run(op)  # type: ignore[attr-defined]
        assert b._run(op), "the same write, found done"  # type: ignore[attr-defined]
        other = redis_ops.save_tail(b._base.keys, sid, _head(first, version=3), b"<once>", t1, 60)  # type: ignore[attr-defined]
        assert not b._run(other), "another write with the lost lock is refused"  # type: ignore[attr-defined]
        got = b.load(sid)
        assert got is not None and got.data == b'{"v":0}<once>' and got.version == 2
        b.delete(sid)
    finally:
        b.close()
