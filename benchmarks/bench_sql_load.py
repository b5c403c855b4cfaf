"""SQL backends under load: 16 concurrent clients doing read-write requests, on SQLite, PostgreSQL and MariaDB.

Each run drives the WSGI middleware in-process (``WSGISessionMiddleware`` called through httpx2's WSGI
transport, no sockets between client and app) from ``--clients`` threads, spread over ``--processes``
worker processes, every request a read-modify-write of the session (a counter). Two scenarios:

* ``distinct``: every client has a session of its own (the usual site: many users at once);
* ``shared``: every client sends the same cookie (one user's parallel requests, queued on its lock).

It prints, per tree, database and scenario: requests per second, p50 and p99 latency, SQL
transactions and statements per request (SQLAlchemy's ``begin`` and ``before_cursor_execute`` events;
statements that only begin a transaction are not counted), requests that failed, and updates lost
(a counter that ends below the number of requests made on it).

Why in-process threads, not uvicorn and an HTTP load generator: on a shared 2-core machine a load
generator competes with the server for the same cores, and HTTP parsing dwarfs what is measured here,
so figures wander between runs; threads calling the WSGI app directly keep the figure about the
session backend, and SQLite and the database drivers release the GIL while they wait, so the
16 clients do contend in the database as 16 worker threads would. ``--processes 2`` splits the clients
over two processes (as ``uvicorn --workers 2`` or gunicorn would), so that SQLite's file locks and the
servers' row locks are contended across processes too.

To compare two trees in one session, alternating runs (each run in fresh subprocesses whose
``PYTHONPATH`` points at the tree)::

    git worktree add /tmp/sqlbench/before HEAD
    python benchmarks/bench_sql_load.py --tree before=/tmp/sqlbench/before --tree after=. --rounds 3 \\
        --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        --mysql-url mysql+pymysql://root@127.0.0.1:3306/test

Figures are the median over rounds of each run's own figure; the ratio column compares the last tree
with the first. Without ``--tree`` the installed (or current) ``sessionmw`` is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

SECRET = "bench-sql-load"
COOKIE = "session"


# -- worker side (runs in a subprocess whose PYTHONPATH selects the tree) ---------------------------


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Increment the session's counter: a read-modify-write on every request."""
    session = environ["sessionmw.session"]
    session["n"] = session.get("n", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session["n"]).encode()]


class _Counter:
    """Counts SQL transactions and statements in this process through SQLAlchemy's engine events."""

    def __init__(self) -> None:
        self.transactions = 0
        self.statements = 0
        self._mutex = threading.Lock()

    def begin(self, *_: Any) -> None:
        with self._mutex:
            self.transactions += 1

    def statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip()[:5].upper() == "BEGIN":  # a transaction's start, counted by begin()
            return
        with self._mutex:
            self.statements += 1


def _middleware(url: str, prefix: str) -> Any:
    from sessionmw import WSGISessionMiddleware

    return WSGISessionMiddleware(_app, secret_key=SECRET, backend=url, key_prefix=prefix)


def make_cookie(url: str, prefix: str) -> str:
    """Create one session and return its cookie value (for the ``shared`` scenario)."""
    import httpx2

    wsgi = _middleware(url, prefix)
    try:
        with httpx2.Client(transport=httpx2.WSGITransport(app=wsgi), base_url="http://bench") as client:
            response = client.get("/")
            response.raise_for_status()
            return str(client.cookies[COOKIE])
    finally:
        wsgi.close()


def worker(spec: dict[str, Any]) -> None:
    """Run this process's clients when the parent says go; print the figures as one JSON line."""
    import httpx2
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    wsgi = _middleware(spec["url"], spec["prefix"])
    threads: int = spec["threads"]
    requests: int = spec["requests"]
    clients = [httpx2.Client(transport=httpx2.WSGITransport(app=wsgi), base_url="http://bench") for _ in range(threads)]
    for client in clients:
        if spec["cookie"] is not None:
            client.cookies.set(COOKIE, spec["cookie"])
        for _ in range(spec["warmup"]):  # creates the client's own session, fills the pool: not counted
            client.get("/").raise_for_status()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    last: list[int] = [0] * threads
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        client, mine = clients[i], latencies[i]
        barrier.wait()
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get("/")
            mine.append(time.perf_counter() - started)
            if response.status_code == 200:
                last[i] = max(last[i], int(response.text))
            else:
                errors.append(f"{response.status_code} {response.text[:200]}")

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    counter = _Counter()
    event.listen(Engine, "begin", counter.begin)
    event.listen(Engine, "before_cursor_execute", counter.statement)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    started = time.time()
    barrier.wait()
    for t in pool:
        t.join()
    ended = time.time()
    event.remove(Engine, "begin", counter.begin)
    event.remove(Engine, "before_cursor_execute", counter.statement)
    for client in clients:
        client.close()
    wsgi.close()
    result = {
        "latencies": [x for lat in latencies for x in lat],
        "started": started,
        "ended": ended,
        "transactions": counter.transactions,
        "statements": counter.statements,
        "errors": errors[:3],
        "failed": len(errors),
        "last": last,
    }
    print(json.dumps(result), flush=True)


# -- parent side ------------------------------------------------------------------------------------


def _python(tree: str | None, *args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *args]


def _env(tree: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.path.abspath(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def one_run(tree: str | None, url: str, scenario: str, args: argparse.Namespace) -> dict[str, float]:
    """Run ``args.clients`` clients over ``args.processes`` fresh worker processes; return the figures."""
    prefix = f"b{uuid.uuid4().hex[:8]}:"
    env = _env(tree)
    cookie = None
    if scenario == "shared":
        made = subprocess.run(
            _python(tree, "--make-cookie", url, prefix), env=env, capture_output=True, text=True, check=False
        )
        if made.returncode != 0:
            raise RuntimeError(made.stderr.strip().splitlines()[-1] if made.stderr.strip() else "no cookie")
        cookie = made.stdout.strip()
    per_process = [args.clients // args.processes + (i < args.clients % args.processes) for i in range(args.processes)]
    procs = []
    for threads in per_process:
        spec = {
            "url": url,
            "prefix": prefix,
            "threads": threads,
            "requests": args.requests,
            "warmup": args.warmup,
            "cookie": cookie,
        }
        procs.append(
            subprocess.Popen(
                _python(tree, "--worker", json.dumps(spec)),
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"worker failed: {(p.stderr.read() if p.stderr else '').strip()[-400:]}")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"worker failed: {err.strip()[-400:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    flat = sorted(x for r in results for x in r["latencies"])
    done = len(flat)
    elapsed = max(r["ended"] for r in results) - min(r["started"] for r in results)
    made_total = args.clients * (args.requests + args.warmup)
    if scenario == "shared":  # one counter: every request of every client, plus make_cookie's
        lost = made_total + 1 - max(n for r in results for n in r["last"])
    else:  # a counter per client
        lost = sum(args.requests + args.warmup - n for r in results for n in r["last"])
    failed = sum(r["failed"] for r in results)
    if failed:
        print(f"  ({failed} requests failed, e.g. {results[0]['errors'][:1] or [r['errors'] for r in results]})")
    return {
        "rps": done / elapsed,
        "p50": flat[done // 2] * 1000,
        "p99": flat[min(done - 1, int(done * 0.99))] * 1000,
        "tx": sum(r["transactions"] for r in results) / done,
        "stmts": sum(r["statements"] for r in results) / done,
        "failed": failed,
        "lost": lost,
    }


def _drop(url: str, table: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    finally:
        engine.dispose()


def main() -> None:
    """Run every (round, tree, database, scenario) in turn and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH", help="a source tree to measure")
    parser.add_argument("--rounds", type=int, default=1, help="runs per tree, alternating between trees")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--requests", type=int, default=100, help="requests per client, timed")
    parser.add_argument("--warmup", type=int, default=3, help="requests per client before timing")
    parser.add_argument("--db", default="sqlite,postgresql,mysql", help="databases to run, comma-separated")
    parser.add_argument("--scenarios", default="distinct,shared")
    parser.add_argument("--postgres-url", default=os.environ.get("SESSIONMW_TEST_POSTGRES_URL"))
    parser.add_argument("--mysql-url", default=os.environ.get("SESSIONMW_TEST_MYSQL_URL"))
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--make-cookie", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.make_cookie:
        print(make_cookie(*args.make_cookie))
        return

    trees: list[tuple[str, str | None]] = [(t.split("=", 1)[0], t.split("=", 1)[1]) for t in args.tree] or [
        ("current", None)
    ]
    servers = {"postgresql": args.postgres_url, "mysql": args.mysql_url}
    dbs = [d for d in args.db.split(",") if d == "sqlite" or servers.get(d)]
    scenarios = args.scenarios.split(",")
    runs: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    print(
        f"{args.clients} clients in {args.processes} process(es), {args.requests} read-write requests each "
        f"(+{args.warmup} untimed), WSGI in-process; {args.rounds} round(s), trees alternating",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for db in dbs:
                for scenario in scenarios:
                    for label, tree in trees:
                        table = f"bench_{uuid.uuid4().hex[:10]}"
                        if db == "sqlite":
                            base = f"sqlite:///{tmp}/{table}.db"
                        else:
                            base = str(servers[db])
                        url = f"{base}?table={table}"
                        try:
                            figures = one_run(tree, url, scenario, args)
                        finally:
                            if db != "sqlite":
                                _drop(base, table)
                        runs.setdefault((db, scenario, label), []).append(figures)
                        print(
                            f"  round {rnd + 1} {db:10} {scenario:8} {label:8} {figures['rps']:7.0f} req/s "
                            f"p50 {figures['p50']:7.2f} ms p99 {figures['p99']:8.2f} ms "
                            f"tx/req {figures['tx']:.2f} stmts/req {figures['stmts']:.2f}",
                            flush=True,
                        )
    print()
    head = f"{'database':10} {'scenario':8} {'tree':8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'tx/req':>7}"
    head += f" {'stmts/req':>9} {'failed':>6} {'lost':>5}"
    if len(trees) > 1:
        head += f" {'req/s ×':>8} {'p99 ×':>7}"
    print(head)
    for db in dbs:
        for scenario in scenarios:
            first: dict[str, float] | None = None
            for label, _ in trees:
                rows = runs[(db, scenario, label)]
                med = {k: statistics.median(r[k] for r in rows) for k in ("rps", "p50", "p99", "tx", "stmts")}
                failed = sum(int(r["failed"]) for r in rows)
                lost = sum(int(r["lost"]) for r in rows)
                line = f"{db:10} {scenario:8} {label:8} {med['rps']:7.0f} {med['p50']:8.2f} {med['p99']:8.2f}"
                line += f" {med['tx']:7.2f} {med['stmts']:9.2f} {failed:6d} {lost:5d}"
                if first is None:
                    first = med
                elif len(trees) > 1:
                    line += f" {med['rps'] / first['rps']:8.2f} {med['p99'] / first['p99']:7.3f}"
                print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"|".join(k): v for k, v in runs.items()}, fh, indent=1)


if __name__ == "__main__":
    main()
