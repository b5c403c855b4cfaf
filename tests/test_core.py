"""The sans-IO core, tested as tables: no server, no sockets, explicit clocks."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timezone
from typing import Any

import pytest

from sessionmw.backends.base import Record
from sessionmw.backends.memory import MemoryBackend
from sessionmw.core.config import build_settings
from sessionmw.core.cookies import find_cookie, new_session_id
from sessionmw.core.errors import ConfigError, SerializationError, SessionLockTimeout, TooManyWaiters
from sessionmw.core.locking import delay_series, wait_delays
from sessionmw.core.policy import Call, CookieAction, Queue, RequestInfo, SessionCore, Sleep
from sessionmw.core.serializers import JSONSerializer, TaggedJSONSerializer
from sessionmw.core.session import Session

NOW = 1_800_000_000.0


class Recorder:
    """Runs a core flow against a memory backend, recording the backend methods called."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.calls: list[str] = []
        self.mono = 0.0

    def run(self, flow: Any) -> Any:
        result: Any = None
        while True:
            try:
                op = flow.send(result)
            except StopIteration as stop:
                return stop.value
            if isinstance(op, Call):
                self.calls.append(op.method)
                result = getattr(self.backend, op.method)(*op.args)
            elif isinstance(op, Sleep):
                self.mono += op.delay
                result = self.mono
            else:
                assert isinstance(op, Queue)
                result = True if op.enter else None


def make_core(**options: Any) -> SessionCore:
    options.setdefault("secret_key", "k")
    return SessionCore(build_settings(**options))


def stored_session(
    core: SessionCore,
    rec: Recorder,
    data: dict[str, Any],
    *,
    read_only: bool = False,
    last_access: float = NOW,
    signed_at: float = NOW,
) -> Session:
    sid = new_session_id()
    rec.backend.create(sid, Record(data=core.serializer.dumps(data), created=NOW - 100, last_access=last_access), 60)
    s = core.new_session(read_only=read_only)
    rec.run(core.open(s, sid, lock=not read_only, now=NOW, mono=0.0, signed_at=signed_at))
    rec.calls.clear()
    return s


CASES: list[Any] = [
    pytest.param(None, lambda s: None, [], None, id="new, untouched"),
    pytest.param(None, lambda s: s.__setitem__("a", 1), ["create"], "set", id="new, changed"),
    pytest.param(None, lambda s: (s.__setitem__("a", 1), s.pop("a")), [], None, id="new, changed then emptied"),
    pytest.param({"a": 1}, lambda s: s.get("a"), ["release"], None, id="stored, read only"),
    pytest.param({"a": 1}, lambda s: s.__setitem__("a", 2), ["save"], None, id="stored, changed"),
    pytest.param({"a": 1}, lambda s: s.clear(), ["delete", "release"], "delete", id="stored, emptied"),
    pytest.param({"a": 1}, lambda s: s.regenerate(), ["extend", "create", "delete", "release"], "set", id="regenerate"),
    pytest.param({"a": 1}, lambda s: s.bind_user(7), ["extend", "create", "delete", "release"], "set", id="bind user"),
    pytest.param({"a": 1}, lambda s: s.invalidate(), ["delete", "release"], "delete", id="invalidate"),
    pytest.param(
        {"a": 1},
        lambda s: (s.invalidate(), s.__setitem__("flash", "bye")),
        ["create", "delete", "release"],
        "set",
        id="invalidate, then write",
    ),
]


@pytest.mark.parametrize(("data", "act", "calls", "cookie"), CASES)
def test_close_case_table(
    data: dict[str, Any] | None, act: Callable[[Session], Any], calls: list[str], cookie: str | None
) -> None:
    core = make_core()
    rec = Recorder(MemoryBackend(uuid.uuid4().hex))
    s = stored_session(core, rec, data) if data is not None else core.new_session()
    act(s)
    action = rec.run(core.close(s, now=NOW + 1, mono=1.0))
    assert rec.calls == calls
    assert (action.kind if action else None) == cookie
    assert not rec.backend._s.locks, "every lock is released"


def test_unchanged_session_is_touched_once_per_interval() -> None:
    core = make_core(touch_interval=30)
    rec = Recorder(MemoryBackend(uuid.uuid4().hex))
    s = stored_session(core, rec, {"a": 1}, last_access=NOW - 31)
    s.get("a")
    rec.run(core.close(s, now=NOW, mono=1.0))
    assert rec.calls == ["release"]
    assert rec.backend.load(s.id or "") is not None
    record = rec.backend.load(s.id or "")
    assert record is not None and record.last_access == NOW


def test_read_only_session_touches_without_lock_when_due() -> None:
    core = make_core(touch_interval=30)
    rec = Recorder(MemoryBackend(uuid.uuid4().hex))
    s = stored_session(core, rec, {"a": 1}, read_only=True, last_access=NOW - 60)
    rec.run(core.close(s, now=NOW, mono=1.0))
    assert rec.calls == ["touch"]
    fresh = stored_session(core, rec, {"a": 1}, read_only=True, last_access=NOW - 1)
    rec.run(core.close(fresh, now=NOW, mono=1.0))
    assert rec.calls == []


def test_persistent_cookie_is_refreshed_once_per_touch_interval() -> None:
    core = make_core(touch_interval=60, max_age=3600)
    rec = Recorder(MemoryBackend(uuid.uuid4().hex))
    s = stored_session(core, rec, {"a": 1}, signed_at=NOW - 120)
    s["a"] = 2
    action = rec.run(core.close(s, now=NOW, mono=1.0))
    assert action is not None and action.kind == "set"
    browser_session = make_core(touch_interval=60, max_age=None)
    s = stored_session(browser_session, rec, {"a": 1}, signed_at=NOW - 120)
    s["a"] = 2
    assert rec.run(browser_session.close(s, now=NOW, mono=1.0)) is None


@pytest.mark.parametrize(
    ("idle", "absolute", "override", "age", "idle_for", "expired"),
    [
        pytest.param(None, None, None, 10**6, 10**6, False, id="no timeouts"),
        pytest.param(60, None, None, 1000, 59, False, id="idle, active"),
        pytest.param(60, None, None, 1000, 61, True, id="idle, timed out"),
        pytest.param(None, 100, None, 101, 0, True, id="absolute, past"),
        pytest.param(60, 100, None, 99, 1, False, id="both, inside"),
        pytest.param(60, None, (True, None), 1000, 10**5, False, id="per-session: never"),
        pytest.param(60, None, (True, 10), 1000, 11, True, id="per-session: shorter"),
        pytest.param(60, 100, (True, None), 101, 0, True, id="never-idle does not lift absolute"),
    ],
)
def test_expiry_table(
    idle: float | None,
    absolute: float | None,
    override: tuple[bool, float | None] | None,
    age: float,
    idle_for: float,
    expired: bool,
) -> None:
    core = make_core(idle_timeout=idle, absolute_timeout=absolute)
    ov, value = override or (False, None)
    rec = Record(b"{}", created=NOW - age, last_access=NOW - idle_for, idle_override=ov, idle_timeout=value)
    assert core.expired(rec, NOW) is expired


def test_timed_out_session_is_deleted_and_replaced() -> None:
    core = make_core(idle_timeout=10)
    rec = Recorder(MemoryBackend(uuid.uuid4().hex))
    sid = new_session_id()
    rec.backend.create(sid, Record(b'{"a":1}', created=NOW - 100, last_access=NOW - 11), 60)
    s = core.new_session()
    rec.run(core.open(s, sid, lock=True, now=NOW, mono=0.0))
    assert rec.calls == ["lock_and_load", "delete", "release"]
    assert s.timed_out and s.is_new and dict(s) == {}
    assert rec.backend.load(sid) is None


def test_lock_wait_gives_up_at_lock_timeout_with_a_fake_clock() -> None:
    core = make_core(lock_timeout=2.0)
    rec = Recorder(MemoryBackend(uuid.uuid4().hex))
    sid = new_session_id()
    rec.backend.create(sid, Record(b"{}", created=NOW, last_access=NOW), 60)
    assert rec.backend.lock_and_load(sid, "other", 100)[0]
    with pytest.raises(SessionLockTimeout) as info:
        rec.run(core.open(core.new_session(), sid, lock=True, now=NOW, mono=0.0))
    assert rec.mono == pytest.approx(2.0)
    assert "lock_timeout=2" in str(info.value)
    assert info.value.retry_after >= 1


def test_max_waiters_zero_refuses_any_wait() -> None:
    core = make_core(max_waiters=0)
    backend = MemoryBackend(uuid.uuid4().hex)
    sid = new_session_id()
    backend.create(sid, Record(b"{}", created=NOW, last_access=NOW), 60)
    backend.lock_and_load(sid, "other", 100)
    flow = core.open(core.new_session(), sid, lock=True, now=NOW, mono=0.0)
    op = flow.send(None)
    assert isinstance(op, Call)
    op = flow.send(backend.lock_and_load(*op.args))
    assert isinstance(op, Queue) and op.enter and op.limit == 0
    with pytest.raises(TooManyWaiters):
        flow.send(False)


def test_write_after_losing_the_lock_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    core = make_core(lock_expire=0.2)
    rec = Recorder(MemoryBackend(uuid.uuid4().hex))
    s = stored_session(core, rec, {"v": 0})
    time.sleep(0.3)  # the memory backend's lock expiry runs on the real monotonic clock
    sid = s.id or ""
    assert rec.backend.lock_and_load(sid, "thief", 30)[0]
    rec.backend.save(sid, Record(core.serializer.dumps({"v": "newer"}), created=NOW, last_access=NOW), "thief", 60)
    s["v"] = "stale"
    with caplog.at_level(logging.ERROR, logger="sessionmw"):
        rec.run(core.close(s, now=NOW, mono=1.0))
    record = rec.backend.load(sid)
    assert record is not None and core.serializer.loads(record.data) == {"v": "newer"}
    assert any("dropped" in m for m in caplog.messages)


def test_wait_delays_grow_and_stop_at_the_deadline() -> None:
    delays = list(delay_series(1.0))
    assert delays[0] == pytest.approx(0.001)
    assert max(delays) <= 0.05
    assert sum(delays) == pytest.approx(1.0)
    assert wait_delays(0.0, 1.0, 1.0) is None


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("session=abc", "abc", id="alone"),
        pytest.param("a=1; session=abc; b=2", "abc", id="middle"),
        pytest.param("mysession=x; session=abc", "abc", id="suffix of another name"),
        pytest.param('session="abc"', "abc", id="quoted"),
        pytest.param("other=1", None, id="absent"),
        pytest.param("", None, id="empty header"),
    ],
)
def test_find_cookie(header: str, value: str | None) -> None:
    assert find_cookie(header, "session") == value


def test_tagged_json_keeps_types() -> None:
    data = {
        "when": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
        "naive": datetime(2026, 1, 2, 3, 4, 5, 6),
        "day": date(2026, 11, 24),
        "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "raw": b"\x00\xff",
        "pair": (1, "two", (3,)),
        "nested": {"list": [1, {"t": (4, 5)}]},
        "looks_like_a_tag": {" t": [1, 2]},
        "unicode": "é✓",
    }
    s = TaggedJSONSerializer()
    assert s.loads(s.dumps(data)) == data


@pytest.mark.parametrize("serializer", [TaggedJSONSerializer(), JSONSerializer()], ids=["tagged", "plain"])
def test_unserializable_value_names_its_key(serializer: Any) -> None:
    with pytest.raises(SerializationError) as info:
        serializer.dumps({"ok": 1, "cart": [1, {"item": {1, 2}}]})
    assert "cart[1].item" in str(info.value) and "set" in str(info.value)


@pytest.mark.parametrize(
    ("options", "option", "words"),
    [
        pytest.param({"lock_timout": 3}, "lock_timout", "lock_timeout", id="misspelt keyword"),
        pytest.param({"lock_timeout": -1}, "lock_timeout", ">= 0", id="negative"),
        pytest.param({"idle_timeout": "soon"}, "idle_timeout", "number", id="not a number"),
        pytest.param({"same_site": "lex"}, "same_site", "'lax'", id="bad same_site"),
        pytest.param({"session_cookie": "__Host-s"}, "https_only", "Secure", id="__Host- needs Secure"),
        pytest.param(
            {"session_cookie": "__Host-s", "https_only": True, "path": "/app"}, "path", "path='/'", id="__Host- path"
        ),
        pytest.param(
            {"session_cookie": "__Host-s", "https_only": True, "domain": "x.org"}, "domain", "Domain", id="__Host- dom"
        ),
        pytest.param({"cookie_prefix": "__Secure-"}, "https_only", "Secure", id="__Secure- needs Secure"),
        pytest.param({"session_cookie": "bad name"}, "session_cookie", "characters", id="bad cookie name"),
        pytest.param({"same_site": "none"}, "same_site", "https_only", id="SameSite=None needs Secure"),
        pytest.param({"max_waiters": -1}, "max_waiters", ">= 0", id="max_waiters"),
        pytest.param({"secret_key": None}, "secret_key", "required", id="no secret"),
    ],
)
def test_config_errors_name_the_option(options: dict[str, Any], option: str, words: str) -> None:
    options.setdefault("secret_key", "k")
    with pytest.raises(ConfigError) as info:
        build_settings(**options)
    assert info.value.option == option
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_cookie_action_is_plain_data() -> None:
    assert CookieAction("delete") == CookieAction("delete")
    assert RequestInfo().path == ""


def test_session_ids_are_random_url_safe_and_never_start_with_a_dash() -> None:
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 43 and i[0] != "-" for i in ids)
