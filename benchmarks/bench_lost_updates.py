"""Lost updates under concurrency: sessionmw beside Starlette, Flask, starsessions, Flask-Session and Beaker.

One browser with eight tabs: 8 threads share one cookie jar (each request carries the jar's current
cookie; each Set-Cookie replaces it when its response arrives, as in a browser), and each sends 25
requests that increment a counter in the session, all at once, against a real server with 2 worker
processes: uvicorn ``--workers 2`` for the ASGI apps, gunicorn ``--workers 2 --threads 4`` for the WSGI
ones. It prints, per library, the final counts of the runs and the share of the 200 increments lost.

    python benchmarks/bench_lost_updates.py [--rounds 5] [--redis-url redis://127.0.0.1:6379/0] [KIND ...]

Kinds: starlette, starsessions, flask, flask-session, beaker, sessionmw-asgi, sessionmw-flask (default:
all). The Redis-backed ones need a Redis server; keys get a random prefix. starsessions, Flask-Session
and Beaker are installed for this benchmark only (``pip install starsessions flask-session beaker``).
The same process serves as the app module: the servers import ``asgi_app`` or ``wsgi_app`` from it.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx

CLIENTS, INCREMENTS = 8, 25
HERE = Path(__file__).resolve().parent
ASGI_KINDS = ("starlette", "starsessions", "sessionmw-asgi")
WSGI_KINDS = ("flask", "flask-session", "beaker", "sessionmw-flask")


# -- the apps, built in the server processes from LOST_* environment variables ------------------


def asgi_app() -> Any:
    """The Starlette counter app with the session middleware named by ``LOST_KIND``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    kind, redis_url, prefix = os.environ["LOST_KIND"], os.environ["LOST_REDIS"], os.environ["LOST_PREFIX"]

    async def inc(request: Request) -> JSONResponse:
        request.session["n"] = request.session.get("n", 0) + 1
        return JSONResponse({"n": request.session["n"]})

    async def view(request: Request) -> JSONResponse:
        return JSONResponse({"n": request.session.get("n", 0)})

    async def start(request: Request) -> JSONResponse:
        request.session["who"] = "bench"
        return JSONResponse({})

    routes = [Route("/inc", inc), Route("/view", view), Route("/start", start)]
    if kind == "starlette":
        from starlette.middleware.sessions import SessionMiddleware

        middleware = [Middleware(SessionMiddleware, secret_key="k")]
    elif kind == "starsessions":
        from starsessions import SessionAutoloadMiddleware
        from starsessions import SessionMiddleware as StarSessionMiddleware
        from starsessions.stores.redis import RedisStore

        store = RedisStore(redis_url, prefix=prefix)
        middleware = [
            Middleware(StarSessionMiddleware, store=store, cookie_https_only=False, lifetime=3600),
            Middleware(SessionAutoloadMiddleware),
        ]
    elif kind == "sessionmw-asgi":
        from sessionmw import SessionMiddleware as OurMiddleware

        middleware = [Middleware(OurMiddleware, secret_key="k", backend=redis_url, key_prefix=prefix, lock_timeout=60)]
    else:
        raise SystemExit(f"not an ASGI kind: {kind}")
    return Starlette(routes=routes, middleware=middleware)


def wsgi_app() -> Any:
    """The Flask counter app with the sessions named by ``LOST_KIND``."""
    from flask import Flask, request, session

    kind, redis_url, prefix = os.environ["LOST_KIND"], os.environ["LOST_REDIS"], os.environ["LOST_PREFIX"]
    app = Flask(__name__)
    app.secret_key = "k"
    beaker = kind == "beaker"

    def current() -> Any:
        return request.environ["beaker.session"] if beaker else session

    @app.route("/inc")
    def inc() -> Any:
        s = current()
        s["n"] = s.get("n", 0) + 1
        if beaker:
            s.save()
        return {"n": s["n"]}

    @app.route("/view")
    def view() -> Any:
        return {"n": current().get("n", 0)}

    @app.route("/start")
    def start() -> Any:
        s = current()
        s["who"] = "bench"
        if beaker:
            s.save()
        return {}

    if kind == "flask":
        return app
    if kind == "flask-session":
        import redis
        from flask_session import Session

        app.config.update(
            SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(redis_url), SESSION_KEY_PREFIX=prefix
        )
        Session(app)
        return app
    if kind == "sessionmw-flask":
        from sessionmw.flask import FlaskSession

        app.config.update(SESSION_BACKEND=redis_url, SESSION_KEY_PREFIX=prefix, SESSION_LOCK_TIMEOUT=60)
        FlaskSession(app)
        return app
    if beaker:
        from beaker.middleware import SessionMiddleware as BeakerMiddleware

        data = os.environ["LOST_DIR"]
        options = {
            "session.type": "file",
            "session.data_dir": f"{data}/data",
            "session.lock_dir": f"{data}/lock",
            "session.key": "beaker",
        }
        app.wsgi_app = BeakerMiddleware(app.wsgi_app, options)  # type: ignore[method-assign]
        return app
    raise SystemExit(f"not a WSGI kind: {kind}")


# -- the clients --------------------------------------------------------------------------------


class Jar:
    """One browser's cookie jar shared by its tabs: the last Set-Cookie to arrive wins."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cookies: dict[str, str] = {}

    def header(self) -> str:
        """The Cookie header a request sends now."""
        with self.lock:
            return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def take(self, response: httpx.Response) -> None:
        """Store the cookies a response sets, and forget those it deletes."""
        for raw in response.headers.get_list("set-cookie"):
            parsed: SimpleCookie = SimpleCookie()
            parsed.load(raw)
            with self.lock:
                for name, morsel in parsed.items():
                    if morsel["max-age"] == "0" or morsel["expires"].startswith("Thu, 01 Jan 1970"):
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value


def hammer(base: str) -> int:
    """Start a session, increment it from 8 tabs at once, return the final count."""
    jar = Jar()
    with httpx.Client(base_url=base, timeout=120) as client:
        response = client.get("/start")
        response.raise_for_status()
        jar.take(response)
    if not jar.cookies:
        raise RuntimeError("the first request set no cookie")
    barrier = threading.Barrier(CLIENTS)
    errors: list[str] = []

    def tab() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            barrier.wait()
            for _ in range(INCREMENTS):
                response = client.get("/inc", headers={"cookie": jar.header()})
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:100]}")
                jar.take(response)

    threads = [threading.Thread(target=tab) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    with httpx.Client(base_url=base, timeout=60) as client:
        return int(client.get("/view", headers={"cookie": jar.header()}).json()["n"])


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(kind: str, redis_url: str) -> int:
    """Serve ``kind`` with 2 workers, hammer it once, stop it; return the final count."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lost-") as data:
        env = {
            **os.environ,
            "LOST_KIND": kind,
            "LOST_REDIS": redis_url,
            "LOST_PREFIX": f"lost{uuid.uuid4().hex[:8]}:",
            "LOST_DIR": data,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        }
        if kind in ASGI_KINDS:
            argv = [sys.executable, "-m", "uvicorn", "bench_lost_updates:asgi_app", "--factory", "--workers", "2",
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
        else:
            argv = [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "4", "--bind",
                    f"127.0.0.1:{port}", "--log-level", "warning", "bench_lost_updates:wsgi_app()"]  # fmt: skip
        server = subprocess.Popen(argv, cwd=HERE, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base + "/view", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind}: the server did not start")
                time.sleep(0.1)
            return hammer(base)
        finally:
            server.terminate()
            server.wait(15)


def main() -> None:
    """Run the kinds asked for, ``--rounds`` times each, and print what each lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", default=[*ASGI_KINDS, *WSGI_KINDS], metavar="KIND")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url", default=os.environ.get("SESSIONMW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    total = CLIENTS * INCREMENTS
    for kind in args.kinds:
        if kind not in ASGI_KINDS + WSGI_KINDS:
            parser.error(f"unknown kind {kind!r}")
        counts = [one_run(kind, args.redis_url) for _ in range(args.rounds)]
        lost = sorted(round(100 * (1 - n / total)) for n in counts)
        print(f"{kind}: final counts {counts} of {total}; lost {lost[0]}-{lost[-1]} %", flush=True)


if __name__ == "__main__":
    main()
