"""The bundled demo app, on FastAPI and on Flask, through each framework's test client."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sessionmw import ConfigError, SessionStore
from sessionmw.core.cookies import IdSigner
from sessionmw.demo import COOKIE_PREFIX, KEY_PREFIX, build_app, default_demo_backend, demo_secret_key
from sessionmw.demo.pages import SID_PREFIX, slow_seconds

SECRET = "demo-test-secret"
COOKIE = f"{COOKIE_PREFIX}session"
FRAMEWORKS = ["fastapi", "flask"]


@dataclass
class Page:
    """A response after redirects: its status, final URL and HTML."""

    status: int
    url: str
    text: str

    @property
    def count(self) -> int:
        m = re.search(r"id=count>(\d+)<", self.text)
        assert m is not None, self.text
        return int(m.group(1))

    @property
    def user(self) -> str | None:
        m = re.search(r"<b id=user>([^<]*)</b>", self.text)
        if m is None:
            assert "id=user-anon" in self.text
            return None
        return m.group(1)

    def rows(self) -> list[tuple[str, bool]]:
        """The (sid prefix, is current) of each session row."""
        found = re.findall(r"class='session-row[^']*' data-sid='([^']+)' data-current='(yes|no)'", self.text)
        return [(sid, cur == "yes") for sid, cur in found]


class Client:
    """One browser: the framework's test client, with one cookie jar."""

    def __init__(self, framework: str, app: Any, agent: str) -> None:
        self.framework = framework
        self.headers = {"User-Agent": agent}
        if framework == "fastapi":
            from starlette.testclient import TestClient

            self.c: Any = TestClient(app)
        else:
            self.c = app.test_client()

    def _page(self, r: Any) -> Page:
        if self.framework == "fastapi":
            return Page(r.status_code, str(r.url), r.text)
        return Page(r.status_code, r.request.full_path.rstrip("?"), r.get_data(as_text=True))

    def get(self, path: str) -> Page:
        if self.framework == "fastapi":
            return self._page(self.c.get(path, headers=self.headers))
        return self._page(self.c.get(path, headers=self.headers, follow_redirects=True))

    def post(self, path: str, data: dict[str, str] | None = None) -> Page:
        if self.framework == "fastapi":
            return self._page(self.c.post(path, data=data or {}, headers=self.headers))
        return self._page(self.c.post(path, data=data or {}, headers=self.headers, follow_redirects=True))

    def raw_post(self, path: str) -> tuple[int, str, str | None]:
        """POST without following the redirect: status, Location, Set-Cookie."""
        if self.framework == "fastapi":
            r = self.c.post(path, headers=self.headers, follow_redirects=False)
            return r.status_code, r.headers.get("location", ""), r.headers.get("set-cookie")
        r = self.c.post(path, headers=self.headers)
        return r.status_code, r.headers.get("Location", ""), r.headers.get("Set-Cookie")

    @property
    def cookie(self) -> str | None:
        if self.framework == "fastapi":
            value = self.c.cookies.get(COOKIE)
            return None if value is None else str(value)
        found = self.c.get_cookie(COOKIE)
        return None if found is None else str(found.value)

    @property
    def sid(self) -> str:
        value = self.cookie
        assert value is not None
        sid = IdSigner([SECRET]).unsign(value, None)
        assert sid is not None
        return sid

    def twin(self) -> Client:
        """Another client with the same cookie: a second connection of the same browser."""
        other = Client.__new__(Client)
        other.framework, other.headers = self.framework, dict(self.headers)
        value = self.cookie
        assert value is not None
        if self.framework == "fastapi":
            from starlette.testclient import TestClient

            other.c = TestClient(self.c.app)
            other.c.cookies.set(COOKIE, value, domain="testserver.local")
        else:
            other.c = self.c.application.test_client()
            other.c.set_cookie(COOKIE, value)
        return other


@pytest.fixture
def backend(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/demo.db"


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(framework: str, backend: str) -> Any:
    return build_app(backend, SECRET, framework=framework)


@pytest.fixture
def store(backend: str) -> Iterator[SessionStore]:
    with SessionStore(backend, key_prefix=KEY_PREFIX) as s:
        yield s


def browser(framework: str, app: Any, agent: str = "TestBrowser/1.0") -> Client:
    return Client(framework, app, agent)


def signed_in(framework: str, app: Any, name: str, agent: str = "TestBrowser/1.0") -> Client:
    c = browser(framework, app, agent)
    page = c.post("/login", {"name": name})
    assert page.status == 200 and page.user == name
    return c


def test_build_app_kinds(backend: str) -> None:
    from fastapi import FastAPI
    from flask import Flask

    assert isinstance(build_app(backend, SECRET), FastAPI)
    assert isinstance(build_app(backend, SECRET, framework="flask"), Flask)
    with pytest.raises(ValueError, match="framework"):
        build_app(backend, SECRET, framework="django")


def test_bad_backend_fails_at_build(framework: str) -> None:
    with pytest.raises(ConfigError, match="scheme"):
        build_app("nosuch://x", SECRET, framework=framework)


def test_default_backend_and_secret_in_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("SESSIONMW_SECRET_KEY", raising=False)
    assert default_demo_backend() == f"sqlite:///{tmp_path}/sessionmw/demo.db"
    key = demo_secret_key()
    assert len(key) >= 32 and demo_secret_key() == key
    secret_file = tmp_path / "sessionmw" / "demo-secret"
    assert secret_file.stat().st_mode & 0o077 == 0
    monkeypatch.setenv("SESSIONMW_SECRET_KEY", "from-env")
    assert demo_secret_key() == "from-env"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_demo_backend() == f"sqlite:///{tmp_path}/home/.local/share/sessionmw/demo.db"


def test_sign_in_count_sign_out(framework: str, app: Any) -> None:
    c = browser(framework, app)
    page = c.get("/")
    assert page.status == 200 and page.user is None and page.count == 0
    assert "id=login-name" in page.text and "id=login " in page.text
    assert c.cookie is None  # reading an empty session creates nothing
    assert c.post("/increment").count == 1
    anonymous_sid = c.sid
    page = c.post("/login", {"name": "  alice  "})
    assert page.user == "alice" and page.count == 1 and "id=logout" in page.text
    assert c.sid != anonymous_sid  # bind_user regenerated the id
    for n in (2, 3, 4):
        assert c.post("/increment").count == n
    status, location, set_cookie = c.raw_post("/logout")
    assert status == 303 and location.endswith("/?msg=signed-out")
    assert set_cookie is not None and set_cookie.startswith(f"{COOKIE}=")
    page = c.get("/")
    assert page.user is None and page.count == 0 and c.cookie is None


def test_sign_in_needs_a_name_and_is_escaped(framework: str, app: Any) -> None:
    c = browser(framework, app)
    page = c.post("/login", {"name": "   "})
    assert page.user is None and "Type a name" in page.text
    page = c.post("/login", {"name": "<script>x</script>"})
    assert "<script>x" not in page.text and "&lt;script&gt;x&lt;/script&gt;" in page.text


def test_your_sessions_list_and_end_another(framework: str, app: Any, store: SessionStore) -> None:
    a = signed_in(framework, app, "alice", "Browser-A")
    b = signed_in(framework, app, "alice", "Browser-B")
    bob = signed_in(framework, app, "bob")
    page = a.get("/sessions")
    assert page.status == 200
    rows = page.rows()
    assert sorted(rows) == sorted([(a.sid[:SID_PREFIX], True), (b.sid[:SID_PREFIX], False)])
    assert "Browser-A" in page.text and "Browser-B" in page.text
    assert a.sid not in page.text and b.sid not in page.text  # never a full session id
    assert f"id='end-{b.sid[:SID_PREFIX]}'" in page.text and "id=end-others" in page.text
    assert len(store.list_sessions(user_id="alice")) == 2

    page = a.post("/sessions/end", {"sid": b.sid[:SID_PREFIX]})
    assert page.url.endswith("/sessions?msg=ended") and page.rows() == [(a.sid[:SID_PREFIX], True)]
    assert b.get("/").user is None  # the other browser is signed out
    assert bob.get("/").user == "bob" and a.get("/").user == "alice"


def test_end_others_and_end_current(framework: str, app: Any, store: SessionStore) -> None:
    clients = [signed_in(framework, app, "carol") for _ in range(3)]
    page = clients[0].post("/sessions/end-others")
    assert page.rows() == [(clients[0].sid[:SID_PREFIX], True)]
    assert [c.get("/").user for c in clients] == ["carol", None, None]
    page = clients[0].post("/sessions/end", {"sid": clients[0].sid[:SID_PREFIX]})
    assert page.user is None and "Signed out" in page.text
    assert store.list_sessions(user_id="carol") == []


def test_cannot_end_someone_elses_session(framework: str, app: Any) -> None:
    alice = signed_in(framework, app, "alice")
    mallory = signed_in(framework, app, "mallory")
    for prefix in (alice.sid[:SID_PREFIX], alice.sid, "", "a"):
        page = mallory.post("/sessions/end", {"sid": prefix})
        assert "No such session" in page.text
    assert alice.get("/").user == "alice"
    anon = browser(framework, app)
    assert "Sign in first" in anon.post("/sessions/end", {"sid": alice.sid}).text
    assert "Sign in" in anon.get("/sessions").text and anon.get("/sessions").rows() == []
    assert alice.get("/").user == "alice"


def test_admin_page_and_end_a_user(framework: str, app: Any, store: SessionStore) -> None:
    a1 = signed_in(framework, app, "alice")
    a2 = signed_in(framework, app, "alice")
    bob = signed_in(framework, app, "bob")
    anon = browser(framework, app)
    anon.post("/increment")
    page = bob.get("/admin")
    assert page.status == 200
    assert len(page.rows()) == 4
    assert re.search(r"id=stat-sessions>4<", page.text) and re.search(r"id=stat-users>2<", page.text)
    assert "data-user='alice'" in page.text and "anonymous" in page.text
    for c in (a1, a2, bob, anon):
        assert c.sid not in page.text
    page = bob.post("/admin/end-user", {"user": "alice"})
    assert page.url.endswith("/admin?msg=ended-user") and len(page.rows()) == 2
    assert a1.get("/").user is None and a2.get("/").user is None and bob.get("/").user == "bob"
    assert store.list_sessions(user_id="alice") == []
    page = bob.post("/admin/end-user", {"user": "bob"})  # ending yourself signs you out
    assert page.user is None and bob.get("/").user is None


def test_status_page_is_read_only(framework: str, app: Any) -> None:
    anon = browser(framework, app)
    page = anon.get("/status")
    assert page.status == 200 and "id=read-only>yes" in page.text and anon.cookie is None
    c = signed_in(framework, app, "dora")
    c.post("/increment")
    page = c.get("/status")
    assert "id=read-only>yes" in page.text and "id=status-count>1<" in page.text and "dora" in page.text


def test_read_only_page_answers_while_slow_holds_the_lock(framework: str, app: Any) -> None:
    c = signed_in(framework, app, "erin")
    c.post("/increment")
    slow_client, status_client, writer = c.twin(), c.twin(), c.twin()
    hold = 2.0
    result: dict[str, Page] = {}

    def slow() -> None:
        result["slow"] = slow_client.get(f"/slow?t={hold}")

    t = threading.Thread(target=slow)
    started = time.monotonic()
    t.start()
    time.sleep(0.5)  # the slow request has the lock now
    t0 = time.monotonic()
    page = status_client.get("/status")
    assert time.monotonic() - t0 < 1.0, "the read-only page waited for the lock"
    assert page.status == 200 and "id=status-count>1<" in page.text
    assert t.is_alive()
    page = writer.post("/increment")  # a read-write request waits for the lock
    assert time.monotonic() - started >= hold - 0.1
    assert page.count == 2
    t.join(10)
    assert "id=slept>2<" in result["slow"].text
    assert "slow_visits" in c.get("/status").text


def test_slow_seconds() -> None:
    assert slow_seconds({}) == 5.0
    assert slow_seconds({"t": "2.5"}) == 2.5
    assert slow_seconds({"t": "999"}) == 30.0
    assert slow_seconds({"t": "-3"}) == 0.0
    assert slow_seconds({"t": "soon"}) == 5.0
    assert slow_seconds({"t": "nan"}) == 5.0
