"""Lock hand-off: how long a queued request waits after the lock of its session is released.

Eight requests queue on one session across two worker processes (four threads each, WSGI
in-process, every request a read-modify-write that holds the lock for ``--work-ms``), on every backend,
twice in one run: ``poll``, the backend's wake-up hidden from the driver (a waiter in the other process
polls with the core's back-off, 1 ms growing to 50 ms; one in the same process is woken by the
driver), and ``notify``, the backend's wake-up in use (Redis: a blocking pop on a list the release
script pushes to; PostgreSQL: LISTEN/NOTIFY; file: a blocking flock in a watcher thread; memory: the
store's own queue of waiters). SQLite, MariaDB and memcached wake no waiter of another process: one
row each, polling. For memory, the two "processes" are two middlewares in one process (one store,
two drivers).

For each hand-off it measures release-to-next-start: from the return of the releasing request's save
(or release) call, the lock being free then, to the return of the next request's lock-and-load call
with the lock, both read from ``time.monotonic()`` (one clock for every process of the host). The
next holder may have the lock before the releaser hears back, so a hand-off can count below zero.
The table has, in milliseconds: its p50, p99 and largest; how many hand-offs went to the other
process, and their p50 and p99 (with polling, a waiter of the same process is woken at once by its
driver and wins most hand-offs: the other process mostly waits); how long a request waited for its
lock, p50 and p99; and requests per second. The JSON has, besides, the hand-offs counted from the
call of the release (its own round trip included: an upper bound).

    python benchmarks/bench_handoff.py [--requests 40] [--work-ms 1] [--json out.json]
        [--postgres-url URL] [--mysql-url URL] [--only redis,file]

Redis and memcached run as private processes on free loopback ports; PostgreSQL and MariaDB come from
the URLs (or ``SESSIONMW_TEST_POSTGRES_URL`` / ``SESSIONMW_TEST_MYSQL_URL``), and are skipped without.
Compare rows of one run: the machine is shared, and wall time moves between runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx2

from sessionmw import WSGISessionMiddleware
from sessionmw.backends import open_backend
from sessionmw.backends.base import Backend, Record, Touch, WaitsForRelease

SECRET = "bench-handoff"
PROCESSES = 2
THREADS = 4


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(name: str, argv: list[str], port: int) -> Iterator[int | None]:
    """Run a private server process on ``port`` (``None`` when it is not installed)."""
    binary = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if binary is None:
        yield None
        return
    proc = subprocess.Popen([binary, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


#: One stamp: (monotonic time, what happened, which worker): "got" a lock, "ask"ed and "freed" it, or
#: "wait" (then the time is how long a request waited for its lock).
Stamp = tuple[float, str, int]


class Timed:
    """A backend that stamps when a lock was taken and when one was let go; with ``notify``, it passes
    the backend's wake-up on to the driver, else hides it (the driver then polls)."""

    def __init__(self, inner: Backend, notify: bool, stamps: list[Stamp], worker: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.key_prefix = getattr(inner, "key_prefix", "")
        self.stamps = stamps
        self.worker = worker
        if notify and isinstance(inner, WaitsForRelease):
            self.wait_released = inner.wait_released

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        result = self.inner.lock_and_load(sid, token, expire)
        if result[0]:
            self.stamps.append((time.monotonic(), "got", self.worker))
        return result

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        self.stamps.append((time.monotonic(), "ask", self.worker))
        try:
            return self.inner.save(sid, record, token, ttl)
        finally:
            self.stamps.append((time.monotonic(), "freed", self.worker))

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        self.stamps.append((time.monotonic(), "ask", self.worker))
        try:
            return self.inner.release(sid, token, touch)
        finally:
            self.stamps.append((time.monotonic(), "freed", self.worker))

    def load(self, sid: str) -> Record | None:
        return self.inner.load(sid)

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        return self.inner.create(sid, record, ttl)

    def touch(self, sid: str, touch: Touch) -> None:
        self.inner.touch(sid, touch)

    def extend(self, sid: str, token: str, expire: float) -> bool:
        return self.inner.extend(sid, token, expire)

    def delete(self, sid: str) -> None:
        self.inner.delete(sid)

    def close(self) -> None:
        self.inner.close()


def make_app(work: float) -> Any:
    """A WSGI app whose every request increments the session, holding its lock ``work`` seconds; it
    answers the monotonic time at which it had the session (and its lock)."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["sessionmw.session"]
        session["n"] = session.get("n", 0) + 1
        had = time.monotonic()
        if work:
            time.sleep(work)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(had).encode()]

    return app


def run_middleware(
    url: str, prefix: str, cookie: str, notify: bool, requests: int, work: float, go: Any, worker: int
) -> list[Stamp]:
    """THREADS threads of one middleware send ``requests`` requests each on the session of ``cookie``."""
    stamps: list[Stamp] = []
    backend = Timed(open_backend(url, key_prefix=prefix), notify, stamps, worker)
    wsgi = WSGISessionMiddleware(make_app(work), secret_key=SECRET, backend=backend, lock_timeout=60)
    errors: list[str] = []

    def user() -> None:
        with httpx2.Client(transport=httpx2.WSGITransport(app=wsgi), base_url="http://bench") as client:
            client.cookies.set("session", cookie)
            go.wait()
            for _ in range(requests):
                sent = time.monotonic()
                response = client.get("/")
                if response.status_code != 200:
                    errors.append(response.text[:200])
                else:
                    stamps.append((float(response.text) - sent, "wait", worker))

    threads = [threading.Thread(target=user) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wsgi.close()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    return stamps


def worker_process(
    url: str, prefix: str, cookie: str, notify: bool, requests: int, work: float, go: Any, out: Any, worker: int
) -> None:
    """A worker process: one middleware, its threads; sends its stamps back."""
    try:
        out.put(run_middleware(url, prefix, cookie, notify, requests, work, go, worker))
    except BaseException as exc:
        out.put(f"{type(exc).__name__}: {exc}")


def new_session(url: str, prefix: str) -> str:
    """Create a session on ``url``; return its cookie."""
    wsgi = WSGISessionMiddleware(make_app(0), secret_key=SECRET, backend=url, key_prefix=prefix)
    with httpx2.Client(transport=httpx2.WSGITransport(app=wsgi), base_url="http://bench") as client:
        client.get("/")
        cookie = client.cookies["session"]
    wsgi.close()
    return cookie


def queue_on_one_session(kind: str, url: str, notify: bool, requests: int, work: float) -> tuple[list[Stamp], float]:
    """Run the queue: PROCESSES workers of THREADS threads; return every stamp and the seconds it took."""
    prefix = f"b{uuid.uuid4().hex[:8]}:"
    cookie = new_session(url, prefix)
    stamps: list[Stamp] = []
    if kind == "memory":  # one store per process: two middlewares in this one
        go = threading.Event()
        parts: list[list[Stamp]] = [[] for _ in range(PROCESSES)]

        def one(i: int) -> None:
            parts[i] = run_middleware(url, prefix, cookie, notify, requests, work, go, i)

        runs = [threading.Thread(target=one, args=(i,)) for i in range(PROCESSES)]
        for r in runs:
            r.start()
        started = time.monotonic()
        go.set()
        for r in runs:
            r.join()
        for part in parts:
            stamps.extend(part)
        return stamps, time.monotonic() - started
    ctx = multiprocessing.get_context("spawn")
    go_mp, out = ctx.Event(), ctx.Queue()
    args = (url, prefix, cookie, notify, requests, work, go_mp, out)
    procs = [ctx.Process(target=worker_process, args=(*args, i)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # the workers import and build their apps before the queue starts
    started = time.monotonic()
    go_mp.set()
    for _ in procs:
        part = out.get(timeout=600)
        if isinstance(part, str):
            raise RuntimeError(part)
        stamps.extend(part)
    elapsed = time.monotonic() - started
    for p in procs:
        p.join(60)
    return stamps, elapsed


def measure(kind: str, url: str, notify: bool, requests: int, work: float) -> dict[str, Any]:
    """One queue of PROCESSES x THREADS requests on one session; the hand-off figures."""
    stamps, elapsed = queue_on_one_session(kind, url, notify, requests, work)
    ordered = sorted(s for s in stamps if s[1] != "wait")
    # Holds of one lock follow each other: the k-th lock taken, the k-th release asked and returned
    # belong to one request, and the (k+1)-th lock was had after that release.
    got = [(at, w) for at, what, w in ordered if what == "got"]
    ask = [at for at, what, _ in ordered if what == "ask"]
    freed = [at for at, what, _ in ordered if what == "freed"]
    if not len(got) == len(ask) == len(freed):
        raise RuntimeError(f"{len(got)} locks taken but {len(ask)} released")
    handoffs = range(len(got) - 1)
    gaps = sorted((got[k + 1][0] - freed[k]) * 1000 for k in handoffs)
    across = sorted((got[k + 1][0] - freed[k]) * 1000 for k in handoffs if got[k + 1][1] != got[k][1])
    from_ask = sorted((got[k + 1][0] - ask[k]) * 1000 for k in handoffs)
    waits = sorted(at * 1000 for at, what, _ in stamps if what == "wait")
    return {
        "backend": kind,
        "mode": "notify" if notify else "poll",
        "handoffs": len(gaps),
        "p50_ms": statistics.median(gaps),
        "p99_ms": _p99(gaps),
        "max_ms": gaps[-1],
        "across_share": len(across) / len(gaps),
        "across_p50_ms": statistics.median(across) if across else None,
        "across_p99_ms": _p99(across) if across else None,
        "from_call_p50_ms": statistics.median(from_ask),
        "from_call_p99_ms": _p99(from_ask),
        "wait_p50_ms": statistics.median(waits),
        "wait_p99_ms": _p99(waits),
        "req_per_s": len(got) / elapsed,
    }


def wakes(url: str) -> bool:
    """Tell whether the backend of ``url`` wakes waiters itself (else its one row is polling)."""
    backend = open_backend(url, key_prefix="bench-probe:")
    try:
        return isinstance(backend, WaitsForRelease)
    finally:
        backend.close()


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    """Run every backend in both modes; print one table, and write JSON if asked."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per thread (8 threads)")
    parser.add_argument("--work-ms", type=float, default=1.0, help="how long each request holds the lock")
    parser.add_argument("--postgres-url", default=os.environ.get("SESSIONMW_TEST_POSTGRES_URL"))
    parser.add_argument("--mysql-url", default=os.environ.get("SESSIONMW_TEST_MYSQL_URL"))
    parser.add_argument("--only", default="", help="comma-separated backends to run (default: all)")
    parser.add_argument("--json", dest="json_path", help="also write the figures to this file")
    args = parser.parse_args()
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    work = args.work_ms / 1000
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        rport, mport = free_port(), free_port()
        redis_argv = ["--bind", "127.0.0.1", "--port", str(rport), "--save", "", "--appendonly", "no"]
        user = ["-u", "root"] if os.geteuid() == 0 else []
        memcached_argv = ["-l", "127.0.0.1", "-p", str(mport), "-U", "0", "-m", "64", *user]
        redis_port = stack.enter_context(server("redis-server", redis_argv, rport))
        memcached_port = stack.enter_context(server("memcached", memcached_argv, mport))
        cases: list[tuple[str, str | None]] = [
            ("memory", f"memory://bench-{uuid.uuid4().hex[:6]}"),
            ("file", f"file://{tmp}/files"),
            ("redis", None if redis_port is None else f"redis://127.0.0.1:{redis_port}/0"),
            ("postgresql", args.postgres_url),
            ("sqlite", f"sqlite:///{tmp}/sessions.db"),
            ("mysql", args.mysql_url),
            ("memcached", None if memcached_port is None else f"memcached://127.0.0.1:{memcached_port}"),
        ]
        print(
            f"{PROCESSES} processes x {THREADS} threads queued on one session, {args.requests} requests each, "
            f"lock held {args.work_ms:g} ms per request; milliseconds"
        )
        print(
            f"{'':20} {'release-to-next-start':>23} {'to the other process':>29} {'request wait':>17}\n"
            f"{'backend':12} {'mode':7} {'p50':>7} {'p99':>7} {'max':>7} {'share':>6} {'p50':>7} {'p99':>7} "
            f"{'p50':>8} {'p99':>8} {'req/s':>6}"
        )
        for kind, url in cases:
            if only and kind not in only:
                continue
            if url is None:
                print(f"{kind:12} {'-':7} (no server)")
                continue
            for notify in (False, True) if wakes(url) else (False,):
                try:
                    row = measure(kind, url, notify, args.requests, work)
                except Exception as exc:  # a store this machine cannot run: say so, go on
                    print(f"{kind:12} {'notify' if notify else 'poll':7} ({type(exc).__name__}: {exc})"[:200])
                    continue
                rows.append(row)
                print(
                    f"{kind:12} {row['mode']:7} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} {row['max_ms']:7.2f} "
                    f"{row['across_share']:6.0%} {_ms(row['across_p50_ms']):>7} {_ms(row['across_p99_ms']):>7} "
                    f"{row['wait_p50_ms']:8.1f} {row['wait_p99_ms']:8.1f} {row['req_per_s']:6.0f}"
                )
                sys.stdout.flush()
    if args.json_path:
        machine = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
        settings = {"processes": PROCESSES, "threads": THREADS, "requests": args.requests, "work_ms": args.work_ms}
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump({"machine": machine, "settings": settings, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
