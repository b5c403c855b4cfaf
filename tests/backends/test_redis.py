"""Redis-specific tests: URL forms and options, key layout, round trips, outages, the eviction warning,
and the administration side (per-user index, gc, stats).

The shared behaviour of every backend is in test_backend_conformance.py; this file checks what only
Redis has. Tests marked ``service("redis")`` use the private redis-server of conftest.py.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.connection import UnixDomainSocketConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.sentinel import SentinelConnectionPool

from sessionmw import SessionStore
from sessionmw.backends import Record, Touch, open_async_backend, open_backend
from sessionmw.backends.base import encode_record
from sessionmw.backends.redis import AsyncRedisBackend, RedisBackend, ops, scripts, wire
from sessionmw.backends.redis.client import RedisBase
from sessionmw.backends.redis.config import client_config
from sessionmw.backends.redis.figures import figures
from sessionmw.backends.redis.keys import Keys
from sessionmw.backends.redis.records import decode, encode, head_user, touch_args
from sessionmw.core.cookies import new_session_id
from sessionmw.core.errors import BackendUnavailable, ConfigError
from sessionmw.core.locking import new_lock_token

from ..conftest import ServerProcess, free_port

redis_service = pytest.mark.service("redis")


def rec(data: bytes = b'{"a":1}', **kw: Any) -> Record:
    now = time.time()
    return Record(data=data, **{"created": now, "last_access": now, "first_ip": "127.0.0.1", **kw})


def sync_backend(url: str, key_prefix: str = "p:") -> RedisBackend:
    b = open_backend(url, key_prefix=key_prefix)
    assert isinstance(b, RedisBackend)
    return b


@pytest.fixture
def backend(redis_url: str, key_prefix: str) -> Iterator[RedisBackend]:
    b = sync_backend(redis_url, key_prefix)
    yield b
    b.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test server, for looking behind the backend's back."""
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


@pytest.fixture
def set_policy(raw: redis.Redis) -> Iterator[Callable[[str], Any]]:
    """Set the test server's maxmemory-policy; the policy it had comes back after the test."""
    old: Any = raw.config_get("maxmemory-policy")["maxmemory-policy"]
    yield lambda policy: raw.config_set("maxmemory-policy", policy)
    raw.config_set("maxmemory-policy", old)


# -- URLs and options (no server) -----------------------------------------------------------------


def test_password_is_hidden_and_db_comes_from_the_path() -> None:
    b = sync_backend("redis://:hunter2@127.0.0.1:6390/3")
    assert "hunter2" not in b.name and b.name == "redis://:***@127.0.0.1:6390/3"
    kw = b.config.kwargs
    assert (kw["host"], kw["port"], kw["db"], kw["password"]) == ("127.0.0.1", 6390, 3, "hunter2")
    assert kw["socket_timeout"] == 2.0 and kw["socket_connect_timeout"] == 2.0
    assert b.config.kind == "standalone" and b.config.retries == 0
    b.close()


def test_defaults_and_options() -> None:
    b = sync_backend("redis://cache?connect_timeout=0.5&socket_timeout=1.5&max_connections=7&db=2")
    kw = b.config.kwargs
    assert (kw["host"], kw["port"], kw["db"]) == ("cache", 6379, 2)
    assert (kw["socket_connect_timeout"], kw["socket_timeout"], kw["max_connections"]) == (0.5, 1.5, 7)
    client = b.client()
    assert isinstance(client, redis.Redis)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 1.5
    assert client.connection_pool.connection_kwargs["retry"].get_retries() == 0
    b.close()


def test_rediss_turns_tls_on() -> None:
    b = sync_backend("rediss://u:pw@secure:6380/1?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem")
    kw = b.config.kwargs
    assert kw["ssl"] is True and kw["ssl_cert_reqs"] == "none" and kw["ssl_ca_certs"] == "/etc/ca.pem"
    assert kw["username"] == "u" and b.name == "rediss://u:***@secure:6380/1"
    b.close()


@pytest.mark.parametrize("scheme", ["unix", "redis+unix"])
def test_unix_socket(scheme: str) -> None:
    b = sync_backend(f"{scheme}:///run/redis/redis.sock?db=5&socket_timeout=3")
    assert b.config.kwargs["unix_socket_path"] == "/run/redis/redis.sock"
    assert b.config.kwargs["db"] == 5
    client = b.client()
    assert isinstance(client, redis.Redis)
    assert client.connection_pool.connection_class is UnixDomainSocketConnection
    assert b.name == f"{scheme}:///run/redis/redis.sock"
    b.close()


def test_sentinel_url_builds_master_for_without_a_server() -> None:
    url = "redis+sentinel://:pw@s1:26379,s2/mymaster/4?sentinel_password=spw&socket_timeout=1.5"
    b = sync_backend(url)
    assert b.name == "redis+sentinel://:***@s1:26379,s2/mymaster/4"
    client = b.client()  # builds the clients; nothing is contacted yet
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 4
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["socket_timeout"] == 1.5
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("s1", 26379), ("s2", 26379)]
    assert all(s["password"] == "spw" and s["socket_timeout"] == 1.5 for s in sentinels)
    b.close()


def test_sentinel_async_twin_builds_the_same() -> None:
    async def scenario() -> None:
        ab = open_async_backend("redis+sentinel://s1:26379/mymaster", key_prefix="p:")
        assert isinstance(ab, AsyncRedisBackend)
        client = ab.client()
        assert isinstance(client, redis.asyncio.Redis)
        pool: Any = client.connection_pool
        assert pool.service_name == "mymaster" and pool.connection_kwargs["db"] == 0
        await ab.aclose()

    asyncio.run(scenario())


def test_sentinel_url_needs_a_service_name() -> None:
    with pytest.raises(ConfigError, match="service name"):
        open_backend("redis+sentinel://s1:26379", key_prefix="p:")


def test_cluster_url_is_parsed_without_contacting_a_server() -> None:
    b = sync_backend("redis+cluster://:pw@h1:7000,h2:7001,h3?max_connections=5")
    assert b.config.kind == "cluster"
    assert b.config.nodes == [("h1", 7000), ("h2", 7001), ("h3", 6379)]
    assert b.config.kwargs["password"] == "pw" and b.config.kwargs["max_connections"] == 5
    assert "db" not in b.config.kwargs
    # The backend waits out a failover itself (failover_wait, 5 s by default), so redis-py retries nothing.
    assert b.config.failover_wait == 5.0 and b.config.retries == 0
    b.close()

    async def scenario() -> None:
        ab = open_async_backend("redis+cluster://h1:7000,h2:7001", key_prefix="p:")
        assert isinstance(ab, AsyncRedisBackend)
        client: Any = ab.client()  # redis.asyncio's cluster connects on its first command only
        assert isinstance(client, redis.asyncio.RedisCluster)
        assert sorted(client.nodes_manager.startup_nodes) == ["h1:7000", "h2:7001"]
        await ab.aclose()

    asyncio.run(scenario())


def test_cluster_rejects_a_database_and_a_braced_prefix() -> None:
    with pytest.raises(ConfigError, match="database 0 only"):
        open_backend("redis+cluster://h1:7000/2", key_prefix="p:")
    with pytest.raises(ConfigError) as info:
        open_backend("redis+cluster://h1:7000", key_prefix="app{x}:")
    assert info.value.option == "key_prefix"


def test_unknown_option_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError) as info:
        open_backend("redis://127.0.0.1:6379/0?socket_timout=1", key_prefix="p:")
    assert info.value.option == "socket_timout"
    assert "socket_timout" in str(info.value) and "did you mean 'socket_timeout'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        open_backend("redis://127.0.0.1:6379/0?sentinel_password=x", key_prefix="p:")
    assert info.value.option == "sentinel_password"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://h/0?socket_timeout=0", "socket_timeout"),
        ("redis://h/0?max_connections=many", "max_connections"),
        ("redis://h/x", "not a number"),
        ("redis://h/1?db=1", "twice"),
        ("redis://h1,h2/0", "several hosts"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "needs TLS"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("unix://", "socket's path"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_backend(url, key_prefix="p:")


def test_server_down_at_start_is_not_an_error_until_used() -> None:
    port = free_port()
    b = sync_backend(f"redis://:hunter2@127.0.0.1:{port}/0")
    with pytest.raises(BackendUnavailable) as info:
        b.load("x")
    message = str(info.value)
    assert message.startswith(f"redis backend redis://:***@127.0.0.1:{port}/0 is unavailable: ")
    assert "Connection refused" in message and "hunter2" not in message and "\n" not in message
    assert info.value.backend == b.name
    b.close()


def test_sync_cluster_unreachable_is_backend_unavailable() -> None:
    b = sync_backend(f"redis+cluster://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailable, match="redis backend redis\\+cluster://127.0.0.1"):
        b.load("x")
    b.close()


# -- pure pieces ---------------------------------------------------------------------------------


def test_data_and_lock_share_a_cluster_slot() -> None:
    for prefix in ("sessmw:", "", "a:b:", "x*y["):
        keys = Keys(prefix)
        for sid in (new_session_id(), "abc", "a}b"):
            assert key_slot(keys.data(sid).encode()) == key_slot(keys.lock(sid).encode())
    keys = Keys("sessmw:")
    assert keys.data("abc") == "sessmw:{abc}" and keys.lock("abc") == "sessmw:{abc}:lock"
    assert keys.sid_of(b"sessmw:{abc}") == "abc"


def test_ops_name_the_keys_of_keys() -> None:
    keys, sid, t = Keys("p:"), "abc", Touch(1.0, None, None, None)
    two = (keys.data(sid).encode(), keys.lock(sid).encode())
    four = (*two, keys.waiters(sid).encode(), keys.wakeups(sid).encode())
    for op in (ops.save(keys, sid, rec(), "t", 1), ops.release(keys, sid, "t", t)):
        assert op.command[0] == "EVALSHA" and op.script is not None
        assert op.command[1] == hashlib.sha1(op.script.encode()).hexdigest().encode()
        assert op.command[2:7] == (b"4", *four), "a release wakes a waiter: the keys of waiting go along"
    lock, get = ops.lock_and_load(keys, sid, "t k", 1.5).commands
    assert lock == ("SET", two[1], b"t k", b"NX", b"PX", 1500) and get == ("GET", two[0])
    assert ops.save(keys, sid, rec(), "t", 2).command[7:10] == (b"2000", b"t", b"null")
    assert ops.save(keys, sid, rec(), "t", None).command[7] == b"-"
    assert ops.save(keys, sid, rec(user_id='a,"b'), "t", None).command[9] == b'"a,\\"b"', "the user id as JSON text"
    assert ops.touch(keys, sid, t).command[2:4] == (b"1", keys.data(sid))
    assert ops.extend(keys, sid, "t", 1).command[2:4] == (b"1", keys.lock(sid))
    assert ops.load(keys, sid).command == ("GET", keys.data(sid))
    assert ops.delete(keys, sid).command[2:] == (b"1", keys.data(sid))
    assert ops.gc_one(keys, sid, 5.0).command[2:] == (b"1", keys.data(sid), "5.0")
    assert ops.index_add(keys, sid, 7).command == ("SADD", "p:user:{7}", sid)
    assert ops.create(keys, sid, rec(), 2).command[::3] == ("SET", "NX")
    assert ops.create(keys, sid, rec(), None).command[-1] == "NX"


def test_milliseconds_round_up_to_at_least_one() -> None:
    assert wire.ms(0) == 1 and wire.ms(0.0001) == 1 and wire.ms(1.0001) == 1001 and wire.ms(30) == 30000


def test_encode_is_encode_record_and_decode_reads_it() -> None:
    for r in (
        rec(
            b"\x00\xffbin",
            user_id="42",
            last_ip="::1",
            user_agent="ua \u00e9 \u2603",
            idle_override=True,
            idle_timeout=9.5,
        ),
        rec(b"", user_id=7, expires=time.time() + 60),
        rec(b"\n\n", user_id='a"l,i]ce', first_ip=None),
    ):
        assert encode(r) == encode_record(r)
        assert decode(encode(r)) == r
    assert decode(None) is None
    assert decode(b"not a record") is None and decode(b"[1]\n") is None


def test_touch_args_carry_expiry_and_ttl_in_one_argument() -> None:
    later = 1_700_000_000.125
    assert touch_args(Touch(later, "10.0.0.1", later + 60, 30)) == [f"{later!r} {later + 60!r} 30000", "10.0.0.1"]
    assert touch_args(Touch(later, None, None, None)) == [f"{later!r} null -"]


def test_policy_check_ignores_a_disabled_config_and_retries_after_a_connection_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base: RedisBase[Any] = RedisBase("redis://h/0", Keys("p:"), lambda: (None, []))
    base.policy_result(None, RedisConnectionError("down"))
    assert base.policy_pending
    base.policy_result(None, ResponseError("unknown command 'CONFIG'"))
    assert not base.policy_pending
    assert not caplog.records


# -- against the server --------------------------------------------------------------------------


@redis_service
def test_record_is_one_string_and_touch_rewrites_only_its_metadata(backend: RedisBackend, raw: redis.Redis) -> None:
    sid = new_session_id()
    keys = backend._base.keys
    key, lkey = keys.data(sid), keys.lock(sid)
    first = rec(b'{"v":1}\n[x,]', user_id=7, last_ip="10.0.0.1", user_agent='Moz, "q" ]\\ \u00e9', idle_timeout=9.5)
    assert backend.create(sid, first, ttl=1.5)
    assert raw.type(key) == b"string" and raw.get(key) == encode_record(first)
    assert 1000 < raw.pttl(key) <= 1500
    later = time.time() + 5.123456789
    backend.touch(sid, Touch(last_access=later, last_ip="10.0.0.2", expires=later + 9, ttl=30))
    touched = first._replace(last_access=later, last_ip="10.0.0.2", expires=later + 9)
    assert raw.get(key) == encode_record(touched), "every other element keeps its exact text"
    assert 29000 < raw.pttl(key) <= 30000, "a touch refreshes the TTL"
    assert raw.keys(f"{key}*") == [key.encode()], "no second key"
    backend.touch(sid, Touch(last_access=later + 1, last_ip=None, expires=None, ttl=None))
    assert raw.pttl(key) == -1, "ttl=None persists the record"
    got = backend.load(sid)
    assert got == touched._replace(last_access=later + 1, expires=None), "an unknown IP keeps the one before"
    assert got is not None and type(got.created) is float and type(got.last_access) is float
    backend.touch(sid, Touch(last_access=later, last_ip="10.9.9.9", expires=later, ttl=20))
    assert backend.load(sid) == got, "an older touch changes no metadata"
    assert 19000 < raw.pttl(key) <= 20000, "but refreshes the TTL, as every touch does"
    backend.touch(sid, Touch(last_access=later + 2, last_ip='"\u00e9\\/', expires=None, ttl=None))
    assert backend.load(sid) == got._replace(last_access=later + 2, last_ip='"\u00e9\\/')
    token = new_lock_token()
    locked, got2 = backend.lock_and_load(sid, token, 1.0)
    assert locked and got2 == backend.load(sid)
    assert 0 < raw.pttl(lkey) <= 1000
    second = rec(b'{"v":2}', user_id=None)
    assert backend.save(sid, second, token, ttl=60)
    assert raw.get(key) == encode_record(second) and 59000 < raw.pttl(key) <= 60000
    assert not raw.exists(lkey)
    assert backend.load(sid) == second
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 1.0)[0]
    assert backend.save(sid, second, token, ttl=None)
    assert raw.pttl(key) == -1, "ttl=None saves without a TTL"
    backend.delete(sid)
    assert not raw.exists(key)


@redis_service
def test_touch_leaves_a_foreign_value_alone(backend: RedisBackend, raw: redis.Redis) -> None:
    sid = new_session_id()
    key = backend._base.keys.data(sid)
    for foreign in (b"not a record", b"[1,2]\n", b'["unterminated\n'):
        raw.set(key, foreign)
        backend.touch(sid, Touch(time.time(), "::1", None, 60))
        assert raw.get(key) == foreign
        assert backend.load(sid) is None


@redis_service
def test_touch_and_release_never_create_a_session(backend: RedisBackend, raw: redis.Redis) -> None:
    sid = new_session_id()
    keys = backend._base.keys
    backend.touch(sid, Touch(time.time(), "::1", None, 60))
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30) == (True, None)
    assert not backend.release(sid, new_lock_token(), Touch(time.time(), "::1", None, 60))
    assert backend.release(sid, token, Touch(time.time(), "::1", None, 60))
    assert not raw.exists(keys.data(sid), keys.lock(sid))


@redis_service
def test_a_flushed_script_cache_is_reloaded(backend: RedisBackend, raw: redis.Redis) -> None:
    sid = new_session_id()
    assert backend.create(sid, rec(), 60)
    raw.script_flush()
    token = new_lock_token()
    locked, got = backend.lock_and_load(sid, token, 30)
    assert locked and got is not None
    raw.script_flush()
    assert backend.save(sid, rec(b"{}"), token, 60)
    got = backend.load(sid)
    assert got is not None and got.data == b"{}"
    backend.delete(sid)


@redis_service
def test_delete_leaves_the_lock_to_its_holder(backend: RedisBackend) -> None:
    sid = new_session_id()
    backend.create(sid, rec(), ttl=60)
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30)[0]
    backend.delete(sid)
    assert not backend.lock_and_load(sid, new_lock_token(), 30)[0]
    assert backend.release(sid, token, Touch(time.time(), None, None, 60))
    assert backend.load(sid) is None, "a touch on release must not resurrect a deleted session"


@redis_service
def test_iter_records_lists_live_sessions_of_its_prefix_only(redis_url: str, key_prefix: str) -> None:
    b = sync_backend(redis_url, key_prefix + "x*[")
    other = sync_backend(redis_url, key_prefix + "x")
    try:
        sids = {new_session_id() for _ in range(3)}
        for sid in sids:
            assert b.create(sid, rec(), ttl=60)
        other.create(new_session_id(), rec(), ttl=60)
        locked = next(iter(sids))
        token = new_lock_token()
        assert b.lock_and_load(locked, token, 30)[0]
        later = time.time() + 10
        b.touch(locked, Touch(later, "10.1.1.1", None, 60))
        found = dict(b.iter_records())
        assert set(found) == sids, "touch and lock keys are not sessions"
        assert all(r.data == b'{"a":1}' for r in found.values())
        assert found[locked].last_access == later and found[locked].last_ip == "10.1.1.1"
        b.release(locked, token, None)
    finally:
        b.close()
        other.close()


class RoundTrips:
    """Counts writes by redis-py connections, sync and async: one per round trip (a pipeline is one write)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        sync_send = redis.connection.AbstractConnection.send_packed_command
        async_send = redis.asyncio.connection.AbstractConnection.send_packed_command

        def send(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return sync_send(conn, *args, **kwargs)

        async def asend(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await async_send(conn, *args, **kwargs)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
        monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", asend)


def commandstats(raw: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in raw.info("commandstats").items()}


def warm_up(b: RedisBackend) -> None:
    """Load every script once (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA) and run the policy check."""
    sid = new_session_id()
    t = new_lock_token()
    b.create(sid, rec(), 60)
    b.lock_and_load(sid, t, 5)
    b.extend(sid, t, 5)
    b.save(sid, rec(), t, 60)
    b.lock_and_load(sid, t, 5)
    b.release(sid, t, None)
    b.touch(sid, Touch(time.time(), None, None, 60))
    b.delete(sid)
    b.load(sid)
    b.delete(sid)


@redis_service
def test_every_primitive_is_one_round_trip(
    backend: RedisBackend, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm_up(backend)
    trips = RoundTrips(monkeypatch)
    sid = new_session_id()
    token = new_lock_token()
    now = time.time()
    calls: list[tuple[str, Callable[[], object], str]] = [
        ("create", lambda: backend.create(sid, rec(), 60), "set"),
        ("lock_and_load", lambda: backend.lock_and_load(sid, token, 30), "set+get"),
        ("extend", lambda: backend.extend(sid, token, 30), "evalsha"),
        ("save", lambda: backend.save(sid, rec(b"{}"), token, 60), "evalsha"),
        ("lock_and_load again", lambda: backend.lock_and_load(sid, token, 30), "set+get"),
        ("release with touch", lambda: backend.release(sid, token, Touch(now, "::1", None, 60)), "evalsha"),
        ("touch", lambda: backend.touch(sid, Touch(now, None, None, 60)), "evalsha"),
        ("load", lambda: backend.load(sid), "get"),
        ("delete", lambda: backend.delete(sid), "evalsha"),
    ]
    for what, call, command in calls:
        before_stats = commandstats(raw)
        before = trips.count
        call()
        assert trips.count - before == 1, f"{what} took {trips.count - before} round trips"
        after_stats = commandstats(raw)
        delta = {k: n - before_stats.get(k, 0) for k, n in after_stats.items() if n != before_stats.get(k, 0)}
        delta.pop("info")
        if command == "evalsha":  # the script's own commands count too
            assert delta.get(command) == 1, f"{what}: {delta}"
            assert "eval" not in delta and "script|load" not in delta, f"{what} fell back to EVAL: {delta}"
        else:
            assert delta == dict.fromkeys(command.split("+"), 1), f"{what}: {delta}"


@redis_service
def test_the_locked_paths_execute_their_budget_of_server_commands(backend: RedisBackend, raw: redis.Redis) -> None:
    """What the server executes for an uncontended locked request, scripts' own commands included.

    The budget of docs/performance.md ("Redis commands per request"): the lock-and-load is SET NX PX
    and GET pipelined (cheaper on the server than one script running both); a save is one script
    running GET (the lock), SET XX GET, DEL (the lock) and GET (the waiters' count: nobody waits, so
    no wake-up); a release of an unchanged session the same without the SET.
    """
    warm_up(backend)
    sid = new_session_id()
    assert backend.create(sid, rec(), 60)

    def executed(call: Callable[[], object]) -> dict[str, int]:
        before = commandstats(raw)
        call()
        after = commandstats(raw)
        delta = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
        delta.pop("info", None)
        return delta

    token = new_lock_token()
    assert executed(lambda: backend.lock_and_load(sid, token, 30)) == {"set": 1, "get": 1}
    saved = executed(lambda: backend.save(sid, rec(b'{"n":1}'), token, 60))
    assert saved == {"evalsha": 1, "get": 2, "set": 1, "del": 1}, saved
    token = new_lock_token()
    assert executed(lambda: backend.lock_and_load(sid, token, 30)) == {"set": 1, "get": 1}
    released = executed(lambda: backend.release(sid, token, None))
    assert released == {"evalsha": 1, "get": 2, "del": 1}, released
    assert executed(lambda: backend.load(sid)) == {"get": 1}
    loaded = backend.load(sid)
    assert loaded is not None and loaded.data == b'{"n":1}', "the save wrote, the release left it"


@redis_service
def test_a_big_save_reads_only_the_head_of_the_record_it_overwrites(backend: RedisBackend, raw: redis.Redis) -> None:
    """Over BIG_RECORD bytes a save reads the old record's metadata line by GETRANGE, never all of it;
    the index still follows a change of user (also when the line is longer than HEAD_RANGE), and a
    deleted session is still not resurrected."""
    keys = backend._base.keys
    warm_up(backend)
    big = b'{"blob":"' + b"x" * (scripts.BIG_RECORD + 100) + b'"}'
    sid = new_session_id()
    assert backend.create(sid, rec(big, user_id="carol"), 60)

    def saved(record: Record) -> tuple[bool, dict[str, int]]:
        token = new_lock_token()
        assert backend.lock_and_load(sid, token, 30)[0]
        before = commandstats(raw)
        result = backend.save(sid, record, token, 60)
        after = commandstats(raw)
        return result, {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0) and k != "info"}

    ok, executed = saved(rec(big + b" ", user_id="carol"))
    assert ok and executed == {"evalsha": 1, "get": 2, "getrange": 1, "set": 1, "del": 1}, executed
    loaded = backend.load(sid)
    assert loaded is not None and loaded.data == big + b" " and 0 < (raw.pttl(keys.data(sid)) or 0) <= 60_000
    ok, executed = saved(rec(big, user_id="dan"))
    assert ok and executed["srem"] == executed["sadd"] == 1, executed
    assert not raw.exists(keys.user("carol")) and members(raw, keys.user("dan")) == {sid}
    long_user = "u" * (scripts.HEAD_RANGE + 10)  # a metadata line longer than the range read: read whole
    assert saved(rec(big, user_id=long_user))[0]
    ok, executed = saved(rec(big, user_id="erin"))
    assert ok and executed["get"] == 3, f"the whole old record was read for its long line: {executed}"
    assert not raw.exists(keys.user(long_user)) and members(raw, keys.user("erin")) == {sid}
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30)[0]
    backend.delete(sid)
    assert not backend.save(sid, rec(big, user_id="erin"), token, 60), "a deleted session is not resurrected"
    assert not raw.exists(keys.data(sid)) and not raw.exists(keys.lock(sid))


@redis_service
def test_a_big_records_touch_rewrites_its_metadata_line_in_place(backend: RedisBackend, raw: redis.Redis) -> None:
    """A touch of a record longer than HEAD_RANGE reads its head only, and rewrites it in place
    (SETRANGE, then the TTL) when the new line is as long as the old; else whole, as before."""
    keys = backend._base.keys
    warm_up(backend)
    big = b'{"blob":"' + b"x" * 16384 + b'"}'
    sid = new_session_id()
    t0 = 1_700_000_000.25
    assert backend.create(sid, rec(big, created=t0, last_access=t0, last_ip="10.0.0.1", expires=t0 + 600), 60)

    def executed(call: Callable[[], object]) -> dict[str, int]:
        before = commandstats(raw)
        call()
        after = commandstats(raw)
        return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0) and k != "info"}

    def loaded() -> Record:
        got = backend.load(sid)
        assert got is not None and got.data == big, "the data is never touched"
        return got

    done = executed(lambda: backend.touch(sid, Touch(t0 + 1, "10.0.0.2", t0 + 601, 120)))
    assert done == {"evalsha": 1, "getrange": 1, "setrange": 1, "pexpire": 1}, done
    got = loaded()
    assert (got.last_access, got.last_ip, got.expires) == (t0 + 1, "10.0.0.2", t0 + 601)
    assert 60_000 < raw.pttl(keys.data(sid)) <= 120_000
    done = executed(lambda: backend.touch(sid, Touch(t0 + 2, "10.0.0.100", t0 + 602, None)))
    assert done == {"evalsha": 1, "getrange": 1, "get": 1, "set": 1}, f"a longer line: written whole: {done}"
    got = loaded()
    assert (got.last_access, got.last_ip, got.expires) == (t0 + 2, "10.0.0.100", t0 + 602)
    assert raw.pttl(keys.data(sid)) == -1, "no TTL: persisted"
    done = executed(lambda: backend.touch(sid, Touch(t0 + 1.5, "10.0.0.9", t0 + 1, 30)))
    assert done == {"evalsha": 1, "getrange": 1, "pexpire": 1}, f"an older touch only refreshes the TTL: {done}"
    assert loaded().last_access == t0 + 2 and 0 < raw.pttl(keys.data(sid)) <= 30_000
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30)[0]
    assert backend.release(sid, token, Touch(t0 + 3, None, t0 + 603, 60))
    got = loaded()
    assert (got.last_access, got.last_ip, got.expires) == (t0 + 3, "10.0.0.100", t0 + 603)
    assert not raw.exists(keys.lock(sid))
    backend.delete(sid)
    backend.touch(sid, Touch(t0 + 4, None, None, 60))
    assert not raw.exists(keys.data(sid)), "a touch never creates a session"


@redis_service
def test_async_primitives_are_one_round_trip_too(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        ab = open_async_backend(redis_url, key_prefix=key_prefix)
        sid, token = new_session_id(), new_lock_token()
        try:
            await ab.acreate(sid, rec(), 60)  # loads the create script and checks the policy
            await ab.alock_and_load(sid, token, 30)
            await ab.asave(sid, rec(), token, 60)
            await ab.alock_and_load(sid, token, 30)
            await ab.arelease(sid, token, None)
            await ab.adelete(new_session_id())  # loads the delete script (a fresh server has none)
            trips = RoundTrips(monkeypatch)
            for call in (
                lambda: ab.alock_and_load(sid, token, 30),
                lambda: ab.asave(sid, rec(), token, 60),
                lambda: ab.alock_and_load(sid, token, 30),
                lambda: ab.arelease(sid, token, None),
                lambda: ab.aload(sid),
                lambda: ab.adelete(sid),
            ):
                before = trips.count
                await call()
                assert trips.count - before == 1
        finally:
            await ab.aclose()

    asyncio.run(scenario())


@redis_service
def test_server_killed_and_restarted(redis_server: ServerProcess | None, key_prefix: str) -> None:
    if redis_server is None:
        pytest.skip("needs the private redis-server of conftest")
    url = f"redis://127.0.0.1:{redis_server.port}/0?socket_timeout=1&connect_timeout=1"
    b = sync_backend(url, key_prefix)
    sid, token = new_session_id(), new_lock_token()
    touch = Touch(time.time(), None, None, 60)
    primitives: list[tuple[str, Callable[[], object]]] = [
        ("lock_and_load", lambda: b.lock_and_load(sid, token, 30)),
        ("load", lambda: b.load(sid)),
        ("create", lambda: b.create(sid, rec(), 60)),
        ("save", lambda: b.save(sid, rec(), token, 60)),
        ("release", lambda: b.release(sid, token, touch)),
        ("touch", lambda: b.touch(sid, touch)),
        ("extend", lambda: b.extend(sid, token, 30)),
        ("delete", lambda: b.delete(sid)),
        ("iter_records", lambda: list(b.iter_records())),
    ]

    async def async_calls(ab: AsyncRedisBackend) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: ab.alock_and_load(sid, token, 30),
            lambda: ab.aload(sid),
            lambda: ab.acreate(sid, rec(), 60),
            lambda: ab.asave(sid, rec(), token, 60),
            lambda: ab.arelease(sid, token, touch),
            lambda: ab.atouch(sid, touch),
            lambda: ab.aextend(sid, token, 30),
            lambda: ab.adelete(sid),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="is unavailable"):
                await call()
            assert time.monotonic() - started < 0.5

    async def async_scenario() -> None:
        ab = open_async_backend(url, key_prefix=key_prefix)
        assert isinstance(ab, AsyncRedisBackend)
        try:
            assert await ab.acreate(sid + "a", rec(), 60)  # a pooled connection, then the server dies
            redis_server.stop()
            await async_calls(ab)
            redis_server.start()
            assert (await ab.aload(sid + "a")) is None, "the server restarted empty"
            assert await ab.acreate(sid + "a", rec(), 60)
            await ab.adelete(sid + "a")
        finally:
            await ab.aclose()

    try:
        assert b.create(sid, rec(), 60)  # connected, pool warm, scripts loaded
        redis_server.stop()
        for what, call in primitives:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable) as info:
                call()
            elapsed = time.monotonic() - started
            assert elapsed < 0.5, f"{what} took {elapsed:.2f}s to fail"
            assert str(info.value).startswith(f"redis backend {b.name} is unavailable: "), what
        redis_server.start()
        # the same object works again: the pool reconnects and the scripts are loaded anew
        assert b.load(sid) is None
        assert b.create(sid, rec(b'{"back":1}'), 60)
        assert b.lock_and_load(sid, token, 30)[0]
        assert b.save(sid, rec(b'{"back":2}'), token, 60)
        got = b.load(sid)
        assert got is not None and got.data == b'{"back":2}'
        asyncio.run(async_scenario())
    finally:
        if not redis_server.running:
            redis_server.start()
        b.close()


@redis_service
def test_socket_timeout_is_prompt(key_prefix: str) -> None:
    # A server that accepts connections and never answers: the call fails after socket_timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        b = sync_backend(f"redis://127.0.0.1:{port}/0?socket_timeout=0.3&connect_timeout=0.3", key_prefix)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="is unavailable: Timeout"):
            b.load("x")
        assert time.monotonic() - started < 0.6 * 2
        b.close()


@pytest.mark.parametrize("how", ["cancelled", "timed out"])
@redis_service
def test_a_connection_left_mid_command_is_never_reused(
    redis_url: str, raw: redis.Redis, key_prefix: str, how: str
) -> None:
    # The async hot path keeps its own idle connections. A command abandoned before its reply came
    # (the request cancelled, or the socket timeout) leaves that reply on the wire: the connection
    # must be dropped, or the next command would read the abandoned command's reply as its own.
    url = redis_url + ("?socket_timeout=0.5" if how == "timed out" else "")

    async def scenario() -> None:
        ab = open_async_backend(url, key_prefix=key_prefix)
        a, b = new_session_id(), new_session_id()
        try:
            assert await ab.acreate(a, rec(b'{"who":"a"}'), 60)
            assert await ab.acreate(b, rec(b'{"who":"b"}'), 60)
            raw.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # the server holds every client's commands
            if how == "cancelled":
                task = asyncio.create_task(ab.aload(a))
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                with pytest.raises(BackendUnavailable, match=r"no answer within 0\.5 s \(socket_timeout\)"):
                    await ab.aload(a)
            assert raw.ping()  # held until the pause ends; the abandoned command's reply then goes out
            got = await ab.aload(b)
            assert got is not None and got.data == b'{"who":"b"}'
            got = await ab.aload(a)
            assert got is not None and got.data == b'{"who":"a"}'
        finally:
            raw.execute_command("CLIENT", "UNPAUSE")
            await ab.aclose()

    asyncio.run(scenario())


@redis_service
def test_sync_connection_left_mid_command_is_never_reused(redis_url: str, raw: redis.Redis, key_prefix: str) -> None:
    b = sync_backend(redis_url + "?socket_timeout=0.5", key_prefix)
    a, c = new_session_id(), new_session_id()
    try:
        assert b.create(a, rec(b'{"who":"a"}'), 60) and b.create(c, rec(b'{"who":"c"}'), 60)
        raw.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        with pytest.raises(BackendUnavailable, match="Timeout"):
            b.load(a)
        assert raw.ping()  # held until the pause ends; the abandoned command's reply then goes out
        got = b.load(c)
        assert got is not None and got.data == b'{"who":"c"}'
    finally:
        raw.execute_command("CLIENT", "UNPAUSE")
        b.close()


@redis_service
def test_sync_threads_never_share_a_connection(redis_url: str, key_prefix: str) -> None:
    b = sync_backend(redis_url, key_prefix)
    sids = [new_session_id() for _ in range(8)]
    for i, sid in enumerate(sids):
        assert b.create(sid, rec(b'{"i":%d}' % i), 60)
    wrong: list[str] = []

    def reader(i: int) -> None:
        for _ in range(200):
            got = b.load(sids[i])
            if got is None or got.data != b'{"i":%d}' % i:
                wrong.append(f"thread {i} read {got}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert not wrong, wrong[:3]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@redis_service
def test_a_forked_child_does_not_touch_the_parents_connections(redis_url: str, key_prefix: str) -> None:
    # A child forked after the parent made a call inherits its idle connection: if both used it, their
    # replies would cross. Parent and child read different sessions at the same time, and each must
    # always read its own.
    b = sync_backend(redis_url, key_prefix)
    mine, childs = new_session_id(), new_session_id()
    assert b.create(mine, rec(b'{"who":"parent"}'), 60) and b.create(childs, rec(b'{"who":"child"}'), 60)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = all((got := b.load(childs)) is not None and got.data == b'{"who":"child"}' for _ in range(300))
            code = 0 if ok else 2
        finally:
            os._exit(code)
    wrong = 0
    for _ in range(300):
        try:
            got = b.load(mine)
        except BackendUnavailable:
            got = None
        wrong += got is None or got.data != b'{"who":"parent"}'
    _, status = os.waitpid(pid, 0)
    b.close()
    assert os.waitstatus_to_exitcode(status) == 0, "the child read another reply"
    assert wrong == 0


@redis_service
def test_idle_connections_after_a_restart_do_not_fail_requests(
    redis_server: ServerProcess | None, key_prefix: str
) -> None:
    # Several idle connections when the server restarts: one request may meet a dead one and get a
    # 503 (its command may have run, so it is not retried), but the other idle ones go with it, and
    # the next requests, however many at once, all succeed.
    if redis_server is None:
        pytest.skip("needs the private redis-server of conftest")
    url = f"redis://127.0.0.1:{redis_server.port}/0"

    async def scenario() -> None:
        ab = open_async_backend(url, key_prefix=key_prefix)
        sids = [new_session_id() for _ in range(4)]
        try:
            # four concurrent commands: four connections, idle afterwards
            assert all(await asyncio.gather(*(ab.acreate(sid, rec(), 60) for sid in sids)))
            redis_server.stop()
            redis_server.start()
            try:
                assert await ab.aload(sids[0]) is None, "the server restarted empty"
            except BackendUnavailable:
                pass  # met a dead connection: the others went with it
            assert await asyncio.gather(*(ab.aload(sid) for sid in sids)) == [None] * 4
        finally:
            await ab.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(("policy", "warns"), [("allkeys-lru", True), ("volatile-ttl", True), ("noeviction", False)])
@redis_service
def test_maxmemory_policy_warning(
    redis_url: str,
    set_policy: Callable[[str], Any],
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    warns: bool,
) -> None:
    set_policy(policy)
    caplog.set_level(logging.WARNING, logger="sessionmw")
    b = sync_backend(redis_url, key_prefix)
    try:
        assert caplog.records == [], "no check before the first call"
        b.load("x")
        b.load("y")
        warnings = [r for r in caplog.records if r.name == "sessionmw" and r.levelno == logging.WARNING]
        if warns:
            assert len(warnings) == 1, "warned once"
            assert policy in warnings[0].getMessage() and b.name in warnings[0].getMessage()
        else:
            assert warnings == []
    finally:
        b.close()


@redis_service
def test_async_maxmemory_policy_warning(
    redis_url: str, set_policy: Callable[[str], Any], key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    set_policy("volatile-lru")
    caplog.set_level(logging.WARNING, logger="sessionmw")

    async def scenario() -> None:
        ab = open_async_backend(redis_url, key_prefix=key_prefix)
        try:
            await ab.aload("x")
            await ab.aload("y")
        finally:
            await ab.aclose()

    asyncio.run(scenario())
    assert len([r for r in caplog.records if "volatile-lru" in r.getMessage()]) == 1


def test_twins_have_the_same_primitives() -> None:
    sync = {n for n in vars(RedisBackend) if not n.startswith("_")}
    async_ = {n[1:] if n.startswith("a") else n for n in vars(AsyncRedisBackend) if not n.startswith("_")}
    assert sync == async_
    assert {"iter_records", "user_sessions", "gc", "stats"} <= sync, "the administration side on both"


@redis_service
def test_async_administration_lists_collects_and_counts(redis_url: str, key_prefix: str) -> None:
    # The administration side is written once, on the async side, and generated for the sync one.
    async def scenario() -> None:
        ab = open_async_backend(redis_url, key_prefix=key_prefix)
        assert isinstance(ab, AsyncRedisBackend)
        live, old = new_session_id(), new_session_id()
        now = time.time()
        try:
            assert await ab.acreate(live, rec(user_id="ann"), 60)
            assert await ab.acreate(old, rec(user_id="ann", expires=now - 1), 60)
            assert {sid async for sid, _ in ab.aiter_records()} == {live, old}
            assert {sid for sid, _ in await ab.auser_sessions("ann")} == {live, old}
            assert await ab.agc(now) == 1
            assert [sid async for sid, _ in ab.aiter_records()] == [live]
            assert [sid for sid, _ in await ab.auser_sessions("ann")] == [live]
            counts = await ab.astats()
            assert counts["used_memory"] > 0 and set(counts) == {
                "evicted_keys",
                "expired_keys",
                "used_memory",
                "maxmemory_policy_evicts",
            }
        finally:
            await ab.aclose()

    asyncio.run(scenario())


# -- administration: the per-user index, gc, stats ------------------------------------------------


class Sends:
    """Counts commands (or pipelines) written by redis-py's sync connections: one per round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        send: Any = redis.connection.AbstractConnection.send_packed_command

        def counted(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return send(conn, *args, **kwargs)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)

    def during(self, call: Callable[[], object]) -> int:
        before = self.count
        call()
        return self.count - before


def members(raw: redis.Redis, key: str) -> set[str]:
    return {m.decode() for m in raw.smembers(key)}  # type: ignore[union-attr]


def test_pure_index_helpers() -> None:
    keys = Keys("p:")
    assert keys.user("alice") == "p:user:{alice}" and keys.user(7) == "p:user:{7}"
    assert key_slot(keys.user("alice").encode()) == key_slot(b"{alice}"), "its own hash tag"
    assert keys.user_scan_pattern() == "p:user:{*}" and Keys("x*").user_scan_pattern() == "x\\*user:{*}"
    head = encode_record(rec(user_id="bob")).partition(b"\n")[0]
    assert head_user(head) == "bob" and head_user(b"garbage") is None and head_user(None) is None
    assert head_user(encode_record(rec(user_id=7)).partition(b"\n")[0]) == 7
    assert ops.reindex(keys, "s", 7, "7") == () and ops.reindex(keys, "s", None, None) == ()
    moved = ops.reindex(keys, "s", "a", "b")
    assert [op.command for op in moved] == [("SREM", "p:user:{a}", "s"), ("SADD", "p:user:{b}", "s")]
    r1, r2 = rec(user_id="a"), rec(user_id=None)
    found, stale = ops.pick_user_sessions("a", ["s1", "s2", "s3", "s4"], [r1, None, r2, rec(user_id="b")])
    assert found == [("s1", r1)] and stale == ["s2", "s3", "s4"]
    assert ops.pick_user_sessions(7, ["s"], [rec(user_id="7")])[0], "7 and '7' share one index set"
    single = figures({"evicted_keys": 3, "expired_keys": 4}, {"used_memory": 1000, "maxmemory_policy": "allkeys-lru"})
    assert single == {"evicted_keys": 3, "expired_keys": 4, "used_memory": 1000, "maxmemory_policy_evicts": 1.0}
    cluster = figures(
        {"n1:7000": {"evicted_keys": 1, "expired_keys": 2}, "n2:7001": {"evicted_keys": 5, "expired_keys": 0}},
        {"n1:7000": {"used_memory": 10, "maxmemory_policy": "noeviction"}, "n2:7001": {"used_memory": 20}},
    )
    assert cluster == {"evicted_keys": 6, "expired_keys": 2, "used_memory": 30, "maxmemory_policy_evicts": 0.0}


@redis_service
def test_index_holds_each_users_sessions(
    backend: RedisBackend, raw: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    keys = backend._base.keys
    a1, a2, b1, anon = (new_session_id() for _ in range(4))
    for sid, user in ((a1, "alice"), (a2, "alice"), (b1, 42), (anon, None)):
        assert backend.create(sid, rec(user_id=user), ttl=60)
    assert members(raw, keys.user("alice")) == {a1, a2}
    assert members(raw, keys.user(42)) == {b1}
    assert raw.ttl(keys.user("alice")) == -1, "index sets have no TTL (a touch may outlive any)"
    assert raw.type(keys.user("alice")) == b"set"
    assert {sid for sid, _ in backend.user_sessions("alice")} == {a1, a2}
    assert [(sid, r.user_id) for sid, r in backend.user_sessions(42)] == [(b1, 42)]
    assert [sid for sid, _ in backend.user_sessions("42")] == [b1], "user ids are compared as strings"
    assert backend.user_sessions("nobody") == []
    assert {sid for sid, _ in backend.iter_records()} == {a1, a2, b1, anon}, "index sets are not sessions"
    later = time.time() + 30
    backend.touch(a1, Touch(later, "10.0.0.9", None, 60))
    got = dict(backend.user_sessions("alice"))
    assert got[a1].last_access == later and got[a1].last_ip == "10.0.0.9", (
        "touches are in the record, as load() reads it"
    )

    async def async_side() -> None:
        ab = open_async_backend(redis_url, key_prefix=key_prefix)
        assert isinstance(ab, AsyncRedisBackend)
        try:
            assert {sid for sid, _ in await ab.auser_sessions("alice")} == {a1, a2}
            sid = new_session_id()
            assert await ab.acreate(sid, rec(user_id="alice"), 60)
            assert {s for s, _ in await ab.auser_sessions("alice")} == {a1, a2, sid}
            await ab.adelete(sid)
            assert {s for s, _ in await ab.auser_sessions("alice")} == {a1, a2}
        finally:
            await ab.aclose()

    asyncio.run(async_side())
    backend.delete(a1)
    assert members(raw, keys.user("alice")) == {a2}, "delete takes the sid out of the index"
    backend.delete(a2)
    assert not raw.exists(keys.user("alice")), "an emptied index set is gone"
    backend.delete(b1)
    backend.delete(anon)


@redis_service
def test_save_moves_the_sid_only_when_the_user_changes(
    backend: RedisBackend, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = backend._base.keys
    warm_up(backend)
    sid = new_session_id()
    assert backend.create(sid, rec(user_id="carol"), 60)
    sends = Sends(monkeypatch)
    token = new_lock_token()
    backend.lock_and_load(sid, token, 30)
    before = commandstats(raw)
    assert sends.during(lambda: backend.save(sid, rec(b'{"x":1}', user_id="carol"), token, 60)) == 1
    after = commandstats(raw)
    assert after.get("sadd", 0) == before.get("sadd", 0) and after.get("srem", 0) == before.get("srem", 0)
    backend.lock_and_load(sid, token, 30)
    assert sends.during(lambda: backend.save(sid, rec(user_id="dan"), token, 60)) == 2, "one more for the index"
    assert not raw.exists(keys.user("carol")) and members(raw, keys.user("dan")) == {sid}
    backend.lock_and_load(sid, token, 30)
    assert backend.save(sid, rec(user_id=None), token, 60)
    assert not raw.exists(keys.user("dan"))
    backend.lock_and_load(sid, token, 30)
    assert backend.save(sid, rec(user_id=5), token, 60)
    assert [s for s, _ in backend.user_sessions(5)] == [sid]
    backend.delete(sid)
    backend.lock_and_load(sid, token, 30)
    assert not backend.save(sid, rec(user_id=6), token, 60), "a deleted session is not resurrected"
    assert not raw.exists(keys.data(sid)) and not raw.exists(keys.user(6)) and not raw.exists(keys.user(5))


@redis_service
def test_index_round_trips(backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    warm_up(backend)
    sends = Sends(monkeypatch)
    anon, user = new_session_id(), new_session_id()
    assert sends.during(lambda: backend.create(anon, rec(), 60)) == 1
    assert sends.during(lambda: backend.create(user, rec(user_id="eve"), 60)) == 1, "SET and SADD pipelined"
    assert sends.during(lambda: backend.user_sessions("eve")) == 2, "SMEMBERS, then the sessions"
    assert sends.during(lambda: backend.delete(anon)) == 1
    assert sends.during(lambda: backend.delete(user)) == 2, "the SREM of a user's session"
    assert sends.during(lambda: backend.user_sessions("eve")) == 1


@redis_service
def test_stale_members_are_skipped_and_removed_after_a_ttl_expiry(backend: RedisBackend, raw: redis.Redis) -> None:
    keys = backend._base.keys
    short, kept = new_session_id(), new_session_id()
    assert backend.create(short, rec(user_id="fay"), ttl=0.1)
    assert backend.create(kept, rec(user_id="fay"), ttl=60)
    time.sleep(0.3)  # Redis drops `short` on its own; its index member stays behind
    assert members(raw, keys.user("fay")) == {short, kept}
    assert [sid for sid, _ in backend.user_sessions("fay")] == [kept]
    assert members(raw, keys.user("fay")) == {kept}, "the stale member was removed"
    # gc removes stale members of users nobody asks about, and their emptied sets
    gone = new_session_id()
    assert backend.create(gone, rec(user_id="gil"), ttl=0.1)
    time.sleep(0.3)
    assert raw.exists(keys.user("gil"))
    assert backend.gc(time.time()) == 0, "sessions Redis dropped itself are not counted"
    assert not raw.exists(keys.user("gil"))
    assert members(raw, keys.user("fay")) == {kept}
    backend.delete(kept)


@redis_service
def test_terminate_user_reads_the_index_and_never_scans(
    redis_url: str, raw: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SessionStore(redis_url, key_prefix=key_prefix) as store:
        b = store.backend
        assert isinstance(b, RedisBackend)
        sids = {user: [new_session_id() for _ in range(2)] for user in ("hal", "ivy")}
        for user, pair in sids.items():
            for sid in pair:
                assert b.create(sid, rec(user_id=user), 60)

        def no_scan(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("terminate_user must not scan")

        monkeypatch.setattr(redis.Redis, "scan_iter", no_scan)
        before = commandstats(raw)
        assert store.terminate_user("hal") == 2
        assert commandstats(raw).get("scan", 0) == before.get("scan", 0)
        assert store.terminate_user("hal") == 0
        assert {i.sid for i in store.list_sessions(user_id="ivy")} == set(sids["ivy"])
        monkeypatch.undo()
        assert store.terminate_all() == 2
        assert not raw.exists(b._base.keys.user("hal"), b._base.keys.user("ivy"))


@redis_service
def test_gc_removes_expired_records_with_their_touch_and_index_entry(backend: RedisBackend, raw: redis.Redis) -> None:
    keys = backend._base.keys
    now = time.time()
    expired, anon_expired, forever, live, touched = (new_session_id() for _ in range(5))
    assert backend.create(expired, rec(user_id="jo", expires=now - 10), ttl=60)
    assert backend.create(anon_expired, rec(expires=now - 1), ttl=60)
    assert backend.create(forever, rec(user_id="jo", expires=None), ttl=None)
    assert backend.create(live, rec(user_id="jo", expires=now + 60), ttl=60)
    assert backend.create(touched, rec(user_id="jo", expires=now - 10), ttl=60)
    backend.touch(expired, Touch(now - 20, None, now + 100, 60))  # older than the record: ignored
    backend.touch(touched, Touch(now + 1, "::1", now + 100, 60))  # newer: its expiry counts
    token = new_lock_token()
    assert backend.lock_and_load(expired, token, 30)[0]
    assert backend.gc(now) == 2
    assert not raw.exists(keys.data(expired), keys.data(anon_expired))
    assert raw.exists(keys.lock(expired)), "gc leaves a lock to its holder"
    assert not backend.save(expired, rec(user_id="jo"), token, 60), "the holder cannot resurrect it"
    assert members(raw, keys.user("jo")) == {forever, live, touched}
    assert {sid for sid, _ in backend.iter_records()} == {forever, live, touched}
    assert backend.gc(now) == 0
    assert backend.gc(now + 200) == 2, "live and touched expire later; forever never does"
    assert members(raw, keys.user("jo")) == {forever}
    raw.script_flush()
    backend.create(live, rec(expires=now), ttl=60)
    assert backend.gc(now + 1) == 1, "a flushed script cache is reloaded inside a pipeline"
    backend.delete(forever)


@redis_service
def test_admin_skips_another_prefixs_index_keys(redis_url: str, key_prefix: str) -> None:
    site = sync_backend(redis_url, key_prefix)
    neighbour = sync_backend(redis_url, key_prefix + "user:")  # its data keys look like site's index keys
    try:
        sid, other = new_session_id(), new_session_id()
        assert site.create(sid, rec(user_id="kim", expires=time.time() - 1), 60)
        assert neighbour.create(other, rec(user_id="kim", expires=time.time() - 1), 60)
        assert [s for s, _ in neighbour.iter_records()] == [other], "site's index set is not a session"
        assert [s for s, _ in site.iter_records()] == [sid]
        assert neighbour.gc(time.time()) == 1 and site.gc(time.time()) == 1
        assert site.user_sessions("kim") == [] and neighbour.user_sessions("kim") == []
    finally:
        site.close()
        neighbour.close()


@redis_service
def test_stats_reports_the_servers_figures(redis_url: str, set_policy: Callable[[str], Any], key_prefix: str) -> None:
    with SessionStore(redis_url, key_prefix=key_prefix) as store:
        store.backend.create(new_session_id(), rec(user_id="lee"), 60)
        set_policy("noeviction")
        figures = store.stats()
        assert figures["sessions"] == 1 and figures["users"] == 1
        assert figures["used_memory"] > 0 and figures["maxmemory_policy_evicts"] == 0.0
        assert figures["evicted_keys"] >= 0 and figures["expired_keys"] >= 0
        set_policy("volatile-lru")
        assert store.stats()["maxmemory_policy_evicts"] == 1.0
        store.terminate_all()


def test_admin_of_a_server_that_is_down_is_one_line() -> None:
    b = sync_backend(f"redis://127.0.0.1:{free_port()}/0")
    for call in (lambda: list(b.iter_records()), lambda: b.user_sessions("x"), lambda: b.gc(0), b.stats):
        with pytest.raises(BackendUnavailable, match="is unavailable"):
            call()
    b.close()


def test_own_connections_only_for_one_server_with_an_unbounded_pool() -> None:
    from sessionmw.backends._url import parse_backend_url

    def own(url: str) -> bool:
        return client_config(parse_backend_url(url), "p:").own_connections

    assert own("redis://127.0.0.1:6379/0") and own("unix:///run/redis.sock") and own("rediss://h:6380/1")
    assert not own("redis://127.0.0.1:6379/0?max_connections=4"), "a bounded pool must refuse the n+1st"
    assert not own("redis+sentinel://127.0.0.1:26379/mymaster/0"), "Sentinel follows failovers"
    assert not own("redis+cluster://127.0.0.1:7000"), "Cluster routes by slot"
    for url, kind in (("redis://127.0.0.1:1/0?max_connections=4", "Pooled"), ("redis://127.0.0.1:1/0", "Connections")):
        b = sync_backend(url)
        ab = open_async_backend(url)
        assert isinstance(ab, AsyncRedisBackend)
        b.client()
        ab.client()
        assert type(b._runner).__name__ == type(ab._runner).__name__ == kind
        b.close()


@pytest.mark.parametrize(
    "ending",
    [
        # asyncio.run closes the loop's async generators first: the backend closes its clients then.
        "asyncio.run",
        # loop.close() alone leaves the connections unclosable: they are dropped, and Python may warn
        # about their sockets when it collects them.
        pytest.param(
            "loop.close",
            marks=pytest.mark.filterwarnings(
                "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
            ),
        ),
    ],
)
@redis_service
def test_one_async_backend_on_several_event_loops_in_turn(redis_url: str, key_prefix: str, ending: str) -> None:
    ab = open_async_backend(redis_url, key_prefix=key_prefix)
    sid = new_session_id()

    async def create() -> None:
        assert await ab.acreate(sid, rec(b'{"n":1}'), 60)

    async def load() -> bytes | None:
        got = await ab.aload(sid)
        return None if got is None else got.data

    if ending == "asyncio.run":
        asyncio.run(create())
    else:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(create())
        loop.close()
        del loop
    assert asyncio.run(load()) == b'{"n":1}', "a new loop, after the first one ended"
    assert asyncio.run(load()) == b'{"n":1}'
    gc.collect()  # connections dropped with a closed loop go now, under this test's warning filters


@redis_service
def test_asgi_startup_names_a_redis_that_may_evict_sessions(
    redis_url: str, set_policy: Callable[[str], Any], key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from starlette.testclient import TestClient

    from ..apps import make_starlette_app

    set_policy("allkeys-lru")
    caplog.set_level(logging.WARNING, logger="sessionmw")
    with TestClient(make_starlette_app(secret_key="k", backend=redis_url, key_prefix=key_prefix)):
        named = [r for r in caplog.records if r.name == "sessionmw" and "allkeys-lru" in r.getMessage()]
        assert len(named) == 1, "named at start-up, before any request"


def test_asgi_starts_while_redis_is_down_and_says_so(key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    from starlette.testclient import TestClient

    from ..apps import make_starlette_app

    url = f"redis://127.0.0.1:{free_port()}/0?connect_timeout=1"  # nothing listens there
    caplog.set_level(logging.WARNING, logger="sessionmw")
    with TestClient(make_starlette_app(secret_key="k", backend=url, key_prefix=key_prefix)) as client:
        said = [r.getMessage() for r in caplog.records if r.name == "sessionmw"]
        assert any(m.startswith("at start-up: redis backend redis://127.0.0.1:") for m in said), said
        response = client.get("/inc")
        assert response.status_code == 503 and "unavailable" in response.text
    b = sync_backend(url, key_prefix)
    with pytest.raises(BackendUnavailable, match="is unavailable"):
        b.probe()
    b.close()


@redis_service
def test_probe_reaches_a_live_server(redis_url: str, key_prefix: str) -> None:
    b = sync_backend(redis_url, key_prefix)
    b.probe()
    assert not b._base.policy_pending, "the eviction policy was checked"
    b.close()


@redis_service
def test_a_loops_old_closing_watch_leaves_a_newer_client_alone(redis_url: str, key_prefix: str) -> None:
    # Closed and used again on the same loop: the first client's watch (finalized when replaced)
    # must not close the client built after it.
    async def scenario() -> None:
        ab = open_async_backend(redis_url, key_prefix=key_prefix)
        assert isinstance(ab, AsyncRedisBackend)
        assert await ab.acreate(new_session_id(), rec(), 60)
        await ab.aclose()
        assert await ab.acreate(new_session_id(), rec(), 60)
        second = ab.client()
        gc.collect()  # the first watch is garbage now: the loop's finalizer closes it on a later step
        for _ in range(5):
            await asyncio.sleep(0)
        assert ab.client() is second, "the newer client was closed"
        await ab.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "commands",
    [
        pytest.param((("GET", b"p{abc}"),), id="one"),
        pytest.param((("SET", b"k:lock", b"tok", b"NX", b"PX", 7200000), ("GET", b"k")), id="pipelined"),
        pytest.param((("SET", "clé ünïcode", "", "PX", -1), ("PING",)), id="str, empty, negative"),
        pytest.param((("SET", b"big", b"\r\n" * 5000 + bytes(range(256))),), id="binary, large"),
    ],
)
def test_own_packer_encodes_as_redis_py_does(commands: tuple[tuple[wire.Arg, ...], ...]) -> None:
    conn = redis.Connection()
    assert wire.pack(commands) == b"".join(conn.pack_commands(commands))


def test_own_packer_round_trips_through_a_real_server(redis_url: str) -> None:
    value = "ünïcode \r\n" * 3 + "x" * 10000
    conn = redis.Redis.from_url(redis_url).connection_pool.make_connection()
    try:
        conn.send_packed_command([wire.pack((("SET", "packer-test", value, "PX", 60000), ("GET", "packer-test")))])
        assert conn.read_response() == b"OK"
        assert conn.read_response() == value.encode()
    finally:
        conn.disconnect()


# -- commands sent again while a failover is waited out (failover.py): each safe to run twice ---------


def _send(raw: redis.Redis, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
    pipe = raw.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()


@redis_service
def test_a_save_sent_again_after_it_ran_reads_as_saved_and_writes_nothing_more(
    backend: RedisBackend, raw: redis.Redis, key_prefix: str
) -> None:
    sid, token = new_session_id(), new_lock_token()
    assert backend.create(sid, rec(b'{"n":1}', user_id="u1"), 60)
    assert backend.lock_and_load(sid, token, 30)[0]
    mine = rec(b'{"n":2}', user_id="u1")
    assert backend.save(sid, mine, token, 60)  # ran, lock deleted; say its reply was lost
    assert backend.save(sid, mine, token, 60), "sent again: its own record is there, so it was saved"
    keys = Keys(key_prefix)
    assert raw.sismember(keys.user("u1"), sid), "and the user's index holds the session"
    # A later writer's record is not this one's: the fence holds.
    other = new_lock_token()
    assert backend.lock_and_load(sid, other, 30)[0]
    assert backend.save(sid, rec(b'{"n":3}', user_id="u1"), other, 60)
    assert not backend.save(sid, mine, token, 60), "a save sent again after a later write is dropped"
    got = backend.load(sid)
    assert got is not None and got.data == b'{"n":3}'


@redis_service
def test_a_lock_taken_before_its_reply_was_lost_is_this_requests_own(
    backend: RedisBackend, raw: redis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    sid, token = new_session_id(), new_lock_token()
    assert backend.create(sid, rec(b'{"n":1}'), 60)
    assert backend.lock_and_load(sid, token, 30)[0]  # the SET NX ran; say its reply was lost
    again = ops.lock_and_load_again(keys, sid, token, 30)
    locked, got = again.parse(_send(raw, again.commands))
    assert locked and got is not None and got.data == b'{"n":1}'
    other = ops.lock_and_load_again(keys, sid, new_lock_token(), 30)
    assert other.parse(_send(raw, other.commands)) == (False, None), "another request's lock is not its own"


@redis_service
def test_a_create_sent_again_after_it_ran_reads_as_stored(
    backend: RedisBackend, raw: redis.Redis, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    sid, mine = new_session_id(), rec(b'{"n":1}')
    assert backend.create(sid, mine, 60)  # ran; say its reply was lost
    again = ops.create_again(keys, sid, mine, 60)
    assert again.parse(_send(raw, again.commands)), "its own record: stored"
    theirs = ops.create_again(keys, sid, rec(b'{"n":9}'), 60)
    assert not theirs.parse(_send(raw, theirs.commands)), "another record under that id: the id is taken"
