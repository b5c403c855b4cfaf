"""The memcached backend beyond the conformance suite: many servers, item size, expiry, failures, races."""

from __future__ import annotations

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
    MAX_RELATIVE_EXPTIME,
    RELEASED_MARKER,
    MemcachedBackend,
    exptime,
)
from sessionmw.cookies import new_session_id
from sessionmw.errors import BackendUnavailable, ConfigError, RecordTooLarge
from sessionmw.locking import new_lock_token
from tests.conftest import ServerProcess, free_port, missing

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
    binary = shutil.which("memcached") or ("/usr/bin/memcached" if os.path.exists("/usr/bin/memcached") else None)
    if memcached_server is None or binary is None:
        missing("memcached", "memcached is not installed (apt-get install memcached)")
    assert binary is not None
    user = ["-u", "root"] if os.geteuid() == 0 else []
    srv = ServerProcess(
        "memcached-2",
        lambda port: [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", *user],
        free_port(),
    )
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
    assert two.name == "memcached://127.0.0.1:11211,127.0.0.1:11212"
    two.close()


@pytest.mark.parametrize(
    ("url", "option", "words"),
    [
        pytest.param(
            "memcached://127.0.0.1:11211?replicas=2", "replicas", "replicas>1 is not supported yet", id="replicas"
        ),
        pytest.param("memcached://127.0.0.1?timeout=0", "timeout", "timeout", id="zero-timeout"),
        pytest.param("memcached://127.0.0.1?socket_timeout=1", "socket_timeout", "did you mean", id="unknown"),
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


def test_release_without_meta_delete_leaves_an_expired_marker(backend: MemcachedBackend) -> None:
    """The fallback for memcached < 1.6: the lock becomes an expired marker, taken over at once."""
    sid = new_session_id()
    node, _, lock_key = backend._locate(sid)
    backend._learn(node)
    node.meta_delete = False
    backend.create(sid, rec(), ttl=60)
    t1 = new_lock_token()
    assert backend.lock_and_load(sid, t1, 30)[0]
    assert backend.save(sid, rec(b'{"v":1}'), t1, ttl=60)
    assert node.client.get(lock_key) == RELEASED_MARKER
    assert not backend.release(sid, t1, None)
    t2 = new_lock_token()
    locked, got = backend.lock_and_load(sid, t2, 30)
    assert locked and got is not None and got.data == b'{"v":1}'
    assert backend.lock_and_load(sid, new_lock_token(), 30)[0] is False
    assert backend.release(sid, t2, None)


def test_save_close_to_the_deadline_pushes_it_out_first(backend: MemcachedBackend) -> None:
    sid = new_session_id()
    node, _, lock_key = backend._locate(sid)
    backend.create(sid, rec(), ttl=60)
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 0.5)[0]  # within the write margin (timeout + 0.5 s)
    calls: list[tuple[Any, ...]] = []
    real_cas = node.client.cas

    def cas(*args: Any, **kw: Any) -> Any:
        calls.append(args)
        return real_cas(*args, **kw)

    node.client.cas = cas
    try:
        assert backend.save(sid, rec(b'{"v":1}'), token, ttl=60)
    finally:
        del node.client.cas
    assert calls and calls[0][0] == lock_key, "the deadline was pushed out with cas before the write"
    got = backend.load(sid)
    assert got is not None and got.data == b'{"v":1}'
    assert backend.lock_and_load(sid, new_lock_token(), 30)[0]


def test_touch_does_not_undo_a_concurrent_save(backend: MemcachedBackend, memcached_url: str, key_prefix: str) -> None:
    sid = new_session_id()
    backend.create(sid, rec(b'{"v":0}'), ttl=60)
    writer = open_backend(memcached_url, key_prefix=key_prefix)
    node, data_key, _ = backend._locate(sid)
    real_gets = node.client.gets
    interfered: list[bool] = []

    def gets(key: Any, *args: Any, **kw: Any) -> Any:
        result = real_gets(key, *args, **kw)
        if key == data_key and not interfered:
            # between touch's gets and its cas, another request saves new data
            interfered.append(True)
            token = new_lock_token()
            assert writer.lock_and_load(sid, token, 30)[0]
            assert writer.save(sid, rec(b'{"v":"saved"}'), token, ttl=60)
        return result

    node.client.gets = gets
    later = time.time() + 100
    try:
        backend.touch(sid, Touch(last_access=later, last_ip="10.1.2.3", expires=None, ttl=60))
    finally:
        del node.client.gets
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
