"""FastAPI with server-side sessions; options come from the app's settings object.

Routes: GET /             the cart and the signed-in user, and what to try next
        POST /cart/{item} add an item (holds the session lock)
        GET /cart         the cart, read-only (no lock)
        POST /login/{user} sign in: the session is bound to the user and gets a new id

Run:  uvicorn examples.fastapi_app:app --port 8000   (sessions in SQLite, in the system temp directory)
On Redis:      SESSIONMW_BACKEND=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_app:app
On memcached:  SESSIONMW_BACKEND=memcached://127.0.0.1:11211 uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from fastapi import FastAPI, Request

from sessionmw import SessionMiddleware, options_from_config, read_only


class Settings:
    """The app's settings: sessionmw reads SECRET_KEY and SESSION_* from it."""

    SECRET_KEY = os.environ.get("APP_SECRET_KEY", "change-me")
    SESSION_BACKEND = os.environ.get(
        "SESSIONMW_BACKEND", "sqlite:///" + os.path.join(tempfile.gettempdir(), "sessionmw-fastapi-example.db")
    )
    SESSION_COOKIE_PREFIX = "fastapi_"
    SESSION_IDLE_TIMEOUT = 3600
    SESSION_LOCK_TIMEOUT = 30


app = FastAPI()
app.add_middleware(SessionMiddleware, **options_from_config(Settings(), env=False))


@app.get("/")
@read_only
async def index(request: Request) -> dict[str, Any]:
    """What the session holds, and the routes to try (curl -c jar -b jar -X POST .../cart/apple)."""
    return {
        "cart": request.session.get("cart", []),
        "user": request.session.user_id,  # type: ignore[attr-defined]
        "try": ["POST /cart/{item}", "GET /cart", "POST /login/{user}"],
    }


@app.post("/cart/{item}")
async def add_to_cart(item: str, request: Request) -> dict[str, Any]:
    """Add an item: this request holds the session lock, so two tabs cannot lose an item."""
    cart = request.session.get("cart", [])
    request.session["cart"] = [*cart, item]  # reassign: in-place changes of nested values are not seen
    return {"cart": request.session["cart"]}


@app.get("/cart")
@read_only
async def show_cart(request: Request) -> dict[str, Any]:
    """Read the cart without taking the lock."""
    return {"cart": request.session.get("cart", [])}


@app.post("/login/{user}")
async def login(user: str, request: Request) -> dict[str, Any]:
    """Bind the session to a user; the id is regenerated (no fixation)."""
    request.session.bind_user(user)  # type: ignore[attr-defined]
    return {"user": user}
