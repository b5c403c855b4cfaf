"""Every benchmark in benchmarks/, one after another, with one command; one JSON file of all figures.

Quick settings by default (fewer requests and rounds: the whole set in minutes, for a check that
everything runs and a first look); ``--full`` runs each benchmark with its own defaults (the figures
for the README). Each benchmark runs in a subprocess; its printed tables are shown as they come and
kept in the JSON, with its own JSON figures where it has a ``--json`` option. A benchmark whose tool,
server or peer library is missing is marked skipped with the reason, and one that fails is marked
failed with the end of its error output: the run goes on either way.

    python benchmarks/run_all.py [--full] [--only bench_http,bench_untouched] [--json PATH]
                                 [--postgres-url URL] [--mysql-url URL]

The JSON (default ``benchmarks/results/latest.json``) starts with the machine: CPU model, cores,
memory, Python, the servers' versions (Redis, memcached, PostgreSQL, MariaDB), the libraries'
versions, the git commit and the date.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGES = ("sessionmw", "starlette", "uvicorn", "uvloop", "httptools", "gunicorn", "flask", "starsessions",
            "flask-session", "redis", "pymemcache", "sqlalchemy", "psycopg", "pymysql")  # fmt: skip


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its arguments in quick and full runs, and what it cannot run without."""

    name: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()
    json: bool = False  # it takes --json PATH
    databases: tuple[str, ...] = ()  # which of --postgres-url and --mysql-url it takes
    needs: tuple[str, ...] = ()  # programs on PATH
    modules: tuple[str, ...] = ()  # importable modules
    #: Positional KIND arguments, each with the module it needs ("" for none): a kind whose module is
    #: missing is left out and named in the entry, since the script itself would fail on it.
    kinds: tuple[tuple[str, str], ...] = ()


BENCHES = [
    Bench("bench_http", ("--quick",), json=True, needs=("wrk",)),
    Bench("bench_middleware", ("--requests", "500", "--repeat", "3")),
    Bench("bench_untouched", ("--requests", "500", "--repeat", "3"), json=True),
    Bench("bench_backends", ("--requests", "500", "--repeat", "3"), modules=("starsessions",)),
    Bench("bench_redis_commands", ("--requests", "500", "--repeat", "3", "--sessions", "500"), json=True),
    Bench("bench_events", ("--requests", "500", "--repeat", "3"), json=True),
    Bench("bench_security", ("--requests", "500", "--repeat", "3"), json=True),
    Bench("bench_handoff", ("--requests", "10"), json=True, databases=("postgres", "mysql")),
    Bench("bench_sql_load", ("--requests", "20", "--warmup", "2"), json=True, databases=("postgres", "mysql")),
    Bench("bench_many", ("--requests", "500",), databases=("postgres",)),
    Bench("bench_lost_updates", ("--rounds", "1",), modules=("httpx",),
          kinds=(("starlette", ""), ("starsessions", "starsessions"), ("sessionmw-asgi", ""), ("flask", "flask"),
                 ("flask-session", "flask_session"), ("beaker", "beaker"), ("sessionmw-flask", "flask"))),
    Bench("bench_gc", ("--sessions", "5000", "--file-sessions", "500", "--steady-seconds", "5"), json=True,
          databases=("postgres", "mysql")),
    Bench("bench_scale", ("--sessions", "1000,20000", "--gc-expired", "20000", "--gc-live", "5000", "--rounds", "3"),
          json=True, databases=("postgres",)),
    Bench("count_instructions", ("--requests", "100",), needs=("valgrind",)),
]  # fmt: skip


def _run(argv: list[str]) -> str:
    """The first line a program prints, or an empty string if it cannot run."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""


def _sql_version(url: str | None, query: str) -> str | None:
    """The server version a database URL answers with, or None."""
    if not url:
        return None
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                return str(conn.execute(sqlalchemy.text(query)).scalar())
        finally:
            engine.dispose()
    except Exception as exc:  # a machine description: a server that does not answer is written down
        return f"unreachable ({type(exc).__name__})"


def machine(postgres_url: str | None = None, mysql_url: str | None = None) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, Python, servers, libraries, commit, date."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            found = re.search(r"^MemTotal:\s*(\d+) kB", f.read(), re.M)
            memory = f"{int(found.group(1)) / 1024**2:.1f} GiB" if found else None
    except OSError:
        pass
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    redis = _run(["redis-server", "--version"])
    found = re.search(r"v=(\S+)", redis)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis": found.group(1) if found else None,
        "memcached": _run(["memcached", "-V"]).removeprefix("memcached ") or None,
        "postgresql": _sql_version(postgres_url, "SHOW server_version"),
        "mysql": _sql_version(mysql_url, "SELECT VERSION()"),
        "wrk": _run(["wrk", "-v"]).split(" [")[0] or None,
        "commit": _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or None,
        # Uncommitted changes to the library: the figures are of the working tree, not of the commit.
        "library_changed": bool(_run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "sessionmw"])),
        "packages": packages,
    }


def why_skipped(bench: Bench) -> str:
    """Why ``bench`` cannot run on this machine, or an empty string."""
    import importlib.util

    if not (HERE / f"{bench.name}.py").exists():
        return "no such script"
    for program in bench.needs:
        if shutil.which(program) is None:
            return f"{program} not installed"
    for module in bench.modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed"
    return ""


def run_one(bench: Bench, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Run one benchmark in a subprocess; its status, printed text, JSON figures and duration."""
    entry: dict[str, Any] = {"name": bench.name, "status": "skipped", "reason": why_skipped(bench)}
    if entry["reason"]:
        return entry
    argv = [sys.executable, str(HERE / f"{bench.name}.py"), *(bench.full if args.full else bench.quick)]
    json_path = os.path.join(tmp, f"{bench.name}.json")
    if bench.json:
        argv += ["--json", json_path]
    if bench.kinds:
        import importlib.util

        kept = [kind for kind, module in bench.kinds if not module or importlib.util.find_spec(module)]
        left = [f"{kind} ({module} not installed)" for kind, module in bench.kinds if kind not in kept]
        argv += kept
        if left:
            entry["left_out"] = left
    for database in bench.databases:
        url = getattr(args, f"{database}_url")
        if url:
            argv += [f"--{database}-url", url]
    entry["command"] = " ".join(["python", f"benchmarks/{bench.name}.py", *argv[2:]]).replace(json_path, "…")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        entry.update(status="failed", reason=f"timed out after {args.timeout:g} s", output=out)
        return entry
    entry["seconds"] = round(time.monotonic() - started, 1)
    entry["output"] = done.stdout
    if done.returncode != 0:
        entry.update(status="failed", reason=f"exit {done.returncode}: " + done.stderr.strip()[-2000:])
        return entry
    entry.update(status="ok", reason=None)
    if bench.json and os.path.exists(json_path):
        with open(json_path) as f:
            entry["figures"] = json.load(f)
    return entry


def main() -> None:
    """Run the benchmarks asked for, print each one's tables, write one JSON file."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--full", action="store_true", help="each benchmark's own (long) defaults")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"), metavar="PATH")
    parser.add_argument("--postgres-url", default=os.environ.get("SESSIONMW_TEST_POSTGRES_URL"))
    parser.add_argument("--mysql-url", default=os.environ.get("SESSIONMW_TEST_MYSQL_URL"))
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default 900, full 7200)")
    args = parser.parse_args()
    if args.timeout is None:
        args.timeout = 7200.0 if args.full else 900.0
    only = {name for name in args.only.split(",") if name}
    unknown = only - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    result: dict[str, Any] = {
        "machine": machine(args.postgres_url, args.mysql_url),
        "full": args.full,
        "benchmarks": [],
    }
    m = result["machine"]
    print(f"# {m['date']}: {m['cpu']}, {m['cores']} cores, Python {m['python']}, Redis {m['redis']}, "
          f"PostgreSQL {m['postgresql']}, MariaDB/MySQL {m['mysql']}, commit {m['commit']}\n")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="run-all-") as tmp:
        for bench in BENCHES:
            if only and bench.name not in only:
                continue
            print(f"## {bench.name}", flush=True)
            entry = run_one(bench, args, tmp)
            result["benchmarks"].append(entry)
            if entry["status"] == "ok":
                left = f"; left out: {', '.join(entry['left_out'])}" if entry.get("left_out") else ""
                print(f"{entry['output'].rstrip()}\n({entry['seconds']:g} s{left})\n", flush=True)
            else:
                print(f"{entry['status']}: {entry['reason']}\n", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    counts = {s: sum(e["status"] == s for e in result["benchmarks"]) for s in ("ok", "skipped", "failed")}
    print(f"{counts['ok']} ran, {counts['skipped']} skipped, {counts['failed']} failed; figures in {args.json}")


if __name__ == "__main__":
    main()
