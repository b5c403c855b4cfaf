"""Lock hand-off: a release wakes a waiter, one per release, in this process and in another one.

The cross-process tests slow polling down to :data:`SLOW_POLL` seconds (``FIRST_DELAY`` and
``POLL_INTERVAL`` of :mod:`sessionmw.core.locking`) in the waiting process, so a waiter that was not
woken by the release would get the lock only that long after it; each asserts the waiter got it well
within half of that. Remove a backend's wake-up (its ``wait_released``, the push in the Redis release
scripts, the PostgreSQL trigger, the file watcher) and its test fails.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from sessionmw import SessionMiddleware, WSGISessionMiddleware
from sessionmw.backends import open_backend
from sessionmw.backends.base import Record
from sessionmw.backends.wakeups import Wakeups
from sessionmw.core import locking
from sessionmw.core.events import SessionEvent

from ..conftest import backend_url_for

SECRET = "handoff-secret"
#: The poll interval of a waiter in these tests: a waiter woken by polling would wait this long.
SLOW_POLL = 5.0

NOTIFYING = [
    pytest.param("redis", id="redis", marks=pytest.mark.service("redis")),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.service("postgresql")),
    pytest.param("file", id="file"),
]


# -- the apps: a request that holds the lock until told, and one that reports when it got it --------


class Holder:
    """A WSGI app whose ``/hold`` keeps the session locked until :attr:`go` is set."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.go = threading.Event()
        self.released_at = 0.0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["sessionmw.session"]
        session["n"] = session.get("n", 0) + 1  # takes the lock
        if environ["PATH_INFO"] == "/hold":
            self.held.set()
            assert self.go.wait(60)
            self.released_at = time.monotonic()  # the middleware saves and releases right after
        elif environ["PATH_INFO"] == "/slow":
            time.sleep(0.6)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def _wsgi_stamp(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    session = environ["sessionmw.session"]
    session["n"] = session.get("n", 0) + 1  # takes the lock, waiting for it
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [repr(time.monotonic()).encode()]


async def _asgi_stamp(scope: Any, receive: Any, send: Any) -> None:
    session = scope["session"]  # loaded under the lock before the app runs
    session["n"] = session.get("n", 0) + 1
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": repr(time.monotonic()).encode()})


def _request_stamped(adapter: str, url: str, key_prefix: str, cookie: str, started: Any) -> tuple[float, list[str]]:
    """One request for the session of ``cookie``; return when its app ran (lock held) and the events."""
    events: list[SessionEvent] = []
    options: dict[str, Any] = {
        "secret_key": SECRET,
        "backend": url,
        "key_prefix": key_prefix,
        "lock_timeout": 60.0,
        "listeners": [events.append],
    }
    if adapter == "wsgi":
        app: Any = WSGISessionMiddleware(_wsgi_stamp, **options)
        with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as client:
            client.cookies.set("session", cookie)
            started.set()
            stamp = float(client.get("/").text)
        app.close()
    else:
        app = SessionMiddleware(_asgi_stamp, **options)

        async def request() -> float:
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as client:
                client.cookies.set("session", cookie)
                started.set()
                return float((await client.get("/")).text)

        stamp = asyncio.run(request())
    return stamp, [e.kind for e in events]


def _waiter_process(adapter: str, url: str, key_prefix: str, cookie: str, started: Any, out: Any) -> None:
    """In another process: poll only every SLOW_POLL seconds, and report when the request got the lock."""
    locking.FIRST_DELAY = locking.POLL_INTERVAL = SLOW_POLL
    try:
        out.put(_request_stamped(adapter, url, key_prefix, cookie, started))
    except BaseException as exc:  # reported to the test, which fails with it
        out.put(repr(exc))
        raise


def _slow_socket(url: str) -> str:
    """``url`` with a socket timeout above SLOW_POLL (Redis keeps a BLPOP within half of it); on
    PostgreSQL a table of the test's own, so that its trigger is the one this test's code made."""
    if url.startswith("redis"):
        return url + "?socket_timeout=30"
    if url.startswith("postgresql"):
        return url + f"?table=handoff_{uuid.uuid4().hex[:8]}"
    return url


def _drop_table(url: str) -> None:
    """Drop the private table of a PostgreSQL test (with its trigger), if it has one."""
    if "?table=handoff_" not in url:
        return
    import sqlalchemy as sa

    base, table = url.split("?table=")
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(sa.text(f'DROP FUNCTION IF EXISTS "{table}_wake"()'))
    engine.dispose()


@pytest.fixture
def holder_client(request: pytest.FixtureRequest, shared_tmp: Path) -> Iterator[tuple[str, str, Holder, Any]]:
    """A backend URL of the test's kind, a key prefix, and a WSGI client holding a fresh session's cookie."""
    url = _slow_socket(backend_url_for(request.node.callspec.params["kind"], request, shared_tmp))
    prefix = f"h{uuid.uuid4().hex[:8]}:"
    holder = Holder()
    app = WSGISessionMiddleware(holder, secret_key=SECRET, backend=url, key_prefix=prefix)
    with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as client:
        assert client.get("/").status_code == 200
        yield url, prefix, holder, client
    app.close()
    _drop_table(url)


def _hold_while(client: Any, holder: Holder) -> threading.Thread:
    """Start a request that holds the session's lock until ``holder.go``; return its thread once it holds."""
    thread = threading.Thread(target=lambda: client.get("/hold"))
    thread.start()
    assert holder.held.wait(30), "the holding request never got the lock"
    return thread


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
@pytest.mark.parametrize("kind", NOTIFYING)
def test_a_waiter_in_another_process_is_woken_by_the_release(
    kind: str, adapter: str, holder_client: tuple[str, str, Holder, Any]
) -> None:
    url, prefix, holder, client = holder_client
    thread = _hold_while(client, holder)
    ctx = multiprocessing.get_context("spawn")
    started, out = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_waiter_process, args=(adapter, url, prefix, client.cookies["session"], started, out))
    child.start()
    try:
        assert started.wait(60), "the waiting process did not start"
        time.sleep(0.5)  # its first try finds the lock held; it now waits up to SLOW_POLL
        holder.go.set()
        thread.join(30)
        result = out.get(timeout=60)
    finally:
        holder.go.set()
        child.join(30)
        if child.is_alive():
            child.kill()
    assert not isinstance(result, str), result
    got_at, kinds = result
    assert "lock_waited" in kinds, "the other process's request waited for the lock"
    assert got_at > holder.released_at
    assert got_at - holder.released_at < SLOW_POLL / 2, "woken by the release, not by polling"


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
@pytest.mark.parametrize("kind", [pytest.param("memory", id="memory")])
def test_a_waiter_of_another_middleware_in_this_process_is_woken(
    kind: str, adapter: str, holder_client: tuple[str, str, Holder, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # memory://: one store per process, shared by every middleware; each has its own driver.
    monkeypatch.setattr(locking, "FIRST_DELAY", SLOW_POLL)
    monkeypatch.setattr(locking, "POLL_INTERVAL", SLOW_POLL)
    url, prefix, holder, client = holder_client
    thread = _hold_while(client, holder)
    started = threading.Event()
    result: list[Any] = []
    waiter = threading.Thread(
        target=lambda: result.append(_request_stamped(adapter, url, prefix, client.cookies["session"], started))
    )
    waiter.start()
    assert started.wait(30)
    time.sleep(0.5)
    holder.go.set()
    thread.join(30)
    waiter.join(30)
    got_at, kinds = result[0]
    assert "lock_waited" in kinds
    assert holder.released_at < got_at < holder.released_at + SLOW_POLL / 2


# -- one waiter per release --------------------------------------------------------------------


class Counting:
    """A backend that counts tries of its lock, and offers no wake-up of its own (the driver's is used)."""

    def __init__(self, backend: Any) -> None:
        self.inner = backend
        self.name = backend.name
        self.tries = 0
        self._mutex = threading.Lock()

    def lock_and_load(self, sid: str, token: str, expire: float) -> Any:
        with self._mutex:
            self.tries += 1
        return self.inner.lock_and_load(sid, token, expire)

    def __getattr__(self, name: str) -> Any:
        if name in ("wait_released", "await_released"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_a_release_in_this_process_wakes_one_waiter_not_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locking, "FIRST_DELAY", SLOW_POLL)
    monkeypatch.setattr(locking, "POLL_INTERVAL", SLOW_POLL)
    backend = Counting(open_backend(f"memory://herd-{uuid.uuid4().hex[:6]}", key_prefix="h:"))
    holder = Holder()
    app = WSGISessionMiddleware(holder, secret_key=SECRET, backend=backend)
    with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as client:
        client.get("/")
        thread = _hold_while(client, holder)
        cookie = client.cookies["session"]

        def wait() -> None:
            with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as c:
                c.cookies.set("session", cookie)
                c.get("/slow")  # holds the lock a while once it has it

        waiters = [threading.Thread(target=wait) for _ in range(3)]
        before = backend.tries
        for w in waiters:
            w.start()
        deadline = time.monotonic() + 30
        while backend.tries < before + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert backend.tries == before + 3, "each waiter tried once and now waits"
        holder.go.set()
        thread.join(30)
        time.sleep(0.3)  # the woken waiter holds the lock now, for a while
        assert backend.tries == before + 4, "one waiter woke and tried; the others still wait"
        for w in waiters:
            w.join(30)
        assert backend.tries == before + 6, "each release woke the next waiter: one more try each"
    app.close()


# -- the per-process queue of waiters ------------------------------------------------------------


def test_wake_wakes_the_longest_waiting_ticket_only() -> None:
    wakeups = Wakeups()
    first, second = wakeups.join("k"), wakeups.join("k")
    assert wakeups.wake("k")
    assert first.wait(0) and not second.wait(0)
    assert wakeups.waiting("k") == 1
    wakeups.leave(first)
    wakeups.leave(second)
    assert wakeups.waiting("k") == 0 and not wakeups.wake("k")


def test_a_kept_wake_up_goes_to_the_next_ticket_until_forgotten() -> None:
    wakeups = Wakeups()
    assert not wakeups.wake("k", keep=True)
    ticket = wakeups.join("k")
    assert ticket.wait(0), "released between its try and its wait: woken at once"
    wakeups.leave(ticket)
    assert not wakeups.join("k").wait(0), "used once"
    wakeups.wake("j", keep=True)
    wakeups.forget("j")
    assert not wakeups.join("j").wait(0)


def test_a_woken_waiter_that_gives_up_passes_the_wake_up_on() -> None:
    async def main() -> bool:
        wakeups = Wakeups()
        gate = asyncio.Event()

        async def wait_then_cancelled() -> None:
            with wakeups.ticket("k", on_loop=True) as ticket:
                await ticket.await_(10)
                gate.set()
                await asyncio.sleep(10)  # cancelled here: woken, but never tried the lock

        async def wait() -> bool:
            with wakeups.ticket("k", on_loop=True) as ticket:
                return await ticket.await_(10)

        first = asyncio.create_task(wait_then_cancelled())
        await asyncio.sleep(0)
        second = asyncio.create_task(wait())
        await asyncio.sleep(0)
        wakeups.wake("k")
        await gate.wait()
        assert not second.done()
        first.cancel()
        return await asyncio.wait_for(second, 5)

    assert asyncio.run(main()), "the second waiter got the wake-up the first one left with"


def test_a_ticket_times_out_unwoken_and_leaves_the_queue() -> None:
    wakeups = Wakeups()
    with wakeups.ticket("k") as ticket:
        assert not ticket.wait(0.01)
    assert wakeups.waiting("k") == 0


# -- what the stores do on release ---------------------------------------------------------------


@pytest.mark.service("redis")
def test_redis_release_with_nobody_waiting_leaves_no_key_of_waiting(request: pytest.FixtureRequest) -> None:
    import redis

    url = request.getfixturevalue("redis_url")
    prefix = f"h{uuid.uuid4().hex[:8]}:"
    backend = open_backend(url, key_prefix=prefix)
    assert backend.lock_and_load("s", "t", 10)[0]
    assert backend.release("s", "t", None)
    raw = redis.Redis.from_url(url)
    assert raw.keys(prefix + "*") == [], "an uncontended release writes nothing for waiters"
    # A waiter whose wait timed out takes itself off the count: the next release pushes nothing.
    assert backend.lock_and_load("s", "t2", 10)[0]
    backend.wait_released("s", 0.05)
    assert int(raw.get(backend._base.keys.waiters("s")) or 0) == 0
    assert backend.release("s", "t2", None)
    assert raw.llen(backend._base.keys.wakeups("s")) == 0
    backend.close()


@pytest.mark.parametrize("kind", ["redis-cluster", "redis-sentinel"])
@pytest.mark.service("redis")
def test_redis_sentinel_and_cluster_wake_a_waiter(kind: str, request: pytest.FixtureRequest, shared_tmp: Path) -> None:
    backend = open_backend(
        _slow_socket(backend_url_for(kind, request, shared_tmp)), key_prefix=f"h{uuid.uuid4().hex[:8]}:"
    )
    assert backend.lock_and_load("s", "t", 30)[0]
    woke: list[float] = []
    waiter = threading.Thread(target=lambda: (backend.wait_released("s", SLOW_POLL), woke.append(time.monotonic())))
    waiter.start()
    time.sleep(0.3)
    released = time.monotonic()
    assert backend.release("s", "t", None)
    waiter.join(10)
    assert woke and woke[0] - released < SLOW_POLL / 2, "woken by the release, not at the end of its wait"
    backend.close()


@pytest.fixture
def private_postgres_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL with a table of the test's own, dropped (with its trigger) afterwards."""
    url = _slow_socket(postgres_url)
    yield url
    _drop_table(url)


@pytest.mark.service("postgresql")
def test_postgresql_notifies_only_a_release_someone_waits_for(private_postgres_url: str) -> None:
    import psycopg
    import sqlalchemy as sa

    from sessionmw.backends.sql.notify import channel_of

    backend: Any = open_backend(private_postgres_url, key_prefix=f"h{uuid.uuid4().hex[:8]}:")
    now = time.time()
    assert backend.create("s", Record(b"{}", now, now), 60)  # a lock lives in the session's row
    dsn = private_postgres_url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel_of(backend.table.name)}"')
        assert backend.lock_and_load("s", "t", 10)[0]
        assert backend.release("s", "t", None)
        assert list(listener.notifies(timeout=0.3)) == [], "nobody waited: no NOTIFY"
        assert backend.lock_and_load("s", "t2", 10)[0]
        backend.wait_released("s", 0.01)  # counts this process as waiting
        assert backend.release("s", "t2", None)
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [n.payload for n in notes] == [backend.key_prefix + "s"]
        # A second after its last waiter left, the process is uncounted: releases notify nobody again.
        state = sa.select(backend.table.c.state).where(backend.table.c.sid == backend.key_prefix + "s")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with backend.engine.connect() as conn:
                if conn.execute(state).scalar() == 0:
                    break
            time.sleep(0.1)
        assert backend.lock_and_load("s", "t3", 10)[0]
        assert backend.release("s", "t3", None)
        assert list(listener.notifies(timeout=0.3)) == [], "uncounted: no NOTIFY"
    backend.close()
