"""The bundled demo app, on FastAPI and on Flask, through each framework's test client."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sessionmw import ConfigError, SessionStore
from sessionmw.core.cookies import IdSigner
from sessionmw.core.events import SessionEvent
from sessionmw.core.handles import handle_of
from sessionmw.demo import (
    COOKIE_PREFIX,
    KEY_PREFIX,
    MAX_SESSIONS_PER_USER,
    build_app,
    default_demo_backend,
    demo_secret_key,
)
from sessionmw.demo.activity import Activity, current_notes, noting
from sessionmw.demo.pages import SID_PREFIX, STYLE, plural, slow_seconds

SECRET = "demo-test-secret"
COOKIE = f"{COOKIE_PREFIX}session"
FRAMEWORKS = ["fastapi", "flask"]


@dataclass
class Page:
    """A response after redirects: its status, final URL and HTML."""

    status: int
    url: str
    text: str
    content_type: str = ""
    set_cookie: str | None = None

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
            return Page(
                r.status_code, str(r.url), r.text, r.headers.get("content-type", ""), r.headers.get("set-cookie")
            )
        return Page(
            r.status_code,
            r.request.full_path.rstrip("?"),
            r.get_data(as_text=True),
            r.headers.get("Content-Type", ""),
            r.headers.get("Set-Cookie"),
        )

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

    @property
    def name(self) -> str:
        """The session's name on the pages: the first characters of its handle."""
        return handle_of(self.sid)[:SID_PREFIX]

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
    assert sorted(rows) == sorted([(a.name, True), (b.name, False)])
    assert "Browser-A" in page.text and "Browser-B" in page.text
    assert a.sid not in page.text and b.sid not in page.text  # never a full session id
    assert f"id='end-{b.name}'" in page.text and "id=end-others" in page.text
    assert len(store.list_sessions(user_id="alice")) == 2

    page = a.post("/sessions/end", {"sid": b.name})
    assert page.url.endswith("/sessions?msg=ended") and page.rows() == [(a.name, True)]
    assert b.get("/").user is None  # the other browser is signed out
    assert bob.get("/").user == "bob" and a.get("/").user == "alice"


def test_end_others_and_end_current(framework: str, app: Any, store: SessionStore) -> None:
    clients = [signed_in(framework, app, "carol") for _ in range(3)]
    page = clients[0].post("/sessions/end-others")
    assert page.rows() == [(clients[0].name, True)]
    assert [c.get("/").user for c in clients] == ["carol", None, None]
    page = clients[0].post("/sessions/end", {"sid": clients[0].name})
    assert page.user is None and "Signed out" in page.text
    assert store.list_sessions(user_id="carol") == []


def test_cannot_end_someone_elses_session(framework: str, app: Any) -> None:
    alice = signed_in(framework, app, "alice")
    mallory = signed_in(framework, app, "mallory")
    for prefix in (alice.name, handle_of(alice.sid), alice.sid, "", "a"):
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


def test_slow_seconds() -> None:
    assert slow_seconds({}) == 5.0
    assert slow_seconds({"t": "2.5"}) == 2.5
    assert slow_seconds({"t": "999"}) == 30.0
    assert slow_seconds({"t": "-3"}) == 0.0
    assert slow_seconds({"t": "soon"}) == 5.0
    assert slow_seconds({"t": "nan"}) == 5.0


def activity_of(app: Any) -> Activity:
    """The demo's session listener, as the app keeps it."""
    found = app.state.activity if hasattr(app, "state") else app.extensions["sessionmw_demo_activity"]
    assert isinstance(found, Activity)
    return found


def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def notice(page: Page, element_id: str) -> str | None:
    """The text of a notice box on the page, or None."""
    m = re.search(rf"<div class='box [a-z]+' id={element_id}[^>]*>(.*?)</div>", page.text)
    return None if m is None else m.group(1)


def test_read_only_page_answers_and_a_click_waits_while_slow_holds_the_lock(framework: str, app: Any) -> None:
    c = signed_in(framework, app, "wendy")
    c.post("/increment")
    handle = handle_of(c.sid)
    slow_client, writer = c.twin(), c.twin()
    result: dict[str, Page] = {}
    t = threading.Thread(target=lambda: result.setdefault("slow", slow_client.get("/slow?t=1.5")))
    t.start()
    activity = activity_of(app)
    wait_until(lambda: activity.slow_holding(handle), "the slow page holds the lock")
    page = c.twin().get("/status")  # the read-only page answers while the lock is held, and says so
    assert "id=slow-holding" in page.text and "id=status-count>1<" in page.text and "id=read-only>yes" in page.text
    page = writer.post("/increment")  # waits for the slow page's lock, then redirects to the counter
    t.join(10)
    assert page.count == 2
    waited = notice(page, "waited")
    assert waited is not None, page.text
    assert "for the session lock on <code>/increment</code>: your slow page held the session" in waited
    seconds = float(re.search(r"data-seconds='([0-9.]+)'", page.text).group(1))  # type: ignore[union-attr]
    assert seconds > 0
    assert "id=slept>1.5<" in result["slow"].text and "id=waited" not in result["slow"].text
    assert "slow_visits" in c.get("/status").text
    assert "id=waited" not in writer.get("/").text  # said once
    assert "id=slow-holding" not in c.get("/status").text

    admin = c.get("/admin")
    assert "id=lock-wait-count>1</b> request waited" in admin.text
    assert "<tr class=wait-row data-path='/increment'>" in admin.text and "the slow page" in admin.text
    assert "<span data-kind='lock_waited'>lock_waited <b>1</b>" in admin.text


def test_a_wait_for_another_request_names_no_slow_page() -> None:
    activity = Activity()
    activity(SessionEvent("lock_waited", "h1.x", path="/", seconds=0.25))
    wait = activity.pop_wait("h1.x")
    assert wait is not None and wait.holder is None and wait.seconds == 0.25 and wait.path == "/"
    assert activity.pop_wait("h1.x") is None
    activity.slow_started("h1.y", 5.0)
    activity(SessionEvent("lock_waited", "h1.y", path="/increment", seconds=1.0))
    assert activity.pop_wait("h1.y").holder == "slow"  # type: ignore[union-attr]
    assert activity.event_counts() == {"lock_waited": 2}
    assert [w.handle for w in activity.recent_waits()] == ["h1.y", "h1.x"]


def test_ended_elsewhere_is_told_once(framework: str, app: Any, store: SessionStore) -> None:
    a = signed_in(framework, app, "alice", "Browser-A")
    b = signed_in(framework, app, "alice", "Browser-B")
    a.post("/sessions/end", {"sid": b.name})
    page = b.get("/")
    ended = notice(page, "ended")
    assert page.user is None and ended is not None and "ended elsewhere" in ended, page.text
    assert "data-why='elsewhere'" in page.text
    assert page.set_cookie is not None and page.set_cookie.startswith(f"{COOKIE}=")  # the stale cookie goes
    assert b.cookie is None
    page = b.get("/")
    assert page.user is None and "id=ended" not in page.text  # once
    assert "id=ended" not in a.get("/").text

    # Ended by the store (the admin page, `sessionmw kill`): on a read-only page too.
    c = signed_in(framework, app, "carl")
    store.terminate(handle_of(c.sid))
    page = c.get("/status")
    assert "data-why='elsewhere'" in page.text and c.cookie is None
    assert "id=ended" not in c.get("/status").text

    # A click of a browser whose session ended: its new session's page says so.
    d = signed_in(framework, app, "dan")
    d.post("/increment")
    store.terminate_user("dan")
    page = d.post("/increment")
    assert page.count == 1 and page.user is None and page.url.endswith("/?msg=ended-elsewhere")
    assert "Your session was ended elsewhere" in page.text
    assert "ended elsewhere" not in d.get("/").text


def test_a_sign_in_over_the_limit_ends_the_oldest_session_which_is_told(framework: str, app: Any) -> None:
    browsers = [signed_in(framework, app, "zoe", f"Browser-{n}") for n in range(MAX_SESSIONS_PER_USER + 1)]
    pages = [c.get("/") for c in browsers]
    assert [p.user for p in pages] == [None] + ["zoe"] * MAX_SESSIONS_PER_USER
    assert "data-why='elsewhere'" in pages[0].text
    assert all("id=ended" not in p.text for p in pages[1:])
    admin = browsers[1].get("/admin")
    assert "<span data-kind='terminated'>terminated <b>1</b>" in admin.text


def test_a_timed_out_session_is_told_so_once(framework: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"sessionmw.demo.{framework}_app.IDLE_TIMEOUT", 1)
    app = build_app(backend, SECRET, framework=framework)
    a, b = signed_in(framework, app, "tim", "Browser-A"), signed_in(framework, app, "tom", "Browser-B")
    b.post("/increment")
    time.sleep(1.5)  # both sessions time out: one second without a request
    page = a.get("/")
    assert page.user is None and "data-why='expired'" in page.text and "Your session timed out" in page.text
    assert "ended elsewhere" not in page.text and a.cookie is None
    assert "id=ended" not in a.get("/").text  # once
    page = b.post("/increment")  # an action: its new session's page says so
    assert page.count == 1 and page.url.endswith("/?msg=timed-out") and "had timed out" in page.text
    assert "id=ended" not in page.text and "id=notice" not in b.get("/").text


def test_the_listener_notes_what_ended_the_current_request_session() -> None:
    activity = Activity()
    with noting(activity) as notes:
        assert current_notes() is notes and notes.ended is None
        activity(SessionEvent("expired", "h1.x", path="/", reason="idle"))
        assert notes.ended == "expired"
        activity(SessionEvent("missing", "h1.x", path="/"))
        assert notes.ended == "elsewhere"
    assert current_notes() is not notes and current_notes().ended is None
    activity(SessionEvent("missing", "h1.x", path="/"))  # outside a request: nobody to tell
    assert current_notes().ended is None


def test_admin_page_shows_stats_and_plural_wording(framework: str, app: Any) -> None:
    bob = signed_in(framework, app, "bob")
    page = bob.get("/admin")
    assert "id=stat-sessions>1</b> live session of" in page.text
    assert "id=stat-users>1</b> signed-in user," in page.text
    assert "End bob's 1 session<" in page.text
    assert "id=stats>" in page.text
    for figure in ("sessions", "users", "oldest"):
        assert f"<tr data-figure='{figure}'>" in page.text
    assert re.search(r"<tr data-figure='sessions'><td><code>sessions</code></td><td>1</td>", page.text)
    assert "id=lock-wait-count>0</b> requests waited" in page.text
    a1 = signed_in(framework, app, "alice")
    signed_in(framework, app, "alice")
    page = a1.get("/admin")
    assert (
        "id=stat-sessions>3</b> live sessions of" in page.text and "id=stat-users>2</b> signed-in users," in page.text
    )
    assert "End alice's 2 sessions<" in page.text
    page = a1.get("/sessions")
    assert "id=session-count>2</b> live sessions:" in page.text and "End the other session (1)" in page.text
    page = bob.get("/sessions")
    assert "id=session-count>1</b> live session:" in page.text
    assert "<button class=danger id=end-others disabled>End all other sessions (0)" in page.text


def test_plural_and_disabled_look() -> None:
    assert [plural(n, "session") for n in (0, 1, 2)] == ["0 sessions", "1 session", "2 sessions"]
    assert re.search(r"button:disabled\{[^}]*opacity:", STYLE) and "cursor:not-allowed" in STYLE


def test_unknown_url_gets_an_html_page(framework: str, app: Any) -> None:
    c = signed_in(framework, app, "nina")
    page = c.get("/no/such/page")
    assert page.status == 404 and page.content_type.startswith("text/html")
    assert "<h1>404 Not Found</h1>" in page.text and "<code>/no/such/page</code>" in page.text
    page = c.get("/increment")  # a form's target, by GET
    assert page.status == 405 and page.content_type.startswith("text/html") and "405 Method Not Allowed" in page.text


def test_metrics_page_serves_prometheus_text(framework: str, app: Any, backend: str) -> None:
    c = signed_in(framework, app, "mia")
    c.post("/increment")
    page = c.get("/metrics")
    assert page.status == 200 and page.content_type.startswith("text/plain")
    assert page.set_cookie is None and "<html" not in page.text
    assert 'sessionmw_events_total{kind="created",reason=""} 1.0' in page.text
    assert 'sessionmw_events_total{kind="bound",reason=""} 1.0' in page.text
    assert "sessionmw_lock_wait_seconds_bucket" in page.text
    assert "sessionmw_backend_operation_seconds_count{operation=" in page.text
    # Each app has a registry of its own: another demo in this process counts from zero.
    other = build_app(backend, SECRET, framework=framework)
    assert 'kind="created",reason=""} 0.0' in browser(framework, other).get("/metrics").text


def test_metrics_page_without_prometheus_client_says_what_to_install(
    framework: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # an import of it now fails
    app = build_app(backend, SECRET, framework=framework)
    c = signed_in(framework, app, "max")
    page = c.get("/metrics")
    assert page.status == 501 and page.content_type.startswith("text/html")
    assert "pip install 'sessionmw[prometheus]'" in page.text
    assert c.post("/increment").count == 1  # the rest of the demo works
