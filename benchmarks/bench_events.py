"""Cost per request of session events: off, one no-op listener, Prometheus, OpenTelemetry, side by side.

Each request is one direct call of a Starlette app behind ``SessionMiddleware`` (a synthetic ASGI
scope: no sockets, no HTTP client), carrying an established session cookie, on the memory backend
and on Redis (a private ``redis-server`` on a free loopback port, or ``--redis-url``). Two routes: a
read-write request (lock, load, save, unlock) and a ``@read_only`` one (load only). Listener set-ups:

* ``events off``: ``listeners=()``, the default;
* ``no-op listener``: one plain function that does nothing (the cost of making and delivering events);
* ``Prometheus``: ``PrometheusListener`` on a registry of its own (events, lock and backend timings);
* ``OpenTelemetry``: ``OpenTelemetryListener`` on an SDK meter with an in-memory reader (if
  opentelemetry-sdk is installed).

Timings: microseconds per request, the fastest of ``--repeat`` repetitions, the set-ups taking turns
within each repetition so that a busy neighbour slows them alike. With ``--instructions``, the CPU
instructions per request under valgrind's callgrind ((Ir(N) - Ir(0)) / N), which the load of a shared
machine cannot disturb. With ``--baseline PATH`` (a source tree from before events, e.g.
``git worktree add /tmp/before <rev>``) the same requests, events off, are measured on that tree in
a child process whose ``PYTHONPATH`` points at it: "events off" beside it is the cost of having events
at all. ``--compiled-out`` measures two copies of this tree that it makes side by side in one temporary
folder: one as it is ("events off (copy)") and one in which every test of whether listeners are
configured is the constant ``False`` (``COMPILED_OUT``), so Python compiles the event code away. The
difference between the two is what those tests cost a site without listeners (compare the copies, not
the copy with this tree: where a tree lies alone moves callgrind's count by up to 0.7 %).

    python benchmarks/bench_events.py [--requests 2000] [--repeat 7] [--instructions] [--setups A,B]
                                      [--baseline PATH | --compiled-out] [--json FILE]
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
import uuid
from collections.abc import Callable
from typing import Any

from asgi_call import call
from servers import redis_server

SETUPS = ["events off", "no-op listener", "Prometheus", "OpenTelemetry"]
ROUTES = ["/write", "/read"]
BASELINE = "before events"
COMPILED = "events compiled out"
COPY = "events off (copy)"

#: The copy of this tree that ``--compiled-out`` measures: each (file, text, replacement) must match.
#: The core's flows yield events and wrap flows for ``backend_unavailable`` only when ``listening``;
#: the drivers time backend calls, lock holds and waiters only when ``timing``.
COMPILED_OUT = [
    ("sessionmw/core/opening.py", "self.listening", "False"),
    ("sessionmw/core/closing.py", "self.listening", "False"),
    ("sessionmw/drivers/_run_sync.py", "timing = listeners.timing", "timing = False"),
    ("sessionmw/drivers/_run_async.py", "timing = listeners.timing", "timing = False"),
]


# -- the app and one request ----------------------------------------------------------------------


def noop(event: Any) -> None:
    """A listener that does nothing."""


def listeners_for(setup: str) -> list[Any]:
    """The ``listeners=`` of one set-up."""
    if setup in ("events off", BASELINE, COMPILED, COPY):
        return []
    if setup == "no-op listener":
        return [noop]
    if setup == "Prometheus":
        from prometheus_client import CollectorRegistry

        from sessionmw.metrics import PrometheusListener

        return [PrometheusListener(CollectorRegistry())]
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from sessionmw.metrics import OpenTelemetryListener

    return [OpenTelemetryListener(MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench"))]


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

    options: dict[str, Any] = {"secret_key": "bench", "backend": backend, "key_prefix": f"bench{uuid.uuid4().hex[:8]}:"}
    listeners = listeners_for(setup)
    if listeners:  # a tree from before events knows no such keyword
        options["listeners"] = listeners
    return Starlette(
        routes=[Route("/write", write), Route("/read", read)], middleware=[Middleware(SessionMiddleware, **options)]
    )


async def ready(setup: str, backend: str) -> tuple[Any, bytes]:
    """An app with an established session and its cookie, warmed up."""
    app = build(setup, backend)
    status, cookie = await call(app, "/write", None)
    assert status == 200 and cookie, status
    for path in ROUTES:
        for _ in range(50):
            status, _ = await call(app, path, cookie)
            assert status == 200, status
    return app, cookie


# -- timings --------------------------------------------------------------------------------------


async def timings(setups: list[str], backend: str, n: int, repeat: int) -> dict[str, dict[str, float]]:
    """Microseconds per request of each set-up and route: the fastest of ``repeat``, set-ups in turns."""
    apps = {setup: await ready(setup, backend) for setup in setups}
    best: dict[str, dict[str, float]] = {s: {p: float("inf") for p in ROUTES} for s in setups}
    for r in range(repeat):
        order = setups[r % len(setups) :] + setups[: r % len(setups)]
        for path in ROUTES:
            for setup in order:
                app, cookie = apps[setup]
                started = time.perf_counter()
                for _ in range(n):
                    await call(app, path, cookie)
                per = (time.perf_counter() - started) / n * 1e6
                best[setup][path] = min(best[setup][path], per)
    return best


def run_child(tree: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run this script with ``args`` in a child process whose ``PYTHONPATH`` starts at ``tree``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args], env=env, capture_output=True, text=True, check=True
    )


def copied_tree(dest: str, compiled_out: bool) -> str:
    """Copy this tree's ``sessionmw`` into ``dest``, with the event code compiled out (``COMPILED_OUT``) or not."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copytree(os.path.join(root, "sessionmw"), os.path.join(dest, "sessionmw"))
    for name, text, replacement in COMPILED_OUT if compiled_out else ():
        path = os.path.join(dest, name)
        with open(path) as f:
            source = f.read()
        if text not in source:
            sys.exit(f"--compiled-out: {name} no longer contains {text!r}; update COMPILED_OUT")
        with open(path, "w") as f:
            f.write(source.replace(text, replacement))
    return dest


# -- instruction counts -----------------------------------------------------------------------------


def count_child(setup: str, backend: str, path: str, n: int) -> None:
    """Child side of an instruction count: set up, warm up, then make ``n`` requests."""

    async def go() -> None:
        app, cookie = await ready(setup, backend)
        for _ in range(n):
            await call(app, path, cookie)

    asyncio.run(go())


def instructions(setup: str, backend: str, path: str, n: int, tree: str | None) -> float:
    """CPU instructions per request under callgrind: (Ir(n) - Ir(0)) / n."""

    def ir(k: int) -> int:
        env = dict(os.environ, PYTHONHASHSEED="0")  # the same string hashes in every child: steadier counts
        if tree:
            env["PYTHONPATH"] = os.path.abspath(tree) + (os.pathsep + env.get("PYTHONPATH", "")).rstrip(os.pathsep)
        with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
            proc = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}", sys.executable,
                 os.path.abspath(__file__), "--count-child", setup, backend, path, str(k)],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
        m = re.search(r"Collected : (\d+)", proc.stderr)
        assert m, proc.stderr[-2000:]
        return int(m.group(1))

    return (ir(n) - ir(0)) / n


# -- servers and output ---------------------------------------------------------------------------


def table(results: dict[str, dict[str, dict[str, float]]], columns: list[str], fmt: Callable[[float], str]) -> str:
    """A Markdown table: a row per backend and route, a column per set-up, with the change from "events off"."""
    lines = ["| backend | route | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for backend, by_setup in results.items():
        for path in ROUTES:
            off = by_setup["events off"][path]
            cells = []
            for setup in columns:
                v = by_setup.get(setup, {}).get(path)
                if v is None:
                    cells.append("n/a")
                elif setup == "events off":
                    cells.append(fmt(v))
                else:
                    cells.append(f"{fmt(v)} ({(v - off) / off * 100:+.1f}%)")
            route = "read-write" if path == "/write" else "read-only"
            lines.append(f"| {backend} | {route} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--count-child":
        count_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--time-child":
        _, _, backend, n, repeat = sys.argv
        print(json.dumps(asyncio.run(timings([BASELINE], backend, int(n), int(repeat)))[BASELINE]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per timing (default 2000)")
    parser.add_argument("--repeat", type=int, default=7, help="timings per set-up; the fastest counts (default 7)")
    parser.add_argument("--redis-url", help="a Redis server to use instead of a private redis-server")
    parser.add_argument("--instructions", action="store_true", help="also count instructions under callgrind")
    parser.add_argument("--instr-requests", type=int, default=300, help="requests per instruction count")
    parser.add_argument("--baseline", metavar="PATH", help="a source tree from before events, measured events off")
    parser.add_argument(
        "--compiled-out", action="store_true", help="also measure this tree with the event code compiled out"
    )
    parser.add_argument(
        "--setups", help=f"a comma-separated subset of: {', '.join(SETUPS)} (default: all; events off always)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    args = parser.parse_args()

    setups = list(SETUPS)
    if args.setups:
        chosen = {s.strip() for s in args.setups.split(",")} | {"events off"}
        if chosen - set(SETUPS):
            parser.error(f"unknown set-ups: {', '.join(sorted(chosen - set(SETUPS)))}")
        setups = [s for s in SETUPS if s in chosen]
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        if "OpenTelemetry" in setups:
            setups.remove("OpenTelemetry")
    trees: dict[str, str] = {}  # column -> a source tree measured events off in child processes
    if args.compiled_out:
        if args.baseline:
            parser.error("--baseline and --compiled-out are exclusive")
        folder = tempfile.mkdtemp(prefix="sessionmw-events-")
        trees[COMPILED] = copied_tree(os.path.join(folder, "out"), compiled_out=True)
        trees[COPY] = copied_tree(os.path.join(folder, "off"), compiled_out=False)
    elif args.baseline:
        trees[BASELINE] = args.baseline
    columns = [*trees, *setups]

    with redis_server(args.redis_url) as redis:
        backends = {"memory": f"memory://bench-{uuid.uuid4().hex[:6]}"}
        if redis:
            backends["redis"] = redis
        else:
            print("redis-server not found and no --redis-url: Redis left out", file=sys.stderr)
        micro: dict[str, dict[str, dict[str, float]]] = {}
        instr: dict[str, dict[str, dict[str, float]]] = {}
        for name, url in backends.items():
            micro[name] = asyncio.run(timings(setups, url, args.requests, args.repeat))
            for column, tree in trees.items():
                out = run_child(tree, "--time-child", url, str(args.requests), str(args.repeat)).stdout
                micro[name][column] = json.loads(out.strip().splitlines()[-1])
            if args.instructions:
                if shutil.which("valgrind") is None:
                    sys.exit("valgrind is not installed (apt-get install valgrind)")
                instr[name] = {
                    setup: {
                        path: instructions(
                            "events off" if setup in trees else setup,
                            url,
                            path,
                            args.instr_requests,
                            trees.get(setup),
                        )
                        for path in ROUTES
                    }
                    for setup in columns
                }

    print(f"Python {sys.version.split()[0]}; µs per request, fastest of {args.repeat} × {args.requests} requests")
    print(table(micro, columns, lambda v: f"{v:.1f}"))
    if instr:
        print(f"\ninstructions per request (callgrind, {args.instr_requests} requests after warm-up)")
        print(table(instr, columns, lambda v: f"{v / 1000:.1f}k"))
    if COMPILED in trees and instr:
        print("\nthe event code's own cost with no listener: events off (copy) against events compiled out")
        for backend, by_setup in instr.items():
            for path in ROUTES:
                off, out = by_setup[COPY][path], by_setup[COMPILED][path]
                route = "read-write" if path == "/write" else "read-only"
                print(f"  {backend} {route}: {(off - out) / 1000:+.1f}k instructions ({(off - out) / out * 100:+.2f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "python": sys.version.split()[0],
                    "requests": args.requests,
                    "repeat": args.repeat,
                    "microseconds_per_request": micro,
                    "instructions_per_request": instr or None,
                    "instruction_requests": args.instr_requests if instr else None,
                },
                f,
                indent=2,
            )
        print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
