"""rotate_every: an old session gets a new id; its old id leads there for rotate_grace, and is stale after.

On every backend (tiered stores too), through the ASGI, WSGI and Flask adapters. Times are short
(tenths of a second) and every wait is past the threshold it waits for: the tests assert what happens
on either side of rotate_every and rotate_grace, never how long anything took.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from sessionmw import SessionStore
from sessionmw.backends import open_backend
from sessionmw.core.envelope import AtRest, is_forward
from sessionmw.core.events import SessionEvent
from sessionmw.core.handles import handle_of

from ..apps import make_wsgi_app
from ..conftest import BACKENDS, TIERED, backend_url_for
from .test_middleware_conformance import ADAPTERS, SECRET, client_for, put_cookie, sid_of

EVERY = 0.3  # rotate_every in these tests
PAST = 0.45  # a wait past it
#: For tests whose requests after a rotation must all come before the next one is due, even on a
#: loaded machine.
LONG_EVERY = 2.5
LONG_PAST = 2.65


@pytest.fixture(params=[*BACKENDS, *TIERED])
def store_url(request: pytest.FixtureRequest, shared_tmp: Path) -> Any:
    """A backend URL (a TieredSpec for a tiered kind), once per backend kind."""
    return backend_url_for(request.param, request, shared_tmp)


class Recorder:
    """A listener keeping every event."""

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: SessionEvent) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: str) -> list[SessionEvent]:
        with self.lock:
            return [e for e in self.events if e.kind == kind]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_old_session_gets_a_new_id_and_the_old_id_leads_there_within_the_grace(
    adapter: str, store_url: Any, key_prefix: str
) -> None:
    rec = Recorder()
    options = {"backend": store_url, "key_prefix": key_prefix, "rotate_every": LONG_EVERY, "listeners": [rec]}
    with client_for(adapter, **options) as tab1, client_for(adapter, **options) as tab2:
        assert tab1.get("/inc").json() == {"n": 1}
        old_cookie = tab1.cookies["session"]
        old = sid_of(old_cookie)
        assert tab1.get("/inc").json() == {"n": 2}
        assert sid_of(tab1.cookies["session"]) == old, "not due yet"
        time.sleep(LONG_PAST)
        assert tab1.get("/inc").json() == {"n": 3}
        new = sid_of(tab1.cookies["session"])
        assert new != old
        (rotated,) = rec.of("rotated")
        assert rotated.handle == handle_of(new) and rotated.path == "/inc"

        # Another tab still carrying the old cookie lands in the new session and is given its cookie.
        put_cookie(tab2, old_cookie)
        r = tab2.get("/inc")
        assert r.json() == {"n": 4}
        assert sid_of(tab2.cookies["session"]) == new
        assert tab2.get("/view").json()["id"] == new
        assert tab1.get("/inc").json() == {"n": 5}
        assert not rec.of("stale_id")

        backend = open_backend(store_url, key_prefix=key_prefix)
        try:
            forward = backend.load(handle_of(old))
            assert forward is not None and is_forward(forward), "the old handle holds a forward"
            assert new.encode() not in forward.data and handle_of(new).encode() not in forward.data
            assert AtRest.follow(forward, old) is not None
        finally:
            backend.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_after_the_grace_the_old_id_is_dead_and_its_use_is_a_stale_id_event(
    adapter: str, store_url: Any, key_prefix: str
) -> None:
    rec = Recorder()
    options = {
        "backend": store_url,
        "key_prefix": key_prefix,
        "rotate_every": EVERY,
        "rotate_grace": 0.2,
        "listeners": [rec],
    }
    with client_for(adapter, **options) as owner, client_for(adapter, **options) as thief:
        owner.get("/inc")
        owner.get("/login/alice")
        stolen = owner.cookies["session"]
        time.sleep(PAST)
        assert owner.get("/inc").json() == {"n": 2}
        assert owner.cookies["session"] != stolen
        time.sleep(0.3)  # past rotate_grace
        put_cookie(thief, stolen)
        state = thief.get("/view").json()
        assert state["is_new"] and state["session"] == {} and state["user"] is None, "a fresh session"
        (stale,) = rec.of("stale_id")
        assert stale.handle == handle_of(sid_of(stolen)) and stale.user_id == "alice"
        assert thief.get("/inc").json() == {"n": 1}, "the thief's writes go to a new session"
        assert len(rec.of("stale_id")) == 2, "every later use is reported too"
        with SessionStore(store_url, key_prefix=key_prefix) as store:
            handles = [i.sid for i in store.list_sessions(user_id="alice")]
        assert handles == [handle_of(sid_of(owner.cookies["session"]))], "the forward is no session now"
        assert owner.get("/inc").json() == {"n": 3}, "the owner's session is untouched"


def test_parallel_requests_with_the_old_cookie_all_land_in_the_new_session(store_url: Any, key_prefix: str) -> None:
    app = make_wsgi_app(
        secret_key=SECRET, backend=store_url, key_prefix=key_prefix, rotate_every=LONG_EVERY, lock_timeout=30
    )

    def client() -> httpx2.Client:
        return httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver")

    with client() as first:
        assert first.get("/inc").json() == {"n": 1}
        old_cookie = first.cookies["session"]
    time.sleep(LONG_PAST)
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def tab() -> None:
        try:
            with client() as c:
                put_cookie(c, old_cookie)
                n = c.get("/inc").json()["n"]
                results.append((n, sid_of(c.cookies["session"])))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(n for n, _ in results) == list(range(2, 10)), "no tab was logged out, no update lost"
    ids = {sid for _, sid in results}
    assert len(ids) == 1 and sid_of(old_cookie) not in ids, "one rotation; every tab got the new cookie"


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("login", ["/regen", "/login/bob"])
def test_login_rotation_kills_the_old_id_at_once(adapter: str, login: str, store_url: Any, key_prefix: str) -> None:
    rec = Recorder()
    options = {"backend": store_url, "key_prefix": key_prefix, "rotate_every": EVERY, "listeners": [rec]}
    with client_for(adapter, **options) as c, client_for(adapter, **options) as other:
        c.get("/inc")
        before = c.cookies["session"]
        time.sleep(PAST)  # rotation is due too: regenerate() and bind_user() still leave no grace
        c.get(login)
        assert c.cookies["session"] != before
        put_cookie(other, before)
        assert other.get("/view").json()["is_new"], "no grace: the old id is dead at once (session fixation)"
        assert not rec.of("rotated") and not rec.of("stale_id")
        assert [e.handle for e in rec.of("missing")] == [handle_of(sid_of(before))]
        assert c.get("/inc").json() == {"n": 2}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_read_only_requests_do_not_rotate(adapter: str, store_url: Any, key_prefix: str) -> None:
    options = {"backend": store_url, "key_prefix": key_prefix, "rotate_every": EVERY}
    with client_for(adapter, **options) as c:
        c.get("/inc")
        sid = sid_of(c.cookies["session"])
        time.sleep(PAST)
        r = c.get("/view")
        assert r.json()["id"] == sid and "set-cookie" not in r.headers
        assert c.get("/inc").json() == {"n": 2}
        assert sid_of(c.cookies["session"]) != sid, "the next read-write request rotates"


def test_without_rotate_every_ids_never_rotate(store_url: Any, key_prefix: str) -> None:
    with client_for("wsgi", backend=store_url, key_prefix=key_prefix) as c:
        c.get("/inc")
        sid = sid_of(c.cookies["session"])
        time.sleep(PAST)
        c.get("/inc")
        assert sid_of(c.cookies["session"]) == sid


def test_the_forward_a_rotation_leaves_is_not_listed_nor_counted(store_url: Any, key_prefix: str) -> None:
    options = {"backend": store_url, "key_prefix": key_prefix, "rotate_every": EVERY, "rotate_grace": 30}
    with client_for("wsgi", **options) as c:
        c.get("/login/ann")
        old = handle_of(sid_of(c.cookies["session"]))
        time.sleep(PAST)
        c.get("/inc")
        new = handle_of(sid_of(c.cookies["session"]))
        assert new != old
        raw = open_backend(store_url, key_prefix=key_prefix)
        forward = raw.load(old)
        raw.close()
        assert forward is not None and is_forward(forward), "the old id forwards for its grace"
        if getattr(store_url, "write_every", 1) > 1:
            return  # a tiered store writing through every n writes lists from a durable tier that lags
        with SessionStore(store_url, key_prefix=key_prefix) as store:
            assert [i.sid for i in store.list_sessions()] == [new]
            assert [i.sid for i in store.list_sessions("ann")] == [new]
            figures = store.stats()
            assert figures["sessions"] == 1 and figures["users"] == 1
            assert store.count() == 1
