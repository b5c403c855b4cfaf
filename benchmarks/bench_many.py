"""Read-write requests through many memcached servers, replicas, the tiered backend and one Redis, in one run.

Starts three private memcached processes and a private redis-server on free loopback ports, and drives
the WSGI middleware in-process from ``--threads`` threads, each a user with its own session cookie, every
request a read-modify-write of the session. For each store it prints requests per second, the median
and p99 latency, and network round trips per request: ``sendall`` calls on the client's sockets
(pymemcache, redis-py) plus SQL statements and commits (SQLAlchemy's events), counted over the run.

    python benchmarks/bench_many.py [--requests 3000] [--threads 8] [--postgres-url URL]

Without ``--postgres-url`` (or ``SESSIONMW_TEST_POSTGRES_URL``), the tiered rows use SQLite.
Compare rows of one run: the machine is shared, and wall time moves between runs.
"""

from __future__ import annotations

import argparse
import json
import os
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
from sqlalchemy import event
from sqlalchemy.engine import Engine

from sessionmw import WSGISessionMiddleware


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    """Wait until something listens on ``port``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def server(name: str, argv_for: Any) -> Iterator[int]:
    """Run a private server process on a free port."""
    binary = shutil.which(name) or f"/usr/bin/{name}"
    port = free_port()
    proc = subprocess.Popen(argv_for(binary, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def memcached_argv(binary: str, port: int) -> list[str]:
    user = ["-u", "root"] if os.geteuid() == 0 else []
    return [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", *user]


def redis_argv(binary: str, port: int) -> list[str]:
    return [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]


class RoundTrips:
    """Counts client round trips: ``sendall`` on Python sockets, and SQL statements and commits."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._sendall = socket.socket.sendall

    def _add(self, *_: Any) -> None:
        with self._lock:
            self.count += 1

    def __enter__(self) -> RoundTrips:
        real = self._sendall
        counter = self

        def sendall(sock: socket.socket, data: Any, *args: Any) -> None:
            counter._add()
            real(sock, data, *args)

        socket.socket.sendall = sendall  # type: ignore[method-assign]
        event.listen(Engine, "before_cursor_execute", self._add)
        event.listen(Engine, "commit", self._add)
        return self

    def __exit__(self, *exc: object) -> None:
        socket.socket.sendall = self._sendall  # type: ignore[method-assign]
        event.remove(Engine, "before_cursor_execute", self._add)
        event.remove(Engine, "commit", self._add)


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Increments the session's counter: a read-modify-write on every request."""
    session = environ["sessionmw.session"]
    session["n"] = session.get("n", 0) + 1
    body = json.dumps({"n": session["n"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def run(backend: str, durable: str | None, every: int, requests: int, threads: int) -> dict[str, float]:
    """Drive ``requests`` read-write requests from ``threads`` users; return the figures."""
    options: dict[str, Any] = {"secret_key": "bench", "backend": backend, "key_prefix": f"b{uuid.uuid4().hex[:8]}:"}
    if durable is not None:
        options.update(durable_backend=durable, durable_write_every=every)
    wsgi = WSGISessionMiddleware(app, **options)
    per_thread = requests // threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    clients = [httpx2.Client(transport=httpx2.WSGITransport(app=wsgi), base_url="http://bench") for _ in range(threads)]
    for client in clients:
        client.get("/")  # creates the session: not counted
    barrier = threading.Barrier(threads + 1)

    def user(i: int) -> None:
        client, mine = clients[i], latencies[i]
        barrier.wait()
        for _ in range(per_thread):
            started = time.perf_counter()
            response = client.get("/")
            mine.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(response.text[:200])

    workers = [threading.Thread(target=user, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    with RoundTrips() as trips:
        barrier.wait()
        started = time.perf_counter()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    wsgi.close()
    if errors:
        raise RuntimeError(f"{backend}: {len(errors)} requests failed: {errors[0]}")
    flat = sorted(x for lat in latencies for x in lat)
    done = len(flat)
    return {
        "rps": done / elapsed,
        "p50": statistics.median(flat) * 1000,
        "p99": flat[min(done - 1, int(done * 0.99))] * 1000,
        "trips": trips.count / done,
    }


def main() -> None:
    """Run every store and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--postgres-url", default=os.environ.get("SESSIONMW_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        mc = [stack.enter_context(server("memcached", memcached_argv)) for _ in range(3)]
        redis_port = stack.enter_context(server("redis-server", redis_argv))

        def mc_url(n: int, replicas: int = 1) -> str:
            return "memcached://" + ",".join(f"127.0.0.1:{p}" for p in mc[:n]) + f"?replicas={replicas}"

        durable = args.postgres_url or f"sqlite:///{tmp}/durable.db"
        durable_name = "PostgreSQL" if args.postgres_url else "SQLite"
        cases: list[tuple[str, str, str | None, int]] = [
            ("memcached, 1 server", mc_url(1), None, 1),
            ("memcached, 2 servers, replicas=1", mc_url(2), None, 1),
            ("memcached, 2 servers, replicas=2", mc_url(2, 2), None, 1),
            ("memcached, 3 servers, replicas=1", mc_url(3), None, 1),
            ("memcached, 3 servers, replicas=2", mc_url(3, 2), None, 1),
            (f"tiered memcached + {durable_name}, N=1", mc_url(1), durable, 1),
            (f"tiered memcached + {durable_name}, N=10", mc_url(1), durable, 10),
            ("redis, 1 server", f"redis://127.0.0.1:{redis_port}/0", None, 1),
        ]
        print(f"{args.requests} read-write requests from {args.threads} threads (WSGI, in-process), one run")
        print(f"{'store':44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'round trips':>12}")
        for label, url, durable_url, every in cases:
            try:
                figures = run(url, durable_url, every, args.requests, args.threads)
            except Exception as exc:  # a store this tree cannot build yet: say so, go on
                print(f"{label:44} {'-':>8} {'-':>8} {'-':>8} {'-':>12}  ({type(exc).__name__}: {exc})"[:200])
                continue
            print(
                f"{label:44} {figures['rps']:8.0f} {figures['p50']:8.2f} {figures['p99']:8.2f} {figures['trips']:12.2f}"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
