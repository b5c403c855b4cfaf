"""A backend server that dies mid-run: a clear 503, nothing raised through the server, and recovery.

The private redis-server and memcached of conftest are killed while an app is serving, then started
again on the same port; the same app object must answer again with no restart.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from ..conftest import ServerProcess
from .test_middleware_conformance import client_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("adapter", ["asgi", "wsgi", "flask"])
@pytest.mark.parametrize("service", ["redis", "memcached"])
def test_server_killed_mid_run_gives_503_then_recovers(
    adapter: str, service: str, request: pytest.FixtureRequest, key_prefix: str
) -> None:
    url = request.getfixturevalue(f"{service}_url")
    server: ServerProcess | None = request.getfixturevalue(f"{service}_server")
    if server is None or f"127.0.0.1:{server.port}" not in url:
        pytest.skip(f"{service} is not a private server of this test run; it cannot be killed here")
    try:
        with client_for(adapter, backend=url, key_prefix=key_prefix) as c:
            assert c.get("/inc").json() == {"n": 1}
            assert c.get("/inc").json() == {"n": 2}
            server.stop()
            for path in ("/inc", "/view", "/id"):
                started = time.monotonic()
                r = c.get(path)  # a test client re-raises app exceptions: none may escape
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert time.monotonic() - started < 10, "a dead server is an answer within seconds"
                assert r.headers["retry-after"].isdigit()
                assert r.headers["content-type"].startswith("text/plain")
                body = r.text
                assert body.count("\n") == 1 and service in body and "unavailable" in body, body
            r = c.get("/none")
            assert r.status_code == 200, "a route that never touches the session still works"
            server.start()
            # The old session lived only in the dead server's memory: the user gets a new one.
            r = c.get("/inc")
            assert r.status_code == 200 and r.json() == {"n": 1}
            assert c.get("/inc").json() == {"n": 2}
    finally:
        if not server.running:
            server.start()


def test_lock_timeout_and_outage_bodies_are_one_readable_line(redis_url: str, key_prefix: str) -> None:
    """The 503 body names the backend (no password) and says what to do."""
    with client_for("asgi", backend="redis://:hunter2@127.0.0.1:1/0", key_prefix=key_prefix) as c:
        c.cookies.set("session", _signed(), domain="testserver.local")
        r = c.get("/inc")
    assert r.status_code == 503
    assert "hunter2" not in r.text and "redis://" in r.text
    assert r.text.startswith("503 Service Unavailable: ")


def _signed() -> Any:
    from sessionmw.core.cookies import IdSigner, new_session_id

    return IdSigner(["test-secret"]).sign(new_session_id())
