"""Cost per request of hashed ids at rest and of encryption at rest, side by side, on memory and Redis.

Each request is one direct call of a Starlette app behind ``SessionMiddleware`` (a synthetic ASGI
scope: no sockets, no HTTP client) carrying an established session cookie, on the memory backend and
on Redis (a private ``redis-server`` on a free loopback port, or ``--redis-url``). Two routes: a
read-write request (lock, load, save, unlock) and a ``@read_only`` one (load only). Set-ups:

* ``ids in clear``: the core's ``handle_of`` swapped for the identity while this set-up runs, so the
  store is keyed by the raw id, as before hashed ids (the baseline);
* ``hashed ids``: the default (SHA-256 handles);
* ``hashed + encrypted``: ``encryption_key`` set (AES-256-GCM of the data, read and write).

Timings: microseconds per request, the fastest of ``--repeat`` repetitions, the set-ups taking turns
within each repetition so a busy neighbour slows them alike. The differences are small beside a
request, so the script also measures the pieces themselves: ``handle_of`` per call and how many calls
a request makes (counted), and the cipher's seal and open of the benchmark's session.

With ``--instructions``, the CPU instructions of those pieces too, under valgrind's callgrind
((Ir(N) - Ir(0)) / N), which the load of a shared machine cannot disturb.

    python benchmarks/bench_security.py [--requests 2000] [--repeat 7] [--redis-url URL] [--instructions] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from asgi_call import call
from servers import redis_server

SETUPS = ["ids in clear", "hashed ids", "hashed + encrypted"]
ROUTES = ["/write", "/read"]
KEY = "bench-encryption-key-" + "k" * 32
#: The modules that call handle_of on a request's path (each imported it by name).
HANDLE_USERS = ("sessionmw.core.opening", "sessionmw.core.closing", "sessionmw.core.session")


# -- swapping handle_of -----------------------------------------------------------------------------


@contextmanager
def handle_function(fn: Callable[[str], str] | None) -> Iterator[None]:
    """Use ``fn`` as the core's ``handle_of`` inside the block (``None``: the real one)."""
    import importlib

    modules = [importlib.import_module(name) for name in HANDLE_USERS]
    saved = [m.handle_of for m in modules]  # type: ignore[attr-defined]
    if fn is not None:
        for m in modules:
            m.handle_of = fn  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m, f in zip(modules, saved, strict=True):
            m.handle_of = f  # type: ignore[attr-defined]


def identity(sid: str) -> str:
    """The store keyed by the raw id."""
    return sid


def swap_for(setup: str) -> Callable[[str], str] | None:
    """The ``handle_of`` of one set-up."""
    return identity if setup == "ids in clear" else None


# -- the app and one request ----------------------------------------------------------------------


def build(setup: str, backend: str) -> Any:
    """The benchmark app for one set-up on ``backend``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from sessionmw import SessionMiddleware, read_only

    async def write(request: Request) -> PlainTextResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse("ok")

    @read_only
    async def read(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.session.get("n", 0)))

    options: dict[str, Any] = {
        "secret_key": "bench",
        "backend": backend,
        "key_prefix": f"bench{uuid.uuid4().hex[:8]}:",
    }
    if setup == "hashed + encrypted":
        options["encryption_key"] = KEY
    return Starlette(
        routes=[Route("/write", write), Route("/read", read)], middleware=[Middleware(SessionMiddleware, **options)]
    )


async def ready(setup: str, backend: str) -> tuple[Any, bytes]:
    """An app with an established session and its cookie, warmed up."""
    with handle_function(swap_for(setup)):
        app = build(setup, backend)
        status, cookie = await call(app, "/write", None)
        assert status == 200 and cookie, status
        for path in ROUTES:
            for _ in range(50):
                status, _ = await call(app, path, cookie)
                assert status == 200, status
    return app, cookie


async def timings(backend: str, n: int, repeat: int) -> dict[str, dict[str, float]]:
    """Microseconds per request of each set-up and route: the fastest of ``repeat``, set-ups in turns."""
    apps = {setup: await ready(setup, backend) for setup in SETUPS}
    best: dict[str, dict[str, float]] = {s: {p: float("inf") for p in ROUTES} for s in SETUPS}
    for r in range(repeat):
        order = SETUPS[r % len(SETUPS) :] + SETUPS[: r % len(SETUPS)]
        for path in ROUTES:
            for setup in order:
                app, cookie = apps[setup]
                with handle_function(swap_for(setup)):
                    started = time.perf_counter()
                    for _ in range(n):
                        await call(app, path, cookie)
                    per = (time.perf_counter() - started) / n * 1e6
                best[setup][path] = min(best[setup][path], per)
    return best


# -- the pieces -----------------------------------------------------------------------------------


async def handle_calls(backend: str) -> dict[str, float]:
    """How many times one request of each route computes a handle (counted)."""
    from sessionmw.core.handles import handle_of

    count = 0

    def counting(sid: str) -> str:
        nonlocal count
        count += 1
        return handle_of(sid)

    app, cookie = await ready("hashed ids", backend)
    calls: dict[str, float] = {}
    with handle_function(counting):
        for path in ROUTES:
            count = 0
            for _ in range(100):
                await call(app, path, cookie)
            calls[path] = count / 100
    return calls


def piece_functions() -> tuple[dict[str, Callable[[], object]], int]:
    """The pieces measured one call at a time, and the size of the benchmark's session in bytes."""
    from sessionmw.backends.base import Record
    from sessionmw.core.config import build_settings
    from sessionmw.core.cookies import new_session_id
    from sessionmw.core.envelope import AtRest
    from sessionmw.core.handles import handle_of
    from sessionmw.core.serializers import TaggedJSONSerializer

    sid = new_session_id()
    handle = handle_of(sid)
    at_rest = AtRest(build_settings(secret_key="bench", encryption_key=KEY))
    now = time.time()
    data = TaggedJSONSerializer().dumps({"n": 1, "user": "alice", "cart": list(range(20))})
    rec = Record(data=data, created=now, last_access=now, user_id="alice")
    sealed = at_rest.seal(rec, handle, now)
    functions: dict[str, Callable[[], object]] = {
        "handle_of": lambda: handle_of(sid),
        "seal (encrypt)": lambda: at_rest.seal(rec, handle, now),
        "open (decrypt)": lambda: at_rest.open(sealed, handle),
    }
    return functions, len(data)


def pieces(repeat: int) -> dict[str, float]:
    """Microseconds per call of ``handle_of`` and of the cipher's seal and open of a small session."""
    functions, size = piece_functions()
    figures = {
        name: min(timeit.repeat(fn, number=20_000, repeat=repeat)) / 20_000 * 1e6 for name, fn in functions.items()
    }
    figures["session bytes"] = float(size)
    return figures


def count_child(name: str, n: int) -> None:
    """Child side of an instruction count: ``n`` calls of one piece (after one to warm up)."""
    fn = piece_functions()[0][name]
    fn()
    for _ in range(n):
        fn()


def instructions(name: str, n: int = 2000) -> float:
    """CPU instructions per call of one piece under callgrind: (Ir(n) - Ir(0)) / n."""

    def ir(k: int) -> int:
        with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
            proc = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}", sys.executable,
                 os.path.abspath(__file__), "--count-child", name, str(k)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
        m = re.search(r"Collected : (\d+)", proc.stderr)
        assert m, proc.stderr[-2000:]
        return int(m.group(1))

    return (ir(n) - ir(0)) / n


# -- servers and output ---------------------------------------------------------------------------


def table(results: dict[str, dict[str, dict[str, float]]], calls: dict[str, dict[str, float]], per: float) -> str:
    """A Markdown table: a row per backend and route, a column per set-up, with the change from the baseline."""
    head = "| backend | route | " + " | ".join(SETUPS) + " | handle_of calls | hashing (calls × per call) |"
    lines = [head, "|---|---|" + "---:|" * (len(SETUPS) + 2)]
    for backend, by_setup in results.items():
        for path in ROUTES:
            base = by_setup[SETUPS[0]][path]
            cells = [f"{base:.1f}"]
            for setup in SETUPS[1:]:
                v = by_setup[setup][path]
                cells.append(f"{v:.1f} ({v - base:+.1f})")
            n = calls[backend][path]
            cells += [f"{n:g}", f"{n * per:.2f} µs"]
            route = "read-write" if path == "/write" else "read-only"
            lines.append(f"| {backend} | {route} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--count-child":
        count_child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per timing (default 2000)")
    parser.add_argument("--repeat", type=int, default=7, help="timings per set-up; the fastest counts (default 7)")
    parser.add_argument("--redis-url", help="a Redis server to use instead of a private redis-server")
    parser.add_argument("--instructions", action="store_true", help="also count the pieces' instructions (valgrind)")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")

    with redis_server(args.redis_url) as redis:
        backends = {"memory": f"memory://bench-{uuid.uuid4().hex[:6]}"}
        if redis:
            backends["redis"] = redis
        else:
            print("redis-server not found and no --redis-url: Redis left out", file=sys.stderr)
        micro = {name: asyncio.run(timings(url, args.requests, args.repeat)) for name, url in backends.items()}
        calls = {name: asyncio.run(handle_calls(url)) for name, url in backends.items()}
    parts = pieces(args.repeat)
    instr = {name: instructions(name) for name in piece_functions()[0]} if args.instructions else {}

    print(f"Python {sys.version.split()[0]}; µs per request, fastest of {args.repeat} × {args.requests} requests")
    print("(in brackets: the difference from ids in clear, which machine noise can exceed)")
    print(table(micro, calls, parts["handle_of"]))
    print(
        f"\nhandle_of: {parts['handle_of']:.2f} µs per call; AES-256-GCM of a {parts['session bytes']:.0f}-byte "
        f"session: seal {parts['seal (encrypt)']:.2f} µs, open {parts['open (decrypt)']:.2f} µs"
    )
    if instr:
        print("instructions per call (callgrind): " + ", ".join(f"{k} {v / 1000:.1f}k" for k, v in instr.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "python": sys.version.split()[0],
                    "requests": args.requests,
                    "repeat": args.repeat,
                    "microseconds_per_request": micro,
                    "handle_of_calls_per_request": calls,
                    "microseconds_per_call": parts,
                    "instructions_per_call": instr or None,
                },
                f,
                indent=2,
            )
        print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
