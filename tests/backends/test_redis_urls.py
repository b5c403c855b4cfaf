"""The Redis URL forms of the issue against real servers: a unix socket, a password and a database
number, and TLS (``rediss://`` with a CA of the test's own), through both backends and the adapters.

Each server is a private ``redis-server`` started here: one listening only on a unix socket and
asking for a password, one speaking only TLS on a loopback port with a certificate made by
``openssl`` for 127.0.0.1. Last, the ``failover_wait`` option of Sentinel and Cluster URLs, which needs
no server: its default, its errors, and its bound.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sessionmw.backends import Record, open_async_backend, open_backend
from sessionmw.backends.redis.failover import UntilDeadline
from sessionmw.core.cookies import new_session_id
from sessionmw.core.errors import BackendUnavailable, ConfigError
from sessionmw.core.locking import new_lock_token

from ..conftest import ServerProcess, free_port, missing, wait_port
from ..integration.test_middleware_conformance import ADAPTERS, client_for

pytestmark = pytest.mark.service("redis")

PASSWORD = "s3cret/with:odd@chars"
QUOTED = "s3cret%2Fwith%3Aodd%40chars"


def rec(data: bytes) -> Record:
    now = time.time()
    return Record(data=data, created=now, last_access=now, first_ip="127.0.0.1")


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis", "redis-server is not on PATH")
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def unix_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private redis-server on a unix socket only (no TCP port), with a password."""
    binary = redis_binary()
    folder = tmp_path_factory.mktemp("redis-unix")
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not create its unix socket")
            time.sleep(0.05)
        yield sock
    finally:
        proc.kill()
        proc.wait()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A private redis-server speaking TLS only, with a certificate for 127.0.0.1; (port, CA file)."""
    binary = redis_binary()
    if shutil.which("openssl") is None:
        missing("redis", "openssl is needed to make the TLS test certificates")
    d = tmp_path_factory.mktemp("redis-tls")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=sessionmw test CA", cwd=d)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    server = ServerProcess(
        "redis-server (TLS)",
        lambda port: [
            binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(d / "server.pem"), "--tls-key-file", str(d / "server.key"),
            "--tls-ca-cert-file", str(d / "ca.pem"), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(d),
        ],
        free_port(),
    )  # fmt: skip
    server.start()
    try:
        yield server.port, d / "ca.pem"
    finally:
        server.stop()


def round_trip(url: str, key_prefix: str) -> None:
    """Create, lock and load, save, load back: sync, then asyncio."""
    b = open_backend(url, key_prefix=key_prefix)
    sid, token = new_session_id(), new_lock_token()
    try:
        assert b.create(sid, rec(b'{"n":1}'), 60)
        locked, got = b.lock_and_load(sid, token, 30)
        assert locked and got is not None and got.data == b'{"n":1}'
        assert b.save(sid, rec(b'{"n":2}'), token, 60)
        got = b.load(sid)
        assert got is not None and got.data == b'{"n":2}'
    finally:
        b.close()

    async def twin() -> None:
        ab = open_async_backend(url, key_prefix=key_prefix)
        try:
            locked, got = await ab.alock_and_load(sid, token, 30)
            assert locked and got is not None and got.data == b'{"n":2}'
            assert await ab.asave(sid, rec(b'{"n":3}'), token, 60)
            got = await ab.aload(sid)
            assert got is not None and got.data == b'{"n":3}'
        finally:
            await ab.aclose()

    asyncio.run(twin())


def test_unix_socket_with_password_and_database(unix_socket: Path, key_prefix: str) -> None:
    url = f"unix://:{QUOTED}@{unix_socket}?db=3"
    round_trip(url, key_prefix)
    with redis.Redis(unix_socket_path=str(unix_socket), password=PASSWORD, db=3) as raw:
        assert raw.keys(f"{key_prefix}*"), "the session is in database 3"
    with redis.Redis(unix_socket_path=str(unix_socket), password=PASSWORD, db=0) as raw:
        assert not raw.keys(f"{key_prefix}*"), "and not in database 0"


@pytest.mark.parametrize("credentials", ["wrong password", "no password"])
def test_a_wrong_or_missing_password_is_a_clear_error(unix_socket: Path, key_prefix: str, credentials: str) -> None:
    url = f"unix://:wrong@{unix_socket}?db=3" if credentials == "wrong password" else f"unix://{unix_socket}?db=3"

    def check(info: pytest.ExceptionInfo[BackendUnavailable]) -> None:
        message = str(info.value)
        shown = url.split("?")[0].replace(":wrong@", ":***@")  # the name hides the password, not the query
        assert message.startswith(f"redis backend {shown} is unavailable: "), message
        assert "authentication failed" in message and "redis://:PASSWORD@host" in message, message

    b = open_backend(url, key_prefix=key_prefix)
    with pytest.raises(BackendUnavailable) as info:
        b.load(new_session_id())
    check(info)
    b.close()

    async def twin() -> None:
        ab = open_async_backend(url, key_prefix=key_prefix)
        with pytest.raises(BackendUnavailable) as info:
            await ab.aload(new_session_id())
        check(info)
        await ab.aclose()

    asyncio.run(twin())


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_on_a_unix_socket(adapter: str, unix_socket: Path, key_prefix: str) -> None:
    with client_for(adapter, backend=f"unix://:{QUOTED}@{unix_socket}?db=2", key_prefix=key_prefix) as c:
        assert c.get("/inc").json() == {"n": 1}
        assert c.get("/inc").json() == {"n": 2}


def test_rediss_with_the_servers_ca(tls_server: tuple[int, Path], key_prefix: str) -> None:
    port, ca = tls_server
    round_trip(f"rediss://127.0.0.1:{port}/1?ssl_ca_certs={ca}", key_prefix)


def test_rediss_refuses_an_unknown_certificate_authority(tls_server: tuple[int, Path], key_prefix: str) -> None:
    # Without the test CA, the system's CAs do not vouch for the server: the connection is refused.
    port, _ = tls_server
    b = open_backend(f"rediss://127.0.0.1:{port}/1", key_prefix=key_prefix)
    with pytest.raises(BackendUnavailable, match="is unavailable"):
        b.load(new_session_id())
    b.close()


def test_plain_redis_to_a_tls_port_is_a_clear_error(tls_server: tuple[int, Path], key_prefix: str) -> None:
    port, _ = tls_server
    b = open_backend(f"redis://127.0.0.1:{port}/1?socket_timeout=1&connect_timeout=1", key_prefix=key_prefix)
    with pytest.raises(BackendUnavailable, match=f"redis backend redis://127.0.0.1:{port}/1"):
        b.load(new_session_id())
    b.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_over_tls(adapter: str, tls_server: tuple[int, Path], key_prefix: str) -> None:
    port, ca = tls_server
    assert wait_port(port)
    with client_for(adapter, backend=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", key_prefix=key_prefix) as c:
        assert c.get("/inc").json() == {"n": 1}
        assert c.get("/inc").json() == {"n": 2}


# -- failover_wait: how long a Sentinel or Cluster command waits for a new master -------------------


@pytest.mark.parametrize(
    ("url", "wait"),
    [
        pytest.param("redis+sentinel://s1:26379/mymaster/0", 5.0, id="sentinel-default"),
        pytest.param("redis+sentinel://s1:26379/mymaster/0?failover_wait=2.5", 2.5, id="sentinel-given"),
        pytest.param("redis+sentinel://s1:26379/mymaster/0?failover_wait=0", 0.0, id="sentinel-off"),
        pytest.param("redis+cluster://h1:7000,h2:7001", 5.0, id="cluster-default"),
        pytest.param("redis+cluster://h1:7000,h2:7001?failover_wait=10", 10.0, id="cluster-given"),
    ],
)
def test_failover_wait_is_read_from_sentinel_and_cluster_urls(url: str, wait: float) -> None:
    b: Any = open_backend(url, key_prefix="p:")
    assert b.config.failover_wait == wait and b.failover_wait == wait
    b.close()

    async def twin() -> None:
        ab: Any = open_async_backend(url, key_prefix="p:")
        assert ab.failover_wait == wait
        await ab.aclose()

    asyncio.run(twin())


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?failover_wait=5",
        "rediss://127.0.0.1:6380/0?failover_wait=5",
        "unix:///run/redis.sock?failover_wait=5",
    ],
)
def test_failover_wait_on_one_server_is_an_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigError, match="failover_wait is for redis\\+sentinel:// and redis\\+cluster://") as info:
        open_backend(url, key_prefix="p:")
    assert info.value.option == "failover_wait"


@pytest.mark.parametrize("value", ["-1", "soon", "", "inf", "nan"])
@pytest.mark.parametrize("scheme", ["redis+sentinel://s1:26379/mymaster", "redis+cluster://h1:7000"])
def test_a_bad_failover_wait_is_an_error_naming_it(scheme: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"failover_wait={value!r} is not valid") as info:
        open_backend(f"{scheme}?failover_wait={value}", key_prefix="p:")
    assert info.value.option == "failover_wait"


def test_failover_wait_never_exceeds_the_lock_timeout_it_is_capped_to() -> None:
    b: Any = open_backend("redis+sentinel://s1:26379/mymaster?failover_wait=30", key_prefix="p:")
    b.cap_failover_wait(120.0)  # the default lock_timeout: the URL's wait stands
    assert b.failover_wait == 30.0
    b.cap_failover_wait(2.0)
    assert b.failover_wait == 2.0
    b.close()


def test_the_wait_sleeps_with_back_off_and_never_past_its_deadline() -> None:
    now = [100.0]
    backoff = UntilDeadline(101.0, clock=lambda: now[0])
    pauses = [backoff.compute(n) for n in range(1, 8)]
    assert all(0 < p <= 0.5 for p in pauses) and pauses[0] <= 0.1, pauses  # 50 ms doubling, at most 0.5 s
    now[0] = 100.9
    assert backoff.compute(8) <= 0.1 + 1e-9 and not backoff.late()
    now[0] = 101.0
    assert backoff.compute(9) == 0.0 and backoff.late()
