"""Does a request, a user's listing and a user's logout cost the same with 1,000,000 sessions stored as with 10,000?

For Redis and PostgreSQL, at each size of ``--sessions`` (default 10,000 then 1,000,000):

1. **Fill** the store in bulk, with exactly what the backend writes: Redis by pipelines of ``SET`` with
   the backend's own encoder (``records.encode``), key names (``Keys``) and TTL, plus ``SADD`` of the
   per-user index; PostgreSQL by ``COPY`` of the row values ``SQLBackend.create`` writes
   (``SQLBackend._columns``). Sessions are named by handles (``handle_of``) as the core names them.
   One session in three is bound to a user; the first 400 belong to 20 users with 20 sessions each.
2. **Bytes per session beyond the payload** (the session data): Redis, the growth of ``used_memory``
   per session (records, TTL entries and the per-user index) and ``MEMORY USAGE`` of a sample of
   records; PostgreSQL, ``pg_total_relation_size`` (table, TOAST and indexes) per row. On Redis the
   same sessions are written first in the record format used before the compact metadata line (full
   float times, the last IP spelled out, ``false``), and measured the same way: before and after.
3. **Costs**, through the public API: ``SessionStore.list_sessions(user_id)`` and
   ``terminate_user(user_id)`` of users with 20 sessions (and listing users with one), and an
   in-process read+write request through the ASGI ``SessionMiddleware`` (benchmarks/asgi_call.py),
   as wall time and, on Redis, as commands the server processed per request.

Then the **gc of a backlog** on PostgreSQL: ``--gc-expired`` expired rows (default 500,000) among
``--gc-live`` live ones, removed by ``SessionStore.gc()`` (batches of ``GC_BATCH`` rows, each its own
transaction) while a thread makes read+write requests on live sessions; the requests' p50/p99/max
during the gc against the same requests just before it, the batches counted at the database driver.

Redis is a private ``redis-server`` (benchmarks/servers.py) unless ``--redis-url`` names one, and
then only keys under this run's prefix are written and deleted. PostgreSQL uses a table of its own,
dropped at the end.

Usage::

    python benchmarks/bench_scale.py [--sessions 10000,1000000] [--redis-url URL]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--skip redis,postgresql]
        [--gc-expired 500000] [--gc-live 100000] [--json out.json]

A quick run: ``--sessions 1000,20000 --gc-expired 20000 --gc-live 5000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import redis
import sqlalchemy as sa
from asgi_call import call
from servers import redis_server
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sessionmw import SessionMiddleware, SessionStore
from sessionmw.backends import open_backend
from sessionmw.backends.base import Record
from sessionmw.backends.redis.keys import Keys
from sessionmw.backends.redis.records import encode
from sessionmw.backends.sql import SQLBackend
from sessionmw.backends.sql.table import GC_BATCH
from sessionmw.core.handles import handle_of
from sessionmw.core.lifetime import to_ms

IDLE = 1800.0
TTL = IDLE + 60.0 + 60.0
HEAVY_USERS = 20
HEAVY_SESSIONS = 20
#: Sessions made through the middleware for the timed requests.
PROBES = 100
#: Records whose MEMORY USAGE is read.
MEMORY_SAMPLE = 2000
PIPELINE = 2000

_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
]


# -- the sessions ----------------------------------------------------------------------------------


def user_of(i: int) -> str | None:
    """The user of session ``i``: 20 users with 20 sessions each first, then one session in three."""
    if i < HEAVY_USERS * HEAVY_SESSIONS:
        return f"heavy{i % HEAVY_USERS}"
    return f"u{i}" if i % 3 == 0 else None


def session(i: int, now: float, compact: bool = True, expired: bool = False) -> tuple[str, Record]:
    """Session ``i``: its handle and record, the same on every call (times relative to ``now``).

    ``compact``: times rounded to the millisecond, as the core writes them now; else full floats, as before.
    """
    rng = random.Random(i)
    sid = f"bench{i:038d}"
    created = now - rng.uniform(60, 300) - rng.random() / 1000  # so live for 25 minutes at least
    last_access = created + rng.uniform(0, 50)
    if compact:
        created, last_access = to_ms(created), to_ms(last_access)
    expires = last_access + IDLE if not expired else now - rng.uniform(1, 600)
    if compact:
        expires = round(expires, 3)
    ip = f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    data = b'{"csrf":"%s","cart":[%d,%d],"theme":"dark","lang":"en"}' % (
        rng.randbytes(16).hex().encode(),
        i,
        rng.randrange(1000),
    )
    record = Record(
        data=data,
        created=created,
        last_access=last_access,
        user_id=user_of(i),
        first_ip=ip,
        last_ip=ip if rng.random() < 0.9 else f"203.0.113.{rng.randrange(1, 255)}",
        user_agent=_AGENTS[i % len(_AGENTS)],
        expires=expires,
        version=rng.randrange(1, 30),
    )
    return handle_of(sid), record


def legacy_encode(record: Record) -> bytes:
    """``record`` in the format written before the compact metadata line: every field after ``data`` in full."""
    return json.dumps(list(record[1:]), separators=(",", ":")).encode() + b"\n" + record.data


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# -- the requests and the store API ----------------------------------------------------------------


async def rw(request: Request) -> PlainTextResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse("ok")


def make_app(url: str, prefix: str) -> Starlette:
    """An app whose one route reads and writes the session, under ``prefix``, background gc off."""
    return Starlette(
        routes=[Route("/rw", rw)],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key="k",
                backend=url,
                key_prefix=prefix,
                idle_timeout=IDLE,
                gc_interval=None,
            )
        ],
    )


async def new_cookies(app: Starlette, n: int) -> list[bytes]:
    """``n`` new sessions made by the middleware; their cookies."""
    cookies: list[bytes] = []
    for _ in range(n):
        _, cookie = await call(app, "/rw", None)
        assert cookie
        cookies.append(cookie)
    return cookies


@dataclass
class Site:
    """One store filled to one size, with an app and a SessionStore on it, and what was measured there."""

    row: dict[str, Any]
    app: Starlette
    store: SessionStore
    cookies: list[bytes] = field(default_factory=list)
    counter: Callable[[], int] | None = None
    rw_us: list[float] = field(default_factory=list)
    rw_commands: list[float] = field(default_factory=list)
    list_user_ms: list[float] = field(default_factory=list)
    list_single_ms: list[float] = field(default_factory=list)
    terminate_user_ms: list[float] = field(default_factory=list)

    async def rw_round(self) -> None:
        """One read+write request on every probe session: µs per request, and server commands per request."""
        before = self.counter() if self.counter else 0
        started = time.perf_counter()
        for cookie in self.cookies:
            status, _ = await call(self.app, "/rw", cookie)
            assert status == 200
        self.rw_us.append((time.perf_counter() - started) / len(self.cookies) * 1e6)
        if self.counter:
            self.rw_commands.append((self.counter() - before - 1) / len(self.cookies))  # less the INFO itself

    def store_round(self, k: int, rng: random.Random) -> None:
        """list_sessions of heavy user ``k`` and of 10 users with one session; terminate_user of heavy user 10+k."""
        size = self.row["sessions"]
        for _ in range(3):
            started = time.perf_counter()
            found = self.store.list_sessions(user_id=f"heavy{k}")
            self.list_user_ms.append((time.perf_counter() - started) * 1000)
            assert len(found) == HEAVY_SESSIONS, (k, len(found))
        first = -(-HEAVY_USERS * HEAVY_SESSIONS // 3) * 3  # the first session of a user with one
        for _ in range(10):
            i = rng.randrange(first, size, 3)
            started = time.perf_counter()
            found = self.store.list_sessions(user_id=f"u{i}")
            self.list_single_ms.append((time.perf_counter() - started) * 1000)
            assert len(found) == 1, (i, found)
        started = time.perf_counter()
        n = self.store.terminate_user(f"heavy{HEAVY_USERS // 2 + k}")
        self.terminate_user_ms.append((time.perf_counter() - started) * 1000)
        assert n == HEAVY_SESSIONS, (k, n)

    def figures(self) -> dict[str, Any]:
        """The row with the medians of what was measured."""
        out = dict(self.row)
        for name in ("rw_us", "rw_commands", "list_user_ms", "list_single_ms", "terminate_user_ms"):
            values = getattr(self, name)
            if values:
                out[name] = statistics.median(values)
        out["rw_us_rounds"] = [round(v, 1) for v in self.rw_us]
        return out


async def measure(sites: list[Site], rounds: int) -> list[dict[str, Any]]:
    """Measure every site in turns, so that a noisy neighbour on the machine slows every size alike.

    Each turn runs one round per site, in alternating order; one untimed round first warms each up.
    """
    for site in sites:
        site.cookies = await new_cookies(site.app, PROBES)
        await site.rw_round()
        site.rw_us.clear()
        site.rw_commands.clear()
    for r in range(rounds):
        for site in sites if r % 2 == 0 else sites[::-1]:
            await site.rw_round()
    rngs = [random.Random(site.row["sessions"]) for site in sites]
    for k in range(HEAVY_USERS // 2):
        order = list(zip(sites, rngs, strict=True))
        for site, rng in order if k % 2 == 0 else order[::-1]:
            site.store_round(k, rng)
    rows = [site.figures() for site in sites]
    for row in rows:
        print_row(row, file=sys.stderr)
    return rows


# -- Redis ------------------------------------------------------------------------------------------


@dataclass
class Fill:
    """What filling a store wrote."""

    sessions: int = 0
    payload: int = 0
    meta: int = 0
    seconds: float = 0.0

    @property
    def mean_payload(self) -> float:
        return self.payload / self.sessions if self.sessions else 0.0


def redis_fill(client: redis.Redis, keys: Keys, size: int, now: float, compact: bool) -> Fill:
    """Write ``size`` sessions as the backend does (record with its TTL, and the per-user index)."""
    fill = Fill()
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    ttl_ms = int(TTL * 1000)
    for i in range(size):
        handle, record = session(i, now, compact)
        blob = encode(record) if compact else legacy_encode(record)
        pipe.set(keys.data(handle), blob, px=ttl_ms)
        if record.user_id is not None:
            pipe.sadd(keys.user(record.user_id), handle)
        fill.sessions += 1
        fill.payload += len(record.data)
        fill.meta += blob.index(b"\n")
        if i % PIPELINE == PIPELINE - 1:
            pipe.execute()
    pipe.execute()
    fill.seconds = time.perf_counter() - started
    return fill


def redis_delete_prefix(client: redis.Redis, prefix: str, private: bool) -> None:
    """Delete every key under ``prefix`` (only this run's namespace); on a private server, everything.

    ``FLUSHALL`` also frees the server's tables, so that two fills after it are measured alike.
    """
    if private:
        client.flushall()
        return
    escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix)
    batch: list[bytes] = []
    for key in client.scan_iter(match=escaped + "*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def redis_memory(client: redis.Redis, keys: Keys, size: int, now: float, compact: bool) -> dict[str, float]:
    """Fill ``size`` sessions in one format; bytes per session beyond the payload, two ways."""
    used = lambda: int(client.info("memory")["used_memory"])  # noqa: E731
    before = used()
    fill = redis_fill(client, keys, size, now, compact)
    grown = used() - before
    beyond: list[int] = []
    agents: list[int] = []
    for i in random.Random(size).sample(range(size), min(size, MEMORY_SAMPLE)):
        handle, record = session(i, now, compact)
        usage = client.memory_usage(keys.data(handle), samples=0)
        assert usage, "a record is missing"
        beyond.append(int(usage) - len(record.data))
        agents.append(len(record.user_agent or ""))
    return {
        "sessions": size,
        "used_memory_beyond": grown / size - fill.mean_payload,
        "memory_usage_beyond": statistics.mean(beyond),
        "user_agent": statistics.mean(agents),
        "metadata_line": fill.meta / size,
        "payload": fill.mean_payload,
        "fill_s": fill.seconds,
    }


async def run_redis(urls: list[str], sizes: list[int], rounds: int, private: bool) -> list[dict[str, Any]]:
    """Every size on Redis (``urls[i]`` holds ``sizes[i]``): memory before and after the compact line; costs."""
    prefix = f"bscale{uuid.uuid4().hex[:6]}:"
    keys = Keys(prefix)
    clients = [redis.Redis.from_url(url, socket_timeout=600) for url in urls]  # FLUSHALL of 1M keys
    sites: list[Site] = []
    try:
        for url, client, size in zip(urls, clients, sizes, strict=True):
            now = time.time()
            row: dict[str, Any] = {"backend": "redis", "sessions": size}
            redis_delete_prefix(client, prefix, private)
            row["before"] = redis_memory(client, keys, size, now, compact=False)
            redis_delete_prefix(client, prefix, private)
            row["after"] = redis_memory(client, keys, size, now, compact=True)
            row["bytes_beyond"] = row["after"]["used_memory_beyond"]
            counter = lambda c=client: int(c.info("stats")["total_commands_processed"])  # noqa: E731
            store = SessionStore(url, key_prefix=prefix)
            sites.append(Site(row, make_app(url, prefix), store, counter=counter))
            print(f"  redis: {size:,} sessions stored", file=sys.stderr, flush=True)
        return await measure(sites, rounds)
    finally:
        for site in sites:
            site.store.close()
        for client in clients:
            redis_delete_prefix(client, prefix, private)
            client.close()


# -- PostgreSQL -------------------------------------------------------------------------------------

_COLUMNS = (
    "sid",
    "user_id",
    "state",
    "created",
    "last_access",
    "first_ip",
    "last_ip",
    "user_agent",
    "idle_override",
    "idle_timeout",
    "expires",
    "ttl_until",
    "data",
    "lock_token",
    "lock_until",
)


def pg_copy(b: SQLBackend, rows: Iterator[tuple[str, Record]], now: float) -> Fill:
    """``COPY`` sessions into the backend's table with the row values ``SQLBackend.create`` writes."""
    fill = Fill()
    started = time.perf_counter()
    raw = b.engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SET statement_timeout = 0")  # the backend's engine caps statements at its socket_timeout
        with cursor.copy(f"COPY {b.table.name} ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for handle, record in rows:
                values = {"sid": b.key_prefix + handle, "state": 0, "lock_token": None, "lock_until": None}
                values.update(SQLBackend._columns(record, TTL, now))
                copy.write_row(tuple(values[c] for c in _COLUMNS))
                fill.sessions += 1
                fill.payload += len(record.data)
        cursor.execute(f"ANALYZE {b.table.name}")
        cursor.execute("RESET statement_timeout")
        raw.commit()
    finally:
        raw.close()
    fill.seconds = time.perf_counter() - started
    return fill


def pg_size(b: SQLBackend) -> int:
    """Bytes of the table with its TOAST and indexes."""
    with b.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT pg_total_relation_size('{b.table.name}')")).scalar_one())


def pg_table(url: str, prefix: str) -> tuple[str, SQLBackend]:
    """A backend on a new table of this run's own, created; its URL."""
    table = f"bench_scale_{uuid.uuid4().hex[:10]}"
    table_url = url + ("&" if "?" in url else "?") + f"table={table}"
    b = open_backend(table_url, key_prefix=prefix)
    assert isinstance(b, SQLBackend)
    b.create_tables()
    return table_url, b


def pg_drop(b: SQLBackend) -> None:
    """Drop the backend's table and close it."""
    try:
        with b.engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {b.table.name}"))
    finally:
        b.close()


async def run_postgres(url: str, sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    """Every size on PostgreSQL, a table each: bytes per row, then the costs."""
    prefix = "bscale:"
    tables: list[SQLBackend] = []
    sites: list[Site] = []
    try:
        for size in sizes:
            now = time.time()
            table_url, b = pg_table(url, prefix)
            tables.append(b)
            empty = pg_size(b)
            fill = pg_copy(b, (session(i, now) for i in range(size)), now)
            total = pg_size(b)
            row: dict[str, Any] = {
                "backend": "postgresql",
                "sessions": size,
                "bytes_beyond": (total - empty) / size - fill.mean_payload,
                "relation_bytes": total,
                "payload": fill.mean_payload,
                "fill_s": fill.seconds,
            }
            sites.append(Site(row, make_app(table_url, prefix), SessionStore(table_url, key_prefix=prefix)))
            print(f"  postgresql: {size:,} sessions stored", file=sys.stderr, flush=True)
        return await measure(sites, rounds)
    finally:
        for site in sites:
            site.store.close()
        for b in tables:
            pg_drop(b)


@dataclass
class RequestLoop:
    """Read+write requests on live sessions in a thread of its own, each timed with when it started."""

    url: str
    prefix: str
    ready: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    samples: list[tuple[float, float]] = field(default_factory=list)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._loop())
        except BaseException as exc:  # reported by the caller
            self.error = exc
            self.ready.set()

    async def _loop(self) -> None:
        app = make_app(self.url, self.prefix)
        cookies = await new_cookies(app, 50)
        self.ready.set()
        i = 0
        while not self.stop.is_set():
            started = time.perf_counter()
            status, _ = await call(app, "/rw", cookies[i % len(cookies)])
            self.samples.append((started, (time.perf_counter() - started) * 1000))
            assert status == 200
            i += 1


@dataclass
class LockWatch:
    """Polls ``pg_stat_activity`` every 20 ms for sessions of the database waiting for a lock (a stall)."""

    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    polls: int = 0
    #: Polls that saw at least one session waiting for a heavyweight lock (row or table).
    seen: int = 0

    def run(self) -> None:
        engine = sa.create_engine(self.url)
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        try:
            with engine.connect() as conn:
                while not self.stop.is_set():
                    self.polls += 1
                    if conn.execute(query).scalar_one():
                        self.seen += 1
                    conn.rollback()
                    time.sleep(0.02)
        finally:
            engine.dispose()


def run_pg_gc(url: str, expired: int, live: int) -> dict[str, Any]:
    """``SessionStore.gc()`` of ``expired`` rows among ``live`` ones, with requests running; figures."""
    prefix = "bscalegc:"
    table_url, b = pg_table(url, prefix)
    try:
        now = time.time()

        def rows() -> Iterator[tuple[str, Record]]:
            for i in range(expired + live):
                # Live and expired rows interleaved, as a site's are: one in (expired + live) / live is live.
                yield session(i, now, expired=(i * live) // (expired + live) == ((i + 1) * live) // (expired + live))

        fill = pg_copy(b, rows(), now)
        deletes: list[float] = []
        started_at: dict[int, float] = {}

        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("DELETE"):
                started_at[id(cursor)] = time.perf_counter()

        def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            t0 = started_at.pop(id(cursor), None)
            if t0 is not None:
                deletes.append((time.perf_counter() - t0) * 1000)

        sa.event.listen(b.engine, "before_cursor_execute", before)
        sa.event.listen(b.engine, "after_cursor_execute", after)
        loop = RequestLoop(table_url, prefix)
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        loop.ready.wait()
        if loop.error:
            raise loop.error
        time.sleep(3.0)
        watch = LockWatch(url)
        watcher = threading.Thread(target=watch.run, daemon=True)
        watcher.start()
        gc_start = time.perf_counter()
        removed = SessionStore(b, key_prefix=prefix).gc()
        gc_end = time.perf_counter()
        watch.stop.set()
        watcher.join()
        time.sleep(0.5)
        loop.stop.set()
        thread.join()
        if loop.error:
            raise loop.error
        with b.engine.connect() as conn:
            left = int(conn.execute(sa.select(sa.func.count()).select_from(b.table)).scalar_one())
        base = [ms for t, ms in loop.samples if t < gc_start]
        during = [ms for t, ms in loop.samples if gc_start <= t and t + ms / 1000 <= gc_end]
        return {
            "expired": fill.sessions - live,
            "live": live,
            "removed": removed,
            "left_rows": left,
            "gc_s": gc_end - gc_start,
            "batches": len(deletes),
            "batch_rows": GC_BATCH,
            "batch_ms_p50": percentile(deletes, 0.5),
            "batch_ms_max": max(deletes, default=0.0),
            "lock_wait_polls": watch.polls,
            "lock_wait_seen": watch.seen,
            "before": {"requests": len(base), **figures(base)},
            "during": {"requests": len(during), **figures(during)},
            "fill_s": fill.seconds,
        }
    finally:
        pg_drop(b)


def figures(ms: list[float]) -> dict[str, float]:
    """p50, p99 and max of request times in ms."""
    return {"p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99), "max_ms": max(ms, default=0.0)}


# -- output -----------------------------------------------------------------------------------------


def print_row(row: dict[str, Any], file: Any = None) -> None:
    """One progress line (to stderr while the run goes on)."""
    print(
        f"  {row['backend']} {row['sessions']:,}: {row['bytes_beyond']:.0f} B/session beyond payload, "
        f"rw {row['rw_us']:.0f} µs, list {row['list_user_ms']:.2f} ms, terminate {row['terminate_user_ms']:.2f} ms",
        file=file,
        flush=True,
    )


def print_tables(result: dict[str, Any]) -> None:
    """The tables: each backend's smallest size against its largest, with the ratio; Redis bytes before/after; gc."""
    metrics = [
        ("bytes_beyond", "bytes/session beyond payload", "{:.0f}"),
        ("rw_us", "read+write request, µs (median)", "{:.0f}"),
        ("rw_commands", "  Redis commands per request", "{:.2f}"),
        ("list_user_ms", "list_sessions(user of 20), ms", "{:.3f}"),
        ("list_single_ms", "list_sessions(user of 1), ms", "{:.3f}"),
        ("terminate_user_ms", "terminate_user(user of 20), ms", "{:.3f}"),
    ]
    for backend in ("redis", "postgresql"):
        rows = [r for r in result["sizes"] if r["backend"] == backend]
        if not rows:
            continue
        small, big = rows[0], rows[-1]
        print(f"\n{backend}: {small['sessions']:,} vs {big['sessions']:,} sessions")
        head = f"{'':<34} {small['sessions']:>12,} {big['sessions']:>12,} {'ratio':>7}"
        print(head)
        print("-" * len(head))
        for key, label, fmt in metrics:
            if key not in small:
                continue
            ratio = big[key] / small[key] if small[key] else float("nan")
            print(f"{label:<34} {fmt.format(small[key]):>12} {fmt.format(big[key]):>12} {ratio:>7.2f}")
        if backend == "redis":
            print("\nRedis bytes per session beyond the payload, old full metadata line -> compact line:")
            for r in rows:
                b4, af = r["before"], r["after"]
                print(
                    f"  {r['sessions']:>9,} sessions: used_memory growth {b4['used_memory_beyond']:.0f} -> "
                    f"{af['used_memory_beyond']:.0f}; MEMORY USAGE of a record {b4['memory_usage_beyond']:.0f} -> "
                    f"{af['memory_usage_beyond']:.0f}; metadata line {b4['metadata_line']:.0f} -> "
                    f"{af['metadata_line']:.0f} B (payload {af['payload']:.0f} B; the user agent, "
                    f"{af['user_agent']:.0f} B, is in the metadata line: MEMORY USAGE beyond payload and user agent "
                    f"{b4['memory_usage_beyond'] - b4['user_agent']:.0f} -> "
                    f"{af['memory_usage_beyond'] - af['user_agent']:.0f})"
                )
    gc = result.get("pg_gc")
    if gc:
        print(
            f"\nPostgreSQL gc: {gc['removed']:,} of {gc['expired']:,} expired removed among {gc['live']:,} live "
            f"({gc['left_rows']:,} rows left) in {gc['gc_s']:.1f} s, {gc['batches']} DELETE batches of at most "
            f"{gc['batch_rows']:,} rows (p50 {gc['batch_ms_p50']:.0f} ms, max {gc['batch_ms_max']:.0f} ms each)"
        )
        print(
            f"Polls of pg_stat_activity during gc that saw a session waiting for a lock: "
            f"{gc['lock_wait_seen']} of {gc['lock_wait_polls']}"
        )
        print(f"{'read+write requests':<22} {'n':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for label in ("before", "during"):
            f = gc[label]
            print(f"{label + ' gc':<22} {f['requests']:>7} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f} {f['max_ms']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="10000,1000000", help="sizes, comma-separated (default 10000,1000000)")
    parser.add_argument("--redis-url", default=None, help="a Redis server (default: a private redis-server)")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--skip", default="", help="comma-separated: redis, postgresql, gc")
    parser.add_argument("--gc-expired", type=int, default=500_000)
    parser.add_argument("--gc-live", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of timed requests per size")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sessions.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "sizes": [],
    }
    if "redis" not in skip:
        with ExitStack() as stack:
            # A private server per size (so FLUSHALL frees everything and each size has its own tables),
            # or the one server given, with one prefix.
            urls = [stack.enter_context(redis_server(args.redis_url)) for _ in sizes]
            if None in urls:
                print("redis: no redis-server installed and no --redis-url; skipped", file=sys.stderr)
            else:
                live = [u for u in urls if u is not None]
                result["redis"] = redis.Redis.from_url(live[0]).info("server")["redis_version"]
                result["sizes"] += asyncio.run(run_redis(live, sizes, args.rounds, args.redis_url is None))
    if "postgresql" not in skip:
        result["sizes"] += asyncio.run(run_postgres(args.postgres_url, sizes, args.rounds))
    if "gc" not in skip:
        result["pg_gc"] = run_pg_gc(args.postgres_url, args.gc_expired, args.gc_live)
    print_tables(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
