"""Shared fixtures: real servers for the backends, and one ``backend_url`` fixture over every backend.

Servers:
* Redis and memcached: a private ``redis-server`` / ``memcached`` process on a free loopback port,
  started once per test session (so a test may kill and restart it), or the server named by
  ``SESSIONMW_TEST_REDIS_URL`` / ``SESSIONMW_TEST_MEMCACHED_URL``.
* Redis Sentinel (a master and one sentinel) and Redis Cluster (three nodes, ``redis-cli --cluster
  create``): private processes too, or ``SESSIONMW_TEST_REDIS_SENTINEL_URL`` /
  ``SESSIONMW_TEST_REDIS_CLUSTER_URL``; they count as the ``redis`` service.
* PostgreSQL and MySQL/MariaDB: ``SESSIONMW_TEST_POSTGRES_URL`` / ``SESSIONMW_TEST_MYSQL_URL``.

A missing server skips its tests with the reason, unless ``SESSIONMW_TEST_REQUIRE`` names it
(comma-separated, or ``all``): then the test fails, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sessionmw.backends.tiered import TieredSpec

ALL_SERVICES = ("redis", "memcached", "postgresql", "mysql")


def required(service: str) -> bool:
    """Tell whether ``SESSIONMW_TEST_REQUIRE`` makes ``service`` mandatory."""
    req = {s.strip().lower() for s in os.environ.get("SESSIONMW_TEST_REQUIRE", "").split(",") if s.strip()}
    return "all" in req or service in req


def missing(service: str, reason: str) -> None:
    """Skip, or fail when the service is required."""
    if required(service):
        pytest.fail(f"{service} is required (SESSIONMW_TEST_REQUIRE) but {reason}", pytrace=False)
    pytest.skip(f"{service}: {reason}")


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait until something listens on 127.0.0.1:``port`` (no longer once ``proc``, its server, has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Ask a child process to stop (SIGTERM); kill it if it has not within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@dataclass
class ServerProcess:
    """A private server process on a loopback port, which tests may stop and start again."""

    name: str
    argv_for: Callable[[int], list[str]]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    #: Whether the server has listened on its port: a restart must keep that port.
    started: bool = False

    def start(self) -> None:
        """Start (or restart) the server on its port and wait until it listens.

        A first start whose server exits at once (its port, picked free a moment before, was taken
        since, e.g. as the local port of another connection) moves to another free port, twice at most.
        """
        for attempt in range(3):
            argv = self.argv_for(self.port)
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if wait_port(self.port, proc=self.proc):
                self.started = True
                return
            exited = self.proc.poll() is not None
            self.stop()
            if self.started or not exited or str(self.port) not in argv or attempt == 2:
                break
            self.port = free_port()
        raise RuntimeError(f"{self.name} did not start on port {self.port}")

    def stop(self) -> None:
        """Kill the server."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def private_redis(name: str = "redis-server", *extra: str) -> ServerProcess | None:
    """A redis-server on a free loopback port (not started yet; ``extra`` arguments appended), or None."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    argv = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]
    return ServerProcess(name, lambda port: [*argv, "--port", str(port)], free_port())


def serve(srv: ServerProcess | None) -> Iterator[ServerProcess | None]:
    """Run ``srv`` (when there is one) for the life of a fixture."""
    if srv is None:
        yield None
        return
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ServerProcess | None]:
    """A private redis-server, or None when none can be started."""
    yield from serve(private_redis())


def _wait_until(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # not up yet: ask again
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready after {timeout:g} s")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def redis_cluster_url(shared_tmp: Path) -> Iterator[str]:
    """A Redis Cluster URL: SESSIONMW_TEST_REDIS_CLUSTER_URL, or three private cluster nodes on loopback."""
    url = os.environ.get("SESSIONMW_TEST_REDIS_CLUSTER_URL")
    if url:
        yield url
        return
    cli = shutil.which("redis-cli")
    if shutil.which("redis-server") is None or cli is None:
        missing("redis", "redis-server and redis-cli are needed for a private Redis Cluster")
    import redis as redis_py

    folder = shared_tmp / "cluster"
    folder.mkdir()
    nodes: list[ServerProcess] = []
    try:
        for i in range(3):
            node = private_redis(
                f"redis cluster node {i}",
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{i}.conf", "--dir", str(folder),
                "--cluster-port", str(free_port()),  # the bus port; the default, port + 10000, may not exist
            )  # fmt: skip
            assert node is not None
            node.start()
            nodes.append(node)
        addrs = [f"127.0.0.1:{n.port}" for n in nodes]
        assert cli is not None
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

        def ready() -> bool:
            for n in nodes:
                with redis_py.Redis(port=n.port) as r:
                    if r.cluster("INFO").get("cluster_state") != "ok":
                        return False
            return True

        _wait_until("the private Redis Cluster", ready)
        yield "redis+cluster://" + ",".join(addrs)
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture(scope="session")
def redis_sentinel_url(shared_tmp: Path) -> Iterator[str]:
    """A Redis Sentinel URL: SESSIONMW_TEST_REDIS_SENTINEL_URL, or a private master and sentinel on loopback."""
    url = os.environ.get("SESSIONMW_TEST_REDIS_SENTINEL_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    master = private_redis("redis master (sentinel)")
    if binary is None or master is None:
        missing("redis", "redis-server is needed for a private Redis Sentinel")
    assert binary is not None and master is not None
    import redis as redis_py

    port = free_port()
    conf = shared_tmp / f"sentinel-{port}.conf"  # sentinel rewrites its config file: a copy of its own
    sentinel = ServerProcess("redis-sentinel", lambda p: [binary, str(conf), "--sentinel"], port)
    try:
        master.start()
        conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
        sentinel.start()

        def ready() -> bool:
            with redis_py.Redis(port=port) as r:
                return bool(r.sentinel_get_master_addr_by_name("mymaster"))

        _wait_until("the private Redis Sentinel", ready)
        yield f"redis+sentinel://127.0.0.1:{port}/mymaster/0"
    finally:
        sentinel.stop()
        master.stop()


def private_memcached(name: str = "memcached") -> ServerProcess | None:
    """A memcached on a free loopback port (not started yet), or None when memcached is not installed."""
    binary = shutil.which("memcached") or ("/usr/bin/memcached" if os.path.exists("/usr/bin/memcached") else None)
    if binary is None:
        return None
    user = ["-u", "root"] if os.geteuid() == 0 else []
    return ServerProcess(
        name,
        lambda port: [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", *user],
        free_port(),
    )


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[ServerProcess | None]:
    """A private memcached, or None when none can be started."""
    yield from serve(private_memcached())


@pytest.fixture(scope="session")
def redis_url(redis_server: ServerProcess | None) -> str:
    """The URL of a Redis server for tests (a private one unless SESSIONMW_TEST_REDIS_URL is set)."""
    url = os.environ.get("SESSIONMW_TEST_REDIS_URL")
    if url:
        return url
    if redis_server is None:
        missing("redis", "redis-server is not on PATH and SESSIONMW_TEST_REDIS_URL is not set")
    assert redis_server is not None
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture(scope="session")
def memcached_url(memcached_server: ServerProcess | None) -> str:
    """The URL of a memcached server for tests."""
    url = os.environ.get("SESSIONMW_TEST_MEMCACHED_URL")
    if url:
        return url
    if memcached_server is None:
        missing(
            "memcached",
            "memcached is not installed (apt-get install memcached) and SESSIONMW_TEST_MEMCACHED_URL is not set",
        )
    assert memcached_server is not None
    return f"memcached://127.0.0.1:{memcached_server.port}"


def _sql_url(env: str, service: str) -> str:
    url = os.environ.get(env)
    if not url:
        missing(service, f"{env} is not set")
    assert url is not None
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL URL from SESSIONMW_TEST_POSTGRES_URL."""
    return _sql_url("SESSIONMW_TEST_POSTGRES_URL", "postgresql")


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """A MySQL/MariaDB URL from SESSIONMW_TEST_MYSQL_URL."""
    return _sql_url("SESSIONMW_TEST_MYSQL_URL", "mysql")


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.service("postgresql")),
    pytest.param("mysql", id="mysql", marks=pytest.mark.service("mysql")),
    pytest.param("redis", id="redis", marks=pytest.mark.service("redis")),
    pytest.param("memcached", id="memcached", marks=pytest.mark.service("memcached")),
]

#: Redis behind Sentinel and as a Cluster: for the backend-level suites (the middleware suites run
#: on the plain server; the backend is the same class).
REDIS_TOPOLOGIES = [
    pytest.param("redis-sentinel", id="redis-sentinel", marks=pytest.mark.service("redis")),
    pytest.param("redis-cluster", id="redis-cluster", marks=pytest.mark.service("redis")),
]


#: Tiered stores (a fast backend in front of a durable one): ``tiered-<fast>-<durable>[-n<write_every>]``.
#: :func:`backend_url_for` answers a :class:`~sessionmw.backends.tiered.TieredSpec` for them, which
#: ``open_backend``, ``SessionStore`` and the middlewares' ``backend=`` take as they take a URL.
TIERED = [
    pytest.param("tiered-memcached-sqlite", id="tiered-memcached-sqlite", marks=pytest.mark.service("memcached")),
    pytest.param("tiered-memcached-sqlite-n3", id="tiered-memcached-sqlite-n3", marks=pytest.mark.service("memcached")),
    pytest.param(
        "tiered-memcached-postgresql",
        id="tiered-memcached-postgresql",
        marks=[pytest.mark.service("memcached"), pytest.mark.service("postgresql")],
    ),
    pytest.param("tiered-redis-sqlite", id="tiered-redis-sqlite", marks=pytest.mark.service("redis")),
]


def tiered_parts(kind: str) -> tuple[str, str, int]:
    """Split a tiered kind into its fast kind, its durable kind and its write-every."""
    parts = kind.split("-")
    assert parts[0] == "tiered", kind
    write_every = int(parts[3][1:]) if len(parts) > 3 else 1
    return parts[1], parts[2], write_every


@pytest.fixture(scope="session")
def shared_tmp() -> Iterator[Path]:
    """A temporary directory for the whole test session (file and SQLite backends)."""
    d = Path(tempfile.mkdtemp(prefix="sessionmw-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def backend_url_for(kind: str, request: pytest.FixtureRequest, shared_tmp: Path) -> Any:
    """Return a backend URL of ``kind`` for one test (a :class:`TieredSpec` for a tiered kind)."""
    if kind.startswith("tiered-"):
        fast, durable, write_every = tiered_parts(kind)
        return TieredSpec(
            backend_url_for(fast, request, shared_tmp),
            backend_url_for(durable, request, shared_tmp),
            write_every=write_every,
        )
    if kind == "memory":
        return f"memory://test-{uuid.uuid4().hex[:8]}"
    if kind == "file":
        return f"file://{shared_tmp}/files"
    if kind == "sqlite":
        return f"sqlite:///{shared_tmp}/sessions.db"
    fixture = {
        "postgresql": "postgres_url",
        "mysql": "mysql_url",
        "redis": "redis_url",
        "memcached": "memcached_url",
        "redis-sentinel": "redis_sentinel_url",
        "redis-cluster": "redis_cluster_url",
    }[kind]
    return str(request.getfixturevalue(fixture))


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, shared_tmp: Path) -> str:
    """A backend URL, once per backend kind; pair it with the ``key_prefix`` fixture."""
    return backend_url_for(request.param, request, shared_tmp)


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of its own for each test, so tests never see each other's sessions."""
    return f"t{uuid.uuid4().hex[:10]}:"
