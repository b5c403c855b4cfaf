"""End to end over HTTP: sessionmw beside starsessions and Flask-Session, real servers, wrk as the load.

Every row is a real server on loopback with 2 worker processes (uvicorn ``--workers 2`` with uvloop and
httptools for ASGI, gunicorn ``--workers 2 --threads 4`` for Flask) and wrk as the load generator, all
in one run:

1. ASGI on Redis: sessionmw, starsessions (``RedisStore``) and a Starlette app with no session;
2. Flask on Redis: sessionmw's Flask adapter, Flask-Session (Redis) and Flask with no session;
3. Flask on memcached: sessionmw, Flask-Session (memcached through pymemcache, ``no_delay=True`` as
   sessionmw's backend sets it);
4. ASGI on SQLite, sessionmw's demo default (a file in a temporary directory).

Each request reads a counter in the session, adds one and writes it back. One session per connection:
the sessions are created beforehand (one request each, outside the timing) and wrk runs as many threads
as connections, each thread sending its own cookie (set in the thread's ``init``, so wrk still sends a
pre-built request and runs no Lua per request). No two requests of one session are ever in flight at
once, so a library that locks never waits: what is measured is the cost of the lock, not contention.

Per row: requests per second, latency p50/p99 (wrk's own histogram), the CPU µs per request of the
server's processes and of the Redis server (``/proc`` and ``INFO cpu`` deltas, figures that the load of
a shared machine disturbs less than wall time), and on Redis the commands the server executed per
request (``INFO commandstats`` deltas; a script counts once as EVALSHA and once per command inside it)
or on memcached its ``stats`` deltas. Requests counted by the server are the sum of the sessions'
counters, read back over HTTP after each timing: it checks that every request wrote its session.

A warm-up, then ``--rounds`` rounds that alternate the rows of a group (forwards, then backwards); the
table shows the best round of each row (the others measured the neighbours more), the JSON every round.

    python benchmarks/bench_http.py [--quick | --duration 10 --rounds 3] [--connections 16] [--json PATH]

Peers are installed for the benchmark only (``pip install starsessions flask-session``); a missing peer,
server or wrk makes its rows say why instead of failing. Private redis-server and memcached processes
are started on free ports (or ``--redis-url``, where other clients' commands would count too). The
peers run with their defaults: Flask-Session's cookie carries the bare session id (``SESSION_USE_SIGNER``
is off), sessionmw's a signed one. Commands are not round trips: sessionmw pipelines its lock-and-load
(Redis ``SET NX`` + ``GET``, memcached meta commands), so 7 Redis or 5 memcached commands are 2 round
trips (bench_backends.py counts round trips at the client). The same file is the servers' app module:
they import ``asgi_app`` or ``wsgi_app`` from it.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# -- the apps, built in the server processes from HTTPB_* environment variables -----------------


def asgi_app() -> Any:
    """The Starlette counter app with the session middleware named by ``HTTPB_KIND``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from sessionmw import read_only

    kind, url, prefix = os.environ["HTTPB_KIND"], os.environ["HTTPB_URL"], os.environ["HTTPB_PREFIX"]

    async def rw(request: Request) -> PlainTextResponse:
        n = request.session.get("n", 0) + 1
        request.session["n"] = n
        return PlainTextResponse(str(n))

    @read_only
    async def count(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.session.get("n", 0)))

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("0")

    if kind == "asgi-none":
        return Starlette(routes=[Route("/rw", plain), Route("/n", plain)])
    routes = [Route("/rw", rw), Route("/n", count)]
    if kind == "asgi-starsessions":
        from starsessions import SessionAutoloadMiddleware
        from starsessions import SessionMiddleware as StarSessionMiddleware
        from starsessions.stores.redis import RedisStore

        middleware = [
            Middleware(StarSessionMiddleware, store=RedisStore(url, prefix=prefix), cookie_https_only=False),
            Middleware(SessionAutoloadMiddleware),
        ]
    elif kind in ("asgi-sessionmw-redis", "asgi-sessionmw-sqlite"):
        from sessionmw import SessionMiddleware

        middleware = [Middleware(SessionMiddleware, secret_key="bench", backend=url, key_prefix=prefix)]
    else:
        raise SystemExit(f"not an ASGI kind: {kind}")
    return Starlette(routes=routes, middleware=middleware)


def wsgi_app() -> Any:
    """The Flask counter app with the sessions named by ``HTTPB_KIND``."""
    from flask import Flask, session

    from sessionmw import read_only

    kind, url, prefix = os.environ["HTTPB_KIND"], os.environ["HTTPB_URL"], os.environ["HTTPB_PREFIX"]
    app = Flask(__name__)
    app.secret_key = "bench"

    if kind == "flask-none":

        @app.route("/rw")
        @app.route("/n")
        def plain() -> str:
            return "0"

        return app

    @app.route("/rw")
    def rw() -> str:
        n = session.get("n", 0) + 1
        session["n"] = n
        return str(n)

    @app.route("/n")
    @read_only
    def count() -> str:
        return str(session.get("n", 0))

    if kind in ("flask-sessionmw-redis", "flask-sessionmw-memcached"):
        from sessionmw.flask import FlaskSession

        app.config.update(SESSION_BACKEND=url, SESSION_KEY_PREFIX=prefix)
        FlaskSession(app)
    elif kind == "flask-session-redis":
        import redis
        from flask_session import Session

        app.config.update(SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(url), SESSION_KEY_PREFIX=prefix)
        Session(app)
    elif kind == "flask-session-memcached":
        from flask_session import Session
        from pymemcache.client.base import PooledClient

        host, port = url.removeprefix("memcached://").split(":")
        # A pooled client, since gunicorn's threads share it; no_delay as sessionmw's backend sets it.
        client = PooledClient((host, int(port)), no_delay=True)
        app.config.update(SESSION_TYPE="memcached", SESSION_MEMCACHED=client, SESSION_KEY_PREFIX=prefix)
        Session(app)
    else:
        raise SystemExit(f"not a Flask kind: {kind}")
    return app


# -- the rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One row: which app, on which server and backend, and what it needs installed."""

    name: str
    label: str
    server: str  # "uvicorn" or "gunicorn"
    backend: str  # "none", "redis", "memcached" or "sqlite"
    needs: str = ""  # a peer's module, installed for the benchmark only


GROUPS: list[tuple[str, list[Kind]]] = [
    (
        "ASGI read+write, Redis",
        [
            Kind("asgi-none", "Starlette, no session", "uvicorn", "none"),
            Kind("asgi-sessionmw-redis", "sessionmw", "uvicorn", "redis"),
            Kind("asgi-starsessions", "starsessions", "uvicorn", "redis", "starsessions"),
        ],
    ),
    (
        "Flask read+write, Redis",
        [
            Kind("flask-none", "Flask, no session", "gunicorn", "none", "flask"),
            Kind("flask-sessionmw-redis", "sessionmw", "gunicorn", "redis", "flask"),
            Kind("flask-session-redis", "Flask-Session", "gunicorn", "redis", "flask_session"),
        ],
    ),
    (
        "Flask read+write, memcached",
        [
            Kind("flask-sessionmw-memcached", "sessionmw", "gunicorn", "memcached", "flask"),
            Kind("flask-session-memcached", "Flask-Session", "gunicorn", "memcached", "flask_session"),
        ],
    ),
    ("ASGI read+write, SQLite", [Kind("asgi-sessionmw-sqlite", "sessionmw", "uvicorn", "sqlite")]),
]

# (group, ours, peer, target ratio of req/s)
RATIOS = [
    ("ASGI read+write, Redis", "asgi-sessionmw-redis", "asgi-starsessions", 1.3),
    ("Flask read+write, Redis", "flask-sessionmw-redis", "flask-session-redis", 1.3),
    ("Flask read+write, memcached", "flask-sessionmw-memcached", "flask-session-memcached", None),
]


@dataclass
class Row:
    """What one row measured: every round, and why it was skipped if it was."""

    kind: Kind
    group: str
    skipped: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def best(self) -> dict[str, Any] | None:
        """The round with the most requests per second."""
        return max(self.rounds, key=lambda r: r["rps"]) if self.rounds else None


# -- servers and processes -----------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> bool:
    """Wait until something accepts connections on ``port``; False if it never does or ``proc`` ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this benchmark started (its workers follow their master)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the server's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds of ``pids`` so far (processes that ended count nothing)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


class AppServer:
    """One app under uvicorn or gunicorn with 2 worker processes, on a free loopback port."""

    def __init__(self, kind: Kind, url: str, threads: int) -> None:
        self.kind = kind
        self.port = free_port()
        env = {
            **os.environ,
            "HTTPB_KIND": kind.name,
            "HTTPB_URL": url,
            "HTTPB_PREFIX": f"httpb{uuid.uuid4().hex[:8]}:",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        bind = ["--host", "127.0.0.1", "--port", str(self.port)]
        if kind.server == "uvicorn":
            argv = [sys.executable, "-m", "uvicorn", "bench_http:asgi_app", "--factory", "--workers", "2", *bind,
                    "--log-level", "warning", "--no-access-log"]  # fmt: skip
        else:
            argv = [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", str(threads),
                    "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning", "bench_http:wsgi_app()"]  # fmt: skip
        self.proc = subprocess.Popen(argv, cwd=HERE, env=env)

    def ready(self) -> bool:
        """Wait until both workers answer (a request to each of several connections)."""
        if not wait_port(self.port, self.proc):
            return False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if all(get(self.port, "/n", None)[0] == 200 for _ in range(8)):
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def cpu(self) -> float:
        """CPU seconds used so far by the server's processes."""
        return cpu_seconds(descendants(self.proc.pid))

    def close(self) -> None:
        """Stop the server and its workers."""
        stop(self.proc)


def get(port: int, path: str, cookie: str | None) -> tuple[int, str | None, str]:
    """One GET over a fresh connection: the status, the cookie set (``name=value``) if any, the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        body = response.read().decode()
        set_cookie = response.getheader("Set-Cookie")
        return response.status, set_cookie.split(";", 1)[0] if set_cookie else None, body
    finally:
        conn.close()


# -- wrk ----------------------------------------------------------------------------------------

WRK_SCRIPT = """\
-- One session per connection: as many threads as connections, each sending its own cookie.
local cookies = {%(cookies)s}
local n = 0

function setup(thread)
   n = n + 1
   thread:set("cookie", cookies[n])
end

function init(args)
   if cookie ~= "" then wrk.headers["Cookie"] = cookie end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "HTTPB {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"p50_us\\": %%d, \\"p90_us\\": %%d, " ..
      "\\"p99_us\\": %%d, \\"max_us\\": %%d, \\"errors\\": %%d, \\"non2xx\\": %%d, \\"timeouts\\": %%d}\\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, e.connect + e.read + e.write, e.status, e.timeout))
end
"""


def lua_string(s: str) -> str:
    """``s`` as a Lua string literal (cookies hold no quote or backslash, but be sure)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(port: int, cookies: list[str], seconds: float, tmp: str) -> dict[str, Any]:
    """Run wrk for ``seconds`` with one thread and connection per cookie; its figures."""
    script = os.path.join(tmp, f"wrk-{uuid.uuid4().hex[:6]}.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT % {"cookies": ", ".join(lua_string(c) for c in cookies)})
    n = len(cookies)
    argv = ["wrk", f"-t{n}", f"-c{n}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", script,
            f"http://127.0.0.1:{port}/rw"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    for line in out.splitlines():
        if line.startswith("HTTPB "):
            figures: dict[str, Any] = json.loads(line[6:])
            figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
            return figures
    raise RuntimeError(f"wrk printed no figures:\n{out}")


# -- the backends' own counters ------------------------------------------------------------------


class RedisCounters:
    """``INFO commandstats`` and ``INFO cpu`` of the Redis server, as deltas (no reset: it may be shared)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.before: Counter[str] = Counter()

    def calls(self) -> Counter[str]:
        """Calls per command since the server started."""
        stats = self.client.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})

    def reset(self) -> float:
        """Remember the command counters now; the server's CPU seconds so far."""
        self.before = self.calls()
        return self.cpu()

    def cpu(self) -> float:
        """The Redis server's user plus system CPU seconds so far."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def commands(self) -> Counter[str]:
        """Calls per command since :meth:`reset`, leaving out this benchmark's own INFO."""
        calls = self.calls() - self.before
        calls.pop("info", None)
        return calls


class MemcachedCounters:
    """The memcached server's ``stats``: commands by kind, and its CPU seconds."""

    # cmd_set counts every store (set, add, cas, meta ms) and cmd_get every read (get, gets, meta mg),
    # so cas_* are not added: they are already among the stores.
    KEYS = ("cmd_get", "cmd_set", "cmd_touch", "delete_hits", "delete_misses", "incr_hits", "incr_misses",
            "decr_hits", "decr_misses")  # fmt: skip

    def __init__(self, port: int) -> None:
        self.port = port
        self.before: dict[str, float] = {}

    def stats(self) -> dict[str, float]:
        """The server's ``stats`` as numbers."""
        from pymemcache.client.base import Client

        client = Client(("127.0.0.1", self.port))
        try:
            numbers = {}
            for k, v in client.stats().items():
                try:
                    numbers[k.decode() if isinstance(k, bytes) else k] = float(v)
                except (TypeError, ValueError):
                    pass  # version, libevent and the like
            return numbers
        finally:
            client.close()

    def reset(self) -> float:
        """Remember the counters now; the server's CPU seconds so far."""
        self.before = self.stats()
        return self.before["rusage_user"] + self.before["rusage_system"]

    def cpu(self) -> float:
        """The memcached server's user plus system CPU seconds so far."""
        now = self.stats()
        return now["rusage_user"] + now["rusage_system"]

    def commands(self) -> Counter[str]:
        """Commands by kind since :meth:`reset`."""
        now = self.stats()
        return Counter(
            {k: int(now[k] - self.before.get(k, 0)) for k in self.KEYS if now.get(k, 0) > self.before.get(k, 0)}
        )


# -- one timing ----------------------------------------------------------------------------------


def counters_sum(port: int, cookies: list[str]) -> int:
    """The sum of the sessions' counters, read back over HTTP."""
    return sum(int(get(port, "/n", c)[2]) for c in cookies)


def make_sessions(port: int, n: int) -> list[str]:
    """Create ``n`` sessions, one request each; their cookies (empty strings for an app with none)."""
    cookies = []
    for _ in range(n):
        status, cookie, _ = get(port, "/rw", None)
        if status != 200:
            raise RuntimeError(f"creating a session answered {status}")
        cookies.append(cookie or "")
    return cookies


def measure(
    server: AppServer, cookies: list[str], seconds: float, tmp: str, counters: Any, written: int
) -> tuple[dict[str, Any], int]:
    """One timing of ``server``: wrk's figures plus CPU and commands per request; the new counter sum."""
    backend_cpu = counters.reset() if counters else 0.0
    app_cpu = server.cpu()
    figures = run_wrk(server.port, cookies, seconds, tmp)
    figures["app_cpu_s"] = server.cpu() - app_cpu
    if counters:
        figures["backend_cpu_s"] = counters.cpu() - backend_cpu
        figures["commands"] = dict(counters.commands())
    total = counters_sum(server.port, cookies) if server.kind.backend != "none" else written
    # Requests the server handled: the counters' growth (wrk leaves out what was in flight at its end).
    served = total - written if server.kind.backend != "none" else figures["requests"]
    figures["served"] = served
    if served:
        figures["app_cpu_us"] = figures["app_cpu_s"] / served * 1e6
        if counters:
            figures["backend_cpu_us"] = figures["backend_cpu_s"] / served * 1e6
            figures["commands_per_request"] = sum(figures["commands"].values()) / served
    return figures, total


# -- the run -------------------------------------------------------------------------------------


def missing(kind: Kind, urls: dict[str, str | None]) -> str:
    """Why ``kind`` cannot run here, or an empty string."""
    server_module = "uvicorn" if kind.server == "uvicorn" else "gunicorn"
    for module in filter(None, (server_module, kind.needs, "starlette" if kind.server == "uvicorn" else "")):
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed"
    if kind.backend == "sqlite" and importlib.util.find_spec("sqlalchemy") is None:
        return "sqlalchemy not installed"
    if kind.backend in ("redis", "memcached") and not urls.get(kind.backend):
        return f"no {kind.backend} server (install {'redis-server' if kind.backend == 'redis' else 'memcached'})"
    return ""


def run_group(
    title: str, kinds: list[Kind], urls: dict[str, str | None], args: argparse.Namespace, tmp: str
) -> list[Row]:
    """Serve every row of a group at once, warm them up, then time them in alternating rounds."""
    rows = [Row(kind, title) for kind in kinds]
    live: list[tuple[Row, AppServer, list[str], Any]] = []
    servers: list[AppServer] = []
    try:
        for row in rows:
            row.skipped = missing(row.kind, urls)
            if row.skipped:
                continue
            backend = row.kind.backend
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/sessions-{uuid.uuid4().hex[:6]}.db"
            else:
                url = urls.get(backend) or ""
            server = AppServer(row.kind, url, args.threads)
            servers.append(server)
            if not server.ready():
                row.skipped = "the server did not start"
                continue
            counters: Any = None
            if backend == "redis":
                counters = RedisCounters(url)
            elif backend == "memcached":
                counters = MemcachedCounters(int(url.rsplit(":", 1)[1]))
            try:
                live.append((row, server, make_sessions(server.port, args.connections), counters))
            except (OSError, RuntimeError) as exc:
                row.skipped = f"failed: {exc}"
        if not live:
            return rows
        written = {id(row): (len(cookies) if row.kind.backend != "none" else 0) for row, _, cookies, _ in live}
        for row, server, cookies, counters in live:
            _, written[id(row)] = measure(server, cookies, args.warmup, tmp, counters, written[id(row)])
        for r in range(args.rounds):
            for row, server, cookies, counters in live if r % 2 == 0 else live[::-1]:
                figures, written[id(row)] = measure(server, cookies, args.duration, tmp, counters, written[id(row)])
                figures["round"] = r + 1
                row.rounds.append(figures)
                print(f"  {title} | {row.kind.label}: round {r + 1}, {figures['rps']:,.0f} req/s", file=sys.stderr)
    finally:
        for server in servers:
            server.close()
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every group in one run, with private Redis and memcached servers; the figures."""
    from run_all import machine
    from servers import memcached_server, redis_server

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows: list[Row] = []
    if shutil.which("wrk") is None:
        rows = [Row(kind, title, "wrk not installed") for title, kinds in GROUPS for kind in kinds]
        return report(rows, args, started, machine())

    with (
        redis_server(args.redis_url) as redis_url,
        memcached_server(256) as memcached_url,
        tempfile.TemporaryDirectory(prefix="bench-http-") as tmp,
    ):
        urls = {"redis": redis_url, "memcached": memcached_url}
        for title, kinds in GROUPS:
            rows.extend(run_group(title, kinds, urls, args, tmp))
    return report(rows, args, started, machine())


def report(rows: list[Row], args: argparse.Namespace, started: str, host: dict[str, Any]) -> dict[str, Any]:
    """The figures as one JSON-able dict: settings, machine, rows, ratios against the targets."""
    by_name = {row.kind.name: row for row in rows}
    ratios = []
    for group, ours, peer, target in RATIOS:
        if ours not in by_name or peer not in by_name:
            continue  # a group left out of this run
        a, b = by_name[ours].best(), by_name[peer].best()
        entry: dict[str, Any] = {"group": group, "ours": ours, "peer": peer, "target": target}
        if a and b:
            entry["ratio"] = a["rps"] / b["rps"]
            entry["cpu_ratio"] = a["app_cpu_us"] / b["app_cpu_us"] if "app_cpu_us" in b else None
            entry["met"] = entry["ratio"] >= target if target else None
        else:
            entry["skipped"] = by_name[ours].skipped or by_name[peer].skipped or "no figures"
        ratios.append(entry)
    sqlite = by_name["asgi-sessionmw-sqlite"].best() if "asgi-sessionmw-sqlite" in by_name else None
    slo = {"target_p99_ms": 50, "p99_ms": sqlite["p99_us"] / 1000, "met": sqlite["p99_us"] <= 50_000} if sqlite else {}
    return {
        "benchmark": "bench_http",
        "date": started,
        "machine": host,
        "settings": {
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "uvicorn": "--workers 2 (uvloop, httptools), --no-access-log",
            "gunicorn": f"--workers 2 --threads {args.threads}",
            "sessions": "one per connection, created before the timing; wrk threads = connections",
        },
        "rows": [
            {
                "group": row.group,
                "kind": row.kind.name,
                "label": row.kind.label,
                "skipped": row.skipped or None,
                "best": row.best(),
                "rounds": row.rounds,
            }
            for row in rows
        ],
        "ratios": ratios,
        "sqlite_p99": slo,
    }


def per_request(commands: dict[str, int], served: int) -> str:
    """``{"get": 2000, "set": 2000}`` over 1000 requests as ``get 2, set 2``."""
    ordered = sorted(commands.items(), key=lambda kv: -kv[1])
    # Less than one call in a hundred requests is a connection's handshake (HELLO), not the request's.
    parts = [f"{name} {calls / served:.2g}" for name, calls in ordered if calls / served >= 0.01]
    return ", ".join(parts) if parts else "0"


def table(result: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    s = result["settings"]
    lines = [
        f"{result['date']}, {result['machine'].get('cpu', '?')}, {result['machine'].get('cores', '?')} cores, "
        f"Python {result['machine'].get('python', '?')}; wrk, {s['connections']} connections (one session each), "
        f"{s['duration_s']:g} s x {s['rounds']} rounds after {s['warmup_s']:g} s warm-up, best round",
        "",
        "| group | row | req/s | p50 ms | p99 ms | app CPU µs/req | backend CPU µs/req | backend commands/req |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        best = row["best"]
        if best is None:
            lines.append(f"| {row['group']} | {row['label']} | skipped: {row['skipped']} | | | | | |")
            continue
        commands = "—"
        if "commands_per_request" in best:
            commands = f"{best['commands_per_request']:.2f} ({per_request(best['commands'], best['served'])})"
        backend_cpu = f"{best['backend_cpu_us']:.1f}" if "backend_cpu_us" in best else "—"
        errors = best["errors"] + best["non2xx"] + best["timeouts"]
        flag = f" ({errors} errors)" if errors else ""
        lines.append(
            f"| {row['group']} | {row['label']} | {best['rps']:,.0f}{flag} | {best['p50_us'] / 1000:.2f} "
            f"| {best['p99_us'] / 1000:.2f} | {best.get('app_cpu_us', float('nan')):.0f} | {backend_cpu} "
            f"| {commands} |"
        )
    lines += ["", "| ratio | sessionmw ÷ peer, req/s | app CPU per request | target |", "|---|---:|---:|---|"]
    for r in result["ratios"]:
        if "ratio" not in r:
            lines.append(f"| {r['group']} | skipped: {r['skipped']} | | |")
            continue
        target = f"≥ {r['target']}× ({'met' if r['met'] else 'not met'})" if r["target"] else "—"
        cpu = f"{r['cpu_ratio']:.2f}×" if r.get("cpu_ratio") else "—"
        lines.append(f"| {r['group']} | {r['ratio']:.2f}× | {cpu} | {target} |")
    slo = result["sqlite_p99"]
    if slo:
        lines.append(f"| SQLite p99 | {slo['p99_ms']:.1f} ms | | ≤ 50 ms ({'met' if slo['met'] else 'not met'}) |")
    return "\n".join(lines)


def main() -> None:
    """Parse the options, run every row, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s warm-up, 2 rounds of 3 s (under 2 minutes)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per timing (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per row (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="timings per row, alternating (default 3)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections = sessions (default 16)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    parser.add_argument("--redis-url", default=None, help="a Redis db to use instead of a private redis-server")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 3.0, 1.0, 2
    sys.path.insert(0, str(HERE))
    result = run(args)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
