"""The middleware conformance suite: every promise of the core, on every backend, through the adapters.

Parametrized over backends (conftest ``backend_url``) and, where the adapter matters, over the ASGI,
WSGI and Flask adapters.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.testclient import TestClient

from sessionmw import SessionMiddleware
from sessionmw.backends import open_backend
from sessionmw.core.cookies import IdSigner
from sessionmw.core.handles import handle_of
from sessionmw.core.locking import new_lock_token

from ..apps import SLOW_ENTERED, STARLETTE_ROUTES, make_flask_app, make_starlette_app, make_wsgi_app

ADAPTERS = ["asgi", "wsgi", "flask"]
SECRET = "test-secret"


@contextmanager
def client_for(adapter: str, **options: Any) -> Iterator[httpx2.Client]:
    """A test client for the test app on ``adapter`` with session ``options``."""
    options.setdefault("secret_key", SECRET)
    if adapter == "asgi":
        with TestClient(make_starlette_app(**options)) as client:
            yield client
        return
    app = make_wsgi_app(**options) if adapter == "wsgi" else make_flask_app(**options)
    try:
        with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as client:
            yield client
    finally:
        # As a server's shutdown would: without it every test's connections (a pool per app) stay
        # open until the process ends, and hundreds of apps exhaust PostgreSQL's max_connections.
        if adapter == "wsgi":
            app.close()
        else:
            state = app.extensions["sessionmw"]
            state.sweeper.close()
            state.driver.close()
            state.backend.close()


def set_cookie(response: httpx2.Response) -> str:
    values = response.headers.get_list("set-cookie")
    assert len(values) == 1, values
    return values[0]


def cookie_value(response: httpx2.Response, name: str = "session") -> str:
    m = re.search(rf"(?:^|, ){re.escape(name)}=([^;]*)", set_cookie(response))
    assert m, set_cookie(response)
    return m.group(1)


def put_cookie(client: httpx2.Client, value: str, name: str = "session") -> None:
    """Replace the client's session cookie (the jar files host-only cookies under testserver.local)."""
    client.cookies.clear()
    client.cookies.set(name, value, domain="testserver.local")


def sid_of(value: str) -> str:
    sid = IdSigner([SECRET]).unsign(value, None)
    assert sid is not None
    return sid


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_round_trip_across_requests(adapter: str, backend_url: str, key_prefix: str) -> None:
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix) as c:
        assert c.get("/inc").json() == {"n": 1}
        assert c.get("/inc").json() == {"n": 2}
        state = c.get("/view").json()
        assert state["session"] == {"n": 2}
        assert state["is_new"] is False
        assert c.get("/inc").json() == {"n": 3}


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_cookie_attributes_exactly_as_configured(adapter: str, backend_url: str, key_prefix: str) -> None:
    with client_for(
        adapter,
        backend=backend_url,
        key_prefix=key_prefix,
        cookie_prefix="site1_",
        session_cookie="sid",
        path="/",
        domain="testserver.local",
        max_age=3600,
        https_only=True,
        same_site="strict",
    ) as c:
        r = c.get("/inc")
        header = set_cookie(r)
        assert header.startswith("site1_sid=")
        attrs = header.split("; ")[1:]
        assert attrs == ["path=/", "Max-Age=3600", "httponly", "samesite=strict", "secure", "domain=testserver.local"]


def test_flask_cookie_attributes_follow_flask_config(backend_url: str, key_prefix: str) -> None:
    app = make_flask_app(
        secret_key=SECRET,
        backend=backend_url,
        key_prefix=key_prefix,
        cookie_prefix="site1_",
        session_cookie="sid",
        path="/app",
        domain="example.org",
        https_only=True,
        same_site="Strict",
    )
    c = app.test_client()
    r = c.get("/inc")
    header = r.headers["Set-Cookie"]
    assert header.startswith("site1_sid=")
    assert "Path=/app" in header and "Domain=example.org" in header
    assert "Secure" in header and "HttpOnly" in header and "SameSite=Strict" in header
    assert "Expires" not in header  # not permanent: a browser-session cookie, as Flask does


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_untouched_session_sets_no_cookie_and_writes_nothing(adapter: str, backend_url: str, key_prefix: str) -> None:
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix) as c:
        r = c.get("/none")
        assert "set-cookie" not in r.headers and "vary" not in r.headers
        c.get("/inc")
        sid = sid_of(c.cookies["session"])
        backend = open_backend(backend_url, key_prefix=key_prefix)
        before = backend.load(handle_of(sid))
        r = c.get("/none")
        assert "set-cookie" not in r.headers
        r = c.get("/view")
        assert "set-cookie" not in r.headers and "Cookie" in r.headers["vary"]
        assert backend.load(handle_of(sid)) == before
        backend.close()


def test_two_cookie_prefixes_on_one_host_stay_apart(backend_url: str, key_prefix: str) -> None:
    def mounted(prefix: str) -> Starlette:
        return Starlette(
            routes=STARLETTE_ROUTES,
            middleware=[
                Middleware(
                    SessionMiddleware,
                    secret_key=SECRET,
                    backend=backend_url,
                    key_prefix=key_prefix,
                    cookie_prefix=prefix,
                )
            ],
        )

    a, b = mounted("a_"), mounted("b_")
    app = Starlette(routes=[Mount("/a", a), Mount("/b", b)])
    with TestClient(app) as c:
        assert c.get("/a/inc").json() == {"n": 1}
        assert c.get("/a/inc").json() == {"n": 2}
        assert c.get("/b/inc").json() == {"n": 1}
        assert set(c.cookies.keys()) == {"a_session", "b_session"}
        assert c.get("/a/view").json()["session"] == {"n": 2}
        assert c.get("/b/view").json()["session"] == {"n": 1}
        # Starlette sends no lifespan events into Mount()ed apps: close their backends by hand.
        for sub in (a, b):
            layer: Any = sub.middleware_stack
            while not isinstance(layer, SessionMiddleware):
                layer = layer.app
            assert c.portal is not None
            c.portal.call(layer.aclose)


def test_two_key_prefixes_on_one_backend_stay_apart(backend_url: str, key_prefix: str) -> None:
    with (
        client_for("asgi", backend=backend_url, key_prefix=key_prefix + "a:") as a,
        client_for("asgi", backend=backend_url, key_prefix=key_prefix + "b:") as b,
    ):
        a.get("/inc")
        a.get("/inc")
        put_cookie(b, a.cookies["session"])  # site B is shown site A's cookie
        state = b.get("/view").json()
        assert state["session"] == {} and state["is_new"] is True
        assert b.get("/inc").json() == {"n": 1}
        assert b.cookies["session"] != a.cookies["session"]
        assert a.get("/view").json()["session"] == {"n": 2}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_regenerate_keeps_data_under_a_new_id(adapter: str, backend_url: str, key_prefix: str) -> None:
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix) as c:
        c.get("/inc")
        old_cookie = c.cookies["session"]
        r = c.get("/regen")
        new_cookie = cookie_value(r)
        assert sid_of(new_cookie) != sid_of(old_cookie)
        assert r.json()["session"] == {"n": 1}
        assert c.get("/view").json()["session"] == {"n": 1}
        backend = open_backend(backend_url, key_prefix=key_prefix)
        assert backend.load(handle_of(sid_of(old_cookie))) is None, "the old id must be destroyed"
        backend.close()
        put_cookie(c, old_cookie)
        assert c.get("/view").json()["session"] == {}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_invalidate_destroys_and_expires_the_cookie(adapter: str, backend_url: str, key_prefix: str) -> None:
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix) as c:
        c.get("/inc")
        sid = sid_of(c.cookies["session"])
        old_cookie = c.cookies["session"]
        r = c.get("/invalidate")
        header = set_cookie(r)
        assert re.search(r"(?i)expires=Thu, 01 Jan 1970 00:00:00 GMT|max-age=0", header), header
        backend = open_backend(backend_url, key_prefix=key_prefix)
        assert backend.load(handle_of(sid)) is None
        backend.close()
        put_cookie(c, old_cookie)
        assert c.get("/view").json()["session"] == {}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_bind_user_regenerates_and_records_the_user(adapter: str, backend_url: str, key_prefix: str) -> None:
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix) as c:
        c.get("/inc")
        before = sid_of(c.cookies["session"])
        state = c.get("/login/alice").json()
        assert state["user"] == "alice" and state["session"] == {"n": 1}
        after = sid_of(c.cookies["session"])
        assert after != before
        assert c.get("/view").json()["user"] == "alice"
        backend = open_backend(backend_url, key_prefix=key_prefix)
        record = backend.load(handle_of(after))
        backend.close()
        assert record is not None and record.user_id == "alice"


def _timed_get(c: httpx2.Client, path: str) -> tuple[dict[str, Any], float, float]:
    """GET ``path``: the JSON answer, and the monotonic times just before and just after the request."""
    before = time.monotonic()
    body = c.get(path).json()
    return body, before, time.monotonic()


# The timeout tests below run on a busy CI machine, where one request may take longer than the gaps
# between requests. So each assertion is made only when the measured times decide the answer: the
# session's own clock reads somewhere between a request's `before` and `after`.


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_idle_timeout_ends_the_session(adapter: str, backend_url: str, key_prefix: str) -> None:
    idle = 1.0
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix, idle_timeout=idle, touch_interval=0.2) as c:
        _, first_before, _ = _timed_get(c, "/inc")
        time.sleep(0.5)
        body, _, after = _timed_get(c, "/inc")
        if after - first_before < idle:  # last access >= first_before, this load <= after: still alive
            assert body == {"n": 2}, "activity inside the idle timeout keeps the session"
        time.sleep(idle + 0.4)  # now no clock reading can put the last access within `idle`
        state = c.get("/view").json()
        assert state["session"] == {} and state["is_new"] is True


def test_absolute_timeout_ends_an_active_session(backend_url: str, key_prefix: str) -> None:
    absolute = 1.5
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix, absolute_timeout=absolute) as c:
        _, created_before, created_after = _timed_get(c, "/inc")
        n = 1
        while True:  # a request every 0.3 s: never idle, yet the session must end at its absolute time
            time.sleep(0.3)
            body, before, after = _timed_get(c, "/inc")
            if body["n"] == 1:
                break
            assert body["n"] == n + 1
            n = body["n"]
            assert before < created_after + absolute + 0.05, "the session outlived its absolute timeout"
        assert after >= created_before + absolute - 0.05, "the session ended before its absolute timeout"


def test_read_only_route_does_not_write_and_refuses_changes(backend_url: str, key_prefix: str) -> None:
    for adapter in ADAPTERS:
        with client_for(adapter, backend=backend_url, key_prefix=key_prefix) as c:
            c.get("/inc")
            r = c.get("/ro-write")
            assert r.status_code == 409 and "read-only" in r.json()["error"], adapter
            assert c.get("/view").json()["session"] == {"n": 1}


def test_read_only_debug_writes_and_logs_the_changed_keys(
    backend_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix, read_only_debug=True) as c:
        c.get("/inc")
        with caplog.at_level(logging.WARNING, logger="sessionmw"):
            r = c.get("/ro-write")
        assert r.json() == {"error": None}
        assert any("/ro-write" in m and "read-only" in m and "'x'" in m for m in caplog.messages), caplog.messages
        assert c.get("/view").json()["session"] == {"n": 1, "x": 1}


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def holding(c: Any, seconds: float) -> tuple[threading.Thread, list[Any]]:
    """Start ``/slow`` in a thread; return once it holds the session's lock (not after a guessed sleep)."""
    seen = SLOW_ENTERED.count
    started = _in_thread(lambda: c.get("/slow", params={"t": str(seconds)}))
    SLOW_ENTERED.past(seen)
    return started


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_lock_timeout_gives_503_with_retry_after(adapter: str, backend_url: str, key_prefix: str) -> None:
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix, lock_timeout=0.5) as c:
        c.get("/inc")
        t, out = holding(c, 2)
        started = time.monotonic()
        r = c.get("/inc")
        waited = time.monotonic() - started
        t.join()
        assert r.status_code == 503
        assert r.headers["retry-after"].isdigit()
        assert r.headers["content-type"].startswith("text/plain")
        assert r.text.count("\n") == 1 and "lock" in r.text
        assert waited < 1.9, "the request must give up at lock_timeout, not wait for the holder"
        assert out[0].json() == {"n": 2}
        assert c.get("/view").json()["session"] == {"n": 2}


def test_read_only_route_answers_while_the_lock_is_held(backend_url: str, key_prefix: str) -> None:
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix, lock_timeout=0.3) as c:
        c.get("/inc")
        t, _ = holding(c, 1.5)
        r = c.get("/view")
        assert r.status_code == 200 and r.json()["session"] == {"n": 1}
        t.join()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_dead_holders_lock_is_broken_after_lock_expire(adapter: str, backend_url: str, key_prefix: str) -> None:
    with client_for(adapter, backend=backend_url, key_prefix=key_prefix, lock_timeout=10) as c:
        c.get("/inc")
        sid = sid_of(c.cookies["session"])
        dead = open_backend(backend_url, key_prefix=key_prefix)
        assert dead.lock_and_load(handle_of(sid), new_lock_token(), 1.0)[0]  # a holder that will never release
        started = time.monotonic()
        assert c.get("/inc").json() == {"n": 2}
        waited = time.monotonic() - started
        assert 0.5 < waited < 5, waited
        dead.close()


class Queued:
    """A listener object that counts the requests queued for a lock (the drivers call ``waiting``)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.now = 0

    def __call__(self, event: Any) -> None:
        """Events are not needed here."""

    def waiting(self, delta: int) -> None:
        with self.cond:
            self.now += delta
            self.cond.notify_all()

    def reach(self, n: int, timeout: float = 15.0) -> None:
        """Return once ``n`` requests are queued."""
        with self.cond:
            assert self.cond.wait_for(lambda: self.now >= n, timeout), f"{n} request(s) never queued"


def test_max_waiters_fails_fast(backend_url: str, key_prefix: str) -> None:
    queued = Queued()
    options = {"lock_timeout": 5, "max_waiters": 1, "listeners": [queued]}
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix, **options) as c:
        c.get("/inc")
        holder, _ = holding(c, 1.5)
        waiter, waited = _in_thread(lambda: c.get("/inc"))
        queued.reach(1)  # the waiter is in the queue, and the queue is full
        started = time.monotonic()
        r = c.get("/inc")
        assert r.status_code == 503 and time.monotonic() - started < 1.0
        assert "too many" in r.text
        holder.join()
        waiter.join()
        assert waited[0].status_code == 200


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_garbage_cookies_start_a_fresh_session(adapter: str, backend_url: str, key_prefix: str) -> None:
    signer = IdSigner([SECRET])
    forged = IdSigner(["another-key"]).sign("A" * 43)
    truncated = signer.sign("B" * 43)[:-5]
    for value in ["garbage", forged, truncated, "x" * 10_000, "", "null", signer.sign("not-a-session-id")]:
        with client_for(adapter, backend=backend_url, key_prefix=key_prefix) as c:
            put_cookie(c, value)
            r = c.get("/view")
            assert r.status_code == 200, value[:20]
            assert r.json()["session"] == {} and r.json()["is_new"] is True
            assert c.get("/inc").json() == {"n": 1}


def test_unknown_but_validly_signed_id_is_never_adopted(backend_url: str, key_prefix: str) -> None:
    signer = IdSigner([SECRET])
    planted = signer.sign("C" * 43)
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix) as c:
        put_cookie(c, planted)
        r = c.get("/inc")
        assert r.json() == {"n": 1}
        assert sid_of(cookie_value(r)) != "C" * 43


def test_secret_key_rotation_keeps_sessions(backend_url: str, key_prefix: str) -> None:
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix, secret_key="old") as c:
        c.get("/inc")
        cookie = c.cookies["session"]
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix, secret_key=["new", "old"]) as c:
        put_cookie(c, cookie)
        assert c.get("/inc").json() == {"n": 2}
    with client_for("asgi", backend=backend_url, key_prefix=key_prefix, secret_key="new") as c:
        put_cookie(c, cookie)
        assert c.get("/inc").json() == {"n": 1}, "a retired key no longer verifies"


def test_a_test_client_without_with_block(backend_url: str, key_prefix: str) -> None:
    # Starlette's TestClient used without ``with`` runs every request on an event loop of its own
    # and closes it afterwards: a backend's connections of one request's loop are useless to the next.
    client = TestClient(make_starlette_app(secret_key=SECRET, backend=backend_url, key_prefix=key_prefix))
    for n in range(1, 5):
        response = client.get("/inc")
        assert response.status_code == 200, response.text
        assert response.json() == {"n": n}
