"""gc on a store holding many sessions, and a site without cron under a stream of short-lived sessions.

Two parts, in one run:

1. **One big gc.** ``SessionStore.gc()`` on a store holding ``--sessions`` sessions, half of them
   expired. Backends: SQLite (a fresh temp file), PostgreSQL and MySQL/MariaDB (``--postgres-url``/
   ``--mysql-url``, in a table of their own that is dropped afterwards) and the file backend (a temp
   directory). Only the ``gc()`` call is timed; filling the store is not, and is done:

   * SQL: by batch ``INSERT`` through the backend's own engine and table, with the very row values its
     ``create`` writes (``create`` is one transaction per session: too slow for 100,000 sessions here);
   * file: through ``FileBackend.create`` one by one (it fsyncs every file, so by default the file
     backend gets at most ``--file-sessions`` sessions).

   Of the expired half, three quarters are past the core's expiry (``expires``) and one quarter only
   past the store's TTL safety net, so both of gc's conditions are exercised. After gc the benchmark
   checks that exactly the expired sessions went: the remaining count equals the live count, a sample
   of live ids still loads, and a sample of expired ids is gone. While gc runs, a probe thread locks
   and saves a live session again and again, as requests would: its slowest call says whether gc held
   a lock that stalls requests (gc deletes in transactions of 1,000 rows).

2. **A site without cron** (``--steady-seconds``, 0 to skip). A WSGI middleware, called in process,
   serves ``--rate`` new visitors a second (each: a request that creates a session, then a locked
   write with its cookie), with ``idle_timeout=--idle``, once with the background gc
   (``gc_interval=--gc-interval``) and once with ``gc_interval=None``. Every second the files or rows
   under the site's key prefix are counted: with the background gc they level off at about
   ``rate x (idle + gc_interval)`` sessions; without it they grow by ``rate`` a second, for ever.

Usage::

    python benchmarks/bench_gc.py [--sessions 100000] [--file-sessions 10000]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--mysql-url mysql+pymysql://root@127.0.0.1:3306/test] [--skip sqlite,file]
        [--steady-seconds 20] [--rate 50] [--idle 3] [--gc-interval 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sessionmw import SessionStore, WSGISessionMiddleware
from sessionmw.backends import Backend, open_backend
from sessionmw.backends.base import Record
from sessionmw.backends.file import FileBackend
from sessionmw.backends.sql import SQLBackend
from sessionmw.core.cookies import new_session_id
from sessionmw.core.locking import new_lock_token

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
    #: Lock-and-save calls of the probe on a live session while gc ran, and their median and slowest ms.
    probes: int = 0
    probe_p50_ms: float = 0.0
    probe_max_ms: float = 0.0
    #: The probe's median ms without gc running.
    probe_idle_ms: float = 0.0


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


class Probe(threading.Thread):
    """Locks and saves one live session again and again, as requests would, timing each round trip pair."""

    def __init__(self, backend: Backend, session: Session) -> None:
        super().__init__(daemon=True)
        self.backend = backend
        self.session = session
        self.stop = threading.Event()
        self.ms: list[float] = []
        #: The median of the same calls without gc running, in ms.
        self.baseline = 0.0

    def run(self) -> None:
        b, s = self.backend, self.session
        while not self.stop.is_set():
            token = new_lock_token()
            started = time.perf_counter()
            got, _ = b.lock_and_load(s.sid, token, 30)
            if got:
                b.save(s.sid, s.record, token, s.ttl)
            self.ms.append((time.perf_counter() - started) * 1000)
            time.sleep(0.002)


def timed_gc(backend: Backend, sessions: list[Session]) -> tuple[int, float, Probe]:
    """Run ``SessionStore(backend).gc()`` with a probe on a live session; return (removed, seconds, probe)."""
    store = SessionStore(backend, key_prefix=PREFIX)
    live = next(s for s in sessions if s.live)
    idle = Probe(backend, live)  # the same calls without gc, for comparison
    idle.start()
    time.sleep(0.5)
    idle.stop.set()
    idle.join()
    probe = Probe(backend, live)
    probe.baseline = statistics.median(idle.ms or [0.0])
    probe.start()
    started = time.perf_counter()
    removed = store.gc()
    seconds = time.perf_counter() - started
    probe.stop.set()
    probe.join()
    return removed, seconds, probe


def probe_figures(probe: Probe) -> tuple[int, float, float, float]:
    """The probe's figures for a :class:`Result`: calls, median and slowest ms, and the median without gc."""
    ms = probe.ms or [0.0]
    return len(probe.ms), statistics.median(ms), max(ms), probe.baseline


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
        removed, seconds, probe = timed_gc(b, sessions)

        def gone(sid: str) -> bool:
            t = b.table
            with b.engine.connect() as conn:
                return conn.execute(sa.select(t.c.sid).where(t.c.sid == PREFIX + sid)).first() is None

        _, remaining = verify(b, sessions, lambda: sql_count(b), gone)
        setup = f"batch INSERT of {len(sessions):,} rows ({BATCH:,}/statement) in {fill:.1f}s, not via create()"
        return Result(label, before, removed, remaining, seconds, setup, *probe_figures(probe))


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
        removed, seconds, probe = timed_gc(b, sessions)
        _, remaining = verify(
            b, sessions, lambda: file_count(directory), lambda sid: not (directory / f"{PREFIX}{sid}.session").exists()
        )
        rate = len(sessions) / fill if fill else 0.0
        setup = f"FileBackend.create one by one: {len(sessions):,} in {fill:.1f}s ({rate:,.0f}/s)"
        return Result("file", before, removed, remaining, seconds, setup, *probe_figures(probe))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- main --------------------------------------------------------------------------------------


def print_table(results: list[Result]) -> None:
    """Print the results table and how each store was filled."""
    head = (
        f"{'backend':<12} {'sessions before':>15} {'removed':>9} {'remaining':>10} {'seconds':>9} "
        f"{'sessions/s':>11} {'probe p50 ms':>13} {'probe max ms':>13} {'(no gc) p50':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        rate = r.removed / r.seconds if r.seconds else float("inf")
        print(
            f"{r.backend:<12} {r.before:>15,} {r.removed:>9,} {r.remaining:>10,} {r.seconds:>9.3f} {rate:>11,.0f} "
            f"{r.probe_p50_ms:>13.1f} {r.probe_max_ms:>13.1f} {r.probe_idle_ms:>12.1f}"
        )
    print()
    print("sessions/s = removed / seconds (the SessionStore.gc() call only).")
    print("probe = lock_and_load + save of a live session, looped while gc ran (a request's round trips);")
    print("(no gc) p50 = the same probe for 0.5 s just before gc.")
    print("Setup (not timed):")
    for r in results:
        print(f"  {r.backend}: {r.setup}")


# -- a site without cron -------------------------------------------------------------------------


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    session = environ["sessionmw.session"]
    session["n"] = session.get("n", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _call(site: WSGISessionMiddleware, cookie: str | None) -> str | None:
    """One request to ``site`` in process; return the session cookie it sets, if any."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "REMOTE_ADDR": "127.0.0.1",
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = f"session={cookie}"
    headers: list[tuple[str, str]] = []

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers.extend(response_headers)
        return lambda data: None

    result: Any = site(environ, start_response)
    try:
        b"".join(result)
    finally:
        result.close()  # the response is out: the lock goes, and a due gc starts in the background
    for name, value in headers:
        if name.lower() == "set-cookie" and value.startswith("session="):
            return value.split(";", 1)[0][len("session=") :]
    return cookie


def stored_count(url: str, prefix: str) -> int:
    """Files (of every kind) or rows under ``prefix``: what the site keeps on disk."""
    if url.startswith("file://"):
        with os.scandir(url[len("file://") :]) as entries:
            return sum(1 for e in entries if e.name.startswith(prefix))
    b = open_backend(url, key_prefix=prefix)
    assert isinstance(b, SQLBackend)
    try:
        t = b.table
        with b.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(t.c.sid.startswith(prefix))).scalar_one())
    finally:
        b.close()


@dataclass
class Steady:
    """One no-cron run: files or rows counted each second, and each visitor's two requests in ms."""

    counts: list[int]
    visitor_ms: list[float]

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the visitors' milliseconds."""
        ms = sorted(self.visitor_ms) or [0.0]
        return ms[min(len(ms) - 1, int(q * len(ms)))]


def steady(url: str, seconds: int, rate: int, idle: float, gc_interval: float | None) -> Steady:
    """Serve ``rate`` new visitors a second for ``seconds``; count the files or rows each second."""
    prefix = f"steady{uuid.uuid4().hex[:8]}:"
    site = WSGISessionMiddleware(
        _app, secret_key="bench", backend=url, key_prefix=prefix, idle_timeout=idle, gc_interval=gc_interval
    )
    counts: list[int] = []
    visitor_ms: list[float] = []
    try:
        started = time.monotonic()
        served = 0
        for second in range(1, seconds + 1):
            while served < second * rate:
                due = started + served / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                begun = time.perf_counter()
                cookie = _call(site, None)
                _call(site, cookie)  # a locked write with its cookie (on files: the lock file)
                visitor_ms.append((time.perf_counter() - begun) * 1000)
                served += 1
            while time.monotonic() < started + second:
                time.sleep(0.005)
            counts.append(stored_count(url, prefix))
        return Steady(counts, visitor_ms)
    finally:
        site.close()
        purge(url, prefix)


def purge(url: str, prefix: str) -> None:
    """Remove what a steady run left under ``prefix`` (rows of a shared table, files of a shared directory)."""
    if url.startswith("file://"):
        folder = url[len("file://") :]
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith(prefix) and e.is_file():
                    os.unlink(e.path)
        return
    b = open_backend(url, key_prefix=prefix)
    assert isinstance(b, SQLBackend)
    try:
        with b.engine.begin() as conn:
            conn.execute(sa.delete(b.table).where(b.table.c.sid.startswith(prefix)))
    finally:
        b.close()


def print_steady(label: str, on: Steady, off: Steady, args: argparse.Namespace) -> None:
    """Print one backend's counts per second, with and without the background gc."""
    per = 2 if label == "file" else 1
    print(
        f"{label}: {args.rate} new sessions/s, idle_timeout={args.idle:g} s, "
        f"{'files' if per == 2 else 'rows'} under the site's prefix ({per} per session), counted each second"
    )
    print(f"  {'second':>6} {'gc_interval=' + format(args.gc_interval, 'g'):>16} {'gc_interval=None':>17}")
    for i, (a, b) in enumerate(zip(on.counts, off.counts, strict=True), start=1):
        print(f"  {i:>6} {a:>16,} {b:>17,}")
    level = args.rate * (args.idle + args.gc_interval) * per
    print(f"  expected level with gc: about rate x (idle + gc_interval) x {per} = {level:,.0f}")
    for q, name in ((0.5, "p50"), (0.99, "p99"), (1.0, "max")):
        print(f"  visitor (2 requests) {name} ms: {on.percentile(q):8.1f} with gc, {off.percentile(q):8.1f} without")
    print()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
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
    parser.add_argument("--steady-seconds", type=int, default=20, help="seconds of the no-cron run (0: skip it)")
    parser.add_argument("--rate", type=int, default=50, help="new sessions a second in the no-cron run")
    parser.add_argument("--idle", type=float, default=3.0, help="idle_timeout of the no-cron run, seconds")
    parser.add_argument("--gc-interval", type=float, default=2.0, help="gc_interval of the no-cron run, seconds")
    parser.add_argument("--json", help="also write the figures to this JSON file")
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
    steady_runs: dict[str, dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="sessmw-bench-gc-sqlite-"))
    try:
        urls: dict[str, str] = {}
        if "sqlite" not in skip:
            urls["sqlite"] = f"sqlite:///{tmp}/sessions.db"
        if args.postgres_url:
            urls["postgresql"] = args.postgres_url
        if args.mysql_url:
            urls["mysql"] = args.mysql_url
        runs: list[tuple[str, Callable[[], Result]]] = [
            (name, lambda name=name, url=url: run_sql(name, url, sessions))  # type: ignore[misc]
            for name, url in urls.items()
        ]
        if "file" not in skip and file_sessions:
            runs.append(("file", lambda: run_file(file_sessions)))
        for name, run in runs:
            started = time.perf_counter()
            result = run()
            results.append(result)
            print(f"  {name}: done in {time.perf_counter() - started:.1f}s (setup included)", flush=True)
        print()
        print_table(results)
        if args.steady_seconds > 0:
            print()
            print("A site without cron: files or rows held under a stream of short-lived sessions")
            print()
            if "file" not in skip:
                (tmp / "files").mkdir()
                urls["file"] = f"file://{tmp}/files"
            for name, url in urls.items():
                on = steady(url, args.steady_seconds, args.rate, args.idle, args.gc_interval)
                off = steady(url, args.steady_seconds, args.rate, args.idle, None)
                steady_runs[name] = {
                    "gc_on": on.counts,
                    "gc_off": off.counts,
                    "visitor_p99_ms_gc_on": on.percentile(0.99),
                    "visitor_p99_ms_gc_off": off.percentile(0.99),
                }
                print_steady(name, on, off, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        figures = {
            "gc": [r.__dict__ for r in results],
            "steady": {
                "rate": args.rate,
                "idle_timeout": args.idle,
                "gc_interval": args.gc_interval,
                "counts_per_second": steady_runs,
            },
        }
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
