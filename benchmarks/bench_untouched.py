"""The cost of a route that never touches its session, with a session cookie sent, in-process ASGI.

Issue 11's target: such a request costs at most 1.5× what it costs with no session middleware at
all, on Redis, without the app listing the route anywhere (docs/untouched-routes.md). Each request is
one call of the ASGI app with a synthetic scope (no sockets, no HTTP client). Rows, measured in one
run and interleaved (every repetition runs every row once, so a neighbour's load hits all rows
alike; the fastest repetition is kept, as timeit advises):

* no middleware: the app alone;
* sessionmw, on memory and on Redis, as it is now: the endpoint's session is deferred once the
  middleware has watched it; and "loaded first", the behaviour before issue 11 (every prediction
  off: the session is loaded, and locked, before the app runs);
* starsessions on Redis, when installed (it loads nothing until the app asks; it takes no lock).

Columns: µs per request for a Starlette async endpoint and for a FastAPI path function that takes
no ``Request``, the ratio to no middleware, backend operations per request (counted by a listener
in a separate pass: one operation is one round trip) and Redis commands per request (``INFO
commandstats``).

With ``--instructions``, the same untouched request is also counted in CPU instructions under
valgrind's callgrind (a figure that the load of a shared machine cannot disturb), and so is the
ratio to no middleware. A second table times a read on a read-write route (loaded and locked, not
changed) on Redis, with the lock released before the response, as before issue 11, and after it.

    python benchmarks/bench_untouched.py [--requests 2000] [--repeat 7] [--redis-url URL] [--json FILE]
                                         [--instructions]

A private redis-server is started on a free loopback port unless ``--redis-url`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asgi_call import scope_for
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sessionmw import SessionMiddleware
from sessionmw.core.route import WATCHED


async def untouched(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def reads(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(request.session.get("n", 0)))


async def writes(request: Request) -> PlainTextResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse("ok")


class Counter:
    """A listener object counting backend operations (each one round trip)."""

    def __init__(self) -> None:
        self.ops = 0

    def __call__(self, event: Any) -> None:
        """Events are not counted."""

    def backend_call(self, op: str, seconds: float) -> None:
        self.ops += 1


async def star_writes(request: Request) -> PlainTextResponse:
    from starsessions import load_session

    await load_session(request)  # starsessions loads only when asked (no SessionAutoloadMiddleware here)
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse("ok")


def starlette_app(middleware: list[Middleware]) -> Starlette:
    star = any(m.cls.__module__.startswith("starsessions") for m in middleware)
    routes = [Route("/untouched", untouched), Route("/write", star_writes if star else writes), Route("/read", reads)]
    return Starlette(routes=routes, middleware=middleware)


def fastapi_app(middleware: list[Middleware]) -> FastAPI:
    api = FastAPI(middleware=middleware)

    @api.get("/untouched")
    async def untouched_path(q: int = 0) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @api.get("/write")
    async def write(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse("ok")

    return api


def middleware_for(kind: str, redis_url: str, listeners: list[Any]) -> list[Middleware]:
    """The middleware of one row (``kind``), as Starlette's ``Middleware`` entries."""
    if kind == "no middleware":
        return []
    if kind.startswith("starsessions"):
        from starsessions import SessionMiddleware as StarSessionMiddleware
        from starsessions.stores.redis import RedisStore

        return [Middleware(StarSessionMiddleware, store=RedisStore(redis_url), cookie_https_only=False, lifetime=3600)]
    backend = redis_url if "redis" in kind else f"memory://bench-{uuid.uuid4().hex[:6]}"
    return [
        Middleware(
            SessionMiddleware,
            secret_key="k",
            backend=backend,
            key_prefix=f"b{uuid.uuid4().hex[:6]}:",
            listeners=listeners,
            # The background gc runs once per gc_interval, not per request: in a run this short its
            # first sweep would be counted against a few hundred requests.
            gc_interval=None,
        )
    ]


def session_middleware(app: Any) -> SessionMiddleware | None:
    """The SessionMiddleware inside a built Starlette or FastAPI app, if any."""
    layer = getattr(app, "middleware_stack", None)
    while layer is not None and not isinstance(layer, SessionMiddleware):
        layer = getattr(layer, "app", None)
    return layer


async def call(
    app: Any, path: str, cookie: bytes | None, out: dict[str, Any] | None = None
) -> tuple[int, bytes | None]:
    """Call ``app`` once; return the status and the cookie it sets, if any.

    ``out["sent"]`` is the ``perf_counter()`` when the response's last body message went out.
    """
    scope = scope_for(path, cookie)
    if out is None:
        out = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            out["sent"] = time.perf_counter()
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            for k, v in message.get("headers", []):
                if k == b"set-cookie":
                    out["cookie"] = v.split(b";", 1)[0]

    await app(scope, receive, send)
    return out["status"], out.get("cookie")


class Row:
    """One configuration: its apps (timed, and counted with a listener), its cookies, its figures."""

    def __init__(self, kind: str, redis_url: str) -> None:
        self.kind = kind
        self.counter = Counter()
        frameworks = ("starlette",) if kind.startswith("starsessions") else ("starlette", "fastapi")
        builds = {"starlette": starlette_app, "fastapi": fastapi_app}
        counting = [self.counter] if kind.startswith("sessionmw") else []
        #: Timed apps have no listener: a listener makes the core yield events and time operations.
        self.apps = {f: builds[f](middleware_for(kind, redis_url, [])) for f in frameworks}
        self.counted = {f: builds[f](middleware_for(kind, redis_url, counting)) for f in frameworks}
        self.cookies: dict[tuple[str, bool], bytes | None] = {}
        self.us: dict[str, float] = {}
        self.ops: dict[str, float] = {}
        self.commands: dict[str, float] = {}

    async def prepare(self) -> None:
        """Establish a session (its cookie) and let the middleware watch the untouched route."""
        for counted, apps in ((False, self.apps), (True, self.counted)):
            for framework, app in apps.items():
                cookie = None
                if self.kind != "no middleware":
                    status, cookie = await call(app, "/write", None)
                    assert status == 200 and cookie, (self.kind, framework)
                self.cookies[framework, counted] = cookie
                for _ in range(max(WATCHED.values()) + 50):
                    status, _ = await call(app, "/untouched", cookie)
                    assert status == 200
                mw = session_middleware(app)
                if mw is not None and "loaded first" in self.kind:
                    mw.predictions._disable()  # the behaviour before issue 11: load (and lock) before the app

    async def measure(self, framework: str, n: int) -> float:
        app, cookie = self.apps[framework], self.cookies[framework, False]
        started = time.perf_counter()
        for _ in range(n):
            await call(app, "/untouched", cookie)
        return (time.perf_counter() - started) / n * 1e6

    async def count(self, framework: str, n: int, redis_client: Any) -> None:
        """Backend operations and Redis commands per request, in a pass of their own."""
        app, cookie = self.counted[framework], self.cookies[framework, True]
        self.counter.ops = 0
        before = redis_commands(redis_client)
        for _ in range(n):
            await call(app, "/untouched", cookie)
        self.commands[framework] = (redis_commands(redis_client) - before) / n
        self.ops[framework] = self.counter.ops / n


def redis_commands(client: Any) -> int:
    """Commands the Redis server has run so far (``INFO`` itself excluded)."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))


KINDS = [
    "no middleware",
    "sessionmw memory, loaded first",
    "sessionmw memory",
    "sessionmw redis, loaded first",
    "sessionmw redis",
    "starsessions redis",
]


async def run(redis_url: str, n: int, repeat: int) -> list[Row]:
    import redis

    kinds = list(KINDS)
    try:
        import starsessions  # noqa: F401
    except ImportError:
        kinds.remove("starsessions redis")
    rows = [Row(kind, redis_url) for kind in kinds]
    for row in rows:
        await row.prepare()
    client = redis.Redis.from_url(redis_url)
    try:
        for row in rows:
            for framework in row.apps:
                await row.count(framework, min(n, 500), client)
    finally:
        client.close()
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):
        for row in rows:
            for framework in row.apps:
                samples.setdefault((row.kind, framework), []).append(await row.measure(framework, n))
    for row in rows:
        for framework in row.apps:
            row.us[framework] = min(samples[(row.kind, framework)])
    return rows


async def release_after(redis_url: str, n: int, repeat: int) -> dict[str, dict[str, float]]:
    """A read on a read-write route (loaded and locked, not changed) on Redis: µs until the response
    is out and until the request is done, with the lock released before the response (as before
    issue 11) and after it."""
    from sessionmw.drivers.aio import AsyncRequest

    app = starlette_app(middleware_for("sessionmw redis", redis_url, []))
    _, cookie = await call(app, "/write", None)
    for _ in range(50):
        await call(app, "/read", cookie)
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeat):
        for label, after in (("released before the response", False), ("released after the response", True)):
            AsyncRequest.release_after_response = after
            out_us = done_us = 0.0
            for _ in range(n):
                out: dict[str, Any] = {}
                started = time.perf_counter()
                await call(app, "/read", cookie, out)
                done = time.perf_counter()
                out_us += (out["sent"] - started) * 1e6
                done_us += (done - started) * 1e6
            row = best.setdefault(label, {"response_out_us": float("inf"), "request_done_us": float("inf")})
            row["response_out_us"] = min(row["response_out_us"], out_us / n)
            row["request_done_us"] = min(row["request_done_us"], done_us / n)
    AsyncRequest.release_after_response = True
    return best


def release_table(best: dict[str, dict[str, float]]) -> str:
    lines = [
        "| read, not changed (Redis) | µs until the response is out | µs until the request is done |",
        "|---|---:|---:|",
    ]
    for label, row in best.items():
        lines.append(f"| {label} | {row['response_out_us']:.0f} | {row['request_done_us']:.0f} |")
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    base = rows[0]
    lines = [
        "| middleware | Starlette µs | ratio | FastAPI µs | ratio | backend ops / request | Redis commands / request |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = [row.kind]
        for framework in ("starlette", "fastapi"):
            if framework in row.us:
                cells += [f"{row.us[framework]:.1f}", f"{row.us[framework] / base.us[framework]:.2f}×"]
            else:
                cells += ["n/a", "n/a"]
        ops = "/".join(f"{row.ops[f]:.2f}".rstrip("0").rstrip(".") for f in row.apps)
        commands = "/".join(f"{row.commands[f]:.2f}".rstrip("0").rstrip(".") for f in row.apps)
        cells += [ops, commands]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def child(kind: str, framework: str, redis_url: str, n: int) -> None:
    """Under callgrind: warm up one row's app (past the watch), then make ``n`` untouched requests."""

    async def go() -> None:
        build = starlette_app if framework == "starlette" else fastapi_app
        app = build(middleware_for(kind, redis_url, []))
        cookie = None
        if kind != "no middleware":
            _, cookie = await call(app, "/write", None)
        for _ in range(max(WATCHED.values()) + 50):
            await call(app, "/untouched", cookie)
        for _ in range(n):
            await call(app, "/untouched", cookie)

    asyncio.run(go())


def instructions(redis_url: str, n: int) -> dict[str, dict[str, float]]:
    """Instructions per request under valgrind's callgrind, (Ir(n) - Ir(0)) / n: machine load cannot blur them."""

    def ir(kind: str, framework: str, count: int) -> int:
        with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}", sys.executable, __file__]
            argv += ["--child", kind, framework, redis_url, str(count)]
            env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every run
            proc = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
        found = re.search(r"Collected : (\d+)", proc.stderr)
        assert found, proc.stderr[-2000:]
        return int(found.group(1))

    figures: dict[str, dict[str, float]] = {}
    for kind in ("no middleware", "sessionmw memory", "sessionmw redis"):
        for framework in ("starlette", "fastapi"):
            per = (ir(kind, framework, n) - ir(kind, framework, 0)) / n
            figures.setdefault(kind, {})[framework] = per
    return figures


def instructions_table(figures: dict[str, dict[str, float]]) -> str:
    base = figures["no middleware"]
    lines = [
        "| instructions / request (callgrind) | Starlette | ratio | FastAPI | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, row in figures.items():
        cells = [kind]
        for framework in ("starlette", "fastapi"):
            cells += [f"{row[framework] / 1000:.1f}k", f"{row[framework] / base[framework]:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    return f"Python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the figures as JSON ('-': stdout)")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions per request under valgrind's callgrind"
    )
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    counted: dict[str, dict[str, float]] | None = None
    with _redis(args.redis_url) as url:
        rows = asyncio.run(run(url, args.requests, args.repeat))
        released = asyncio.run(release_after(url, max(100, args.requests // 4), args.repeat))
        if args.instructions:
            counted = instructions(url, 500)
    print(f"{machine()}; {args.requests} requests x {args.repeat} repetitions, fastest")
    print("(backend ops and Redis commands: Starlette/FastAPI)")
    print(table(rows))
    print()
    print(release_table(released))
    if counted is not None:
        print()
        print(instructions_table(counted))
    if args.json:
        base = rows[0]
        doc = {
            "machine": machine(),
            "requests": args.requests,
            "repeat": args.repeat,
            "rows": [
                {
                    "middleware": row.kind,
                    "us": row.us,
                    "ratio": {f: row.us[f] / base.us[f] for f in row.us},
                    "backend_ops_per_request": row.ops,
                    "redis_commands_per_request": row.commands,
                }
                for row in rows
            ],
            "read_unchanged_redis": released,
            "instructions_per_request": counted,
        }
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")


@contextmanager
def _redis(url: str | None) -> Iterator[str]:
    from servers import redis_server

    with redis_server(url) as started:
        if started is None:
            sys.exit("no redis-server on PATH: pass --redis-url")
        yield started


if __name__ == "__main__":
    main()
