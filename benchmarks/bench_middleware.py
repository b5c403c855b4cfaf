"""In-process cost per request of the session middleware, side by side in one run.

Each request is one call of the ASGI app with a synthetic scope (no sockets, no HTTP client), so the
figure is the middleware's own cost plus Starlette's routing. Requests carry an established session
cookie, as a returning user's do, except in the "no cookie" column. Printed: microseconds
per request (the fastest of several repetitions), for a route that never touches the session (requested
without a cookie, as an anonymous visitor's first request, and with one), one that reads it, one
that writes it.

    python benchmarks/bench_middleware.py [--requests 2000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from asgi_call import call
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware as StarletteSessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sessionmw import SessionMiddleware


async def untouched(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def reads(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(request.session.get("n", 0)))


async def writes(request: Request) -> PlainTextResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse("ok")


ROUTES = [Route("/untouched", untouched), Route("/read", reads), Route("/write", writes)]


def build(kind: str, tmp: str) -> Starlette:
    if kind == "no middleware":
        return Starlette(routes=ROUTES)
    if kind == "starlette cookie":
        return Starlette(routes=ROUTES, middleware=[Middleware(StarletteSessionMiddleware, secret_key="k")])
    backend = f"memory://bench-{uuid.uuid4().hex[:6]}" if kind == "sessionmw memory" else f"file://{tmp}"
    return Starlette(routes=ROUTES, middleware=[Middleware(SessionMiddleware, secret_key="k", backend=backend)])


async def measure(app: Any, path: str, cookie: bytes | None, n: int, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(n):
            await call(app, path, cookie)
        samples.append((time.perf_counter() - started) / n * 1e6)
    # The fastest repetition: on a shared machine the others measure the neighbours (timeit's advice).
    return min(samples)


async def run(n: int, repeat: int) -> list[tuple[str, dict[str, float]]]:
    kinds = ["no middleware", "starlette cookie", "sessionmw memory", "sessionmw file"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            app = build(kind, tmp)
            paths = ("/untouched",) if kind == "no middleware" else ("/untouched", "/read", "/write")
            cookie = None
            if kind != "no middleware":
                status, cookie = await call(app, "/write", None)  # establish the session
                assert status == 200 and cookie
            for _ in range(50):  # warm up
                await call(app, paths[-1], cookie)
            row = {"/read": float("nan"), "/write": float("nan")}
            for path in paths:
                row[path] = await measure(app, path, cookie, n, repeat)
            row["anonymous"] = await measure(app, "/untouched", None, n, repeat)
            rows.append((kind, row))
    return rows


def table(rows: list[tuple[str, dict[str, float]]], fmt: Callable[[float], str]) -> str:
    base = dict(rows)["no middleware"]
    base_cost = min(base["/untouched"], base["anonymous"])  # the same request for the app alone
    lines = [
        "| middleware | never touches, no cookie | never touches | reads | writes | never touches ÷ none |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, row in rows:
        anon = row["anonymous"] / base_cost
        ratio = row["/untouched"] / base_cost
        lines.append(
            f"| {kind} | {fmt(row['anonymous'])} | {fmt(row['/untouched'])} | {fmt(row['/read'])} "
            f"| {fmt(row['/write'])} | {anon:.2f}× / {ratio:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rows = asyncio.run(run(args.requests, args.repeat))
    print(f"Python {sys.version.split()[0]}, {args.requests} requests x {args.repeat} repetitions, fastest")
    print(table(rows, lambda v: "n/a" if v != v else f"{v:.1f}"))


if __name__ == "__main__":
    main()
