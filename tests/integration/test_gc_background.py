"""gc without cron: the middleware collects expired sessions itself, in the background, one worker at a time.

Three layers, as the code is built:

* the core's policy (:mod:`sessionmw.core.sweep`), as a table of collections driven by a fake clock;
* the backends' two primitives: ``claim_gc`` (the store-wide turn, a lease that runs out) and
  ``gc(now, limit)`` (one batch), on every store that keeps expired sessions;
* the adapters (ASGI, WSGI, Flask): a site with no cron holds a steady number of files or rows under
  a stream of short-lived sessions, and a growing one with ``gc_interval=None``; two workers on one
  store never collect at once; a request never waits for a collection; a failure is logged and tried
  again.

Waits here are for something to happen (``eventually``), with a generous bound; nothing asserts how
long anything took.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from pytest import approx
from starlette.applications import Starlette
from starlette.testclient import TestClient

from sessionmw import SessionMiddleware
from sessionmw.backends import open_backend
from sessionmw.backends.base import Record
from sessionmw.backends.file import FileBackend
from sessionmw.backends.file.files import GC_LEASE, TMP_AGE
from sessionmw.backends.sql import SQLBackend
from sessionmw.core.cookies import new_session_id
from sessionmw.core.locking import new_lock_token
from sessionmw.core.sweep import BATCH, LEASE_SHARE, MAX_PAUSE, Claim, Collect, Pause, Sweep, SweepOp, Swept
from sessionmw.drivers.sweeper import AsyncSweeper, SyncSweeper, collector_of

from ..apps import STARLETTE_ROUTES, make_flask_app, make_wsgi_app
from ..conftest import TIERED, backend_url_for

SECRET = "test-secret"
ADAPTERS = ["asgi", "wsgi", "flask"]

#: The stores that keep expired sessions until collected.
COLLECTED = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.service("postgresql")),
    pytest.param("mysql", id="mysql", marks=pytest.mark.service("mysql")),
]
#: The stores whose rows or files a site holds on disk.
DURABLE = COLLECTED[1:]


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait until ``check()`` is true; fail naming ``what`` if it is not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.01)


def rec(expires: float | None, user_id: str | None = None) -> Record:
    """A small record ending at ``expires``."""
    now = time.time()
    return Record(b'{"n":1}', now, now, user_id=user_id, expires=expires)


# == the core: one collection, as a table =========================================================


def drive(
    flow: Generator[SweepOp, object, Swept], claimed: bool, batches: list[int], batch_seconds: float
) -> tuple[list[SweepOp], Swept]:
    """Run a collection against a scripted store and a fake monotonic clock (starting at 0).

    Each batch removes the next count of ``batches`` and takes ``batch_seconds``; a pause takes what
    it asks. Returns the operations yielded and the outcome.
    """
    clock = 0.0
    ops: list[SweepOp] = []
    answer: object = None
    left = list(batches)
    try:
        while True:
            op = flow.send(answer)
            ops.append(op)
            if isinstance(op, Claim):
                answer = (claimed, clock)
            elif isinstance(op, Collect):
                clock += batch_seconds
                answer = (left.pop(0), clock)
            else:
                assert isinstance(op, Pause)
                clock += op.seconds
                answer = (None, clock)
    except StopIteration as done:
        return ops, done.value


@pytest.mark.parametrize(
    ("interval", "claimed", "batches", "batch_seconds", "shape", "outcome"),
    [
        pytest.param(10.0, False, [], 0.1, "C", Swept(False), id="another-worker-has-the-turn"),
        pytest.param(
            10.0, True, [0], 0.1, "CB", Swept(True, 0, 1, complete=True, seconds=approx(0.1)), id="nothing-expired"
        ),
        pytest.param(
            10.0,
            True,
            [BATCH, BATCH, 7],
            0.1,
            "CBPBPB",
            Swept(True, 2 * BATCH + 7, 3, complete=True, seconds=approx(0.5)),
            id="a-backlog-in-batches-paused-as-long-as-each-took",
        ),
        pytest.param(
            10.0,
            True,
            [BATCH] * 10,
            2.0,
            "CBPB",
            Swept(True, 2 * BATCH, 2, complete=False, seconds=approx(2.0 + MAX_PAUSE + 2.0)),
            id="half-the-interval-spent-the-rest-waits",
        ),
    ],
)
def test_a_collection(
    interval: float, claimed: bool, batches: list[int], batch_seconds: float, shape: str, outcome: Swept
) -> None:
    sweep = Sweep(interval)
    ops, swept = drive(sweep.collect(now=1000.0, mono=0.0), claimed, batches, batch_seconds)
    assert "".join({Claim: "C", Collect: "B", Pause: "P"}[type(op)] for op in ops) == shape
    assert swept == outcome
    first = ops[0]
    assert isinstance(first, Claim) and first.every == interval * LEASE_SHARE, "the turn lasts most of an interval"
    for op in ops:
        if isinstance(op, Collect):
            assert op.limit == BATCH and op.now == 1000.0, "every batch removes what expired before the start"
        if isinstance(op, Pause):
            assert op.seconds == approx(min(batch_seconds, MAX_PAUSE)), "as long as the batch, at most MAX_PAUSE"


def test_the_schedule_tries_at_the_first_response_then_once_per_interval() -> None:
    sweep = Sweep(30.0)
    assert sweep.due(5.0), "a worker's first response may collect: a short-lived worker still helps"
    sweep.begin(5.0)
    assert not sweep.due(5.0) and not sweep.due(34.9)
    assert sweep.due(35.0)
    assert Sweep(30.0).budget == 15.0 and Sweep(30.0, budget=3.0).budget == 3.0


# == the backends: the turn, and batches ==========================================================


@pytest.fixture
def prefix() -> str:
    return f"g{uuid.uuid4().hex[:10]}:"


def store_url(kind: str, request: pytest.FixtureRequest, tmp: Path) -> Any:
    """The URL of a store of ``kind`` (a file store in a directory of its own)."""
    if kind == "file":
        return f"file://{tmp}/files-{uuid.uuid4().hex[:6]}"
    return backend_url_for(kind, request, tmp)


@pytest.fixture(params=[*COLLECTED, *[p for p in TIERED if p.id == "tiered-memcached-sqlite"]])
def two_backends(request: pytest.FixtureRequest, shared_tmp: Path, prefix: str) -> Iterator[tuple[Any, Any]]:
    """Two backend objects on one store and prefix: two workers, as far as the store can tell."""
    url = store_url(request.param, request, shared_tmp)
    a, b = open_backend(url, key_prefix=prefix), open_backend(url, key_prefix=prefix)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_the_turn_goes_to_one_worker_until_it_runs_out(two_backends: tuple[Any, Any], prefix: str) -> None:
    a, b = two_backends
    assert a.claim_gc(0.5), "nobody had the turn"
    assert not b.claim_gc(0.5), "another worker has it"
    assert not a.claim_gc(0.5), "it is never taken twice, not even by its holder"
    eventually(lambda: b.claim_gc(0.5), "the turn runs out and the other worker takes it")
    assert not a.claim_gc(0.5)


def test_batches_remove_at_most_their_limit_and_only_expired_sessions(two_backends: tuple[Any, Any]) -> None:
    a, _ = two_backends
    now = time.time()
    live = [new_session_id() for _ in range(6)]
    expired = [new_session_id() for _ in range(11)]
    for i, sid in enumerate(live):
        never = i == 0  # a session without a timeout never expires
        assert a.create(
            sid, rec(None if never else now + 3600, user_id="u" if i % 2 else None), ttl=None if never else 3700
        )
    for i, sid in enumerate(expired):
        assert a.create(sid, rec(now - 5, user_id="u" if i % 2 else None), ttl=3700)
    assert a.claim_gc(60), "the turn's record is no session"
    assert a.gc(now, limit=4) == 4
    assert a.gc(now, limit=4) == 4
    assert a.gc(now, limit=4) == 3, "a short batch: nothing expired is left"
    assert a.gc(now, limit=4) == 0
    for sid in live:
        assert a.load(sid) is not None, "a live session is never collected"
    # (A tiered store collects its durable tier, the registry; the fast one drops its copies itself.)
    assert sorted(s for s, _ in a.iter_records()) == sorted(live), (
        "exactly the expired ones went; the turn is no session"
    )
    assert sorted(s for s, _ in a.user_sessions("u")) == sorted(s for i, s in enumerate(live) if i % 2)
    if isinstance(a, SQLBackend):
        assert a.stats() == {"rows": len(live), "expired_rows": 0}, "nor counted"


def test_gc_without_a_limit_removes_every_expired_session_in_batches(
    request: pytest.FixtureRequest, shared_tmp: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionmw.backends.sql import backend as sql_backend

    monkeypatch.setattr(sql_backend, "GC_BATCH_SQLITE", 3)
    b = open_backend(backend_url_for("sqlite", request, shared_tmp), key_prefix=prefix)
    assert isinstance(b, SQLBackend)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append(statement)

    try:
        now = time.time()
        for _ in range(8):
            assert b.create(new_session_id(), rec(now - 5), ttl=60)
        keep = new_session_id()
        assert b.create(keep, rec(now + 60), ttl=60)
        sa.event.listen(b.engine, "before_cursor_execute", count)
        assert b.gc(now) == 8
        assert len(statements) == 3, "three transactions of at most three rows: 3 + 3 + 2"
        assert [s for s, _ in b.iter_records()] == [keep]
    finally:
        sa.event.remove(b.engine, "before_cursor_execute", count)
        b.close()


class CountingReads(FileBackend):
    """A file backend counting the session files gc reads."""

    reads = 0

    def _expired(self, base: str, now: float) -> Record | None:
        type(self).reads += 1
        return super()._expired(base, now)


def test_file_batches_go_on_where_the_last_one_stopped(tmp_path: Path) -> None:
    b = CountingReads(tmp_path, key_prefix="p:")
    now = time.time()
    for i in range(60):
        assert b.create(new_session_id(), rec(now - 5 if i % 3 == 0 else now + 60), ttl=60)
    CountingReads.reads = 0
    assert [b.gc(now, limit=4) for _ in range(5)] == [4] * 5
    assert CountingReads.reads <= 60, "the 20 expired ones in one walk over the directory, not a walk per batch"
    assert b.gc(now, limit=4) == 0, "the rest of the walk (or the next) finds nothing more"
    assert len(list(b.iter_records())) == 40


def test_file_gc_takes_the_lock_files_and_the_left_overs(tmp_path: Path) -> None:
    b = FileBackend(tmp_path, key_prefix="p:")
    now = time.time()
    used, held, orphan, live = (new_session_id() for _ in range(4))
    for sid in (used, held):
        assert b.create(sid, rec(now - 5, user_id="u"), ttl=60)
    assert b.create(live, rec(now + 60), ttl=60)
    token = new_lock_token()
    assert b.lock_and_load(used, token, 30)[0] and b.release(used, token, None)  # leaves its lock file
    (tmp_path / f"p:{orphan}.lock").write_text("x 1")
    (tmp_path / f"p:{orphan}.touch").write_text("[1, null, 2]")
    old_tmp, new_tmp = tmp_path / "p:abc.session.0a0a.tmp", tmp_path / "p:def.session.0b0b.tmp"
    for path in (old_tmp, new_tmp):
        path.write_bytes(b"partial")
    os.utime(old_tmp, (now - TMP_AGE - 60, now - TMP_AGE - 60))
    other = tmp_path / "q:whatever.lock"  # another prefix's
    other.write_text("x 1")
    assert b.claim_gc(60)
    holder = new_lock_token()
    assert b.lock_and_load(held, holder, 30)[0], "a request holds this one while gc runs"

    assert b.gc(now) == 2
    names = {p.name for p in tmp_path.iterdir()}
    assert f"p:{used}.lock" not in names and f"p:{used}.session" not in names, "no lock file left per session"
    assert f"p:{held}.session" not in names and f"p:{held}.lock" in names, "a held lock stays with its holder"
    assert f"p:{orphan}.lock" not in names and f"p:{orphan}.touch" not in names, "left-overs go"
    assert old_tmp.name not in names and new_tmp.name in names, "only an old interrupted write goes"
    assert {other.name, f"p:{GC_LEASE}", f"p:{live}.session"} <= names
    assert b.user_sessions("u") == []
    assert not b.save(held, rec(now + 60), holder, ttl=60), "the holder's write is dropped: never resurrected"
    assert f"p:{held}.lock" not in {p.name for p in tmp_path.iterdir()}, "its holder removed the lock file"


# == the adapters ==================================================================================


class Watched:
    """A backend whose turn and batches are recorded (and may be slowed, blocked or failed)."""

    def __init__(self, inner: Any, journal: Journal) -> None:
        self._inner = inner
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def claim_gc(self, every: float) -> bool:
        granted = bool(self._inner.claim_gc(every))
        self._journal.claimed(self, granted)
        return granted

    def gc(self, now: float, limit: int | None = None) -> int:
        journal = self._journal
        journal.entered(self)
        try:
            journal.hook(self)
            return int(self._inner.gc(now, limit=limit))
        finally:
            journal.left(self)

    def close(self) -> None:
        self._journal.events.append("close")
        self._inner.close()

    async def aclose(self) -> None:
        self.close()


class Journal:
    """What the watched backends of one test did: turns, batches in flight, the most at once."""

    def __init__(self, hook: Callable[[Watched], None] = lambda w: None) -> None:
        self.hook = hook
        self.mutex = threading.Lock()
        self.granted: list[Watched] = []
        self.refused: list[Watched] = []
        self.batches: list[Watched] = []
        self.in_flight = 0
        self.most = 0
        self.events: list[str] = []

    def claimed(self, who: Watched, granted: bool) -> None:
        with self.mutex:
            (self.granted if granted else self.refused).append(who)

    def entered(self, who: Watched) -> None:
        with self.mutex:
            self.batches.append(who)
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.events.append("gc")

    def left(self, who: Watched) -> None:
        with self.mutex:
            self.in_flight -= 1
            self.events.append("gc done")


class Site:
    """One middleware (a "worker") on ``adapter``, its test client and its sweeper."""

    def __init__(self, adapter: str, client: Any, sweeper: SyncSweeper | AsyncSweeper) -> None:
        self.adapter = adapter
        self.client = client
        self.sweeper = sweeper

    def new_session(self) -> None:
        """One visitor: a new session, then a locked write with its cookie (which makes a lock file)."""
        self.client.cookies.clear()
        assert self.client.get("/inc").json() == {"n": 1}
        assert self.client.get("/inc").json() == {"n": 2}

    def idle(self) -> None:
        eventually(lambda: not self.sweeper.running, "the running collection ends")


@contextmanager
def site(adapter: str, backend: Any, **options: Any) -> Iterator[Site]:
    """A site on ``adapter`` with ``options``, as a test client."""
    options.setdefault("secret_key", SECRET)
    options["backend"] = backend
    if adapter == "asgi":
        mw = SessionMiddleware(Starlette(routes=STARLETTE_ROUTES), **options)
        with TestClient(mw) as client:
            yield Site(adapter, client, mw.sweeper)
        return
    if adapter == "wsgi":
        app: Any = make_wsgi_app(**options)
        sweeper = app.sweeper
    else:
        app = make_flask_app(**options)
        sweeper = app.extensions["sessionmw"].sweeper
    with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as client:
        yield Site(adapter, client, sweeper)
    if adapter == "wsgi":
        app.close()


def stored(url: Any, prefix: str) -> int:
    """Every file (of any kind) or row under ``prefix`` in the store at ``url``, expired or not."""
    if isinstance(url, str) and url.startswith("file://"):
        folder = Path(url[len("file://") :])
        return sum(1 for p in folder.iterdir() if p.name.startswith(prefix))
    b = open_backend(url, key_prefix=prefix)
    assert isinstance(b, SQLBackend)
    try:
        t = b.table
        with b.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(t.c.sid.startswith(prefix))).scalar_one())
    finally:
        b.close()


WAVES, VISITORS = 4, 8


@pytest.mark.parametrize("kind", DURABLE)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_site_without_cron_holds_a_steady_number_of_files_or_rows(
    adapter: str, kind: str, request: pytest.FixtureRequest, shared_tmp: Path, prefix: str
) -> None:
    url = store_url(kind, request, shared_tmp)
    off = "o" + prefix[1:]  # a site of its own beside it (neither prefix starts the other)
    per_session = 2 if kind == "file" else 1  # a .session and a .lock file; a row
    held = []
    # A second between a visitor's two requests before its session expires, even on a loaded machine.
    with (
        site(adapter, url, key_prefix=prefix, idle_timeout=1.0, gc_interval=0.3) as collected,
        site(adapter, url, key_prefix=off, idle_timeout=1.0, gc_interval=None) as uncollected,
    ):
        for _ in range(WAVES):
            for _ in range(VISITORS):
                collected.new_session()
                uncollected.new_session()
            collected.idle()
            held.append(stored(url, prefix))
            time.sleep(1.5)  # this wave expires, and a collection is due at the next wave's first response
        assert stored(url, off) == WAVES * VISITORS * per_session, "without gc every session stays"
        # Never more than this wave, what is left of the one before, and the turn's file or row.
        assert all(n <= 2 * VISITORS * per_session + 1 for n in held), held


@pytest.mark.parametrize("kind", ["file", "sqlite", "memory"])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_gc_interval_none_never_collects(
    adapter: str, kind: str, request: pytest.FixtureRequest, shared_tmp: Path, prefix: str
) -> None:
    journal = Journal()
    backend = Watched(open_backend(store_url(kind, request, shared_tmp), key_prefix=prefix), journal)
    # A second of idle timeout: a visitor's two requests stay in one session however slow the disk is.
    with site(adapter, backend, key_prefix=prefix, idle_timeout=1.0, gc_interval=None) as s:
        assert s.sweeper.sweep is None
        s.new_session()
        time.sleep(1.1)  # the first session expired: a collection would be due
        s.new_session()
        assert journal.granted == journal.refused == journal.batches == []
    with site(adapter, backend, key_prefix=prefix, idle_timeout=1.0, gc_interval=30) as s:
        s.new_session()
        s.idle()
        assert len(journal.granted) == 1 and len(journal.batches) == 1, "the same site with gc on collects"


@pytest.mark.parametrize("kind", COLLECTED)
def test_two_workers_on_one_store_never_collect_at_once(
    kind: str, request: pytest.FixtureRequest, shared_tmp: Path, prefix: str
) -> None:
    # Each batch is slowed, so that two collections in one interval would overlap and be seen. A
    # collection starts no batch after half the interval, so it ends within half the interval plus
    # one batch, and the turn lasts 0.9 of it: the 0.8 s between leave room for a batch slowed by two
    # serving threads on a busy machine (with 1 s, the 0.4 s left was once not enough in CI).
    journal = Journal(hook=lambda who: time.sleep(0.2))
    url = store_url(kind, request, shared_tmp)
    workers = [Watched(open_backend(url, key_prefix=prefix), journal) for _ in range(2)]
    interval = 2.0
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve(s: Site) -> None:
        try:
            while not stop.is_set():
                s.client.cookies.clear()
                for _ in range(2):
                    assert s.client.get("/inc").status_code == 200
        except BaseException as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    with (
        site("wsgi", workers[0], key_prefix=prefix, idle_timeout=0.2, gc_interval=interval) as one,
        site("asgi", workers[1], key_prefix=prefix, idle_timeout=0.2, gc_interval=interval) as two,
    ):
        started = time.monotonic()
        threads = [threading.Thread(target=serve, args=(s,)) for s in (one, two)]
        for t in threads:
            t.start()
        eventually(lambda: len(journal.granted) >= 3 or bool(errors), "three collections")
        stop.set()
        for t in threads:
            t.join()
        one.idle()
        two.idle()
        elapsed = time.monotonic() - started
    assert not errors, errors
    assert journal.most == 1, "two collections ran at once"
    assert journal.refused, "a worker was refused the turn another had"
    turns = elapsed / (interval * LEASE_SHARE) + 1
    assert len(journal.granted) <= turns, "at most one collection per turn, all workers together"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_request_never_waits_for_a_collection(
    adapter: str, request: pytest.FixtureRequest, shared_tmp: Path, prefix: str
) -> None:
    entered, release = threading.Event(), threading.Event()
    released: list[bool] = []

    def block(who: Watched) -> None:
        entered.set()
        released.append(release.wait(20))

    backend = Watched(open_backend(store_url("file", request, shared_tmp), key_prefix=prefix), Journal(block))
    with site(adapter, backend, key_prefix=prefix, gc_interval=60) as s:
        try:
            assert s.client.get("/inc").json() == {"n": 1}, "the response that starts the collection"
            assert entered.wait(10), "a collection started after it"
            for n in range(2, 6):
                assert s.client.get("/inc").json() == {"n": n}, "requests go on while it is blocked"
            assert s.client.get("/view").status_code == 200
            assert s.sweeper.running and not release.is_set()
        finally:
            release.set()
        s.idle()
    assert released == [True], "the collection waited for the test, not the other way round"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_failed_collection_is_logged_and_tried_again_an_interval_later(
    adapter: str, request: pytest.FixtureRequest, shared_tmp: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    def fail_first(who: Watched) -> None:
        if len(journal.batches) == 1:
            raise OSError("disk on fire")

    journal = Journal(fail_first)
    backend = Watched(open_backend(store_url("sqlite", request, shared_tmp), key_prefix=prefix), journal)
    with (
        caplog.at_level(logging.WARNING, logger="sessionmw"),
        site(adapter, backend, key_prefix=prefix, gc_interval=0.3) as s,
    ):
        s.new_session()
        s.idle()
        failed = [r for r in caplog.records if "background gc failed" in r.getMessage()]
        assert len(failed) == 1 and failed[0].levelno == logging.WARNING and "disk on fire" in failed[0].getMessage()
        assert s.client.get("/inc").status_code == 200, "the site goes on"

        def again() -> bool:
            s.client.get("/inc")
            return len(journal.batches) >= 2

        eventually(again, "a second collection, an interval later")
        s.idle()
    assert len(journal.granted) == 2


def test_asgi_shutdown_lets_a_running_batch_finish_before_the_store_closes(
    request: pytest.FixtureRequest, shared_tmp: Path, prefix: str
) -> None:
    entered = threading.Event()
    journal = Journal(lambda who: (entered.set(), time.sleep(0.3)))
    backend = Watched(open_backend(store_url("file", request, shared_tmp), key_prefix=prefix), journal)
    with site("asgi", backend, key_prefix=prefix, gc_interval=60) as s:
        s.client.get("/inc")
        assert entered.wait(10)
    assert journal.events == ["gc", "gc done", "close"]


@pytest.mark.service("redis")
@pytest.mark.service("memcached")
@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_stores_that_expire_their_records_themselves_are_never_collected(
    adapter: str, redis_url: str, memcached_url: str, prefix: str
) -> None:
    for url in (redis_url, memcached_url):
        with site(adapter, url, key_prefix=prefix, gc_interval=1.0) as s:
            assert s.sweeper.sweep is None, url
            s.new_session()
            assert not s.sweeper.running
    assert collector_of(open_backend("memory://")) is not None
