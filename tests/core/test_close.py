"""The close flow as a table: what the core asks of the backend, and what the response carries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sessionmw.core.handles import handle_of
from sessionmw.core.ops import Release, Save
from sessionmw.core.route import READ_WRITE, Route
from sessionmw.core.session import Session

from .script import NOW, SID, Script, close, make_core, opened, record

CASES: list[Any] = [
    pytest.param(None, lambda s: None, [], None, id="new, untouched"),
    pytest.param(None, lambda s: s.__setitem__("a", 1), ["Create"], "set", id="new, changed"),
    pytest.param(None, lambda s: (s.__setitem__("a", 1), s.pop("a")), [], None, id="new, changed then emptied"),
    pytest.param({"a": 1}, lambda s: s.get("a"), ["Release"], None, id="stored, read"),
    pytest.param({"a": 1}, lambda s: s.__setitem__("a", 2), ["Save"], None, id="stored, changed"),
    pytest.param({"a": 1}, lambda s: s.clear(), ["Delete", "Release"], "delete", id="stored, emptied"),
    pytest.param({"a": 1}, lambda s: s.regenerate(), ["Extend", "Create", "Delete", "Release"], "set", id="regenerate"),
    pytest.param({"a": 1}, lambda s: s.bind_user(7), ["Extend", "Create", "Delete", "Release"], "set", id="bind user"),
    pytest.param({"a": 1}, lambda s: s.invalidate(), ["Delete", "Release"], "delete", id="invalidate"),
    pytest.param(
        {"a": 1},
        lambda s: (s.invalidate(), s.__setitem__("flash", "bye")),
        ["Create", "Delete", "Release"],
        "set",
        id="invalidate, then write",
    ),
]


@pytest.mark.parametrize(("data", "act", "ops", "cookie"), CASES)
def test_close_case_table(
    data: dict[str, Any] | None, act: Callable[[Session], Any], ops: list[str], cookie: str | None
) -> None:
    core = make_core()
    script = Script(record(core, data) if data is not None else None)
    s = opened(core, script) if data is not None else core.new_session(Route(), None, None)
    taken = s._state.token
    act(s)
    outcome = close(core, script, s)
    assert script.names == ops
    assert (outcome.cookie.kind if outcome.cookie else None) == cookie
    assert (outcome.set_cookie is not None) == (cookie is not None)
    if taken is not None:  # the lock taken at open is let go exactly once
        assert [op for op in script.ops if op.frees] and all(op.token == taken for op in script.ops if op.frees)
        assert len([op for op in script.ops if op.frees]) == 1


def test_outcome_carries_the_complete_set_cookie_header_and_vary() -> None:
    core = make_core(max_age=600, same_site="strict")
    script = Script(None)
    s = core.new_session(Route(), None, None)
    s["a"] = 1
    outcome = close(core, script, s)
    assert outcome.vary
    assert outcome.set_cookie is not None
    assert outcome.set_cookie.startswith("session=") and outcome.set_cookie.endswith(
        "; path=/; Max-Age=600; httponly; samesite=strict"
    )


def test_an_unread_session_asks_for_no_vary() -> None:
    core = make_core()
    outcome = close(core, Script(None), core.new_session(Route(), None, None))
    assert outcome.cookie is None and not outcome.vary


def test_unchanged_session_is_touched_once_per_interval() -> None:
    core = make_core(touch_interval=30)
    script = Script(record(core, {"a": 1}, last_access=NOW - 31))
    s = opened(core, script)
    s.get("a")
    close(core, script, s, now=NOW)
    assert script.names == ["Release"]
    op = script.ops[0]
    assert isinstance(op, Release) and op.touch is not None and op.touch.last_access == NOW
    fresh = opened(core, Script(record(core, {"a": 1}, last_access=NOW - 1)))
    fresh.get("a")
    other = Script()
    close(core, other, fresh, now=NOW)
    assert isinstance(other.ops[0], Release) and other.ops[0].touch is None


def test_read_only_session_touches_without_lock_when_due() -> None:
    core = make_core(touch_interval=30)
    script = Script(record(core, {"a": 1}, last_access=NOW - 60))
    s = opened(core, script, route=Route(read_only=True))
    close(core, script, s, now=NOW)
    assert script.names == ["Refresh"]
    script = Script(record(core, {"a": 1}, last_access=NOW - 1))
    fresh = opened(core, script, route=Route(read_only=True))
    close(core, script, fresh, now=NOW)
    assert script.names == []


def test_persistent_cookie_is_refreshed_once_per_touch_interval() -> None:
    core = make_core(touch_interval=60, max_age=3600)
    script = Script(record(core, {"a": 1}))
    s = opened(core, script, signed_at=NOW - 120)
    s["a"] = 2
    outcome = close(core, script, s, now=NOW)
    assert outcome.cookie is not None and outcome.cookie.kind == "set"
    recent = opened(core, script, signed_at=NOW - 10)
    recent["a"] = 2
    assert close(core, script, recent, now=NOW).cookie is None
    browser_session = make_core(touch_interval=60, max_age=None)
    s = opened(browser_session, script, signed_at=NOW - 120)
    s["a"] = 2
    assert close(browser_session, script, s, now=NOW).cookie is None


@pytest.mark.parametrize(
    ("act", "on_modified", "refresh", "read_only", "cookie"),
    [
        pytest.param(lambda s: s.get("a"), True, False, False, None, id="read, not modified"),
        pytest.param(lambda s: s.__setitem__("a", 2), True, False, False, "set", id="modified: sent"),
        pytest.param(lambda s: s.__setitem__("a", 2), False, False, False, None, id="modified, Starlette rule"),
        pytest.param(lambda s: s.get("a"), False, True, False, "set", id="refresh each request"),
        pytest.param(lambda s: s.get("a"), False, True, True, "set", id="refresh on a read-only route"),
        pytest.param(lambda s: s.clear(), True, True, False, "delete", id="emptied: deleted, not refreshed"),
    ],
)
def test_flask_cookie_rules(
    act: Callable[[Session], Any], on_modified: bool, refresh: bool, read_only: bool, cookie: str | None
) -> None:
    core = make_core(max_age=None)
    script = Script(record(core, {"a": 1}))
    s = opened(core, script, route=Route(read_only=read_only))
    act(s)
    outcome = close(core, script, s, on_modified=on_modified, refresh=refresh)
    assert (outcome.cookie.kind if outcome.cookie else None) == cookie
    if cookie == "set":
        assert outcome.cookie is not None and core.signer.unsign(outcome.cookie.value, None) == SID


def test_every_write_raises_the_record_version_by_one() -> None:
    core = make_core()
    script = Script(record(core, {"v": 0})._replace(version=41))
    s = opened(core, script)
    s["v"] = 1
    close(core, script, s)
    assert isinstance(script.ops[0], Save) and script.ops[0].record.version == 42
    script = Script(None)
    s = core.new_session(READ_WRITE, None, None)
    s["v"] = 1
    close(core, script, s)
    assert script.names == ["Create"] and script.ops[0].record.version == 1


def test_write_after_losing_the_lock_is_dropped_and_logged() -> None:
    core = make_core()
    script = Script(record(core, {"v": 0}), Save=False)
    s = opened(core, script)
    s["v"] = "stale"
    outcome = close(core, script, s)
    assert script.names == ["Save"] and isinstance(script.ops[0], Save)
    assert outcome.cookie is None
    assert any("dropped" in m and "'v'" in m for m in script.messages())


def test_regeneration_after_the_lock_expired_is_dropped_and_the_lock_released() -> None:
    core = make_core()
    script = Script(record(core, {"a": 1}), Extend=False)
    s = opened(core, script)
    s.regenerate()
    outcome = close(core, script, s)
    assert script.names == ["Extend", "Release"]
    assert outcome.cookie is None
    assert any("regeneration was dropped" in m for m in script.messages())


def test_a_failed_save_still_releases_the_lock() -> None:
    def boom(op: Any) -> Any:
        raise ConnectionError("down")

    core = make_core()
    script = Script(record(core, {"a": 1}), Save=boom)
    s = opened(core, script)
    s["a"] = 2
    with pytest.raises(ConnectionError):
        close(core, script, s)
    assert script.names == ["Save", "Release"]


def test_declared_read_only_route_logs_its_changes() -> None:
    core = make_core(read_only_debug=True)
    script = Script(record(core, {"a": 1}))
    s = opened(core, script, route=Route(declared=True))
    s["x"] = 1
    close(core, script, s, req=_Req("/ro-write"))
    assert script.names == ["Save"]
    assert any("/ro-write" in m and "'x'" in m for m in script.messages())


def test_max_sessions_per_user_ends_the_oldest_others() -> None:
    core = make_core(max_sessions_per_user=2)
    others = [("old", record(core, {}, created=NOW - 50)), ("older", record(core, {}, created=NOW - 90))]
    script = Script(record(core, {"a": 1}), UserSessions=others)
    s = opened(core, script)
    s.bind_user("u")
    close(core, script, s)
    deleted = [op.sid for op in script.ops if type(op).__name__ == "Delete"]
    assert deleted == ["older", handle_of(SID)]


def test_abort_releases_without_writing_and_freezes() -> None:
    core = make_core()
    script = Script(record(core, {"a": 1}))
    s = opened(core, script)
    s["a"] = 2
    script.run(core.abort(s))
    assert script.names == ["Release"]
    with pytest.raises(Exception, match="not saved"):
        s["a"] = 3


class _Req:
    def __init__(self, path: str) -> None:
        self.path = path
        self.client_ip = "127.0.0.1"
        self.user_agent = None
