"""CPU per request of the Flask adapter, in-process: sessionmw beside Flask-Session on Redis and memcached.

The Flask counter app of ``bench_http.py`` (``/rw``: read and write ``session["n"]``) is called as a
WSGI app with a prepared environ (no HTTP server, no sockets but the backend's), one established
session, in alternating rounds; CPU time (``getrusage``) per request is printed beside the
same app with no session, so the difference in user time is the session layer plus its backend
client's Python code (system time is mostly the socket calls).

    python benchmarks/bench_flask_cpu.py [--requests 3000] [--rounds 3] [--only sessionmw-memcached,...]
    python benchmarks/bench_flask_cpu.py --profile sessionmw-redis     (cProfile's top functions)

Needs a redis-server and a memcached binary (private ones are started on free ports); Flask-Session
is optional (``pip install flask-session``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

KINDS = {
    "none": ("flask-none", "redis"),
    "sessionmw-redis": ("flask-sessionmw-redis", "redis"),
    "flask-session-redis": ("flask-session-redis", "redis"),
    "sessionmw-memcached": ("flask-sessionmw-memcached", "memcached"),
    "flask-session-memcached": ("flask-session-memcached", "memcached"),
}


def build(kind: str, url: str) -> Callable[[], int]:
    """The app of ``kind`` on ``url`` with one session made; a function that makes one request."""
    import bench_http

    os.environ.update(HTTPB_KIND=kind, HTTPB_URL=url, HTTPB_PREFIX=f"fcpu{uuid.uuid4().hex[:6]}:")
    app = bench_http.wsgi_app()
    base: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/rw",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
        "HTTP_USER_AGENT": "bench",
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.errors": sys.stderr,
    }
    headers: list[tuple[str, str]] = []

    def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> None:
        headers[:] = hdrs

    def call() -> int:
        environ = dict(base)
        body = app(environ, start_response)
        try:
            n = sum(len(b) for b in body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return n

    call()
    cookie = next((v.split(";", 1)[0] for k, v in headers if k.lower() == "set-cookie"), None)
    if cookie:
        base["HTTP_COOKIE"] = cookie
    for _ in range(200):
        call()
    return call


def measure(call: Callable[[], int], n: int) -> tuple[float, float]:
    """User and system CPU µs per request over ``n`` requests (the socket calls are mostly system time)."""
    start = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(n):
        call()
    end = resource.getrusage(resource.RUSAGE_SELF)
    n = max(n, 1)
    return (end.ru_utime - start.ru_utime) / n * 1e6, (end.ru_stime - start.ru_stime) / n * 1e6


def main() -> None:
    """Build each app, time it in alternating rounds, print the best round of each."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating (default 3)")
    parser.add_argument("--only", default="", help="comma-separated kinds: " + ", ".join(KINDS))
    parser.add_argument("--profile", metavar="KIND", help="cProfile one kind instead, top 25 by own time")
    args = parser.parse_args()
    from servers import memcached_server, redis_server

    names = [k for k in args.only.split(",") if k] or list(KINDS)
    if args.profile:
        names = [args.profile]
    with redis_server(None) as redis_url, memcached_server() as mc_url:
        urls = {"redis": redis_url, "memcached": mc_url}
        calls: dict[str, Callable[[], int]] = {}
        for name in names:
            kind, backend = KINDS[name]
            url = urls[backend]
            if url is None:
                print(f"{name}: skipped, no {backend} server")
                continue
            try:
                calls[name] = build(kind, url)
            except ImportError as exc:
                print(f"{name}: skipped ({exc})")
        if args.profile:
            import cProfile
            import pstats

            call = calls[args.profile]
            prof = cProfile.Profile()
            prof.runcall(measure, call, args.requests)
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, call in calls.items():
                user, system = measure(call, args.requests)
                if name not in best or user < best[name][0]:
                    best[name] = (user, system)
    base = best.get("none", (0.0, 0.0))[0]
    print(f"CPU µs per request, the round of least user time of {args.rounds} rounds of {args.requests}")
    print("| app | user µs/request | user minus no-session | system µs/request |")
    print("|---|---:|---:|---:|")
    for name, (user, system) in best.items():
        print(f"| {name} | {user:.1f} | {user - base:.1f} | {system:.1f} |")


if __name__ == "__main__":
    main()
