"""SQLite under concurrent writers: WAL, write transactions begun IMMEDIATE, turns between a process's threads.

Each test works on a database file of its own in ``tmp_path``. Nothing here is timed: the waits
asserted are a busy timeout's order of magnitude, never a speed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionmw.backends import Record, open_backend
from sessionmw.backends.sql import SQLBackend
from sessionmw.core.cookies import new_session_id
from sessionmw.core.errors import BackendUnavailable
from sessionmw.core.locking import new_lock_token

THREADS = 16
INCREMENTS = 20


def rec(n: int) -> Record:
    now = time.time()
    return Record(data=json.dumps({"n": n}).encode(), created=now, last_access=now)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sessions.db"


def open_sqlite(db: Path, options: str = "") -> SQLBackend:
    b = open_backend(f"sqlite:///{db}?table=t_load{options}", key_prefix="load:")
    assert isinstance(b, SQLBackend)
    return b


@pytest.fixture
def backend(db: Path) -> Iterator[SQLBackend]:
    b = open_sqlite(db, "&socket_timeout=1")
    b.create_tables()
    yield b
    b.close()


@pytest.fixture
def writer(db: Path, backend: SQLBackend) -> Iterator[sqlite3.Connection]:
    """A second connection that holds SQLite's write lock (``BEGIN IMMEDIATE``) until the test ends."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE")
    yield conn
    conn.execute("ROLLBACK")
    conn.close()


def test_the_backend_switches_sqlite_to_wal_with_synchronous_normal(backend: SQLBackend, db: Path) -> None:
    with backend.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1000  # ?socket_timeout=1
    other = sqlite3.connect(db)
    try:  # kept in the file: every later connection finds it
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_a_write_transaction_waits_for_the_write_lock_when_it_begins(
    backend: SQLBackend, writer: sqlite3.Connection
) -> None:
    # Begun IMMEDIATE, a write transaction takes SQLite's write lock before its first statement: with
    # another writer holding it, even a transaction whose first statement only reads waits (here
    # for the busy timeout, 1 s) and gives up. Begun deferred, that read would run at once and the
    # later write could fail at once with "database is locked", busy timeout or not.
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="database is locked"):
        with backend._begin(write=True) as conn:
            conn.exec_driver_sql(f"SELECT count(*) FROM {backend.table.name}").scalar()
    waited = time.monotonic() - started
    assert 0.5 < waited < 8, f"gave up after {waited:.2f} s"


def test_reads_never_wait_for_a_writer(backend: SQLBackend, writer: sqlite3.Connection) -> None:
    sid = new_session_id()
    started = time.monotonic()
    assert backend.load(sid) is None  # a read transaction: WAL lets it run beside the writer
    assert list(backend.iter_records()) == []
    assert time.monotonic() - started < 0.5


def test_a_write_waits_for_another_process_writer_within_the_busy_timeout(db: Path, backend: SQLBackend) -> None:
    # The busy timeout, not a retry loop of ours, bridges another process's short write transaction.
    sid = new_session_id()
    assert backend.create(sid, rec(0), ttl=60)
    other = sqlite3.connect(db, isolation_level=None, timeout=0, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    timer.start()
    try:
        started = time.monotonic()
        locked, got = backend.lock_and_load(sid, new_lock_token(), 30)
        assert locked and got is not None and json.loads(got.data) == {"n": 0}
        assert time.monotonic() - started >= 0.2, "the write began before the other writer committed"
    finally:
        timer.join()
        other.close()


def _increment(b: SQLBackend, sid: str, errors: list[BaseException]) -> None:
    """Lock, read the counter, write it back plus one: the middleware's read-write request, bare."""
    for _ in range(INCREMENTS):
        token = new_lock_token()
        try:
            while True:
                locked, got = b.lock_and_load(sid, token, 30)
                if locked:
                    break
                time.sleep(0.001)
            assert got is not None
            n = json.loads(got.data)["n"]
            assert b.save(sid, rec(n + 1), token, ttl=60)
        except BaseException as exc:  # every failure is reported by the test
            errors.append(exc)
            return


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sessions", [1, THREADS], ids=["shared", "distinct"])
def test_many_threads_never_see_database_is_locked_and_lose_no_update(db: Path, sessions: int) -> None:
    # 16 threads × 20 locked read-modify-writes, with a busy timeout of a quarter second. SQLite lets
    # one writer in at a time; its busy handler naps up to 100 ms a time and is not woken when the
    # lock is freed, so without the turns a process's threads take (connections.py, _WRITE_TURNS) some
    # thread's write would outwait a short busy timeout and fail with "database is locked".
    b = open_sqlite(db, "&socket_timeout=0.25")
    try:
        sids = [new_session_id() for _ in range(sessions)]
        for sid in sids:
            assert b.create(sid, rec(0), ttl=60)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_increment, args=(b, sids[i % sessions], errors)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"{len(errors)} threads failed, first: {errors[0]!r}"
        total = 0
        for sid in sids:
            got = b.load(sid)
            assert got is not None
            total += json.loads(got.data)["n"]
        assert total == THREADS * INCREMENTS
    finally:
        b.close()


def test_two_backends_on_one_file_share_the_write_turn(db: Path) -> None:
    # The middleware's backend and a SessionStore's, or two apps on one file, in one process: a write
    # of one waits for the other's turn, in the process, rather than in SQLite's busy handler.
    first, second = open_sqlite(db, "&socket_timeout=0.3"), open_sqlite(db, "&socket_timeout=0.3")
    try:
        first.create_tables()
        with first._begin(write=True):
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="other writers of this process"):
                second.create(new_session_id(), rec(0), ttl=60)
            assert time.monotonic() - started >= 0.2
        assert second.create(new_session_id(), rec(0), ttl=60)
    finally:
        first.close()
        second.close()
