"""The bundled demo app: what sessionmw does, on one page, with no server to install.

``sessionmw demo`` serves it with uvicorn. Pages: a counter, sign in (any name) and out, a read-only
status page, and a slow page that holds the session lock for a few seconds, so a second tab shows
the lock at work.
"""

from __future__ import annotations

import asyncio
import html
import os
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .asgi import SessionMiddleware
from .readonly import read_only

__all__ = ["build_app", "default_demo_backend"]


def data_dir() -> Path:
    """Return the user's data directory for sessionmw (``$XDG_DATA_HOME/sessionmw``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sessionmw"


def default_demo_backend() -> str:
    """Return the demo's embedded default backend: an SQLite file in the user's data directory."""
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        return "file://" + str(data_dir() / "demo-sessions")
    data_dir().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir() / 'demo.db'}"


STYLE = """
body{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#222}
nav a{margin-right:1rem} .box{border:1px solid #ccc;border-radius:8px;padding:1rem;margin:1rem 0}
button{font-size:1rem;padding:.4rem 1rem} code{background:#f4f4f4;padding:0 .2rem}
"""


def page(title: str, body: str) -> HTMLResponse:
    """Wrap ``body`` in the demo's HTML layout."""
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)} · sessionmw demo</title>"
        f"<style>{STYLE}</style></head><body><nav><a href='/'>Counter</a><a href='/status'>Status (read-only)</a>"
        f"<a href='/slow'>Slow page</a></nav><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


async def home(request: Request) -> Response:
    s: Any = request.session
    user = s.user_id
    who = (
        f"Signed in as <b>{html.escape(str(user))}</b>. "
        "<form method=post action=/logout><button>Sign out</button></form>"
        if user is not None
        else "<form method=post action=/login><input name=name placeholder='any name' required>"
        " <button>Sign in</button></form>"
    )
    return page(
        "Counter",
        f"<div class=box><p>Count: <b id=count>{s.get('count', 0)}</b></p>"
        "<form method=post action=/increment><button id=inc>Increment</button></form></div>"
        f"<div class=box>{who}</div>"
        f"<p>Session id: <code>{html.escape((s.id or '')[:10])}…</code> (new: {s.is_new})</p>",
    )


async def increment(request: Request) -> Response:
    s: Any = request.session
    s["count"] = s.get("count", 0) + 1
    return RedirectResponse("/", status_code=303)


async def login(request: Request) -> Response:
    form = await request.form()
    name = str(form.get("name") or "").strip()[:64] or "guest"
    s: Any = request.session
    s.bind_user(name)
    s["signed_in_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    s: Any = request.session
    s.invalidate()
    return RedirectResponse("/", status_code=303)


@read_only
async def status(request: Request) -> Response:
    s: Any = request.session
    rows = "".join(f"<li><code>{html.escape(k)}</code> = {html.escape(repr(v))}</li>" for k, v in s.items())
    return page(
        "Status (read-only)",
        "<p>This route is marked <code>@read_only</code>: it reads the session without taking the lock, "
        "so it answers at once even while the slow page holds the lock.</p>"
        f"<ul>{rows or '<li>(empty session)</li>'}</ul>",
    )


async def slow(request: Request) -> Response:
    s: Any = request.session
    s["slow_visits"] = s.get("slow_visits", 0) + 1
    seconds = min(float(request.query_params.get("t", "5")), 30.0)
    await asyncio.sleep(seconds)
    return page(
        "Slow page",
        f"<p>This request held the session lock for {seconds:g} s. Open the counter in another tab meanwhile: "
        "it waits for the lock, while the read-only status page does not.</p>",
    )


def build_app(backend: str | None = None, secret_key: str | None = None) -> Starlette:
    """Return the demo app on ``backend`` (default: the embedded SQLite file)."""
    return Starlette(
        routes=[
            Route("/", home),
            Route("/increment", increment, methods=["POST"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/status", status),
            Route("/slow", slow),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=secret_key or os.environ.get("SESSIONMW_SECRET_KEY") or "sessionmw-demo-not-secret",
                backend=backend or default_demo_backend(),
                cookie_prefix="demo_",
                idle_timeout=3600,
                lock_timeout=30,
            )
        ],
    )
