"""Time ``SessionStore.gc()`` on a store holding many sessions, half of them expired.

Backends: SQLite (a fresh temp file), PostgreSQL and MySQL/MariaDB (``--postgres-url``/``--mysql-url``,
in a table of their own that is dropped afterwards) and the file backend (a temp directory). Only the
``gc()`` call is timed; filling the store is not, and is done:

* SQL: by batch ``INSERT`` through the backend's own engine and table, with the very row values its
  ``create`` writes (``create`` is one transaction per session: too slow for 100,000 sessions here);
* file: through ``FileBackend.create`` one by one (it fsyncs every file, so by default the file
  backend gets at most ``--file-sessions`` sessions).

Of the expired half, three quarters are past the core's expiry (``expires``) and one quarter only past
the store's TTL safety net, so both of gc's conditions are exercised. After gc the benchmark checks that
exactly the expired sessions went: the remaining count equals the live count, a sample of live ids
still loads, and a sample of expired ids is gone.

Usage::

    python benchmarks/bench_gc.py [--sessions 100000] [--file-sessions 10000]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--mysql-url mysql+pymysql://root@127.0.0.1:3306/test] [--skip sqlite,file]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from sessionmw import SessionStore
from sessionmw.backends import Backend, open_backend
from sessionmw.backends.base import Record
from sessionmw.backends.file import FileBackend
from sessionmw.backends.sql import SQLBackend
from sessionmw.core.cookies import new_session_id

PREFIX = "bench:"
SAMPLE = 200
BATCH = 5000


@dataclass(frozen=True)
class Session:
    """One session to store: its id, record, TTL and whether gc must keep it."""

    sid: str
    record: Record
    ttl: float
    live: bool


@dataclass(frozen=True)
class Result:
    """What one backend's run measured."""

    backend: str
    before: int
    removed: int
    remaining: int
    seconds: float
    setup: str


def make_sessions(n: int, now: float) -> list[Session]:
    """Return ``n`` sessions: even ones live, odd ones expired (by ``expires``, or every fourth by TTL)."""
    rng = random.Random(1234)
    out: list[Session] = []
    for i in range(n):
        created = now - rng.uniform(60, 7200)
        data = b'{"cart":[%d,%d,%d],"csrf":"%s","theme":"dark"}' % (i, i * 7, i * 13, uuid.uuid4().hex.encode())
        live = i % 2 == 0
        if live:
            expires, ttl = now + 3600.0, 3720.0
        elif i % 8 == 1:
            expires, ttl = now + 3600.0, -1.0  # the core would keep it, but the store's TTL passed
        else:
            expires, ttl = now - 60.0, 3600.0  # past the core's expiry, TTL still running
        record = Record(
            data=data,
            created=created,
            last_access=created + 30,
            user_id=f"user{i % 5000}" if i % 3 == 0 else None,
            first_ip="192.0.2.1",
            last_ip="192.0.2.1",
            user_agent="Mozilla/5.0 (bench)",
            expires=expires,
        )
        out.append(Session(new_session_id(), record, ttl, live))
    return out


def verify(
    backend: Backend, sessions: list[Session], stored: Callable[[], int], gone: Callable[[str], bool]
) -> tuple[int, int]:
    """Check that exactly the expired sessions went; return (expected remaining, actual remaining)."""
    live = [s for s in sessions if s.live]
    expired = [s for s in sessions if not s.live]
    remaining = stored()
    rng = random.Random(99)
    for s in rng.sample(live, min(SAMPLE, len(live))):
        got = backend.load(s.sid)
        if got is None or got.data != s.record.data:
            raise SystemExit(f"{backend.name}: live session {s.sid} was removed or damaged by gc")
    for s in rng.sample(expired, min(SAMPLE, len(expired))):
        if not gone(s.sid):
            raise SystemExit(f"{backend.name}: expired session {s.sid} is still stored after gc")
    if remaining != len(live):
        raise SystemExit(f"{backend.name}: {remaining} sessions remain after gc, expected {len(live)}")
    return len(live), remaining


def timed_gc(backend: Backend) -> tuple[int, float]:
    """Run ``SessionStore(backend).gc()`` and return (removed, seconds)."""
    store = SessionStore(backend, key_prefix=PREFIX)
    started = time.perf_counter()
    removed = store.gc()
    return removed, time.perf_counter() - started


# -- SQL ---------------------------------------------------------------------------------------


def sql_count(b: SQLBackend) -> int:
    """Count every row under the benchmark's prefix, expired or not."""
    t = b.table
    with b.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(t.c.sid.startswith(PREFIX))).scalar_one())


def sql_fill(b: SQLBackend, sessions: list[Session]) -> float:
    """Insert the sessions in batches, with the row values ``SQLBackend.create`` writes; return seconds."""
    b.create_tables()
    started = time.perf_counter()
    now = time.time()
    rows = [
        {
            "sid": b.key_prefix + s.sid,
            "state": 0,
            "lock_token": None,
            "lock_until": None,
            **SQLBackend._columns(s.record, s.ttl, now),
        }
        for s in sessions
    ]
    with b.engine.begin() as conn:
        for i in range(0, len(rows), BATCH):
            conn.execute(sa.insert(b.table), rows[i : i + BATCH])
    return time.perf_counter() - started


@contextmanager
def sql_backend(url: str) -> Iterator[SQLBackend]:
    """A backend on a table of its own, dropped afterwards."""
    table = f"bench_gc_{uuid.uuid4().hex[:10]}"
    b = open_backend(url + ("&" if "?" in url else "?") + f"table={table}", key_prefix=PREFIX)
    assert isinstance(b, SQLBackend)
    try:
        yield b
    finally:
        try:
            with b.engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        finally:
            b.close()


def run_sql(label: str, url: str, sessions: list[Session]) -> Result:
    """Fill a SQL table, time gc, verify."""
    with sql_backend(url) as b:
        fill = sql_fill(b, sessions)
        before = sql_count(b)
        removed, seconds = timed_gc(b)

        def gone(sid: str) -> bool:
            t = b.table
            with b.engine.connect() as conn:
                return conn.execute(sa.select(t.c.sid).where(t.c.sid == PREFIX + sid)).first() is None

        _, remaining = verify(b, sessions, lambda: sql_count(b), gone)
        setup = f"batch INSERT of {len(sessions):,} rows ({BATCH:,}/statement) in {fill:.1f}s, not via create()"
        return Result(label, before, removed, remaining, seconds, setup)


# -- file --------------------------------------------------------------------------------------


def file_count(directory: Path) -> int:
    """Count the stored session files under the benchmark's prefix."""
    with os.scandir(directory) as entries:
        return sum(1 for e in entries if e.name.startswith(PREFIX) and e.name.endswith(".session"))


def run_file(sessions: list[Session]) -> Result:
    """Fill a temp directory through ``FileBackend.create``, time gc, verify."""
    directory = Path(tempfile.mkdtemp(prefix="sessmw-bench-gc-"))
    try:
        b = FileBackend(directory, key_prefix=PREFIX)
        started = time.perf_counter()
        for s in sessions:
            if not b.create(s.sid, s.record, s.ttl):
                raise SystemExit(f"file: create({s.sid}) refused")
        fill = time.perf_counter() - started
        before = file_count(directory)
        removed, seconds = timed_gc(b)
        _, remaining = verify(
            b, sessions, lambda: file_count(directory), lambda sid: not (directory / f"{PREFIX}{sid}.session").exists()
        )
        rate = len(sessions) / fill if fill else 0.0
        setup = f"FileBackend.create one by one: {len(sessions):,} in {fill:.1f}s ({rate:,.0f}/s)"
        return Result("file", before, removed, remaining, seconds, setup)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- main --------------------------------------------------------------------------------------


def print_table(results: list[Result]) -> None:
    """Print the results table and how each store was filled."""
    head = f"{'backend':<12} {'sessions before':>15} {'removed':>9} {'remaining':>10} {'seconds':>9} {'sessions/s':>11}"
    print(head)
    print("-" * len(head))
    for r in results:
        rate = r.removed / r.seconds if r.seconds else float("inf")
        print(f"{r.backend:<12} {r.before:>15,} {r.removed:>9,} {r.remaining:>10,} {r.seconds:>9.3f} {rate:>11,.0f}")
    print()
    print("sessions/s = removed / seconds (the SessionStore.gc() call only).")
    print("Setup (not timed):")
    for r in results:
        print(f"  {r.backend}: {r.setup}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions per SQL backend (default 100000)")
    parser.add_argument(
        "--file-sessions",
        type=int,
        default=10_000,
        help="sessions for the file backend, at most --sessions (default 10000: its create fsyncs every file)",
    )
    parser.add_argument(
        "--postgres-url", help="also run on PostgreSQL, e.g. postgresql+psycopg://postgres@127.0.0.1/test"
    )
    parser.add_argument("--mysql-url", help="also run on MySQL/MariaDB, e.g. mysql+pymysql://root@127.0.0.1/test")
    parser.add_argument("--skip", default="", help="comma-separated backends to leave out: sqlite, file")
    args = parser.parse_args(argv)
    if args.sessions < 2 or args.file_sessions < 0:
        parser.error("--sessions must be at least 2 and --file-sessions not negative")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    now = time.time()
    sessions = make_sessions(args.sessions, now)
    file_sessions = sessions[: min(args.file_sessions, args.sessions)]
    print(
        f"python {sys.version.split()[0]}, SQLAlchemy {sa.__version__}, {os.cpu_count()} CPUs; "
        f"half of the sessions expired; only SessionStore(...).gc() is timed",
        flush=True,
    )
    results: list[Result] = []
    tmp = Path(tempfile.mkdtemp(prefix="sessmw-bench-gc-sqlite-"))
    try:
        runs: list[tuple[str, Callable[[], Result]]] = []
        if "sqlite" not in skip:
            runs.append(("sqlite", lambda: run_sql("sqlite", f"sqlite:///{tmp}/sessions.db", sessions)))
        if args.postgres_url:
            runs.append(("postgresql", lambda: run_sql("postgresql", args.postgres_url, sessions)))
        if args.mysql_url:
            runs.append(("mysql", lambda: run_sql("mysql", args.mysql_url, sessions)))
        if "file" not in skip and file_sessions:
            runs.append(("file", lambda: run_file(file_sessions)))
        for name, run in runs:
            started = time.perf_counter()
            result = run()
            results.append(result)
            print(f"  {name}: done in {time.perf_counter() - started:.1f}s (setup included)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
