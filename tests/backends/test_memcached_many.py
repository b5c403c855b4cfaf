"""Many memcached servers: replicas, a server that dies, comes back empty or with old data; round trips.

Every test runs private memcached processes, kills, freezes (SIGSTOP) and restarts them, and drives
requests through the WSGI middleware, one cookie per simulated user.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from sessionmw.backends import Record, open_backend
from sessionmw.backends.memcached import MemcachedBackend
from sessionmw.core.cookies import new_session_id
from sessionmw.core.locking import new_lock_token
from tests.apps import make_wsgi_app
from tests.conftest import ServerProcess, free_port, missing, private_memcached

pytestmark = pytest.mark.service("memcached")

SECRET = "many-servers"
SESSIONS = 200


class CountingListener:
    """A TCP listener on a dead server's port that counts connection attempts and closes each one at once."""

    def __init__(self, port: int) -> None:
        self.attempts = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.attempts += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def three() -> Iterator[list[ServerProcess]]:
    """Three private memcached processes, started; each test may kill, freeze or restart them."""
    servers = [private_memcached(f"memcached-{i}") for i in range(3)]
    if any(s is None for s in servers):
        missing("memcached", "memcached is not installed (apt-get install memcached)")
    started: list[ServerProcess] = []
    try:
        for srv in servers:
            assert srv is not None
            srv.start()
            started.append(srv)
        yield started
    finally:
        for srv in started:
            if srv.proc is not None:
                os.kill(srv.proc.pid, signal.SIGCONT)
            srv.stop()


def url_of(servers: list[ServerProcess], **options: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return "memcached://" + ",".join(f"127.0.0.1:{s.port}" for s in servers) + "?" + query


class Users:
    """``SESSIONS`` simulated users of one WSGI app, each with its own session cookie and expected count."""

    def __init__(self, url: str, key_prefix: str) -> None:
        self.app = make_wsgi_app(secret_key=SECRET, backend=url, key_prefix=key_prefix, lock_timeout=5)
        self.client = httpx2.Client(transport=httpx2.WSGITransport(app=self.app), base_url="http://testserver")
        self.cookies: list[str | None] = [None] * SESSIONS
        self.counts = [0] * SESSIONS
        self.fresh_starts = 0
        self.slowest = 0.0

    def request(self, i: int, path: str = "/inc") -> dict[str, Any]:
        """One request of user ``i``; checks it answered 200 and keeps its cookie."""
        headers = {} if self.cookies[i] is None else {"Cookie": f"session={self.cookies[i]}"}
        started = time.perf_counter()
        response = self.client.get(path, headers=headers)
        self.slowest = max(self.slowest, time.perf_counter() - started)
        self.client.cookies.clear()
        assert response.status_code == 200, (i, response.status_code, response.text)
        new = response.cookies.get("session")
        if new is not None:
            self.cookies[i] = new
        if not response.headers["content-type"].startswith("application/json"):
            return {"text": response.text}
        body: dict[str, Any] = response.json()
        return body

    def inc(self, i: int) -> None:
        """User ``i`` increments its counter; the answer must be one more than the last it saw (or 1, afresh)."""
        n = self.request(i)["n"]
        if n == 1 and self.counts[i] > 0:
            self.fresh_starts += 1
        else:
            assert n == self.counts[i] + 1, f"user {i} saw {n} after {self.counts[i]}: an older value"
        self.counts[i] = n

    def round(self, before: Any = None) -> None:
        for i in range(SESSIONS):
            if before is not None:
                before(i)
            self.inc(i)

    def backend(self) -> MemcachedBackend:
        backend = self.app.backend
        assert isinstance(backend, MemcachedBackend)
        return backend

    def close(self) -> None:
        self.client.close()
        self.app.close()


def node_of(backend: MemcachedBackend, srv: ServerProcess) -> Any:
    return backend._nodes[f"127.0.0.1:{srv.port}"]


def test_two_replicas_survive_a_dead_server_an_empty_return_and_a_stale_return(
    three: list[ServerProcess], key_prefix: str
) -> None:
    retry_after = 1.5
    users = Users(
        url_of(three, replicas=2, fail_limit=1, retry_after=retry_after, connect_timeout=0.5, timeout=0.5), key_prefix
    )
    try:
        victim = three[0]
        users.round()

        # 1. killed mid-run: every session stays readable and writable, no request fails
        listener: list[CountingListener] = []

        def kill_at_half(i: int) -> None:
            if i == SESSIONS // 2:
                victim.stop()
                listener.append(CountingListener(victim.port))

        users.round(before=kill_at_half)
        node = node_of(users.backend(), victim)
        assert node.down_until > 0, "the dead server was ejected"
        # 2. while ejected, the dead server gets no connection attempt until its retry time
        attempts = listener[0].attempts
        users.round()
        assert listener[0].attempts == attempts, "no connection attempt to an ejected server before its retry time"
        time.sleep(retry_after + 0.1)
        users.round()
        assert listener[0].attempts == attempts + 1, "one retry after retry_after, then ejected again"
        listener[0].close()

        # 3. back, empty: it rejoins after its retry time; stale or missing copies never win
        victim.start()
        time.sleep(retry_after + 0.1)
        users.round()
        users.round()
        assert node.down_until == 0, "the server is in service again"

        # 4. frozen (its data kept), sessions written meanwhile, then continued: its old copies never win
        assert victim.proc is not None
        os.kill(victim.proc.pid, signal.SIGSTOP)
        users.round()
        users.round()
        os.kill(victim.proc.pid, signal.SIGCONT)
        time.sleep(retry_after + 0.1)
        users.round()
        users.round()
        assert node.down_until == 0
        assert users.fresh_starts == 0, "with two replicas, no session was lost"
        print(f"\nreplicas=2: {SESSIONS} sessions x 9 rounds, 0 errors, slowest request {users.slowest * 1000:.0f} ms")
    finally:
        users.close()


def test_one_replica_loses_only_the_dead_servers_share(three: list[ServerProcess], key_prefix: str) -> None:
    users = Users(url_of(three, replicas=1, fail_limit=1, retry_after=30, connect_timeout=0.5, timeout=0.5), key_prefix)
    try:
        users.round()
        three[1].stop()
        users.round()
        users.round()
        share = users.fresh_starts / SESSIONS
        print(
            f"\nreplicas=1: {users.fresh_starts} of {SESSIONS} sessions ({share:.0%}) started afresh "
            "after one of three servers died"
        )
        assert 0.15 < share < 0.55, "about a third: the dead server's share, never the whole site"
        node = node_of(users.backend(), three[1])
        # killed: connection refused, counted; once ejected, no call at all
        assert node.failed_calls <= 2, node.failed_calls
    finally:
        users.close()


def test_every_server_down_is_a_503_naming_them(three: list[ServerProcess], key_prefix: str) -> None:
    users = Users(url_of(three, replicas=2, fail_limit=1, retry_after=30, connect_timeout=0.5), key_prefix)
    try:
        users.inc(0)
        for srv in three:
            srv.stop()
        headers = {"Cookie": f"session={users.cookies[0]}"}
        response = users.client.get("/inc", headers=headers)
        assert response.status_code == 503
        assert "every server of this session is down" in response.text, response.text
        assert "Traceback" not in response.text
    finally:
        users.close()


def test_round_trips_per_request_on_one_server(three: list[ServerProcess], key_prefix: str) -> None:
    users = Users(url_of(three[:1]), key_prefix)
    try:
        node = node_of(users.backend(), three[0])
        users.inc(0)  # created; the server's item size limit is read once
        calls = node.calls
        users.inc(0)
        assert node.calls - calls == 2, "read-write: lock+load in one round trip, save+unlock in one"
        calls = node.calls
        users.request(0, "/view")
        assert node.calls - calls == 1, "read-only: one round trip"
        calls = node.calls
        users.request(0, "/none")
        assert node.calls == calls, "untouched (WSGI loads on first access): no round trip"
    finally:
        users.close()


def test_a_save_after_the_session_ended_does_not_bring_it_back(three: list[ServerProcess], key_prefix: str) -> None:
    b = open_backend(url_of(three, replicas=2), key_prefix=key_prefix)
    assert isinstance(b, MemcachedBackend)
    try:
        sid = new_session_id()
        now = time.time()
        assert b.create(sid, Record(b"{}", now, now, version=1), ttl=60)
        token = new_lock_token()
        locked, got = b.lock_and_load(sid, token, 30)
        assert locked and got is not None
        b.delete(sid)
        assert not b.save(sid, Record(b'{"late":1}', now, now, version=2), token, ttl=60)
        assert b.load(sid) is None
    finally:
        b.close()


def test_a_server_away_during_a_delete_cannot_bring_the_session_back(
    three: list[ServerProcess], key_prefix: str
) -> None:
    b = open_backend(url_of(three, replicas=2, fail_limit=1, retry_after=0.5, timeout=0.5), key_prefix=key_prefix)
    assert isinstance(b, MemcachedBackend)
    try:
        now = time.time()
        sid = new_session_id()
        assert b.create(sid, Record(b'{"v":1}', now, now, version=1), ttl=60)
        first = b._order(key_prefix + sid)[0]
        srv = next(s for s in three if s.port == first.address[1])
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGSTOP)  # away, with its copy
        try:
            b.delete(sid)
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        time.sleep(0.6)
        assert b.load(sid) is None, "the copy on the server that was away lost to the tombstone"
        assert not b.lock_and_load(sid, new_lock_token(), 30)[1]
    finally:
        b.close()


def test_a_holder_whose_lock_server_died_cannot_overwrite_a_later_holder(
    three: list[ServerProcess], key_prefix: str
) -> None:
    url = url_of(three, replicas=2, fail_limit=1, retry_after=30, connect_timeout=0.5, timeout=0.5)
    a, b = open_backend(url, key_prefix=key_prefix), open_backend(url, key_prefix=key_prefix)
    assert isinstance(a, MemcachedBackend) and isinstance(b, MemcachedBackend)
    try:
        now = time.time()
        sid = new_session_id()
        assert a.create(sid, Record(b'{"v":0}', now, now, version=1), ttl=60)
        ta = new_lock_token()
        assert a.lock_and_load(sid, ta, 30)[0]  # A (one web server) locks on the session's first server
        first = a._order(key_prefix + sid)[0]
        next(s for s in three if s.port == first.address[1]).stop()  # ... which dies
        tb = new_lock_token()
        locked, got = b.lock_and_load(sid, tb, 30)  # B (another web server) locks on the next one
        assert locked and got is not None and got.version == 1
        assert b.save(sid, Record(b'{"v":"B"}', now, now, version=2), tb, ttl=60)
        assert not a.save(sid, Record(b'{"v":"A"}', now, now, version=2), ta, ttl=60), "A's write is fenced"
        got = b.load(sid)
        assert got is not None and got.data == b'{"v":"B"}'
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_no_lost_update_over_three_servers_with_two_replicas(three: list[ServerProcess], key_prefix: str) -> None:
    """8 clients x 25 increments on one cookie, uvicorn with 2 workers, sessions on 2 of 3 servers."""
    from tests.integration.test_no_lost_update import CLIENTS, INCREMENTS, env_for, hammer, serve

    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "tests.apps:starlette_from_env", "--factory",
        "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with serve(argv, env_for(url_of(three, replicas=2), key_prefix), port) as base:
        assert hammer(base) == CLIENTS * INCREMENTS
