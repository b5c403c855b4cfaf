"""The bundled demo app: what sessionmw does, in a browser, with no server to install.

``sessionmw demo`` serves it (uvicorn for FastAPI, a threaded WSGI server for Flask) on an SQLite
file in the user's data directory. Pages: sign in (any name) and out, a counter, "your sessions"
(end one, or all others), an admin page (every session, ``stats()``, the lock waits; end a user's
sessions), a read-only status page, a slow page that holds the session lock for a few seconds (so a
second tab shows the lock at work), and ``/metrics`` (Prometheus, with the extra installed). The
session events (:mod:`sessionmw.demo.activity`) tell a page that its request waited for the lock, or
that its session was ended elsewhere. Both frameworks serve the same pages from
:mod:`sessionmw.demo.pages`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

__all__ = [
    "COOKIE_PREFIX",
    "EXCLUDE_PATHS",
    "IDLE_TIMEOUT",
    "KEY_PREFIX",
    "LOCK_TIMEOUT",
    "MAX_SESSIONS_PER_USER",
    "build_app",
    "data_dir",
    "default_demo_backend",
    "demo_secret_key",
]

#: Prefix of the demo's backend keys, so it never meets another app's sessions on a shared backend.
KEY_PREFIX = "demo:"
#: Prefix of the demo's cookie name: the cookie is ``demo_session``.
COOKIE_PREFIX = "demo_"
#: Seconds without a request after which a demo session ends.
IDLE_TIMEOUT = 3600
#: Seconds a request waits for the session lock (the slow page holds it for at most 30).
LOCK_TIMEOUT = 30
#: Sessions one name may have at once: a sign-in beyond ends that name's oldest session.
MAX_SESSIONS_PER_USER = 3
#: Paths that never load the session: a metrics scrape takes no session lock.
EXCLUDE_PATHS = ("/metrics",)


def data_dir() -> Path:
    """Return the user's data directory for sessionmw (``$XDG_DATA_HOME/sessionmw``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sessionmw"


def default_demo_backend() -> str:
    """Return the demo's embedded default backend: an SQLite file in the user's data directory."""
    directory = data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        return "file://" + str(directory / "demo-sessions")
    return f"sqlite:///{directory / 'demo.db'}"


def demo_secret_key() -> str:
    """Return the demo's secret key: ``$SESSIONMW_SECRET_KEY``, else one kept in the data directory.

    Kept in a file (mode 0600) so that sessions survive a restart of the demo; a random key for this
    process only when the data directory cannot be written.
    """
    env = os.environ.get("SESSIONMW_SECRET_KEY")
    if env:
        return env
    path = data_dir() / "demo-secret"
    try:
        key = path.read_text(encoding="ascii").strip()
        if key:
            return key
    except OSError:
        pass
    key = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
    except FileExistsError:  # another process wrote it first: use theirs
        return path.read_text(encoding="ascii").strip() or key
    except OSError:
        pass
    return key


def build_app(backend: str | None = None, secret_key: str | None = None, framework: str = "fastapi") -> Any:
    """Return the demo app on ``backend`` (default: the embedded SQLite file): FastAPI (ASGI) or Flask (WSGI)."""
    url = backend or default_demo_backend()
    key = secret_key or demo_secret_key()
    if framework == "fastapi":
        from .fastapi_app import build_fastapi_app

        return build_fastapi_app(url, key)
    if framework == "flask":
        from .flask_app import build_flask_app

        return build_flask_app(url, key)
    raise ValueError(f"framework must be 'fastapi' or 'flask', not {framework!r}")
