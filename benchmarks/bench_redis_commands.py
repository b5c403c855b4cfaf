"""Redis commands per request: what sessionmw sends, what the server executes, and what that costs.

Starts a private redis-server on a free loopback port (or uses --redis-url), drives an ASGI app
in-process and prints, per kind of request (locked read+write, read-only, a route that never
touches its session, with the cookie sent):

- round trips and commands sent per request, counted at the client (the backend's runners);
- commands executed per request, from the server's ``INFO commandstats`` after ``CONFIG RESETSTAT``
  (a script counts once as EVALSHA and once per command it runs inside);
- the server's CPU µs per request, the sum of commandstats' ``usec`` (time inside commands, not
  the server's reading and writing of sockets);
- in-process µs per request (the ASGI call, wall clock, fastest of --repeat runs);

and bytes per session beyond the payload (``MEMORY USAGE`` of a session's keys at rest, minus the
session data's own length). Then, for the record, the forms of the lock-and-load considered, run bare
against the server (no middleware): commands executed and server µs per call.

    python benchmarks/bench_redis_commands.py [--requests 2000] [--repeat 5] [--json out.json]
                                             [--compare before.json]

``--compare`` prints a before/after table against the JSON of an earlier run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_backends import call, private_server, ro, rw, untouched
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sessionmw import SessionMiddleware
from sessionmw.backends.redis import _async_runners, ops
from sessionmw.backends.redis.records import decode
from sessionmw.backends.redis.scripts import BIG_RECORD, HEAD_RANGE, SAVE, TOUCH
from sessionmw.backends.redis.wire import ms

REQUESTS = (
    ("read+write", "/rw"),
    ("locked read, unchanged", "/read"),
    ("read-only", "/ro"),
    ("untouched, cookie sent", "/untouched"),
)


async def locked_read(request: Request) -> PlainTextResponse:
    """Reads its session under the lock (no ``@read_only``) and changes nothing: released, not saved."""
    return PlainTextResponse(str(request.session.get("n", 0)))


# The lock-and-load as one script (SET NX PX, then GET, in Lua): measured as a variant by swapping
# ops.lock_and_load, since the pipelined pair it would replace is the backend's form.
LOCK_AND_LOAD_SCRIPT = """
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return {1, redis.call('GET', KEYS[1])}
"""


def scripted_lock_and_load(keys: Any, sid: str, token: str, expire: float) -> Any:
    """``ops.lock_and_load`` as one EVALSHA (the script is loaded beforehand)."""
    data = keys.data(sid).encode()
    sha = hashlib.sha1(LOCK_AND_LOAD_SCRIPT.encode()).hexdigest().encode()
    command = ("EVALSHA", sha, b"2", data, data + b":lock", token.encode(), b"%d" % ms(expire))

    def parse(reply: Any) -> tuple[bool, Any]:
        if reply is None:
            return False, None
        return True, decode(reply[1]) if len(reply) > 1 else None

    return ops.Batch((command,), parse)


VARIANTS: dict[str, Any] = {"today": ops.lock_and_load, "lock-and-load as one script": scripted_lock_and_load}

LOCKED = ("read+write", "locked read, unchanged")


class Sent:
    """Counts what the backend's runners send: round trips, and commands in them by name."""

    trips = 0
    names: Counter[str] = Counter()

    @classmethod
    def install(cls) -> None:
        for runner in (_async_runners.Connections, _async_runners.Pooled):
            original = runner.run

            async def counted(self: Any, *commands: Any, _original: Any = original) -> Any:
                cls.trips += 1
                for command in commands:
                    name = command[0]
                    cls.names[(name.decode() if isinstance(name, bytes) else name).lower()] += 1
                return await _original(self, *commands)

            runner.run = counted  # type: ignore[method-assign]


def server_stats(client: redis.Redis, sent: Counter[str]) -> tuple[int, float, dict[str, int]]:
    """Commands executed, µs spent in the commands sent, and calls per command, since CONFIG RESETSTAT.

    A script's usec includes the commands it runs, which commandstats counts under their own names
    too: those are counted once, as the script's. Of a command both sent and run inside scripts (a
    GET), the share sent is taken at the mean µs per call. INFO and CONFIG are left out.
    """
    info = client.info("commandstats")
    calls: dict[str, int] = {}
    usec = 0.0
    for key, value in info.items():
        name = key.removeprefix("cmdstat_")
        if name in ("info", "config|resetstat", "config"):
            continue
        n = int(value["calls"])
        calls[name] = n
        if name in ("evalsha", "eval"):
            usec += float(value["usec"])
        elif sent[name]:
            usec += float(value["usec"]) * min(1.0, sent[name] / n)
    return sum(calls.values()), usec, calls


def server_cpu(client: redis.Redis) -> float:
    """µs of CPU the server process has used, user and system (sockets included)."""
    info = client.info("cpu")
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6


async def measure(app: Any, client: redis.Redis, path: str, cookie: bytes, n: int) -> dict[str, Any]:
    """One kind of request: round trips and commands per request, server µs per request."""
    for _ in range(50):
        await call(app, path, cookie)
    client.config_resetstat()
    trips, names = Sent.trips, Counter(Sent.names)
    cpu = server_cpu(client)
    for _ in range(n):
        await call(app, path, cookie)
    cpu = server_cpu(client) - cpu
    sent = Sent.names - names
    executed, usec, calls = server_stats(client, sent)
    row: dict[str, Any] = {
        "round_trips": (Sent.trips - trips) / n,
        "commands_sent": sum(sent.values()) / n,
        "server_cpu_usec": cpu / n,
        "commands_executed": executed / n,
        "server_usec": usec / n,
        "by_command": {k: v / n for k, v in sorted(calls.items())},
    }
    return row


async def timed(app: Any, path: str, cookie: bytes, n: int) -> float:
    """In-process µs per request over ``n`` requests (wall clock)."""
    started = time.perf_counter()
    for _ in range(n):
        await call(app, path, cookie)
    return (time.perf_counter() - started) / n * 1e6


async def bytes_per_session(app: Any, client: redis.Redis, prefix: str, count: int) -> dict[str, float]:
    """Bytes per session at rest beyond the session data, over ``count`` fresh anonymous sessions.

    Two figures: ``MEMORY USAGE`` of each session's keys (the key, its value and the entry of the main
    dictionary), and the growth of the server's ``used_memory`` per session, which also holds the
    entry of the dictionary of expiries and the tables' growth.
    """
    before = int(client.info("memory")["used_memory"])
    for _ in range(count):
        cookie = await call(app, "/rw", None)
        await call(app, "/rw", cookie)
    grown = int(client.info("memory")["used_memory"]) - before
    beyond: list[int] = []
    meta: list[int] = []
    data_lengths: list[int] = []
    for key in client.scan_iter(match=prefix + "{*", count=1000):
        if client.type(key) != b"string":
            continue
        usage = int(client.memory_usage(key, samples=0) or 0)
        value = client.get(key)
        assert value is not None
        head, _, data = value.partition(b"\n")
        beyond.append(usage - len(data))
        meta.append(len(head))
        data_lengths.append(len(data))
    return {
        "sessions": len(beyond),
        "bytes_beyond_payload": statistics.mean(beyond),
        "used_memory_beyond_payload": grown / count - statistics.mean(data_lengths),
        "metadata_line": statistics.mean(meta),
        "key_length": len(prefix) + 2 + 43,
    }


# The forms of lock-and-load considered, bare: each locks a fresh key and loads a record of 60 bytes.
LOCK_IN_HASH_SCRIPT = """
local v = redis.call('HMGET', KEYS[1], 'd', 'l')
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
if v[2] and tonumber(string.sub(v[2], 1, 13)) > ms then return false end
redis.call('HSET', KEYS[1], 'l', string.format('%013d', ms + tonumber(ARGV[2])) .. ARGV[1])
return {1, v[1]}
"""


def forms(client: redis.Redis, n: int) -> list[dict[str, Any]]:
    """Commands executed and server µs per call of each form of lock-and-load, on its own."""
    record = b'[1.0,2.0,null,"127.0.0.1",null,1.0,0,null,3.0]\n{"n":1}'
    out = []
    lua = client.script_load(LOCK_AND_LOAD_SCRIPT)
    lua_hash = client.script_load(LOCK_IN_HASH_SCRIPT)

    def pipelined(i: int) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.set(f"f:{{{i}}}:lock", "tok", nx=True, px=30000)
        pipe.get(f"f:{{{i}}}")
        pipe.execute()

    def script(i: int) -> None:
        client.evalsha(lua, 2, f"f:{{{i}}}", f"f:{{{i}}}:lock", "tok", 30000)

    def in_hash(i: int) -> None:
        client.evalsha(lua_hash, 1, f"h:{{{i}}}", "tok", 30000)

    for i in range(n):
        client.set(f"f:{{{i}}}", record)
        client.hset(f"h:{{{i}}}", "d", record)
    for label, sent_names, fn in (
        ("SET NX PX + GET, pipelined", Counter(set=1, get=1), pipelined),
        ("one script: SET NX PX + GET", Counter(evalsha=1), script),
        ("one script, the lock a field of the session's hash (HMGET, TIME, HSET)", Counter(evalsha=1), in_hash),
    ):
        client.config_resetstat()
        cpu = server_cpu(client)
        for i in range(n):
            fn(i)
        cpu = server_cpu(client) - cpu
        sent_names = Counter({name: count * n for name, count in sent_names.items()})
        executed, usec, _ = server_stats(client, sent_names)
        out.append(
            {
                "form": label,
                "commands_sent": sum(sent_names.values()) // n,
                "commands_executed": executed / n,
                "server_usec": usec / n,
                "server_cpu_usec": cpu / n,
            }
        )
        client.delete(*[f"f:{{{i}}}:lock" for i in range(n)])
        for i in range(n):
            client.hdel(f"h:{{{i}}}", "l")
    string_usage = statistics.mean(int(client.memory_usage(f"f:{{{i}}}", samples=0) or 0) for i in range(n))
    hash_usage = statistics.mean(int(client.memory_usage(f"h:{{{i}}}", samples=0) or 0) for i in range(n))
    out.append({"form": "memory: record as a string, MEMORY USAGE", "bytes": string_usage})
    out.append({"form": "memory: record as field 'd' of a hash, MEMORY USAGE", "bytes": hash_usage})
    client.delete(*[f"f:{{{i}}}" for i in range(n)], *[f"h:{{{i}}}" for i in range(n)])
    return out


def save_forms(client: redis.Redis, n: int) -> list[dict[str, Any]]:
    """Server µs per save-and-release script by record size: SET ... GET of the whole old record, or the head only.

    The first form is SAVE with its branch for big records switched off: what every save ran before.
    """
    whole = SAVE.replace(f"if #ARGV[4] > {BIG_RECORD} then", "if false then")
    assert whole != SAVE
    head = b'[1764588891.123456,1764588891.123456,null,"127.0.0.1","127.0.0.1",1764588891.123456,0,null,1.0]\n'
    out = []
    for size in (100, 16384, 65536):
        record = head + b"x" * size
        for i in range(n):
            client.set(f"s:{{{i}}}", record)
        forms = (("SET ... GET, all of the old record", whole), ("SAVE (head only over 8 KB)", SAVE))
        shas = [client.script_load(source) for _, source in forms]
        best: dict[str, dict[str, float]] = {}
        for _ in range(3):  # the repetitions alternate between the forms; the fastest counts
            for (label, _), sha in zip(forms, shas, strict=True):
                for i in range(n):
                    client.set(f"s:{{{i}}}:lock", "tok", px=60000)
                client.config_resetstat()
                cpu = server_cpu(client)
                pipe = client.pipeline(transaction=False)
                for i in range(n):
                    k = f"s:{{{i}}}"
                    pipe.evalsha(sha, 4, k, k + ":lock", k + ":waiters", k + ":wakeups", 60000, "tok", "null", record)
                    if i % 50 == 49:
                        pipe.execute()
                pipe.execute()
                cpu = server_cpu(client) - cpu
                executed, usec, _ = server_stats(client, Counter(evalsha=n))
                figures = {"commands_executed": executed / n, "server_usec": usec / n, "server_cpu_usec": cpu / n}
                if label not in best or figures["server_usec"] < best[label]["server_usec"]:
                    best[label] = figures
        for label, _ in forms:
            out.append({"form": f"{label}, record of {size} B", "commands_sent": 1, **best[label]})
        client.delete(*[f"s:{{{i}}}" for i in range(n)])
    return out


def touch_forms(client: redis.Redis, n: int) -> list[dict[str, Any]]:
    """Server µs per touch script by record size: the whole record read and written, or its head in place.

    The first form is TOUCH made to read the whole record (GET) and write it whole: what every touch ran before.
    """
    head_read = (
        f"local value = redis.call('GETRANGE', KEYS[1], 0, {HEAD_RANGE - 1})\n  local whole = #value < {HEAD_RANGE}"
    )
    whole = TOUCH.replace(head_read, "local value = redis.call('GET', KEYS[1]) or ''\n  local whole = true")
    assert whole != TOUCH
    head = b'[1764588891.5,1764588891.5,null,"127.0.0.1","127.0.0.1",1764588891.5,0,null,1764590691.5]\n'
    out = []
    for size in (100, 16384, 65536):
        record = head + b"x" * size
        for i in range(n):
            client.set(f"t:{{{i}}}", record)
        forms = (("GET and SET of the whole record", whole), ("TOUCH (head in place when long)", TOUCH))
        shas = [client.script_load(source) for _, source in forms]
        best: dict[str, dict[str, float]] = {}
        for rep in range(3):
            for k, ((label, _), sha) in enumerate(zip(forms, shas, strict=True)):
                at = 1764588892.5 + rep * 2 + k  # always newer: every touch rewrites the metadata line
                arg = f"{at!r} {at + 1800!r} 60000"
                client.config_resetstat()
                cpu = server_cpu(client)
                pipe = client.pipeline(transaction=False)
                for i in range(n):
                    pipe.evalsha(sha, 1, f"t:{{{i}}}", arg)
                    if i % 50 == 49:
                        pipe.execute()
                pipe.execute()
                cpu = server_cpu(client) - cpu
                executed, usec, _ = server_stats(client, Counter(evalsha=n))
                figures = {"commands_executed": executed / n, "server_usec": usec / n, "server_cpu_usec": cpu / n}
                if label not in best or figures["server_usec"] < best[label]["server_usec"]:
                    best[label] = figures
        for label, _ in forms:
            out.append({"form": f"{label}, record of {size} B", "commands_sent": 1, **best[label]})
        client.delete(*[f"t:{{{i}}}" for i in range(n)])
    return out


async def main_async(url: str, n: int, repeat: int, sessions: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    prefix = f"b{uuid.uuid4().hex[:6]}:"
    app = Starlette(
        routes=[Route("/rw", rw), Route("/read", locked_read), Route("/ro", ro), Route("/untouched", untouched)],
        middleware=[Middleware(SessionMiddleware, secret_key="k", backend=url, key_prefix=prefix)],
    )
    cookie = await call(app, "/rw", None)
    assert cookie
    result: dict[str, Any] = {
        "redis": client.info("server")["redis_version"],
        "python": sys.version.split()[0],
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "requests": n,
    }
    client.script_load(LOCK_AND_LOAD_SCRIPT)
    variants: dict[str, dict[str, dict[str, Any]]] = {}
    result["variants"] = variants
    # The repetitions alternate between the variants, so that both meet the same neighbours on a shared
    # machine; each in-process figure is the fastest repetition.
    for rep in range(repeat + 1):
        for variant, lock_and_load in VARIANTS.items():
            ops.lock_and_load = lock_and_load
            try:
                for label, path in REQUESTS:
                    if rep == 0:
                        variants.setdefault(variant, {})[label] = await measure(app, client, path, cookie, n)
                        continue
                    took = await timed(app, path, cookie, n)
                    row = variants[variant][label]
                    row["in_process_us"] = min(row.get("in_process_us", took), took)
            finally:
                ops.lock_and_load = VARIANTS["today"]
    result["requests_by_kind"] = result["variants"]["today"]
    result["memory"] = await bytes_per_session(app, client, prefix, sessions)
    result["forms"] = forms(client, min(n, 2000))
    result["save_forms"] = save_forms(client, min(n, 1000))
    result["touch_forms"] = touch_forms(client, min(n, 1000))
    return result


def print_result(result: dict[str, Any], before: dict[str, Any] | None) -> None:
    print(f"Redis {result['redis']}, Python {result['python']}, {result['requests']} requests per figure\n")
    cols = ("round_trips", "commands_sent", "commands_executed", "server_usec", "server_cpu_usec", "in_process_us")
    print(
        "| request | round trips | commands sent | commands executed | server µs in commands | server CPU µs"
        " | in-process µs | executed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    rows = [(label, label, row) for label, row in result["requests_by_kind"].items()]
    for variant, by_kind in result.get("variants", {}).items():
        if variant != "today":
            rows += [(f"{label}, variant: {variant}", label, row) for label, row in by_kind.items() if label in LOCKED]
    for name, label, row in rows:
        old = (before or {}).get("requests_by_kind", {}).get(label)
        cells = []
        for col in cols:
            fmt = "{:g}" if col in ("round_trips", "commands_sent", "commands_executed") else "{:.1f}"
            cell = fmt.format(row[col])
            if old is not None:
                cell = fmt.format(old[col]) + " → " + cell
            cells.append(cell)
        by = ", ".join(f"{k} {v:g}" for k, v in row["by_command"].items()) or "none"
        print(f"| {name} | " + " | ".join(cells) + f" | {by} |")
    mem = result["memory"]
    old_mem = (before or {}).get("memory")
    was = f"{old_mem['bytes_beyond_payload']:.0f} → " if old_mem else ""
    grown = (
        f"{old_mem['used_memory_beyond_payload']:.0f} → " if old_mem and "used_memory_beyond_payload" in old_mem else ""
    )
    print(
        f"\nBytes per session at rest beyond the session data ({mem['sessions']} anonymous sessions, key prefix"
        f" of {mem['key_length'] - 45} characters): MEMORY USAGE {was}{mem['bytes_beyond_payload']:.0f};"
        f" growth of used_memory {grown}{mem['used_memory_beyond_payload']:.0f};"
        f" of which the metadata line {mem['metadata_line']:.0f}\n"
    )
    print("Forms of lock-and-load, bare (no middleware)\n")
    print("| form | commands sent | commands executed | server µs in commands | server CPU µs |")
    print("|---|---:|---:|---:|---:|")
    for f in result["forms"]:
        if "bytes" in f:
            print(f"| {f['form']} | | | {f['bytes']:.0f} B | |")
        else:
            print(
                f"| {f['form']} | {f['commands_sent']} | {f['commands_executed']:g} | {f['server_usec']:.2f}"
                f" | {f['server_cpu_usec']:.2f} |"
            )


def print_save_forms(result: dict[str, Any]) -> None:
    print("\nSave-and-release script, bare (pipelined, nobody waiting), by record size\n")
    print("| form | commands executed | server µs in commands | server CPU µs |\n|---|---:|---:|---:|")
    for f in result.get("save_forms", []):
        print(f"| {f['form']} | {f['commands_executed']:g} | {f['server_usec']:.1f} | {f['server_cpu_usec']:.1f} |")
    print("\nTouch script, bare (pipelined, a newer last access each time), by record size\n")
    print("| form | commands executed | server µs in commands | server CPU µs |\n|---|---:|---:|---:|")
    for f in result.get("touch_forms", []):
        print(f"| {f['form']} | {f['commands_executed']:g} | {f['server_usec']:.1f} | {f['server_cpu_usec']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=2000, help="sessions created to measure bytes per session")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--compare", default=None, help="the JSON of an earlier run: print before → after")
    args = parser.parse_args()

    def redis_argv(binary: str, port: int) -> list[str]:
        return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    with private_server(redis_argv, "redis-server") as port:
        url = args.redis_url or (f"redis://127.0.0.1:{port}/0" if port else None)
        if url is None:
            sys.exit("no redis-server on PATH: pass --redis-url")
        Sent.install()
        result = asyncio.run(main_async(url, args.requests, args.repeat, args.sessions))
    before = None
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
    print_result(result, before)
    print_save_forms(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
