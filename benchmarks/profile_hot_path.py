"""Where a read+write request's time goes, sessionmw beside starsessions on Redis, sampled by py-spy.

Two modes:

* in-process (default): a Starlette app behind the session middleware, called directly with a
  synthetic ASGI scope (no sockets, no HTTP server), ``--requests`` read-modify-write requests on one
  established session, in a child process that py-spy samples (``--nonblocking``: the process is not
  paused, so the figures are not slowed by the sampling);
* ``--http``: the benchmark app of ``bench_http.py`` under ``uvicorn --workers 2`` with wrk as the
  load (16 connections, one session each), py-spy sampling both workers for ``--seconds``: the same
  request with the HTTP server and the event loop in the picture; ``--flask``: the same with the
  Flask app under ``gunicorn --workers 2 --threads 4``, beside Flask-Session on Redis.

For each middleware it prints the top functions by own time (the sampled leaf frame) and the time
per request split into parts, each sample going to the innermost frame whose module names a part:
HTTP server (uvicorn, httptools), Starlette, the session middleware (sessionmw's core, adapters and
drivers, or starsessions), sessionmw's backend code, the backend client (redis-py or pymemcache, the
socket calls), serialization (json, msgspec) and the event loop (asyncio, uvloop, when no caller
above names a part). Microseconds per request are the request's wall time (in-process) or the
workers' sampled busy time (HTTP) divided among the parts by their share of samples.

    python benchmarks/profile_hot_path.py [--requests 5000] [--rate 1000] [--top 10] [--save DIR]
    python benchmarks/profile_hot_path.py --http [--flask] [--gil] [--seconds 10]

Sampling has its error: a function's µs are a share of a few thousand samples, and a C call (a
syscall, hashlib) counts in the Python function that made it. Compare parts and rows of one run.

``--save DIR`` also writes py-spy's raw collapsed stacks there (one file per middleware, for a flame
graph); benchmarks/profiles/ is the place, and its files are not committed. Needs py-spy
(``pip install py-spy``) and a redis-server (a private one is started on a free port); starsessions is
optional (``pip install starsessions``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (part, pattern on a frame's file) in the order a frame is tried; the innermost matching frame wins.
PARTS = [
    ("idle: waiting for I/O", re.compile(r"/selectors\.py")),
    ("serialization", re.compile(r"/json/|msgspec|/msgpack|/pickle|sessionmw/core/serializ|records\.py|/codecs?\.py")),
    (
        "backend client",
        re.compile(r"/redis/|hiredis|pymemcache/|/socket\.py|/ssl\.py|asyncio/(streams|selector_events)\.py"),
    ),
    ("sessionmw backend", re.compile(r"sessionmw/backends/")),
    ("session middleware", re.compile(r"sessionmw/|starsessions/|flask_session/|itsdangerous/|/hmac\.py|/hashlib\.py")),
    ("Starlette", re.compile(r"starlette/")),
    ("HTTP server", re.compile(r"uvicorn/|httptools|/h11/|gunicorn/")),
    ("Flask", re.compile(r"flask/|werkzeug/|jinja2/")),
    ("event loop", re.compile(r"asyncio/|uvloop|<built-in>|_run_once")),
]
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def worker(kind: str, url: str, n: int) -> None:
    """In the sampled child: ``n`` read+write requests through ``kind``'s app; prints µs per request."""
    from asgi_call import call
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def rw(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse("ok")

    prefix = f"prof{uuid.uuid4().hex[:6]}:"
    if kind == "sessionmw":
        from sessionmw import SessionMiddleware

        middleware = [Middleware(SessionMiddleware, secret_key="k", backend=url, key_prefix=prefix)]
    else:
        from starsessions import SessionAutoloadMiddleware
        from starsessions import SessionMiddleware as StarSessionMiddleware
        from starsessions.stores.redis import RedisStore

        middleware = [
            Middleware(StarSessionMiddleware, store=RedisStore(url, prefix=prefix), cookie_https_only=False),
            Middleware(SessionAutoloadMiddleware),
        ]
    app = Starlette(routes=[Route("/rw", rw)], middleware=middleware)

    async def request_loop(cookie: bytes | None, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            await call(app, "/rw", cookie)
        return time.perf_counter() - started

    async def main() -> None:
        status, cookie = await call(app, "/rw", None)
        assert status == 200 and cookie, "no session was created"
        await request_loop(cookie, 300)  # warm up: connections, scripts loaded, caches filled
        print("READY", flush=True)
        wait_for_go()
        seconds = await request_loop(cookie, n)
        print(f"US_PER_REQUEST {seconds / n * 1e6:.1f}", flush=True)

    asyncio.run(main())


def wait_for_go() -> None:
    """Block until the parent has attached py-spy (its samples of this wait are left out)."""
    sys.stdin.readline()


def parse(raw: str) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy's raw collapsed stacks: (frames root first as (function, file), samples) per line."""
    stacks = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = FRAME.match(part.strip())
            frames.append((m["func"], m["file"]) if m else (part.strip(), ""))
        stacks.append((frames, int(count)))
    return stacks


def part_of(frames: list[tuple[str, str]]) -> str:
    """The part a sample belongs to: the innermost frame whose file names one."""
    for func, file in reversed(frames):
        where = f"{file} {func}"
        for part, pattern in PARTS:
            if pattern.search(where):
                return part
    return "other"


def short(file: str) -> str:
    """A file path from its package on (``sessionmw/core/flows.py``), not the site-packages prefix."""
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
            return file.split("/", 1)[1] if marker == "lib/python3." else file
    return file


def summarize(raw: str, skip: str = "") -> tuple[Counter[str], Counter[str], int]:
    """Samples by function (own time), by part, and in all; stacks through function ``skip`` left out."""
    own: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = 0
    for frames, count in parse(raw):
        if skip and any(func == skip for func, _ in frames):
            continue
        func, file = frames[-1]
        own[f"{func} ({short(file)})"] += count
        parts[part_of(frames)] += count
        total += count
    return own, parts, total


def py_spy(argv_tail: list[str], rate: int, out: str, gil: bool = False) -> list[str]:
    """The py-spy command that records ``argv_tail`` (``--pid N`` or ``-- cmd``) into ``out``, raw.

    ``gil``: only samples of a thread holding the GIL, i.e. Python running; without it a thread blocked
    in a socket read may count as busy (threaded servers, some sandboxes).
    """
    only_gil = ["--gil"] if gil else []
    return ["py-spy", "record", *only_gil, "--nonblocking", "--full-filenames", "-r", str(rate), "-f", "raw",
            "-o", out, *argv_tail]  # fmt: skip


def in_process(kind: str, url: str, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Sample ``args.requests`` in-process requests of ``kind``, idle time included; the parsed profile."""
    out = os.path.join(tmp, f"{kind}.txt")
    path = os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--url",
        url,
        "--requests",
        str(args.requests),
    ]
    child = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": path}
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "READY":
            raise RuntimeError(f"{kind}: the worker did not start")
        spy = subprocess.Popen(
            [*py_spy(["--pid", str(child.pid)], args.rate, out), "--idle"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
        child.stdin.write("go\n")
        child.stdin.flush()
        found = re.search(r"US_PER_REQUEST ([\d.]+)", child.stdout.read())
        child.wait(600)
        spy.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if not found or not os.path.exists(out):
        raise RuntimeError(f"{kind}: the sampled run failed")
    with open(out) as f:
        raw = f.read()
    own, parts, total = summarize(raw, skip="wait_for_go")
    return {"kind": kind, "us_per_request": float(found[1]), "own": own, "parts": parts, "samples": total, "raw": raw}


def over_http(kind: str, url: str, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Sample both uvicorn workers serving ``kind`` under wrk for ``args.seconds``; the parsed profile."""
    import bench_http

    names = {
        "sessionmw": "flask-sessionmw-redis" if args.flask else "asgi-sessionmw-redis",
        "starsessions": "asgi-starsessions",
        "Flask-Session": "flask-session-redis",
    }
    server_kind = "gunicorn" if args.flask else "uvicorn"
    server = bench_http.AppServer(bench_http.Kind(names[kind], kind, server_kind, "redis"), url, args.threads)
    try:
        if not server.ready():
            raise RuntimeError(f"{kind}: the server did not start")
        cookies = bench_http.make_sessions(server.port, 16)
        bench_http.run_wrk(server.port, cookies, 2, tmp)  # warm up
        out = os.path.join(tmp, f"{kind}.txt")
        spy = subprocess.Popen(
            py_spy(
                ["--pid", str(server.proc.pid), "--subprocesses", "-d", str(int(args.seconds) + 2)],
                args.rate,
                out,
                args.gil,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)  # py-spy attaches to the workers
        figures = bench_http.run_wrk(server.port, cookies, args.seconds, tmp)
        spy.wait(60)
    finally:
        server.close()
    with open(out) as f:
        raw = f.read()
    own, parts, total = summarize(raw)
    # Busy samples of both workers over the requests served while py-spy ran (wrk's count, a bit less).
    us = total / args.rate / figures["requests"] * 1e6
    return {"kind": kind, "us_per_request": us, "own": own, "parts": parts, "samples": total, "raw": raw,
            "rps": figures["rps"]}  # fmt: skip


def show(result: dict[str, Any], top: int) -> str:
    """One middleware's profile as two Markdown tables."""
    us, total = result["us_per_request"], result["samples"] or 1
    lines = [f"### {result['kind']}: {us:.0f} µs per request, {result['samples']} samples", "",
             "| part | share | µs/request |", "|---|---:|---:|"]  # fmt: skip
    for part, count in result["parts"].most_common():
        lines.append(f"| {part} | {count / total:.0%} | {us * count / total:.0f} |")
    lines += ["", f"| top {top} functions by own time | share | µs/request |", "|---|---:|---:|"]
    for func, count in result["own"].most_common(top):
        lines.append(f"| `{func}` | {count / total:.1%} | {us * count / total:.1f} |")
    return "\n".join(lines)


def main() -> None:
    """Profile each middleware and print where its time goes."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="in-process requests sampled (default 5000)")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples a second (default 1000)")
    parser.add_argument("--top", type=int, default=10, help="functions listed (default 10)")
    parser.add_argument("--http", action="store_true", help="sample uvicorn workers under wrk instead")
    parser.add_argument(
        "--flask", action="store_true", help="--http: the Flask app under gunicorn, beside Flask-Session"
    )
    parser.add_argument("--threads", type=int, default=4, help="--flask: gunicorn threads per worker (default 4)")
    parser.add_argument("--gil", action="store_true", help="--http: only samples holding the GIL (Python CPU)")
    parser.add_argument("--seconds", type=float, default=10.0, help="--http: seconds sampled (default 10)")
    parser.add_argument("--redis-url", default=None, help="a Redis server instead of a private redis-server")
    parser.add_argument("--save", metavar="DIR", help="also write the raw collapsed stacks to DIR")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.worker:
        worker(args.worker, args.url, args.requests)
        return
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    if args.flask:
        args.http = True
    if args.http and shutil.which("wrk") is None:
        raise SystemExit("--http needs wrk")
    from servers import redis_server

    peer, module = ("Flask-Session", "flask_session") if args.flask else ("starsessions", "starsessions")
    kinds = ["sessionmw"] + ([peer] if importlib.util.find_spec(module) else [])
    with redis_server(args.redis_url) as url, tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        if url is None:
            raise SystemExit("no redis-server: install it or give --redis-url")
        for kind in kinds:
            result = (over_http if args.http else in_process)(kind, url, args, tmp)
            print(show(result, args.top) + "\n", flush=True)
            if args.save:
                os.makedirs(args.save, exist_ok=True)
                mode = "http" if args.http else "inprocess"
                with open(os.path.join(args.save, f"{kind}-{mode}.txt"), "w") as f:
                    f.write(result["raw"])
    if len(kinds) == 1:
        print(f"{peer} is not installed (pip install {peer.lower()}): only sessionmw was profiled")


if __name__ == "__main__":
    main()
