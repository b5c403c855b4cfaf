"""Big sessions: bytes written and time per request when one key of a 64 KB session changes per request.

Issue 11, part 6. A session of 64 keys of about 1 KB each; every request changes one key (a 1 KB
value, or a small counter). Each request is one call of an in-process ASGI app (no sockets, no HTTP
client), on memory, file, Redis (a private redis-server) and SQLite (a backend without the tail
primitive: it always gets whole records). Two modes in one run, on apps of their own:

* whole record: every changed session written whole, as before (the core's ``tails`` switched off);
* delta: the changed keys written as a tail (:mod:`sessionmw.core.patches`), compacted into a whole
  write when the tail passes a quarter of the base.

Columns, per request: the bytes the core handed to the backend's write (the record, or the tail and
the metadata line); the bytes that reached the store: Redis ``INFO stats`` ``total_net_input_bytes``
(every command of the request: lock, read, write) and, for file and SQLite, the bytes this process
passed to ``write``/``pwrite`` (``wchar`` of ``/proc/self/io``: data files, journals, temporary
files); how many requests wrote the whole record; and µs per request (the fastest of ``--repeat``
passes, modes interleaved).

    python benchmarks/bench_big_sessions.py [--requests 300] [--repeat 3] [--redis-url URL] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))

from asgi_call import call
from servers import redis_server

from sessionmw import SessionMiddleware
from sessionmw.backends.base import encode_record
from sessionmw.core.ops import BackendOp, Create, Save, SaveTail

KEYS = 64
VALUE = 1000


class Handed:
    """Counts what the core hands to the backend's writes (wrapping the write operations' entry points)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.whole = 0
        self.tails = 0

    def install(self) -> None:
        """Wrap ``run``/``arun`` of Save, SaveTail and Create so every write is counted."""
        for cls in (Save, SaveTail, Create):
            for name in ("run", "arun"):
                setattr(cls, name, self._wrap(getattr(cls, name)))

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        handed = self

        def counted(op: BackendOp[Any], backend: Any) -> Any:
            if isinstance(op, SaveTail):
                handed.bytes += len(op.tail) + len(encode_record(op.head))
                handed.tails += 1
            elif isinstance(op, Save | Create):
                handed.bytes += len(encode_record(op.record))
                handed.whole += 1
            return fn(op, backend)

        return counted


HANDED = Handed()


def wchar() -> int:
    """Bytes this process passed to write()/pwrite() so far (all threads)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


async def fill(request: Request) -> PlainTextResponse:
    for i in range(KEYS):
        request.session[f"k{i}"] = f"{i:02d}" + "x" * (VALUE - 2)
    return PlainTextResponse("ok")


async def change_big(request: Request) -> PlainTextResponse:
    s = request.session
    i = s.get("i", 0)
    s["i"] = i + 1
    s[f"k{i % KEYS}"] = f"{i % 100:02d}" + "y" * (VALUE - 2)
    return PlainTextResponse("ok")


async def change_small(request: Request) -> PlainTextResponse:
    s = request.session
    s["n"] = s.get("n", 0) + 1
    return PlainTextResponse("ok")


def build(backend: str, delta: bool) -> tuple[Starlette, SessionMiddleware]:
    app = Starlette(
        routes=[Route("/fill", fill), Route("/big", change_big), Route("/small", change_small)],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key="k",
                backend=backend,
                key_prefix=f"bb{uuid.uuid4().hex[:6]}:",
                gc_interval=None,
            )
        ],
    )
    app.middleware_stack = app.build_middleware_stack()  # built now (Starlette builds it on first call)
    layer: Any = app.middleware_stack
    while not isinstance(layer, SessionMiddleware):
        layer = layer.app
    layer.core.tails = delta
    return app, layer


class Case:
    """One backend, one mode: its app, its session cookie, its figures."""

    def __init__(self, kind: str, url: str, delta: bool, route: str) -> None:
        self.kind = kind
        self.delta = delta
        self.route = route
        self.app, self.mw = build(url, delta)
        self.cookie: bytes | None = None
        self.best = float("inf")
        self.handed = 0
        self.stored = 0
        self.whole = 0
        self.read = 0
        self.n = 0

    async def start(self) -> None:
        _, self.cookie = await call(self.app, "/fill", None)
        for _ in range(20):  # warm up: the first compaction cycle, the connections
            await call(self.app, self.route, self.cookie)

    async def run(self, requests: int, store_bytes: Callable[[], Awaitable[tuple[int, int]]]) -> None:
        before_h, before_w = HANDED.bytes, HANDED.whole
        before_s, before_r = await store_bytes()
        t0 = time.perf_counter()
        for _ in range(requests):
            await call(self.app, self.route, self.cookie)
        elapsed = time.perf_counter() - t0
        after_s, after_r = await store_bytes()
        self.best = min(self.best, elapsed / requests)
        self.handed += HANDED.bytes - before_h
        self.whole += HANDED.whole - before_w
        self.stored += after_s - before_s
        self.read += after_r - before_r
        self.n += requests


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis-url")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    HANDED.install()
    tmp = Path(tempfile.mkdtemp(prefix="bench-big-"))
    with redis_server(args.redis_url) as redis_url:
        kinds: dict[str, str] = {"memory": f"memory://bench-{uuid.uuid4().hex[:6]}", "file": f"file://{tmp}/files"}
        if redis_url:
            kinds["redis"] = redis_url
        kinds["sqlite"] = f"sqlite:///{tmp}/sessions.db"
        info_client = None
        if redis_url:
            import redis

            info_client = redis.Redis.from_url(redis_url)

        def counters(kind: str) -> Callable[[], Awaitable[tuple[int, int]]]:
            async def measure() -> tuple[int, int]:
                if kind == "redis" and info_client is not None:
                    stats = info_client.info("stats")
                    return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])
                if kind in ("file", "sqlite"):
                    return wchar(), 0
                return 0, 0

            return measure

        rows: list[dict[str, Any]] = []
        for route, label in (("/big", "1 KB key"), ("/small", "counter")):
            cases = [Case(kind, url, delta, route) for kind, url in kinds.items() for delta in (False, True)]
            for case in cases:
                await case.start()
            for _ in range(args.repeat):
                for case in cases:  # interleaved: a neighbour's load hits every row alike
                    await case.run(args.requests, counters(case.kind))
            for case in cases:
                n = case.n
                rows.append(
                    {
                        "change": label,
                        "backend": case.kind,
                        "mode": "delta" if case.delta else "whole record",
                        "handed_bytes": case.handed / n,
                        "store_bytes": case.stored / n if case.kind != "memory" else None,
                        "redis_output_bytes": case.read / n if case.kind == "redis" else None,
                        "whole_writes": case.whole / n,
                        "us": case.best * 1e6,
                    }
                )
    print(f"{KEYS} keys of {VALUE} B; {args.requests} requests x {args.repeat} passes per row; per request:")
    head = f"{'change':9} {'backend':8} {'mode':13} {'handed B':>9} {'store B':>9} {'whole':>6} {'µs':>8} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for row in rows:
        whole = next(
            r for r in rows if r["change"] == row["change"] and r["backend"] == row["backend"] and r["mode"] != "delta"
        )
        stored = "-" if row["store_bytes"] is None else f"{row['store_bytes']:.0f}"
        print(
            f"{row['change']:9} {row['backend']:8} {row['mode']:13} {row['handed_bytes']:9.0f} {stored:>9} "
            f"{row['whole_writes']:6.2f} {row['us']:8.1f} {row['us'] / whole['us']:6.2f}"
        )
    redis_rows = [r for r in rows if r["redis_output_bytes"] is not None]
    if redis_rows:
        print(
            "Redis reads (total_net_output_bytes) per request:",
            ", ".join(f"{r['change']}/{r['mode']}: {r['redis_output_bytes']:.0f}" for r in redis_rows),
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"keys": KEYS, "value": VALUE, "rows": rows}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
