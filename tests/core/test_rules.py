"""The core's smaller tables: routes, lifetimes, operations, lock renewal and waiting."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from sessionmw.backends.base import AdminBackend, AsyncBackend, Backend, Record, Touch
from sessionmw.core import ops
from sessionmw.core.lifetime import Lifetime
from sessionmw.core.locking import delay_series, wait_delays
from sessionmw.core.route import EXCLUDED, READ_WRITE, Route
from sessionmw.drivers.common import Renewals, count_waiter

from .script import NOW, make_core


@pytest.mark.parametrize(
    ("options", "path", "facts", "route"),
    [
        pytest.param({}, "/a", {}, READ_WRITE, id="plain route"),
        pytest.param({"exclude_paths": ["/static/*"]}, "/static/x.css", {}, EXCLUDED, id="exclude_paths"),
        pytest.param({}, "/s", {"static": True}, EXCLUDED, id="static files"),
        pytest.param({}, "/ws", {"websocket": True}, Route(read_only=True), id="websocket: read-only"),
        pytest.param(
            {"read_only_debug": True}, "/ws", {"websocket": True}, Route(read_only=True), id="websocket, debug"
        ),
        pytest.param({}, "/status", {"marked": True}, Route(read_only=True), id="@read_only"),
        pytest.param({"read_only_paths": ["/st*"]}, "/status", {}, Route(read_only=True), id="read_only_paths"),
        pytest.param({"read_only_debug": True}, "/status", {"marked": True}, Route(declared=True), id="debug roll-out"),
        pytest.param({"lazy_paths": ["/l/*"]}, "/l/x", {}, Route(lazy=True), id="lazy_paths"),
        pytest.param({"lazy_paths": ["/l/*"]}, "/l/x", {"websocket": True}, Route(read_only=True), id="lazy, ws"),
        pytest.param(
            {"lazy_paths": ["/l/*"]}, "/l/x", {"marked": True}, Route(read_only=True, lazy=True), id="lazy, read-only"
        ),
    ],
)
def test_route_table(options: dict[str, Any], path: str, facts: dict[str, bool], route: Route) -> None:
    assert make_core(**options).routes.decide(path, **facts) == route


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
    lifetime = make_core(idle_timeout=idle, absolute_timeout=absolute).lifetime
    ov, value = override or (False, None)
    rec = Record(b"{}", created=NOW - age, last_access=NOW - idle_for, idle_override=ov, idle_timeout=value)
    assert lifetime.expired(rec, NOW) is expired


def test_ttl_is_a_safety_net_beyond_the_timeout() -> None:
    lifetime: Lifetime = make_core(idle_timeout=600, touch_interval=60).lifetime
    assert lifetime.touch_every == 60
    assert lifetime.ttl(NOW + 600, NOW) == 600 + 60 + 60
    assert make_core(idle_timeout=100).lifetime.touch_every == 25, "a quarter of idle_timeout at most"


TOUCH = Touch(last_access=NOW, last_ip=None, expires=None, ttl=None)
REC = Record(b"{}", created=NOW, last_access=NOW)
OPS: list[Any] = [
    pytest.param(ops.LockAndLoad("s", "t", 5.0), "lock_and_load", ("s", "t", 5.0), (True, False, False), id="lock"),
    pytest.param(ops.Load("s"), "load", ("s",), (False, False, False), id="load"),
    pytest.param(ops.Create("s", REC, 9.0), "create", ("s", REC, 9.0), (False, False, False), id="create"),
    pytest.param(ops.Save("s", REC, "t", 9.0), "save", ("s", REC, "t", 9.0), (False, True, True), id="save"),
    pytest.param(ops.Release("s", "t", TOUCH), "release", ("s", "t", TOUCH), (False, True, True), id="release"),
    pytest.param(ops.Refresh("s", TOUCH), "touch", ("s", TOUCH), (False, False, False), id="touch"),
    pytest.param(ops.Extend("s", "t", 5.0), "extend", ("s", "t", 5.0), (False, False, False), id="extend"),
    pytest.param(ops.Delete("s"), "delete", ("s",), (False, False, True), id="delete"),
    pytest.param(ops.UserSessions("u"), "user_sessions", ("u",), (False, False, False), id="user sessions"),
]


class Calls:
    """Records any method call by name and arguments (sync, and ``a``-prefixed async)."""

    name = "calls"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any) -> Any:
            self.calls.append((method, args))

        async def call_async(*args: Any) -> Any:
            self.calls.append((method, args))

        return call_async if method.startswith("a") and method[1:] in _SYNC else call


_SYNC = {"lock_and_load", "load", "create", "save", "release", "touch", "extend", "delete", "user_sessions"}


@pytest.mark.parametrize(("op", "method", "args", "effects"), OPS)
def test_each_operation_calls_its_primitive_and_says_its_effects(
    op: ops.BackendOp[Any], method: str, args: tuple[Any, ...], effects: tuple[bool, bool, bool]
) -> None:
    sync = Calls()
    op.run(sync)  # type: ignore[arg-type]
    assert sync.calls == [(method, args)]
    aio = Calls()
    awaitable = op.arun(aio)  # type: ignore[arg-type]
    assert inspect.isawaitable(awaitable)
    with pytest.raises(StopIteration):
        awaitable.__await__().send(None)
    assert aio.calls == [("a" + method, args)]
    assert (op.holds, op.frees, op.wakes) == effects
    protocol = AdminBackend if method == "user_sessions" else Backend
    assert method in dir(protocol), "the primitive is part of the protocol mypy checks"
    assert method == "user_sessions" or "a" + method in dir(AsyncBackend)


def test_renewals_come_every_third_of_lock_expire() -> None:
    r = Renewals(lock_expire=9.0)
    r.add("s1", "t1", now=0.0)
    r.add("s2", "t2", now=1.0)
    assert r.next_due() == 3.0
    assert r.take_due(2.9) == []
    assert r.take_due(3.0) == [("s1", "t1")]
    r.renewed("t1", True, now=3.5)
    r.discard("t2")
    assert r.next_due() == 6.5, "a lock let go is skipped"
    assert r.take_due(7.0) == [("s1", "t1")]
    r.renewed("t1", False, now=7.0)
    assert r.next_due() is None and not r.held, "a lock found lost is forgotten"


def test_waiter_queue_has_a_limit() -> None:
    waiters: dict[str, int] = {}
    assert count_waiter(waiters, ops.Queue("s", True, 2)) is True
    assert count_waiter(waiters, ops.Queue("s", True, 2)) is True
    assert count_waiter(waiters, ops.Queue("s", True, 2)) is False
    count_waiter(waiters, ops.Queue("s", False, 2))
    count_waiter(waiters, ops.Queue("s", False, 2))
    assert waiters == {}


def test_wait_delays_grow_and_stop_at_the_deadline() -> None:
    delays = list(delay_series(1.0))
    assert delays[0] == pytest.approx(0.001)
    assert max(delays) <= 0.05
    assert sum(delays) == pytest.approx(1.0)
    assert wait_delays(0.0, 1.0, 1.0) is None
