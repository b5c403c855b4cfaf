"""A Redis master dies under a stream of requests: Sentinel or Cluster promotes its replica, and with
``failover_wait`` above the promotion time no request fails; with a tiny one the outage is a clear 503.

Private processes on loopback, built here and not shared (a test kills their master): for Sentinel one
master, one replica and three sentinels (``down-after-milliseconds`` 1000); for Cluster three masters
with a replica each (``cluster-node-timeout`` 1000). Clients increment a counter each in a session of
their own, through the Starlette app under uvicorn (ASGI, the asyncio backend) or the plain WSGI app
(the sync backend), while the test kills the master (SIGKILL). The test prints the figures: how long
the promotion took, the slowest request, and how many increments acknowledged to a client are not in
its session afterwards (writes the old master acknowledged and never passed on to its replica).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
import uvicorn

from ..apps import make_starlette_app, make_wsgi_app
from ..conftest import ServerProcess, free_port, missing, private_redis, wait_port

pytestmark = [pytest.mark.service("redis"), pytest.mark.slow]

SECRET = "failover-test"
CLIENTS = 4
#: Options of every private node: a replica syncs at once, without a disk.
FAST_SYNC = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
#: Client timeouts short enough that a dead master is noticed quickly, long enough for two shared cores.
TIMEOUTS = "socket_timeout=1&connect_timeout=1"


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis", "redis-server is needed for the private failover topologies")
    assert binary is not None
    return binary


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> float:
    """Poll ``check`` until it holds; return the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return time.monotonic()
        except redis.RedisError:  # a node not up yet, or the dead one: ask again
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        time.sleep(0.02)


def node(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)


def role(port: int) -> str:
    with node(port) as r:
        return str(r.info("replication")["role"])


def link_up(port: int) -> bool:
    with node(port) as r:
        return r.info("replication").get("master_link_status") == "up"


# -- the topologies ---------------------------------------------------------------------------------


@dataclass
class Topology:
    """Private servers: the master to kill, its replica, and the URL the app uses."""

    url: str
    master: ServerProcess
    replica_port: int
    #: True once the replica is the master, as the clients' discovery sees it.
    promoted: Callable[[], bool]
    servers: list[ServerProcess] = field(default_factory=list)


@contextmanager
def sentinel_topology(folder: Path) -> Iterator[Topology]:
    """One master, one replica, three sentinels (quorum 2), all on loopback."""
    binary = redis_binary()
    # --dir: a replica's full sync writes an RDB file, which belongs in the test's folder, not the checkout
    master = private_redis("failover master", *FAST_SYNC, "--dir", str(folder))
    assert master is not None
    replica = private_redis(
        "failover replica", *FAST_SYNC, "--dir", str(folder), "--replicaof", "127.0.0.1", str(master.port)
    )
    assert replica is not None
    sentinels: list[ServerProcess] = []
    for i in range(3):
        conf = folder / f"sentinel-{i}.conf"  # sentinel rewrites its config file: one each
        conf.write_text(
            f"bind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master.port} 2\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 3000\n"
            "sentinel parallel-syncs mymaster 1\n"
        )
        argv = [binary, str(conf), "--sentinel"]
        sentinels.append(ServerProcess(f"sentinel {i}", lambda p, a=argv: [*a, "--port", str(p)], free_port()))
    servers = [master, replica, *sentinels]
    try:
        for s in servers:
            s.start()
        wait_until("the replica's link to its master", lambda: link_up(replica.port))

        def sentinels_ready() -> bool:
            for s in sentinels:
                with node(s.port) as r:
                    state = r.sentinel_master("mymaster")
                    if int(state["num-other-sentinels"]) != 2 or int(state["num-slaves"]) != 1:
                        return False
            return True

        wait_until("three sentinels that know each other and the replica", sentinels_ready)

        def promoted() -> bool:
            with node(sentinels[0].port) as r:
                addr = r.sentinel_get_master_addr_by_name("mymaster")
            return addr is not None and int(addr[1]) == replica.port

        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        yield Topology(f"redis+sentinel://{hosts}/mymaster/0?{TIMEOUTS}", master, replica.port, promoted, servers)
    finally:
        for s in servers:
            s.stop()


@contextmanager
def cluster_topology(folder: Path) -> Iterator[Topology]:
    """Three masters with one replica each; ``master`` is chosen later (the node of a session's slot)."""
    binary = redis_binary()
    cli = shutil.which("redis-cli")
    if cli is None:
        missing("redis", "redis-cli is needed to create the private Redis Cluster")
    assert cli is not None
    nodes: list[ServerProcess] = []
    # The bus port of each node's port (the default, port + 10000, may not be free): kept across a
    # restart, picked anew when a first start moves the node to another port.
    buses: dict[int, int] = {}
    for i in range(6):
        conf = f"nodes-{i}.conf"
        argv = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *FAST_SYNC, "--dir", str(folder),
                "--cluster-enabled", "yes", "--cluster-config-file", conf,
                "--cluster-node-timeout", "1000"]  # fmt: skip
        nodes.append(
            ServerProcess(
                f"cluster node {i}",
                lambda p, a=argv: [*a, "--port", str(p), "--cluster-port", str(buses.setdefault(p, free_port()))],
                free_port(),
            )
        )
    try:
        for n in nodes:
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)  # fmt: skip

        def ready() -> bool:
            for n in nodes:
                with node(n.port) as r:
                    if r.cluster("INFO").get("cluster_state") != "ok":
                        return False
                if role(n.port) == "slave" and not link_up(n.port):
                    return False
            return True

        wait_until("the private Redis Cluster with its replicas", ready)
        url = "redis+cluster://" + ",".join(addrs) + f"?{TIMEOUTS}"
        yield Topology(url, nodes[0], 0, lambda: False, nodes)
    finally:
        for n in nodes:
            n.stop()


def aim_at_session(topology: Topology, key_prefix: str) -> None:
    """Make ``topology.master`` the Cluster master holding the (only) session under ``key_prefix``."""
    for n in topology.servers:
        if role(n.port) != "master":
            continue
        with node(n.port) as r:
            if r.keys(f"{key_prefix}*"):
                replicas = [v for k, v in r.info("replication").items() if k.startswith("slave")]
                assert len(replicas) == 1, replicas
                topology.master = n
                topology.replica_port = int(replicas[0]["port"])
                topology.promoted = lambda: role(topology.replica_port) == "master"
                return
    raise AssertionError("no master holds the session")


# -- the app and its clients --------------------------------------------------------------------------


@contextmanager
def serving(adapter: str, **options: Any) -> Iterator[Callable[[], httpx2.Client]]:
    """The test app on ``adapter``; yields a factory of clients (each with its own cookie jar)."""
    options.setdefault("secret_key", SECRET)
    if adapter == "wsgi":
        app = make_wsgi_app(**options)
        yield lambda: httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver", timeout=60)
        return
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_starlette_app(**options), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_port(port), "uvicorn did not start"
        yield lambda: httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class Client:
    """One user: a session of its own, incremented in a loop; what it was told."""

    http: httpx2.Client
    acknowledged: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def increment(self) -> None:
        started = time.monotonic()
        r = self.http.get("/inc")
        self.slowest = max(self.slowest, time.monotonic() - started)
        if r.status_code == 200:
            self.acknowledged += 1
        else:
            self.failures.append(f"{r.status_code} {r.text[:300]!r}")

    def stored(self) -> int:
        r = self.http.get("/view")
        assert r.status_code == 200, r.text
        return int(r.json()["session"].get("n", 0))


@contextmanager
def traffic(clients: list[Client]) -> Iterator[None]:
    """Every client increments in a thread of its own until the block ends."""
    stop = threading.Event()

    def loop(c: Client) -> None:
        while not stop.is_set():
            c.increment()
            time.sleep(0.005)

    threads = [threading.Thread(target=loop, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(120)


def kill_master_under_load(topology: Topology, clients: list[Client], what: str) -> None:
    """Kill the master while the clients run; no request may fail. Prints the figures."""
    with traffic(clients):
        time.sleep(1.0)
        before = sum(c.acknowledged for c in clients)
        killed = time.monotonic()
        assert topology.master.proc is not None
        topology.master.proc.kill()  # SIGKILL: no goodbye to replica or clients
        promoted = wait_until("the replica's promotion", topology.promoted, timeout=60)
        time.sleep(1.5)  # and requests served by the new master
    failures = [f for c in clients for f in c.failures]
    stored = [c.stored() for c in clients]
    acknowledged = sum(c.acknowledged for c in clients)
    lost = sum(max(0, c.acknowledged - s) for c, s in zip(clients, stored, strict=True))
    print(
        f"\n{what}: promotion {promoted - killed:.2f} s after the kill; slowest request "
        f"{max(c.slowest for c in clients):.2f} s; {acknowledged} increments acknowledged "
        f"({before} before the kill), {lost} lost (acknowledged, not in the session); {len(failures)} failed"
    )
    assert not failures, failures[:5]
    assert acknowledged > before, "requests were served after the failover"
    assert all(s <= c.acknowledged for c, s in zip(clients, stored, strict=True)), "no write counted twice"


def start_clients(open_client: Callable[[], httpx2.Client], count: int = CLIENTS) -> list[Client]:
    clients = [Client(open_client()) for _ in range(count)]
    for c in clients:
        c.increment()  # every session exists before the kill
        assert not c.failures, c.failures
    return clients


def close_clients(clients: list[Client]) -> None:
    for c in clients:
        c.http.close()


# -- the tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_sentinel_failover_within_failover_wait_fails_no_request(adapter: str, tmp_path: Path, key_prefix: str) -> None:
    with sentinel_topology(tmp_path) as topology:
        url = topology.url + "&failover_wait=10"
        with serving(adapter, backend=url, key_prefix=key_prefix) as open_client:
            clients = start_clients(open_client)
            try:
                kill_master_under_load(topology, clients, f"Sentinel failover ({adapter})")
            finally:
                close_clients(clients)


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_cluster_failover_within_failover_wait_fails_no_request(adapter: str, tmp_path: Path, key_prefix: str) -> None:
    with cluster_topology(tmp_path) as topology:
        url = topology.url + "&failover_wait=10"
        with serving(adapter, backend=url, key_prefix=key_prefix) as open_client:
            first = Client(open_client())
            first.increment()
            aim_at_session(topology, key_prefix)  # the first session's master is the one to die
            clients = [first, *start_clients(open_client, CLIENTS - 1)]
            try:
                kill_master_under_load(topology, clients, f"Cluster failover ({adapter})")
            finally:
                close_clients(clients)


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_failover_longer_than_failover_wait_is_a_clear_503(adapter: str, tmp_path: Path, key_prefix: str) -> None:
    with sentinel_topology(tmp_path) as topology:
        url = topology.url + "&failover_wait=0.1"
        with serving(adapter, backend=url, key_prefix=key_prefix) as open_client, open_client() as http:
            assert http.get("/inc").json() == {"n": 1}
            assert topology.master.proc is not None
            topology.master.proc.kill()
            started = time.monotonic()
            r = http.get("/inc")  # sentinels take a second to notice, and more to promote
            took = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("text/plain") and "retry-after" in r.headers
            body = r.text.strip()
            print(f"\nSentinel outage with failover_wait=0.1 ({adapter}): 503 after {took:.2f} s: {body}")
            assert "\n" not in body and "Traceback" not in body, body
            assert "redis backend redis+sentinel://" in body and "failover_wait=0.1 s" in body, body
            assert took < 3.0, "one short wait, then the answer"
