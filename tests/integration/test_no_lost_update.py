"""No lost update over real sockets: real servers with several workers, many clients, one cookie.

8 clients x 25 concurrent increments on ONE session must end at exactly 200. Without the session
lock, read-modify-write races lose increments (Starlette's and Flask's own sessions end far below).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from sessionmw.backends import TieredSpec

from ..conftest import BACKENDS, TIERED, backend_url_for, free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 8
INCREMENTS = 25

pytestmark = pytest.mark.slow


@contextmanager
def serve(argv: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    """Run a server process, wait until it answers, stop it afterwards."""
    full_env = {**os.environ, **env}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                log.seek(0)
                out = log.read().decode(errors="replace")
                pytest.fail(f"server exited early ({proc.returncode}):\n{out[-3000:]}")
            try:
                if httpx2.get(base + "/none", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not answer within 30 s")
            time.sleep(0.1)
        yield base
    finally:
        stop_process(proc, 15)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-2000:]
        log.close()
        if "Traceback" in tail:
            print(tail)


def hammer(base: str) -> int:
    """Create one session, increment it from 8 clients at once, return the final count."""
    with httpx2.Client(base_url=base, timeout=60) as first:
        assert first.get("/set", params={"k": "who", "v": "test"}).status_code == 200
        cookies = dict(first.cookies)
    assert cookies, "the first request must set the session cookie"
    errors: list[str] = []
    barrier = threading.Barrier(CLIENTS)

    def client() -> None:
        with httpx2.Client(base_url=base, cookies=cookies, timeout=60) as c:
            barrier.wait()
            for _ in range(INCREMENTS):
                r = c.get("/inc")
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:5]
    with httpx2.Client(base_url=base, cookies=cookies, timeout=60) as last:
        state = last.get("/view").json()
    assert state["session"]["who"] == "test"
    return int(state["session"]["n"])


def env_for(url: Any, key_prefix: str) -> dict[str, str]:
    """The app's options as environment variables; a tiered pair becomes SESSIONMW_DURABLE_BACKEND too."""
    env = {
        "SESSIONMW_SECRET_KEY": "socket-test",
        "SESSIONMW_KEY_PREFIX": key_prefix,
        "SESSIONMW_LOCK_TIMEOUT": "60",
    }
    if isinstance(url, TieredSpec):
        assert isinstance(url.fast, str) and isinstance(url.durable, str)
        env["SESSIONMW_BACKEND"] = url.fast
        env["SESSIONMW_DURABLE_BACKEND"] = url.durable
        env["SESSIONMW_DURABLE_WRITE_EVERY"] = str(url.write_every)
    else:
        env["SESSIONMW_BACKEND"] = url
    return env


#: Tiered: memcached in front of SQLite (every write through, and every third) and of PostgreSQL.
UVICORN_TIERED = [p for p in TIERED if p.id.startswith("tiered-memcached-")]
UVICORN_BACKENDS = [p for p in BACKENDS if p.id != "memory"] + UVICORN_TIERED


@pytest.mark.parametrize("kind", UVICORN_BACKENDS)
def test_uvicorn_two_workers(kind: str, request: pytest.FixtureRequest, shared_tmp: Path, key_prefix: str) -> None:
    url = backend_url_for(kind, request, shared_tmp)
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "tests.apps:starlette_from_env", "--factory",
        "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with serve(argv, env_for(url, key_prefix), port) as base:
        assert hammer(base) == CLIENTS * INCREMENTS


@pytest.mark.parametrize("kind", [p for p in BACKENDS if p.id in ("file", "sqlite", "redis", "memcached")])
def test_gunicorn_flask_two_workers_four_threads(
    kind: str, request: pytest.FixtureRequest, shared_tmp: Path, key_prefix: str
) -> None:
    url = backend_url_for(kind, request, shared_tmp)
    port = free_port()
    argv = [
        sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "4",
        "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "tests.apps:flask_app",
    ]  # fmt: skip
    env = {**env_for(url, key_prefix), "SESSIONMW_TEST_APP": "flask"}
    with serve(argv, env, port) as base:
        assert hammer(base) == CLIENTS * INCREMENTS


def test_read_only_route_answers_while_another_request_holds_the_lock(shared_tmp: Path, key_prefix: str) -> None:
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "tests.apps:starlette_from_env", "--factory",
        "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with serve(argv, env_for(f"file://{shared_tmp}/ro", key_prefix), port) as base:
        with httpx2.Client(base_url=base, timeout=30) as c:
            c.get("/inc")
            holder = threading.Thread(target=lambda: c.get("/slow", params={"t": "2"}))
            holder.start()
            time.sleep(0.5)
            started = time.monotonic()
            r = c.get("/view")
            elapsed = time.monotonic() - started
            holder.join()
        assert r.status_code == 200 and r.json()["session"]["n"] == 1
        assert elapsed < 1.0, "the read-only request must not wait for the lock"
