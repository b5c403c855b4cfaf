"""The memcached backend beyond the conformance suite: many servers, item size, expiry, failures, races."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client

from sessionmw.backends import Record, Touch, open_backend
from sessionmw.backends.memcached import (
    DEFAULT_ITEM_SIZE_MAX,
    INDEX_PRUNE_AT,
    MAX_RELATIVE_EXPTIME,
    MemcachedBackend,
    _DumpRefused,
    exptime,
)
from sessionmw.core.cookies import new_session_id
from sessionmw.core.errors import BackendUnavailable, ConfigError, RecordTooLarge
from sessionmw.core.locking import new_lock_token
from tests.conftest import ServerProcess, free_port, missing, private_memcached

pytestmark = pytest.mark.service("memcached")


def rec(data: bytes = b'{"a":1}', **kw: Any) -> Record:
    now = time.time()
    return Record(data=data, created=now, last_access=now, first_ip="127.0.0.1", last_ip="127.0.0.1", **kw)


def raw_client(port: int) -> Client:
    return Client(("127.0.0.1", port), no_delay=True, default_noreply=False, connect_timeout=2, timeout=2)


@pytest.fixture
def backend(memcached_url: str, key_prefix: str) -> Iterator[MemcachedBackend]:
    b = open_backend(memcached_url, key_prefix=key_prefix)
    assert isinstance(b, MemcachedBackend)
    yield b
    b.close()


@pytest.fixture(scope="module")
def second_server(memcached_server: ServerProcess | None) -> Iterator[ServerProcess]:
    """A second private memcached, for the many-server tests."""
    srv = private_memcached("memcached-2")
    if memcached_server is None or srv is None:
        missing("memcached", "memcached is not installed (apt-get install memcached)")
    assert srv is not None
    srv.start()
    yield srv
    srv.stop()


# -- URLs and options ----------------------------------------------------------------------------


def test_url_default_port_and_options() -> None:
    b = open_backend("memcached://127.0.0.1?connect_timeout=0.5&timeout=0.25&replicas=1")
    assert isinstance(b, MemcachedBackend)
    assert b.name == "memcached://127.0.0.1:11211"
    assert (b.connect_timeout, b.timeout) == (0.5, 0.25)
    b.close()
    two = open_backend("memcached://127.0.0.1:11211,127.0.0.1:11212")
    assert isinstance(two, MemcachedBackend)
    assert two.name == "memcached://127.0.0.1:11211,127.0.0.1:11212"
    assert (two.replicas, two.fail_limit, two.retry_after) == (1, 2, 5.0)
    two.close()
    three = open_backend("memcached://a:1,b:1,c:1?replicas=2&fail_limit=1&retry_after=0.5")
    assert isinstance(three, MemcachedBackend)
    assert (three.replicas, three.fail_limit, three.retry_after) == (2, 1, 0.5)
    three.close()


@pytest.mark.parametrize(
    ("url", "option", "words"),
    [
        pytest.param("memcached://127.0.0.1:11211?replicas=2", "replicas", "but the URL names 1 server", id="replicas"),
        pytest.param("memcached://a:1,b:1?fail_limit=0", "fail_limit", "fail_limit", id="fail_limit"),
        pytest.param("memcached://a:1,b:1?retry_after=x", "retry_after", "retry_after", id="retry_after"),
        pytest.param("memcached://127.0.0.1?timeout=0", "timeout", "timeout", id="zero-timeout"),
        pytest.param("memcached://127.0.0.1?conect_timeout=1", "conect_timeout", "did you mean", id="unknown"),
        pytest.param("memcached://127.0.0.1:1,127.0.0.1:1", "backend", "listed twice", id="duplicate"),
        pytest.param("memcached://u:p@127.0.0.1", "backend", "credentials", id="credentials"),
        pytest.param("memcached://127.0.0.1/0", "backend", "path", id="path"),
        pytest.param("memcached://", "backend", "names no server", id="no-server"),
    ],
)
def test_bad_urls_are_config_errors(url: str, option: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_backend(url)
    assert info.value.option == option
    assert words in str(info.value)


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("has space:", id="space"),
        pytest.param("tab\t", id="control"),
        pytest.param("é:", id="non-ascii"),
        pytest.param("x" * 200, id="too-long"),
    ],
)
def test_bad_key_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_backend("memcached://127.0.0.1:11211", key_prefix=prefix)
    assert info.value.option == "key_prefix"
    assert "key_prefix" in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        pytest.param(None, 0, id="none-is-forever"),
        pytest.param(0, -1, id="zero-is-gone"),
        pytest.param(0.2, 2, id="fraction-rounds-up-plus-one"),
        pytest.param(1.0, 2, id="one"),
        pytest.param(60, 61, id="minute"),
        pytest.param(MAX_RELATIVE_EXPTIME - 1, MAX_RELATIVE_EXPTIME, id="just-relative"),
    ],
)
def test_exptime_relative(seconds: float | None, expected: int) -> None:
    assert exptime(seconds) == expected


def test_exptime_over_30_days_is_absolute() -> None:
    now = 1_700_000_000.0
    assert exptime(40 * 86400, now=now) == int(now) + 40 * 86400 + 1
    assert exptime(MAX_RELATIVE_EXPTIME, now=now) == int(now) + MAX_RELATIVE_EXPTIME + 1


# -- many servers --------------------------------------------------------------------------------


def test_sessions_spread_over_two_servers_with_data_and_lock_together(
    memcached_server: ServerProcess | None, second_server: ServerProcess, key_prefix: str
) -> None:
    if memcached_server is None:
        missing("memcached", "memcached is not installed")
    assert memcached_server is not None
    ports = [memcached_server.port, second_server.port]
    b = open_backend(f"memcached://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", key_prefix=key_prefix)
    raws = {port: raw_client(port) for port in ports}
    try:
        per_server = dict.fromkeys(ports, 0)
        tokens: dict[str, str] = {}
        for _ in range(40):
            sid = new_session_id()
            assert b.create(sid, rec(), ttl=60)
            token = tokens[sid] = new_lock_token()
            locked, got = b.lock_and_load(sid, token, 30)
            assert locked and got is not None
            where_data = [p for p in ports if raws[p].get(key_prefix + sid) is not None]
            where_lock = [p for p in ports if raws[p].get(key_prefix + sid + ":lock") is not None]
            assert len(where_data) == 1, "a session lives on exactly one server"
            assert where_lock == where_data, "its lock lives on the same server"
            per_server[where_data[0]] += 1
        assert all(n > 0 for n in per_server.values()), per_server
        # a second backend object over the same servers finds every session where the first put it
        other = open_backend(f"memcached://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", key_prefix=key_prefix)
        try:
            for sid, token in tokens.items():
                assert other.load(sid) is not None
                assert not other.lock_and_load(sid, new_lock_token(), 30)[0]
                assert b.save(sid, rec(b'{"saved":1}'), token, ttl=60)
                got = other.load(sid)
                assert got is not None and got.data == b'{"saved":1}'
        finally:
            other.close()
    finally:
        b.close()
        for c in raws.values():
            c.close()


def test_server_stats_per_server(
    memcached_server: ServerProcess | None, second_server: ServerProcess, key_prefix: str
) -> None:
    if memcached_server is None:
        missing("memcached", "memcached is not installed")
    assert memcached_server is not None
    b = open_backend(
        f"memcached://127.0.0.1:{memcached_server.port},127.0.0.1:{second_server.port}", key_prefix=key_prefix
    )
    assert isinstance(b, MemcachedBackend)
    try:
        stats = b.server_stats()
        assert set(stats) == {f"127.0.0.1:{memcached_server.port}", f"127.0.0.1:{second_server.port}"}
        for figures in stats.values():
            for name in ("evictions", "curr_items", "bytes", "limit_maxbytes"):
                assert isinstance(figures[name], int)
            assert figures["limit_maxbytes"] == 64 * 1024 * 1024
    finally:
        b.close()


# -- item size and expiry ------------------------------------------------------------------------


def test_a_2mb_record_raises_record_too_large_naming_the_limit(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    big = rec(b"x" * (2 * 1024 * 1024))
    with pytest.raises(RecordTooLarge) as info:
        backend.create(sid, big, ttl=60)
    assert info.value.limit == DEFAULT_ITEM_SIZE_MAX
    assert info.value.size > 2 * 1024 * 1024
    assert str(DEFAULT_ITEM_SIZE_MAX) in str(info.value) and str(info.value.size) in str(info.value)
    assert backend.load(sid) is None

    # save: the error is raised, nothing is written, and the lock is not left behind
    assert backend.create(sid, rec(b'{"v":0}'), ttl=60)
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30)[0]
    with pytest.raises(RecordTooLarge):
        backend.save(sid, big, token, ttl=60)
    got = backend.load(sid)
    assert got is not None and got.data == b'{"v":0}'
    assert backend.lock_and_load(sid, new_lock_token(), 30)[0], "the lock was released"


def test_server_side_too_large_is_record_too_large_too(backend: MemcachedBackend) -> None:
    """Even when the pre-check lets a record through, the server's refusal is never a silent loss."""
    sid = new_session_id()
    node = backend._locate(sid)[0]
    backend._learn(node)
    node.item_size_max = 64 * 1024 * 1024  # pretend the server took big items: its refusal must still surface
    try:
        with pytest.raises(RecordTooLarge):
            backend.create(sid, rec(b"x" * (2 * 1024 * 1024)), ttl=60)
    finally:
        node.item_size_max = None
    assert backend.load(sid) is None


def test_ttl_over_30_days_is_kept(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    assert backend.create(sid, rec(), ttl=40 * 86400)
    assert backend.load(sid) is not None
    time.sleep(1.1)
    assert backend.load(sid) is not None, "a long TTL must not be read as an absolute time in 1970"
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30)[0]
    assert backend.save(sid, rec(b'{"v":2}'), token, ttl=90 * 86400)
    backend.touch(sid, Touch(time.time(), None, None, ttl=35 * 86400))
    time.sleep(1.1)
    got = backend.load(sid)
    assert got is not None and got.data == b'{"v":2}'


def test_no_ttl_means_no_expiry(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    assert backend.create(sid, rec(), ttl=None)
    time.sleep(1.1)
    assert backend.load(sid) is not None


# -- failures ------------------------------------------------------------------------------------


def test_refused_connection_is_backend_unavailable_in_one_line(key_prefix: str) -> None:
    port = free_port()
    b = open_backend(f"memcached://127.0.0.1:{port}?connect_timeout=1", key_prefix=key_prefix)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            b.load(new_session_id())
        assert time.monotonic() - started < 1.0
        message = str(info.value)
        assert message.startswith(f"memcached backend memcached://127.0.0.1:{port} is unavailable: ")
        assert "Connection refused" in message and "\n" not in message
        assert info.value.backend == f"memcached://127.0.0.1:{port}"
    finally:
        b.close()


def test_meta_connections_are_reused_and_closed_by_close(backend: MemcachedBackend) -> None:
    """The meta commands keep their idle connections in a list: reused one after another, closed by close()."""
    node = next(iter(backend._nodes.values()))
    sid = new_session_id()
    assert backend.create(sid, rec(), ttl=60)
    for _ in range(5):
        assert backend.load(sid) is not None
    idle = list(node.meta._idle)
    assert len(idle) == 1 and idle[0].sock is not None, "one caller at a time: one connection, kept open"
    backend.close()
    assert not node.meta._idle and idle[0].sock is None, "close() closes the idle connections"
    assert backend.load(sid) is not None, "and the backend connects again"


def test_stopped_server_is_unavailable_and_the_same_backend_recovers(
    memcached_server: ServerProcess | None, memcached_url: str, key_prefix: str
) -> None:
    if memcached_server is None or memcached_url != f"memcached://127.0.0.1:{memcached_server.port}":
        pytest.skip("needs the private memcached of the test session (it is stopped and started)")
    b = open_backend(memcached_url, key_prefix=key_prefix)
    try:
        sid = new_session_id()
        assert b.create(sid, rec(), ttl=60)  # leaves pooled connections open
        memcached_server.stop()
        try:
            for call in (
                lambda: b.load(sid),
                lambda: b.lock_and_load(sid, new_lock_token(), 30),
                lambda: b.create(new_session_id(), rec(), 60),
            ):
                started = time.monotonic()
                with pytest.raises(BackendUnavailable) as info:
                    call()
                assert time.monotonic() - started < 1.0
                assert memcached_url in str(info.value)
        finally:
            memcached_server.start()
        # the restarted server is empty; the same backend object works again
        assert b.load(sid) is None
        assert b.create(sid, rec(b'{"back":1}'), ttl=60)
        token = new_lock_token()
        locked, got = b.lock_and_load(sid, token, 30)
        assert locked and got is not None and got.data == b'{"back":1}'
        assert b.release(sid, token, None)
    finally:
        b.close()


# -- locks and races -----------------------------------------------------------------------------


def _contend(b: Any, sid: str, n: int, expire: float = 30) -> list[str]:
    barrier = threading.Barrier(n)
    wins: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        token = new_lock_token()
        barrier.wait()
        try:
            if b.lock_and_load(sid, token, expire)[0]:
                wins.append(token)
        except BaseException as exc:  # noqa: B036 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return wins


def test_eight_threads_on_one_backend_one_winner(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(), ttl=60)
    wins = _contend(backend, sid, 8)
    assert len(wins) == 1
    assert backend.release(sid, wins[0], None)


def test_eight_threads_taking_over_an_expired_lock_one_winner(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(), ttl=60)
    dead = new_lock_token()
    assert backend.lock_and_load(sid, dead, 0.5)[0]
    time.sleep(0.7)  # past the deadline in the value, but memcached still holds the item
    wins = _contend(backend, sid, 8)
    assert len(wins) == 1, "the cas takeover lets exactly one contender win"
    assert not backend.release(sid, dead, None)
    assert not backend.save(sid, rec(b'{"v":"dead"}'), dead, ttl=60)
    assert backend.save(sid, rec(b'{"v":1}'), wins[0], ttl=60)


def test_release_deletes_the_lock_and_a_stale_release_does_not(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    node, _, lock_key = backend._locate(sid)
    t1 = new_lock_token()
    assert backend.lock_and_load(sid, t1, 30)[0]
    assert backend.release(sid, t1, None)
    assert node.client.get(lock_key) is None, "memcached >= 1.6 deletes the lock with md ... C<cas>"
    t2 = new_lock_token()
    assert backend.lock_and_load(sid, t2, 30)[0]
    assert not backend.release(sid, t1, None)
    assert not backend.extend(sid, t1, 30)
    assert backend.lock_and_load(sid, new_lock_token(), 30) == (False, None)
    assert backend.release(sid, t2, None)


def test_touch_does_not_undo_a_concurrent_save(backend: MemcachedBackend, memcached_url: str, key_prefix: str) -> None:
    sid = new_session_id()
    backend.create(sid, rec(b'{"v":0}'), ttl=60)
    writer = open_backend(memcached_url, key_prefix=key_prefix)
    real_read = backend._read_copies
    interfered: list[bool] = []

    def read_copies(*args: Any) -> Any:
        result = real_read(*args)
        if not interfered:
            # between touch's read and its write, another request saves new data
            interfered.append(True)
            token = new_lock_token()
            assert writer.lock_and_load(sid, token, 30)[0]
            assert writer.save(sid, rec(b'{"v":"saved"}'), token, ttl=60)
        return result

    backend._read_copies = read_copies  # type: ignore[method-assign]
    later = time.time() + 100
    try:
        backend.touch(sid, Touch(last_access=later, last_ip="10.1.2.3", expires=None, ttl=60))
    finally:
        del backend._read_copies
        writer.close()
    assert interfered
    got = backend.load(sid)
    assert got is not None
    assert got.data == b'{"v":"saved"}', "the touch must not write back the data it read before the save"
    assert abs(got.last_access - later) < 0.01 and got.last_ip == "10.1.2.3", "the touch was retried on top"


def test_touch_and_release_on_a_missing_session(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    backend.touch(sid, Touch(time.time(), None, None, 60))
    assert backend.load(sid) is None
    assert not backend.release(sid, new_lock_token(), None)
    assert not backend.extend(sid, new_lock_token(), 30)
    assert not backend.save(sid, rec(), new_lock_token(), 60)
    assert backend.load(sid) is None


def test_a_server_that_does_not_answer_times_out(key_prefix: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections in the backlog, never answers
        port = silent.getsockname()[1]
        b = open_backend(f"memcached://127.0.0.1:{port}?timeout=0.2&connect_timeout=0.2", key_prefix=key_prefix)
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable) as info:
                b.lock_and_load(new_session_id(), new_lock_token(), 30)
            assert time.monotonic() - started < 1.0
            assert "timed out" in str(info.value)
        finally:
            b.close()


# -- administration: enumeration, the user index, gc, stats --------------------------------------


@pytest.fixture
def two_servers(
    memcached_server: ServerProcess | None, second_server: ServerProcess, key_prefix: str
) -> Iterator[tuple[MemcachedBackend, list[int]]]:
    """A backend over the session's memcached and a second one, with its own key prefix."""
    if memcached_server is None:
        missing("memcached", "memcached is not installed")
    assert memcached_server is not None
    ports = [memcached_server.port, second_server.port]
    b = open_backend("memcached://" + ",".join(f"127.0.0.1:{p}" for p in ports), key_prefix=key_prefix)
    assert isinstance(b, MemcachedBackend)
    yield b, ports
    b.close()


def _server_of(b: MemcachedBackend, key: str) -> int:
    return b._order(key)[0].address[1]


def _index_sids(b: MemcachedBackend, user_id: str | int) -> list[str]:
    node, key = b._index_locate(user_id)
    value = node.client.get(key)
    return [] if value is None else list(json.loads(value))


def test_iter_records_lists_every_session_on_both_servers_and_nothing_else(
    two_servers: tuple[MemcachedBackend, list[int]], key_prefix: str
) -> None:
    b, ports = two_servers
    per_server = dict.fromkeys(ports, 0)
    expected: dict[str, str | None] = {}
    for i in range(1500):  # a dump of several hundred kilobytes: read in many pieces
        sid = new_session_id()
        user = f"user{i % 7}" if i % 3 == 0 else None
        assert b.create(sid, rec(user_id=user), ttl=60)
        expected[sid] = user
        per_server[_server_of(b, key_prefix + sid)] += 1
    assert all(n > 100 for n in per_server.values()), per_server
    held = next(iter(expected))
    token = new_lock_token()
    assert b.lock_and_load(held, token, 30)[0]  # its lock key must not be listed as a session
    other = open_backend(b.name, key_prefix=key_prefix + "other/%:")  # keys memcached must URL-encode
    assert isinstance(other, MemcachedBackend)
    try:
        other_sid = new_session_id()
        assert other.create(other_sid, rec(), ttl=60)
        got = dict(b.iter_records())
        assert set(got) == set(expected), "every session once, no lock, index or foreign key"
        assert all(got[sid].user_id == user for sid, user in expected.items())
        assert [sid for sid, _ in other.iter_records()] == [other_sid], "URL-encoded keys are decoded"
        b.delete(held)
        assert held not in dict(b.iter_records())
    finally:
        other.close()
        b.release(held, token, None)


def test_concurrent_listings_wait_for_the_busy_crawler(backend: MemcachedBackend) -> None:
    sids = {new_session_id() for _ in range(300)}
    for sid in sids:
        assert backend.create(sid, rec(), ttl=60)
    results: list[set[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def listing() -> None:
        barrier.wait()
        try:
            results.append({sid for sid, _ in backend.iter_records()})
        except BaseException as exc:  # noqa: B036 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=listing) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results == [sids] * 4


def test_metadump_falls_back_to_walking_the_lrus_on_old_servers(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    assert backend.create(sid, rec(), ttl=60)
    node = backend._locate(sid)[0]
    real = backend._read_dump
    modes: list[bytes] = []

    def read_dump(n: Any, mode: bytes, prefix: bytes) -> list[bytes] | None:
        modes.append(mode)
        if mode == b"hash":
            raise _DumpRefused("BADCLASS invalid class id")  # what memcached < 1.6.9 answers
        return real(n, mode, prefix)

    backend._read_dump = read_dump  # type: ignore[method-assign,assignment]
    try:
        listed = [s for s, _ in backend.iter_records()]
    finally:
        del backend._read_dump
        node.dump_all = False
    assert modes == [b"hash", b"all"]
    assert listed in ([sid], []), "metadump all is best effort"


def test_a_server_refusing_metadump_is_unavailable_with_the_reason(key_prefix: str) -> None:
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    user = ["-u", "root"] if os.geteuid() == 0 else []
    srv = ServerProcess(
        "memcached-nocrawler",
        lambda port: [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-o", "no_lru_crawler", *user],
        free_port(),
    )
    srv.start()
    b = open_backend(f"memcached://127.0.0.1:{srv.port}", key_prefix=key_prefix)
    assert isinstance(b, MemcachedBackend)
    try:
        assert b.create(new_session_id(), rec(), ttl=60)
        with pytest.raises(BackendUnavailable) as info:
            list(b.iter_records())
        assert "lru_crawler metadump failed (CLIENT_ERROR lru crawler disabled)" in str(info.value)
        assert "\n" not in str(info.value)
    finally:
        b.close()
        srv.stop()


def test_user_index_across_two_servers(two_servers: tuple[MemcachedBackend, list[int]], key_prefix: str) -> None:
    b, ports = two_servers
    users: list[str | int] = [f"user-{i}" for i in range(12)]
    users += [42, "é" * 200]  # int ids, and one too long for a key
    index_servers = {_server_of(b, b._index_locate(u)[1]) for u in users}
    assert index_servers == set(ports), "index keys spread over the servers too"
    owned: dict[str | int, set[str]] = {u: set() for u in users}
    session_servers: set[int] = set()
    for i in range(60):
        user = users[i % len(users)]
        sid = new_session_id()
        assert b.create(sid, rec(user_id=user), ttl=60)
        owned[user].add(sid)
        session_servers.add(_server_of(b, key_prefix + sid))
    assert session_servers == set(ports)
    long_key = b._index_locate("é" * 200)[1]
    assert len(long_key) <= 250 and "~" in long_key
    for user in users:
        found = b.user_sessions(user)
        assert {sid for sid, _ in found} == owned[user]
        assert all(r.user_id == user for _, r in found)
    assert {s for s, _ in b.user_sessions("42")} == owned[42], "like every backend: str(user_id)"
    assert b.user_sessions("nobody") == []

    # the index key never expires: sessions can outlive any TTL through touches
    node, key = b._index_locate("user-0")
    assert bytes(node.client.raw_command(b"mg " + key.encode() + b" t")) == b"HD t-1"

    # delete removes the index entry; the last one removes the index key
    for sid in list(owned["user-1"]):
        b.delete(sid)
    assert b.user_sessions("user-1") == []
    node, key = b._index_locate("user-1")
    assert node.client.get(key) is None

    # a session memcached dropped on its own (TTL, eviction) is skipped, and its entry cleaned
    dropped = next(iter(owned["user-2"]))
    dnode, data_key, _ = b._locate(dropped)
    assert dnode.client.delete(data_key, noreply=False)
    assert dropped in _index_sids(b, "user-2")
    assert {s for s, _ in b.user_sessions("user-2")} == owned["user-2"] - {dropped}
    assert dropped not in _index_sids(b, "user-2")

    # a save binding another user indexes it there; the old user's stale entry is dropped when read
    moved = next(iter(owned["user-3"]))
    token = new_lock_token()
    assert b.lock_and_load(moved, token, 30)[0]
    assert b.save(moved, rec(user_id="user-4"), token, ttl=60)
    assert moved in {s for s, _ in b.user_sessions("user-4")}
    assert moved not in {s for s, _ in b.user_sessions("user-3")}
    assert moved not in _index_sids(b, "user-3")


def test_a_failed_create_or_save_leaves_no_index_entry(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    assert backend.create(sid, rec(user_id="taken"), ttl=60)
    assert not backend.create(sid, rec(user_id="intruder"), ttl=60)
    assert _index_sids(backend, "intruder") == []
    assert _index_sids(backend, "taken") == [sid]
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30)[0]
    backend.delete(sid)  # ended while the request held the lock
    assert not backend.save(sid, rec(user_id="taken"), token, ttl=60)
    assert backend.load(sid) is None
    assert _index_sids(backend, "taken") == [], "the failed save did not re-index the ended session"
    assert backend.lock_and_load(sid, new_lock_token(), 30)[0], "the failed save released the lock"


def test_the_index_of_a_user_with_many_ended_sessions_is_pruned(backend: MemcachedBackend) -> None:
    node, key = backend._index_locate("busy")
    dead = [new_session_id() for _ in range(INDEX_PRUNE_AT)]
    node.client.set(key, json.dumps(dead).encode(), noreply=False)  # sessions memcached dropped long ago
    sid = new_session_id()
    assert backend.create(sid, rec(user_id="busy"), ttl=60)
    assert _index_sids(backend, "busy") == [sid]


def test_gc_removes_only_expired_sessions_on_both_servers(
    two_servers: tuple[MemcachedBackend, list[int]], key_prefix: str
) -> None:
    b, ports = two_servers
    now = time.time()
    expired: set[str] = set()
    alive: set[str] = set()
    for i in range(40):
        sid = new_session_id()
        past = i % 2 == 0
        user = "gc-user" if i % 4 < 2 else None
        expires = now - 10 if past else (None if i % 3 == 0 else now + 3600)
        assert b.create(sid, rec(user_id=user, expires=expires), ttl=60)
        (expired if past else alive).add(sid)
    assert {_server_of(b, key_prefix + s) for s in expired} == set(ports)
    ghost = new_session_id()  # in the index, but memcached dropped the session
    assert b.create(ghost, rec(user_id="gc-user"), ttl=60)
    gnode, gkey, _ = b._locate(ghost)
    gnode.client.delete(gkey, noreply=False)

    assert b.gc(now) == len(expired)
    assert {s for s, _ in b.iter_records()} == alive
    assert all(b.load(s) is None for s in expired)
    index = set(_index_sids(b, "gc-user"))
    assert index == {s for s, r in b.iter_records() if r.user_id == "gc-user"}, "pruned of expired and dropped ones"
    assert ghost not in index
    assert b.gc(now) == 0


def test_gc_keeps_a_session_refreshed_while_it_ran(backend: MemcachedBackend) -> None:
    now = time.time()
    sid = new_session_id()
    assert backend.create(sid, rec(expires=now - 5), ttl=60)
    node = backend._locate(sid)[0]
    real = node.client.gets_many

    def gets_many(keys: Any, *args: Any, **kw: Any) -> Any:
        found = real(keys, *args, **kw)
        # a request refreshes the session between gc's read and its delete
        backend.touch(sid, Touch(last_access=now, last_ip=None, expires=now + 3600, ttl=60))
        return found

    node.client.gets_many = gets_many
    try:
        assert backend.gc(now) == 0
    finally:
        del node.client.gets_many
    got = backend.load(sid)
    assert got is not None and got.expires == now + 3600


def test_stats_sums_the_servers(two_servers: tuple[MemcachedBackend, list[int]]) -> None:
    b, _ = two_servers
    stats = b.stats()
    assert set(stats) == {"evictions", "curr_items", "bytes", "limit_maxbytes", "servers", "servers_down", "replicas"}
    assert (stats["servers"], stats["servers_down"], stats["replicas"]) == (2, 0, 1)
    assert stats["limit_maxbytes"] == 2 * 64 * 1024 * 1024
    per_server = b.server_stats().values()
    assert stats["curr_items"] >= 0 and stats["bytes"] >= 0
    assert stats["evictions"] == sum(f["evictions"] for f in per_server)


def test_stats_reports_evictions_and_warns(key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    user = ["-u", "root"] if os.geteuid() == 0 else []
    srv = ServerProcess(  # 1 MB of memory (-I must then be at most half of it)
        "memcached-tiny",
        lambda port: [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "1", "-I", "512k", *user],
        free_port(),
    )
    srv.start()
    b = open_backend(f"memcached://127.0.0.1:{srv.port}", key_prefix=key_prefix)
    assert isinstance(b, MemcachedBackend)
    try:
        with caplog.at_level(logging.WARNING, logger="sessionmw"):
            calm = b.stats()
        assert calm["evictions"] == 0 and calm["limit_maxbytes"] == 1024 * 1024
        assert not caplog.records
        for _ in range(60):
            assert b.create(new_session_id(), rec(b"x" * (100 * 1024)), ttl=60)
        with caplog.at_level(logging.WARNING, logger="sessionmw"):
            stats = b.stats()
        assert stats["evictions"] > 0
        assert stats["bytes"] <= stats["limit_maxbytes"]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "sessionmw"]
        assert warnings and "evicted sessions are lost sessions" in warnings[0].getMessage()
    finally:
        b.close()
        srv.stop()


def test_socket_timeout_is_the_same_option_as_on_redis() -> None:
    from sessionmw.backends import open_backend

    backend = open_backend("memcached://127.0.0.1:11211?socket_timeout=0.5&connect_timeout=1", key_prefix="t:")
    try:
        assert backend.timeout == 0.5  # type: ignore[attr-defined]
    finally:
        backend.close()


def test_a_holder_past_its_deadline_is_fenced_when_memcached_dropped_its_lock_and_another_took_it(
    backend: MemcachedBackend,
) -> None:
    sid = new_session_id()
    backend.create(sid, rec(b'{"v":0}'), ttl=60)
    node, _, lock_key = backend._locate(sid)
    dead = new_lock_token()
    assert backend.lock_and_load(sid, dead, 0.2)[0]
    time.sleep(0.3)
    node.client.delete(lock_key)  # memcached's own expiry of the lock item (it ticks in whole seconds)
    t2 = new_lock_token()
    assert backend.lock_and_load(sid, t2, 30)[0]  # a plain add: no takeover, the copy is unchanged
    assert not backend.save(sid, rec(b'{"v":"dead"}'), dead, ttl=60), "the expired holder must not write"
    assert backend.save(sid, rec(b'{"v":2}'), t2, ttl=60)
    got = backend.load(sid)
    assert got is not None and got.data == b'{"v":2}'
