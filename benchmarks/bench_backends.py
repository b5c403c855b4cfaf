"""Round trips and per-request cost on real servers, beside starsessions' Redis store.

Starts a private redis-server and memcached on free loopback ports (or uses --redis-url /
--memcached-url), drives ASGI apps in-process and prints:

1. round trips per request, from the servers' own counters (Redis ``INFO commandstats``, memcached
   ``stats``) before and after N requests, for a read-write request, a read-only request and a
   request that never touches its session;
2. the cost per request of ours and of starsessions (``RedisStore``, which takes no lock: one GET to
   load, one SET to save), for a read and for a read+write: wall-clock µs through the ASGI app (the
   fastest repetition), and the Redis server's own CPU µs per request (``INFO cpu`` deltas);
3. with ``--instructions``, the client side's CPU instructions per request under valgrind's callgrind,
   a figure that the load of a shared machine cannot disturb.

    python benchmarks/bench_backends.py [--requests 2000] [--repeat 5] [--instructions]

starsessions is installed for this benchmark only (``pip install starsessions``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from pymemcache.client.base import Client as MemcacheClient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sessionmw import SessionMiddleware, read_only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_server(argv_for: Any, name: str) -> Iterator[int | None]:
    binary = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if binary is None:
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(argv_for(binary, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


async def rw(request: Request) -> PlainTextResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse("ok")


@read_only
async def ro(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(request.session.get("n", 0)))


async def untouched(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def ours(url: str) -> Starlette:
    return Starlette(
        routes=[
            Route("/rw", rw),
            Route("/ro", ro),
            Route("/untouched", untouched),
            Route("/lazy/untouched", untouched),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key="k",
                backend=url,
                key_prefix=f"b{uuid.uuid4().hex[:6]}:",
                lazy_paths=["/lazy/*"],
            )
        ],
    )


def theirs(url: str) -> Starlette:
    from starsessions import SessionAutoloadMiddleware
    from starsessions import SessionMiddleware as StarSessionMiddleware
    from starsessions.stores.redis import RedisStore

    async def star_ro(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.session.get("n", 0)))

    return Starlette(
        routes=[Route("/rw", rw), Route("/ro", star_ro)],
        middleware=[
            Middleware(StarSessionMiddleware, store=RedisStore(url), cookie_https_only=False, lifetime=3600),
            Middleware(SessionAutoloadMiddleware),
        ],
    )


async def call(app: Any, path: str, cookie: bytes | None) -> bytes | None:
    headers = [(b"host", b"bench")]
    if cookie:
        headers.append((b"cookie", cookie))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 5000), "server": ("bench", 80), "app": app,
    }  # fmt: skip
    got: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
            for k, v in message.get("headers", []):
                if k == b"set-cookie":
                    got["cookie"] = v.split(b";", 1)[0]

    await app(scope, receive, send)
    return got.get("cookie")


async def timed(app: Any, path: str, cookie: bytes, n: int) -> tuple[float, float]:
    """Wall-clock µs per request over ``n`` requests, and this process's CPU µs (user + system) per request."""
    cpu = time.process_time()
    started = time.perf_counter()
    for _ in range(n):
        await call(app, path, cookie)
    wall = time.perf_counter() - started
    return wall / n * 1e6, (time.process_time() - cpu) / n * 1e6


class RoundTrips:
    """Counts what the clients send: one write to the socket per round trip (no pipelining here)."""

    count = 0

    @classmethod
    def install(cls) -> None:
        import pymemcache.client.base as mc
        import redis.asyncio.connection as rc

        original = rc.AbstractConnection.send_packed_command

        async def counted(self: Any, command: Any, check_health: bool = True) -> None:
            cls.count += 1
            await original(self, command, check_health)

        rc.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        for name in ("_fetch_cmd", "_store_cmd", "_misc_cmd"):  # raw_command goes through _misc_cmd
            if hasattr(mc.Client, name):
                setattr(mc.Client, name, cls._wrap(getattr(mc.Client, name)))
        try:  # the meta commands, sent several at once in one write (sessionmw's memcached backend)
            import sessionmw.backends.memcached.placement as placement
        except ImportError:
            return
        if hasattr(placement, "exchange"):
            placement.exchange = cls._wrap(placement.exchange)  # type: ignore[attr-defined]

    @classmethod
    def _wrap(cls, fn: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            cls.count += 1
            return fn(*args, **kwargs)

        return counted


def redis_cpu(url: str) -> float:
    """Seconds of CPU the Redis server has used, user and system."""
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_commands(url: str) -> dict[str, int]:
    info = redis.Redis.from_url(url).info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def memcached_commands(port: int) -> dict[str, int]:
    stats = MemcacheClient(("127.0.0.1", port)).stats()
    keys = ("cmd_get", "cmd_set", "cmd_touch", "cmd_meta", "delete_hits", "delete_misses", "cas_hits", "cas_misses",
            "cas_badval", "get_hits", "get_misses")  # fmt: skip
    out = {}
    for k in keys:
        v = stats.get(k.encode(), stats.get(k))
        if v is not None:
            out[k] = int(v)
    return out


def delta(before: dict[str, int], after: dict[str, int], n: int, ignore: tuple[str, ...] = ()) -> str:
    parts = []
    for k in sorted(after):
        d = after[k] - before.get(k, 0)
        if d and k not in ignore:
            parts.append(f"{k} {d / n:g}")
    return ", ".join(parts) or "none"


async def round_trips(app: Any, counter: Any, n: int, ignore: tuple[str, ...]) -> list[tuple[str, str, float]]:
    cookie = await call(app, "/rw", None)
    assert cookie
    rows = []
    for label, path, c in (
        ("read-write (locked)", "/rw", cookie),
        ("read-only", "/ro", cookie),
        ("never touches, no cookie", "/untouched", None),
        ("never touches, with cookie", "/untouched", cookie),
        ("never touches, with cookie, in lazy_paths", "/lazy/untouched", cookie),
    ):
        before = counter()
        sent = RoundTrips.count
        for _ in range(n):
            await call(app, path, c)
        trips = (RoundTrips.count - sent) / n
        after = counter()
        rows.append((label, delta(before, after, n, ignore), trips))
    return rows


async def main_async(n: int, repeat: int, redis_url: str, memcached_port: int | None) -> None:
    print(f"Python {sys.version.split()[0]}; {n} requests per figure; cost = fastest of {repeat} repetitions\n")
    app = ours(redis_url)
    print("Round trips per request (counted at the client), and what the server counted (incl. inside scripts)\n")
    print("| backend | request | round trips | server-side commands per request |\n|---|---|---:|---|")
    # INFO itself is counted once per read: ignore it.
    for label, text, trips in await round_trips(app, lambda: redis_commands(redis_url), n, ("info",)):
        print(f"| redis | {label} | {trips:g} | {text} |")
    if memcached_port is not None:
        mapp = ours(f"memcached://127.0.0.1:{memcached_port}")
        for label, text, trips in await round_trips(mapp, lambda: memcached_commands(memcached_port), n, ()):
            print(f"| memcached | {label} | {trips:g} | {text} |")

    print(
        "\nCost per request on Redis (µs, in-process ASGI call, loopback server; wall-clock: fastest repetition;"
        " client CPU: this process, user + system; server CPU: from INFO cpu; CPU figures are means)\n"
    )
    print("| middleware | wall, read | wall, read + write | client CPU, read + write | server CPU, read + write |")
    print("|---|---:|---:|---:|---:|")
    # The repetitions alternate between the middlewares, so that both meet the same neighbours on a
    # shared machine; each figure is the fastest repetition (the others measure the neighbours too).
    apps = {label: make(redis_url) for label, make in MIDDLEWARES.items()}
    cookies = {label: await warm_up(app) for label, app in apps.items()}
    fastest: dict[tuple[str, str], float] = {}
    cpu: dict[tuple[str, str], float] = {}
    client: dict[str, float] = {}
    for _ in range(repeat):
        for path in ("/ro", "/rw"):
            for label, app in apps.items():
                before = redis_cpu(redis_url)
                took, used = await timed(app, path, cookies[label], n)
                cpu[label, path] = cpu.get((label, path), 0.0) + redis_cpu(redis_url) - before
                fastest[label, path] = min(fastest.get((label, path), took), took)
                if path == "/rw":
                    client[label] = client.get(label, 0.0) + used / repeat
    for label in apps:
        wall = [fastest[label, path] for path in ("/ro", "/rw")]
        server = cpu[label, "/rw"] / (n * repeat) * 1e6
        print(f"| {label} | {wall[0]:.1f} | {wall[1]:.1f} | {client[label]:.1f} | {server:.1f} |")


MIDDLEWARES = {"sessionmw (locked read+write, unlocked read-only)": ours, "starsessions RedisStore": theirs}


async def warm_up(app: Any) -> bytes:
    cookie = await call(app, "/rw", None)
    assert cookie
    for _ in range(100):
        await call(app, "/rw", cookie)
    return cookie


def child(label: str, path: str, n: int, redis_url: str) -> None:
    """Under valgrind: warm up, then make ``n`` requests (the parent subtracts a run with n = 0)."""

    async def go() -> None:
        app = MIDDLEWARES[label](redis_url)
        cookie = await warm_up(app)
        for _ in range(50):
            await call(app, path, cookie)
        for _ in range(n):
            await call(app, path, cookie)

    asyncio.run(go())


def instructions(label: str, path: str, n: int, redis_url: str) -> int:
    with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}", sys.executable, __file__,
             "--child", label, path, str(n), redis_url],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    m = re.search(r"Collected : (\d+)", proc.stderr)
    assert m, proc.stderr[-2000:]
    return int(m.group(1))


def print_instructions(n: int, redis_url: str) -> None:
    print(f"\nClient-side instructions per request on Redis (valgrind callgrind, {n} requests after warm-up)\n")
    print("| middleware | read | read + write |\n|---|---:|---:|")
    for label in MIDDLEWARES:
        cells = [
            (instructions(label, p, n, redis_url) - instructions(label, p, 0, redis_url)) / n for p in ("/ro", "/rw")
        ]
        print(f"| {label} | {cells[0] / 1000:,.0f}k | {cells[1] / 1000:,.0f}k |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--memcached-port", type=int, default=None)
    parser.add_argument("--instructions", action="store_true", help="also count instructions under callgrind")
    parser.add_argument("--instructions-only", action="store_true", help="only count instructions")
    args = parser.parse_args()

    def redis_argv(binary: str, port: int) -> list[str]:
        return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def mc_argv(binary: str, port: int) -> list[str]:
        user = ["-u", "root"] if os.geteuid() == 0 else []
        return [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", *user]

    with private_server(redis_argv, "redis-server") as rport, private_server(mc_argv, "memcached") as mport:
        url = args.redis_url or (f"redis://127.0.0.1:{rport}/0" if rport else None)
        if url is None:
            sys.exit("no redis-server on PATH: pass --redis-url")
        if not args.instructions_only:
            RoundTrips.install()
            asyncio.run(main_async(args.requests, args.repeat, url, args.memcached_port or mport))
        if args.instructions or args.instructions_only:
            if shutil.which("valgrind") is None:
                sys.exit("valgrind is not installed (apt-get install valgrind)")
            print_instructions(min(args.requests, 300), url)


if __name__ == "__main__":
    main()
