"""SQL backend specifics, on SQLite and (when their URLs are set) PostgreSQL and MySQL/MariaDB.

Every test works in a table of its own (``?table=t_<random>``), dropped afterwards; no other table is
touched.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sessionmw import SessionStore
from sessionmw.backends import Record, Touch, open_async_backend, open_backend
from sessionmw.backends import sql as sqlmod
from sessionmw.backends.sql import SQLBackend
from sessionmw.backends.sql import backend as sql_backend
from sessionmw.backends.sql import config as sql_config
from sessionmw.backends.sql import table as sql_table
from sessionmw.backends.sql import watchdog as sql_watchdog
from sessionmw.core.cookies import new_session_id
from sessionmw.core.errors import BackendUnavailable, ConfigError
from sessionmw.core.locking import new_lock_token

DBS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.service("postgresql")),
    pytest.param("mysql", id="mysql", marks=pytest.mark.service("mysql")),
]


def rec(data: bytes = b'{"a":1}', **kw: Any) -> Record:
    now = time.time()
    base: dict[str, Any] = {"created": now, "last_access": now, "first_ip": "127.0.0.1", "last_ip": "127.0.0.1"}
    base.update(kw)
    return Record(data=data, **base)


def with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


def sql(backend: Any) -> SQLBackend:
    assert isinstance(backend, SQLBackend)
    return backend


@pytest.fixture(params=DBS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL without a table option: SQLite in tmp_path, or the env servers."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sessions.db"
    fixture = {"postgresql": "postgres_url", "mysql": "mysql_url"}[request.param]
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def tables(db_url: str) -> Iterator[Callable[[], str]]:
    """Hand out fresh table names; drop exactly those tables afterwards."""
    made: list[str] = []

    def new() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return name

    yield new
    if not made:
        return
    cleaner = sql(open_backend(db_url))
    try:
        with cleaner.engine.begin() as conn:
            for name in made:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    finally:
        cleaner.close()


@pytest.fixture
def url(db_url: str, tables: Callable[[], str]) -> str:
    """The database URL with a table of this test's own."""
    return with_option(db_url, f"table={tables()}")


@pytest.fixture
def backend(url: str, key_prefix: str) -> Iterator[SQLBackend]:
    b = sql(open_backend(url, key_prefix=key_prefix))
    yield b
    b.close()


def test_table_option_keeps_two_sites_apart(db_url: str, tables: Callable[[], str]) -> None:
    a = sql(open_backend(with_option(db_url, f"table={tables()}"), key_prefix="site:"))
    b = sql(open_backend(with_option(db_url, f"table={tables()}"), key_prefix="site:"))
    try:
        assert a.table.name != b.table.name
        sid = new_session_id()
        assert a.create(sid, rec(b'{"site":"a"}'), ttl=60)
        assert b.load(sid) is None
        assert b.create(sid, rec(b'{"site":"b"}'), ttl=60)
        ta, tb = new_lock_token(), new_lock_token()
        assert a.lock_and_load(sid, ta, 30)[0]
        assert b.lock_and_load(sid, tb, 30)[0], "locks in two tables must not collide"
        assert a.save(sid, rec(b'{"site":"a2"}'), ta, ttl=60)
        assert b.release(sid, tb, None)
        ga, gb = a.load(sid), b.load(sid)
        assert ga is not None and ga.data == b'{"site":"a2"}'
        assert gb is not None and gb.data == b'{"site":"b"}'
        assert [s for s, _ in a.iter_records()] == [sid]
    finally:
        a.close()
        b.close()


def test_large_data_round_trips(backend: SQLBackend) -> None:
    sid = new_session_id()
    big = bytes(range(256)) * 4096  # 1 MiB, every byte value
    assert backend.create(sid, rec(big), ttl=60)
    got = backend.load(sid)
    assert got is not None and got.data == big
    token = new_lock_token()
    locked, got = backend.lock_and_load(sid, token, 30)
    assert locked and got is not None and got.data == big
    assert backend.save(sid, rec(big + b"!"), token, ttl=60)
    got = backend.load(sid)
    assert got is not None and got.data == big + b"!"


def test_lock_of_a_crashed_holder_is_taken_over_after_it_expires(url: str, key_prefix: str) -> None:
    sid = new_session_id()
    crashed = sql(open_backend(url, key_prefix=key_prefix))
    crashed.create(sid, rec(b'{"v":0}'), ttl=60)
    dead = new_lock_token()
    assert crashed.lock_and_load(sid, dead, 0.5)[0]
    crashed.close()  # the process "dies": its token is never released

    survivor = sql(open_backend(url, key_prefix=key_prefix))
    try:
        assert survivor.lock_and_load(sid, new_lock_token(), 30) == (False, None)
        time.sleep(0.7)
        token = new_lock_token()
        locked, got = survivor.lock_and_load(sid, token, 30)
        assert locked and got is not None and got.data == b'{"v":0}'
        assert not survivor.save(sid, rec(b'{"v":"dead"}'), dead, ttl=60)
        assert not survivor.extend(sid, dead, 30)
        assert not survivor.release(sid, dead, None)
        assert survivor.save(sid, rec(b'{"v":1}'), token, ttl=60)
        got = survivor.load(sid)
        assert got is not None and got.data == b'{"v":1}'
    finally:
        survivor.close()


@pytest.mark.parametrize("stale", [False, True], ids=["free", "expired"])
def test_concurrent_lock_attempts_with_separate_engines_have_one_winner(url: str, key_prefix: str, stale: bool) -> None:
    n = 10
    sid = new_session_id()
    setup = sql(open_backend(url, key_prefix=key_prefix))
    setup.create_tables()
    setup.create(sid, rec(), ttl=60)
    if stale:  # every thread races to take over the same expired lock
        assert setup.lock_and_load(sid, new_lock_token(), 0.2)[0]
        time.sleep(0.4)
    barrier = threading.Barrier(n)
    wins: list[str] = []
    errors: list[BaseException] = []

    def contend() -> None:
        b = sql(open_backend(url, key_prefix=key_prefix))
        try:
            b.load(new_session_id())  # connect and check the table before the race starts
            token = new_lock_token()
            barrier.wait()
            if b.lock_and_load(sid, token, 30)[0]:
                wins.append(token)
            barrier.wait()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()
        finally:
            b.close()

    threads = [threading.Thread(target=contend) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len(wins) == 1
        assert setup.release(sid, wins[0], None)
    finally:
        setup.close()


def test_lock_on_a_missing_id_creates_nothing(backend: SQLBackend) -> None:
    sid = new_session_id()
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30) == (True, None)
    assert not backend.save(sid, rec(), token, ttl=60), "nothing is locked, so nothing is written"
    assert not backend.extend(sid, token, 30)
    assert not backend.release(sid, token, Touch(time.time(), "10.0.0.1", None, 60))
    assert backend.load(sid) is None
    assert list(backend.iter_records()) == []
    with backend.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(backend.table)).scalar_one() == 0
    assert backend.create(sid, rec(b'{"new":1}'), ttl=60)
    got = backend.load(sid)
    assert got is not None and got.data == b'{"new":1}'


def test_a_row_past_its_ttl_is_missing_and_can_be_created_again(backend: SQLBackend) -> None:
    sid = new_session_id()
    assert backend.create(sid, rec(b'{"v":"old"}'), ttl=0.3)
    time.sleep(0.5)
    assert backend.load(sid) is None
    backend.touch(sid, Touch(time.time(), None, None, 60))
    assert backend.load(sid) is None, "a touch must not bring a dead row back"
    assert backend.create(sid, rec(b'{"v":"new"}'), ttl=60)
    got = backend.load(sid)
    assert got is not None and got.data == b'{"v":"new"}'


def test_metadata_columns_and_typed_user_id(backend: SQLBackend) -> None:
    sid = new_session_id()
    ua = "Mozilla/5.0 " + "é" * 600
    assert backend.create(sid, rec(user_id=42, user_agent=ua, idle_override=True, idle_timeout=90.5), ttl=60)
    later = time.time() + 100
    backend.touch(sid, Touch(later, "2001:db8::1", later + 90.5, 120))
    got = backend.load(sid)
    assert got is not None
    assert got.user_id == 42 and got.user_agent == ua
    assert got.idle_override is True and got.idle_timeout == 90.5
    assert got.last_ip == "2001:db8::1" and got.expires == later + 90.5
    assert abs(got.last_access - later) < 0.001, "epoch seconds keep their milliseconds"
    t = backend.table
    with backend.engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.sid == backend.key_prefix + sid)).mappings().one()
    assert row["user_id"] == "42"
    assert row["state"] == 0
    assert row["user_agent"] == ua[:512]
    assert row["last_ip"] == "2001:db8::1" and row["first_ip"] == "127.0.0.1"
    assert row["lock_token"] is None


def test_iter_records_escapes_the_prefix_and_skips_dead_rows(url: str) -> None:
    mine = sql(open_backend(url, key_prefix="a_b%:"))
    other = sql(open_backend(url, key_prefix="aXbY:"))
    upper = sql(open_backend(url, key_prefix="A_B%:"))
    try:
        live, dead = new_session_id(), new_session_id()
        assert mine.create(live, rec(b'{"m":1}'), ttl=60)
        assert mine.create(dead, rec(), ttl=0.2)
        assert other.create(new_session_id(), rec(), ttl=60)
        assert upper.create(new_session_id(), rec(), ttl=60)
        time.sleep(0.4)
        got = list(mine.iter_records())
        assert [(s, r.data) for s, r in got] == [(live, b'{"m":1}')]
    finally:
        mine.close()
        other.close()
        upper.close()


def test_create_tables_is_idempotent(url: str, key_prefix: str) -> None:
    b = sql(open_backend(url, key_prefix=key_prefix))
    try:
        b.create_tables()
        b.create_tables()
        sid = new_session_id()
        assert b.create(sid, rec(), ttl=60)
        b.create_tables()
        assert b.load(sid) is not None, "create_tables must not empty the table"
        insp = sa.inspect(b.engine)
        indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes(b.table.name)}
        assert ("expires",) in indexed and ("user_id",) in indexed and ("ttl_until",) in indexed
    finally:
        b.close()


def test_concurrent_first_use_creates_the_table_once(url: str, key_prefix: str) -> None:
    n = 6
    backends = [sql(open_backend(url, key_prefix=key_prefix)) for _ in range(n)]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def first_use(b: SQLBackend) -> None:
        try:
            barrier.wait()
            b.create_tables()
            assert b.create(new_session_id(), rec(), ttl=60)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len(list(backends[0].iter_records())) == n
    finally:
        for b in backends:
            b.close()


def test_async_backend_is_the_threaded_wrapper(url: str, key_prefix: str) -> None:
    ab = open_async_backend(url, key_prefix=key_prefix)
    assert not isinstance(ab, SQLBackend)
    assert isinstance(getattr(ab, "sync", None), SQLBackend)


# -- administration ------------------------------------------------------------------------------


def test_user_sessions_reads_the_user_id_column_under_the_prefix(url: str) -> None:
    mine = sql(open_backend(url, key_prefix="a_b%:"))
    other = sql(open_backend(url, key_prefix="aXbY:"))
    upper = sql(open_backend(url, key_prefix="A_B%:"))
    try:
        a1, a2, typed, cased, anon, dying = (new_session_id() for _ in range(6))
        long_a, long_b = new_session_id(), new_session_id()
        assert mine.create(a1, rec(user_id="alice"), ttl=60)
        assert mine.create(a2, rec(user_id="alice"), ttl=None)
        assert mine.create(typed, rec(user_id=42), ttl=60)
        assert mine.create(cased, rec(user_id="Alice"), ttl=60)
        assert mine.create(anon, rec(), ttl=60)
        assert mine.create(dying, rec(user_id="alice"), ttl=0.2)
        assert mine.create(long_a, rec(user_id="x" * 300), ttl=60)  # the column keeps 255 characters
        assert mine.create(long_b, rec(user_id="x" * 299 + "y"), ttl=60)
        for neighbour in (other, upper):
            assert neighbour.create(new_session_id(), rec(user_id="alice"), ttl=60)
        time.sleep(0.4)
        found = mine.user_sessions("alice")
        assert sorted(s for s, _ in found) == sorted([a1, a2]), "other prefixes and dead rows are left out"
        assert all(r.user_id == "alice" and r.data == b'{"a":1}' for _, r in found)
        assert [(s, r.user_id) for s, r in mine.user_sessions(42)] == [(typed, 42)], "the typed id survives"
        assert [s for s, _ in mine.user_sessions("42")] == [typed]
        assert [s for s, _ in mine.user_sessions("Alice")] == [cased], "user ids are case-sensitive"
        assert [s for s, _ in mine.user_sessions("x" * 300)] == [long_a]
        assert mine.user_sessions("nobody") == []
        assert [s for s, _ in other.user_sessions("alice")] != [] and len(upper.user_sessions("alice")) == 1
    finally:
        mine.close()
        other.close()
        upper.close()


def test_gc_deletes_only_expired_rows_of_its_prefix(url: str) -> None:
    mine = sql(open_backend(url, key_prefix="a_b%:"))
    other = sql(open_backend(url, key_prefix="aXbY:"))
    upper = sql(open_backend(url, key_prefix="A_B%:"))
    try:
        now = time.time()
        live, forever, past, ttl_dead, revived, boundary = (new_session_id() for _ in range(6))
        assert mine.create(live, rec(user_id="u", expires=now + 3600), ttl=3700)
        assert mine.create(forever, rec(expires=None), ttl=None)
        assert mine.create(past, rec(user_id="u", expires=now - 10), ttl=3600)
        assert mine.create(ttl_dead, rec(expires=None), ttl=0.2)
        assert mine.create(revived, rec(expires=now - 10), ttl=3600)
        mine.touch(revived, Touch(now, None, now + 3600, 3700))  # the columns a touch writes decide
        assert mine.create(boundary, rec(expires=now + 1), ttl=3600)
        for neighbour in (other, upper):
            assert neighbour.create(new_session_id(), rec(expires=now - 10), ttl=3600)
        time.sleep(0.4)
        assert mine.gc(now + 1) == 2, "expires < now or ttl_until <= now, nothing else"
        assert mine.gc(now + 1) == 0
        assert sorted(s for s, _ in mine.iter_records()) == sorted([live, forever, revived, boundary])
        assert mine.user_sessions("u") == [(live, mine.load(live))]
        assert mine.gc(now + 1.001) == 1  # boundary is past its expiry now
        for neighbour in (other, upper):
            assert neighbour.stats()["rows"] == 1, "another prefix's rows are not touched"
            assert neighbour.gc(time.time()) == 1
    finally:
        mine.close()
        other.close()
        upper.close()


class _Counted:
    """Transactions begun and statements run on a backend's engine (SQLAlchemy's events), a ``BEGIN`` not counted."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.transactions = 0
        self.statements: list[str] = []

    def _begin(self, _conn: Any) -> None:
        self.transactions += 1

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):
            self.statements.append(statement)

    def __enter__(self) -> _Counted:
        sa.event.listen(self.engine, "begin", self._begin)
        sa.event.listen(self.engine, "before_cursor_execute", self._statement)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "begin", self._begin)
        sa.event.remove(self.engine, "before_cursor_execute", self._statement)


def test_each_primitive_is_one_transaction_of_one_statement(backend: SQLBackend) -> None:
    # A read-write request is lock_and_load then save (or release): under load each transaction
    # holds SQLite's write lock or a row lock, so none is split, and none runs a statement it can spare.
    sid, token = new_session_id(), new_lock_token()
    assert backend.create(sid, rec(), ttl=60)
    returning = backend.engine.dialect.update_returning  # MySQL/MariaDB read the row after locking it
    touch = Touch(time.time(), "10.0.0.9", time.time() + 600, 60)
    steps: list[tuple[str, Callable[[], object], int]] = [
        ("lock_and_load", lambda: backend.lock_and_load(sid, token, 30), 1 if returning else 2),
        ("extend", lambda: backend.extend(sid, token, 30), 1),
        ("save", lambda: backend.save(sid, rec(b'{"a":2}'), token, 60), 1),
        ("lock again", lambda: backend.lock_and_load(sid, token, 30), 1 if returning else 2),
        ("release with a touch", lambda: backend.release(sid, token, touch), 1),
        ("load", lambda: backend.load(sid), 1),
        ("touch", lambda: backend.touch(sid, touch), 1),
        ("delete", lambda: backend.delete(sid), 1),
    ]
    for name, call, statements in steps:
        with _Counted(backend.engine) as counted:
            assert call() is not False, name
        assert counted.transactions == 1, f"{name}: {counted.transactions} transactions"
        assert len(counted.statements) == statements, f"{name}: {counted.statements}"
    assert backend.load(sid) is None


def test_release_with_a_touch_touches_only_a_session_within_its_ttl(backend: SQLBackend) -> None:
    # One UPDATE releases the lock and touches the row; past its TTL the row is released untouched.
    sid, token = new_session_id(), new_lock_token()
    assert backend.create(sid, rec(last_ip="1.1.1.1"), ttl=60)
    assert backend.lock_and_load(sid, token, 30)[0]
    later = time.time() + 5
    assert backend.release(sid, token, Touch(later, None, later + 600, 60))
    got = backend.load(sid)
    assert got is not None and got.last_access == later and got.last_ip == "1.1.1.1", "no IP given: kept"
    assert backend.lock_and_load(sid, token, 30)[0]
    with backend._begin() as conn:
        conn.execute(sa.update(backend.table).values(ttl_until=time.time() - 1))
    assert backend.release(sid, token, Touch(later + 5, "2.2.2.2", later + 600, 60))
    with backend._begin(write=False) as conn:
        row = conn.execute(sa.select(backend.table)).mappings().one()
    assert row["lock_token"] is None and row["last_access"] == later and row["last_ip"] == "1.1.1.1"


def test_gc_of_a_locked_session_is_not_undone_by_its_save(backend: SQLBackend) -> None:
    sid = new_session_id()
    assert backend.create(sid, rec(b'{"v":0}', expires=time.time() - 1), ttl=60)
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30)[0]
    assert backend.gc(time.time()) == 1
    assert not backend.save(sid, rec(b'{"v":1}', expires=time.time() + 60), token, ttl=60)
    assert backend.load(sid) is None
    assert backend.lock_and_load(sid, new_lock_token(), 30) == (True, None)


def test_stats_counts_rows_and_what_gc_would_remove(url: str, key_prefix: str) -> None:
    b = sql(open_backend(url, key_prefix=key_prefix))
    neighbour = sql(open_backend(url, key_prefix="n" + key_prefix))
    try:
        assert b.stats() == {"rows": 0.0, "expired_rows": 0.0}
        now = time.time()
        for i in range(5):
            assert b.create(new_session_id(), rec(user_id=f"u{i % 2}", expires=now + (3600 if i < 3 else -10)), 60)
        assert neighbour.create(new_session_id(), rec(expires=now - 10), 60)
        assert b.stats() == {"rows": 5.0, "expired_rows": 2.0}
        assert neighbour.stats() == {"rows": 1.0, "expired_rows": 1.0}
        with SessionStore(url, key_prefix="n" + key_prefix) as store:
            assert store.gc() == 1
        figures = SessionStore(b, key_prefix=key_prefix).stats()
        assert figures["sessions"] == 3 and figures["users"] == 2
        assert figures["rows"] == 5 and figures["expired_rows"] == 2
    finally:
        b.close()
        neighbour.close()


def test_iter_records_pages_through_the_prefix_only(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_backend, "_PAGE", 3)
    mine = sql(open_backend(url, key_prefix="pé:"))
    neighbours = [sql(open_backend(url, key_prefix=p)) for p in ("pd:", "pf:", "PÉ:", "p:")]
    try:
        sids = sorted(new_session_id() for _ in range(7))
        for sid in sids:
            assert mine.create(sid, rec(), ttl=60)
        for n in neighbours:
            for _ in range(4):
                assert n.create(new_session_id(), rec(), ttl=60)
        assert [s for s, _ in mine.iter_records()] == sids
        assert SessionStore(mine, key_prefix="pé:").count() == 7
    finally:
        mine.close()
        for n in neighbours:
            n.close()


def test_create_tables_adds_the_ttl_until_index_to_an_older_table(url: str, key_prefix: str) -> None:
    b = sql(open_backend(url, key_prefix=key_prefix))
    try:
        b.create_tables()
        sid = new_session_id()
        assert b.create(sid, rec(), ttl=60)
        name = f"ix_{b.table.name}_ttl_until"
        with b.engine.begin() as conn:
            conn.execute(sa.text(f"DROP INDEX {name} ON {b.table.name}" if "mysql" in url else f"DROP INDEX {name}"))
        assert ("ttl_until",) not in {
            tuple(ix["column_names"]) for ix in sa.inspect(b.engine).get_indexes(b.table.name)
        }
    finally:
        b.close()
    again = sql(open_backend(url, key_prefix=key_prefix))
    try:
        again.create_tables()
        indexes = {
            ix["name"]: tuple(ix["column_names"]) for ix in sa.inspect(again.engine).get_indexes(again.table.name)
        }
        assert indexes.get(name) == ("ttl_until",)
        assert again.load(sid) is not None
    finally:
        again.close()


def test_gc_and_user_sessions_use_their_indexes_on_sqlite(tmp_path: Path) -> None:
    b = sql(open_backend(f"sqlite:///{tmp_path}/plan.db", key_prefix="site:"))
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((statement, parameters))

    try:
        now = time.time()
        for i in range(50):
            assert b.create(new_session_id(), rec(user_id=f"u{i % 5}", expires=now + 3600), ttl=60)
        sa.event.listen(b.engine, "before_cursor_execute", capture)
        b.gc(now)
        b.user_sessions("u1")
        sa.event.remove(b.engine, "before_cursor_execute", capture)
        gc_sql = next((st, p) for st, p in statements if st.lstrip().upper().startswith("DELETE"))
        user_sql = next((st, p) for st, p in statements if "user_id =" in st)
        with b.engine.connect() as conn:
            gc_plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + gc_sql[0], gc_sql[1]))
            user_plan = " ".join(
                str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + user_sql[0], user_sql[1])
            )
        assert "ix_sessmw_sessions_expires" in gc_plan and "ix_sessmw_sessions_ttl_until" in gc_plan, gc_plan
        assert "ix_sessmw_sessions_user_id" in user_plan, user_plan
    finally:
        b.close()


def test_successor_bounds_every_string_with_the_prefix() -> None:
    assert sql_table._successor("ab") == "ac"
    assert sql_table._successor("a\U0010ffff") == "b"
    assert sql_table._successor("\U0010ffff") is None
    assert sql_table._successor("a\ud7ff") == "a\ue000"
    assert sql_table._successor("") is None


# -- configuration -------------------------------------------------------------------------------


def test_unknown_option_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tabel") as info:
        open_backend(f"sqlite:///{tmp_path}/s.db?tabel=x")
    assert info.value.option == "tabel"
    assert "table" in str(info.value)


def test_a_driver_option_of_another_database_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sslmode"):
        open_backend(f"sqlite:///{tmp_path}/s.db?sslmode=require")


@pytest.mark.parametrize("table", ["x;drop", "1abc", "a" * 49, ""])
def test_bad_table_name_is_a_config_error(tmp_path: Path, table: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_backend(f"sqlite:///{tmp_path}/s.db?table={table}")
    assert info.value.option == "table"


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_connect_timeout_is_a_config_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="connect_timeout"):
        open_backend(f"sqlite:///{tmp_path}/s.db?connect_timeout={value}")


@pytest.mark.parametrize("spec", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="memory://"):
        open_backend(spec)


@pytest.mark.parametrize(
    ("spec", "module", "extra"),
    [
        ("postgresql+psycopg://u@127.0.0.1/db", "psycopg", "postgresql"),
        ("postgresql://u@127.0.0.1/db", "psycopg", "postgresql"),
        ("mysql+pymysql://u@127.0.0.1/db", "pymysql", "mysql"),
        ("mariadb://u@127.0.0.1/db", "pymysql", "mysql"),
    ],
)
def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch, spec: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError, match=rf"pip install 'sessionmw\[{extra}\]'"):
        open_backend(spec)


def test_sqlite_uses_wal_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    b = sql(open_backend("sqlite:///rel.db?table=t_rel"))
    try:
        assert b.create(new_session_id(), rec(), ttl=60)
        with b.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert (tmp_path / "rel.db").exists()
    finally:
        b.close()


def test_driver_options_are_forwarded(postgres_url: str) -> None:
    b = sql(open_backend(with_option(postgres_url, "application_name=sessmw-test&connect_timeout=3")))
    try:
        with b.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW application_name").scalar() == "sessmw-test"
    finally:
        b.close()


# -- availability ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test?connect_timeout=2",
        "mysql+pymysql://root:s3cret@127.0.0.1:1/test?connect_timeout=2",
    ],
    ids=["postgresql", "mysql"],
)
def test_unreachable_database_is_backend_unavailable(spec: str) -> None:
    b = open_backend(spec)  # lazy: a down database is no error when the app starts
    try:
        assert "s3cret" not in b.name
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            b.load(new_session_id())
        assert time.monotonic() - started < 5
        message = str(info.value)
        assert "s3cret" not in message and "\n" not in message
        assert "127.0.0.1:1" in message and info.value.backend == b.name
        with pytest.raises(BackendUnavailable):
            b.lock_and_load(new_session_id(), new_lock_token(), 30)
    finally:
        b.close()


class _Proxy:
    """A TCP forwarder on a loopback port, which a test can cut and restore like a flaky network, or
    freeze: connections stay open and nothing more gets through, as with a server that stopped answering."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        #: While set, what arrives is held back, not forwarded.
        self.frozen = threading.Event()
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._mutex = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._mutex:
                self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pipe, args=(src, dst, self.frozen), daemon=True)
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, frozen: threading.Event) -> None:
        try:
            while chunk := src.recv(65536):
                if frozen.is_set():
                    continue  # swallowed: the peer hears nothing, and the socket stays open
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._mutex:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        threads, self._threads = self._threads, []
        for t in threads:
            t.join(5)
        for s in socks:
            s.close()


@contextmanager
def through_proxy(real: str, key_prefix: str, options: str) -> Iterator[tuple[_Proxy, SQLBackend]]:
    """A backend on a table of its own, reaching the database ``real`` through a :class:`_Proxy`."""
    target = sa.make_url(real)
    proxy = _Proxy(target.port or (5432 if target.get_backend_name() == "postgresql" else 3306))
    proxy.start()
    table = f"t_{uuid.uuid4().hex[:12]}"
    via = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    b = sql(open_backend(with_option(via, f"table={table}&{options}"), key_prefix=key_prefix))
    try:
        yield proxy, b
    finally:
        proxy.stop()
        b.close()
        cleaner = sql(open_backend(real))
        try:
            with cleaner.engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        finally:
            cleaner.close()


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_backend_recovers_when_the_database_comes_back(
    request: pytest.FixtureRequest, kind: str, key_prefix: str
) -> None:
    real = str(request.getfixturevalue("postgres_url" if kind == "postgresql" else "mysql_url"))
    with through_proxy(real, key_prefix, "connect_timeout=2") as (proxy, b):
        sid = new_session_id()
        assert b.create(sid, rec(b'{"v":1}'), ttl=60)
        proxy.stop()
        with pytest.raises(BackendUnavailable):
            b.load(sid)  # on the pooled connection, cut
        with pytest.raises(BackendUnavailable):
            b.load(sid)  # no connection to be had
        watchdog = b._watchdog
        assert watchdog is None or not watchdog._watches, "calls that failed are not watched on"
        proxy.start()
        got = b.load(sid)
        assert got is not None and got.data == b'{"v":1}'


def test_a_statement_stuck_behind_a_lock_gives_up_after_socket_timeout(
    db_url: str, tables: Callable[[], str], key_prefix: str
) -> None:
    # A request must get an answer within seconds, never hang a worker: here another transaction
    # holds the session's row (an admin's open transaction, a stuck migration), and the backend's
    # UPDATE waits for it. PostgreSQL's statement_timeout, MariaDB's innodb_lock_wait_timeout and
    # socket timeouts, and SQLite's busy timeout are all set from ?socket_timeout.
    table = tables()
    b = sql(open_backend(with_option(db_url, f"table={table}&socket_timeout=1"), key_prefix=key_prefix))
    sid = new_session_id()
    assert b.create(sid, rec(b'{"v":1}'), ttl=60)
    other = sa.create_engine(db_url)
    try:
        with other.connect() as conn:
            trans = conn.begin()
            if other.dialect.name == "sqlite":  # SQLite locks the whole database for a writer
                conn.execute(sa.text(f"UPDATE {table} SET state = state WHERE sid = :k"), {"k": b._key(sid)})
            else:
                conn.execute(sa.text(f"SELECT sid FROM {table} WHERE sid = :k FOR UPDATE"), {"k": b._key(sid)})
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match=f"SQL backend {re.escape(b.name)} is unavailable"):
                b.lock_and_load(sid, new_lock_token(), 30)
            waited = time.monotonic() - started
            trans.rollback()
        assert 0.5 < waited < 8, f"gave up after {waited:.2f} s"
        locked, got = b.lock_and_load(sid, new_lock_token(), 30)  # the same backend works on
        assert locked and got is not None and got.data == b'{"v":1}'
    finally:
        other.dispose()
        b.close()


def test_socket_timeout_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="socket_timeout"):
        open_backend(f"sqlite:///{tmp_path}/s.db?socket_timeout=-1")


def test_statement_timeouts_reach_the_drivers() -> None:
    args = sql_config._connect_args("postgresql", "psycopg", 5.0, 2.5, {})
    assert args["connect_timeout"] == 5 and args["options"] == "-c statement_timeout=2500"
    assert args["keepalives_idle"] == 3 and args["tcp_user_timeout"] == 2500
    assert "keepalives_idle" not in sql_config._connect_args(
        "postgresql", "psycopg", 5.0, 2.5, {"keepalives_idle": "60"}
    )
    assert "options" not in sql_config._connect_args("postgresql", "psycopg", 5.0, 2.5, {"options": "-c search_path=x"})
    args = sql_config._connect_args("mysql", "pymysql", 5.0, 2.5, {"read_timeout": "30"})
    assert args["write_timeout"] == 3 and "read_timeout" not in args, "the URL's own read_timeout wins"
    assert args["init_command"] == "SET SESSION innodb_lock_wait_timeout = 3"
    assert sql_config._connect_args("sqlite", "pysqlite", 5.0, 2.5, {})["timeout"] == 2.5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
@pytest.mark.parametrize("idle", [False, True], ids=["busy", "idle"])
def test_a_server_that_stops_answering_is_given_up_after_socket_timeout(
    request: pytest.FixtureRequest, kind: str, idle: bool, key_prefix: str
) -> None:
    # The proxy swallows everything while frozen, yet its kernel acknowledges what it receives, as a
    # frozen server process's would: TCP keepalives and tcp_user_timeout see a healthy peer.
    # MySQL/MariaDB: the driver's socket read timeout. PostgreSQL's libpq has no read timeout: the
    # backend's watchdog cuts the socket. A connection idle for a while is pinged first ("idle"):
    # that ping must not hang either.
    real = str(request.getfixturevalue("postgres_url" if kind == "postgresql" else "mysql_url"))
    with through_proxy(real, key_prefix, "socket_timeout=1") as (proxy, b):
        sid = new_session_id()
        assert b.create(sid, rec(b'{"v":1}'), ttl=60)
        if idle:
            time.sleep(sqlmod.PING_AFTER + 0.2)
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="timed out"):
            b.load(sid)
        waited = time.monotonic() - started
        assert waited < 8, f"gave up after {waited:.2f} s"
        proxy.frozen.clear()
        got = b.load(sid)  # a new connection: the timed-out one was dropped
        assert got is not None and got.data == b'{"v":1}'


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_an_idle_connection_the_server_closed_is_replaced_before_use(
    request: pytest.FixtureRequest, kind: str, key_prefix: str
) -> None:
    # An idle connection may be gone (a server restart, idle_session_timeout / wait_timeout, a firewall):
    # one idle for longer than PING_AFTER is pinged and replaced, so the call itself succeeds.
    real = str(request.getfixturevalue("postgres_url" if kind == "postgresql" else "mysql_url"))
    b = sql(open_backend(real, key_prefix=key_prefix))
    killer = sa.create_engine(real)
    try:
        sid = new_session_id()
        assert b.create(sid, rec(b'{"v":1}'), ttl=60)
        with b._begin() as conn:
            pid = conn.exec_driver_sql(
                "SELECT pg_backend_pid()" if kind == "postgresql" else "SELECT CONNECTION_ID()"
            ).scalar()
        with killer.begin() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})" if kind == "postgresql" else f"KILL {pid}")
        time.sleep(sqlmod.PING_AFTER + 0.2)
        got = b.load(sid)
        assert got is not None and got.data == b'{"v":1}'
    finally:
        killer.dispose()
        b.close()


def test_watchdog_cuts_only_calls_past_their_deadline() -> None:
    dog = sql_watchdog.Watchdog(0.3)
    late_a, late_b = socket.socketpair()
    quick_a, quick_b = socket.socketpair()
    try:
        late, quick = dog.enter(), dog.enter()
        dog.set_socket(late, late_a.fileno())
        dog.set_socket(quick, quick_a.fileno())
        assert dog.leave(quick) is False
        late_b.settimeout(10)
        assert late_b.recv(1) == b"", "the late call's socket was shut down"
        assert dog.leave(late) is True
        quick_b.sendall(b"x")
        assert quick_a.recv(1) == b"x", "the socket of a call that left is untouched"
        late_a.fileno()  # shut down, not closed: its owner closes it
    finally:
        dog.stop()
        for s in (late_a, late_b, quick_a, quick_b):
            s.close()
