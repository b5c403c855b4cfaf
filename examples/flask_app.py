"""Flask with server-side sessions; options in app.config.

Routes: GET /        count this browser's visits (holds the session lock)
        GET /status  the count, read-only (no lock)

Run:  flask --app examples.flask_app run   (sessions in files, in the system temp directory)
On Redis:      SESSION_BACKEND=redis://127.0.0.1:6379/0 flask --app examples.flask_app run
On memcached:  SESSION_BACKEND=memcached://127.0.0.1:11211 flask --app examples.flask_app run
"""

from __future__ import annotations

import os
import tempfile

from flask import Flask, session

from sessionmw import read_only
from sessionmw.flask import FlaskSession

app = Flask(__name__)
app.config.update(
    SECRET_KEY=os.environ.get("APP_SECRET_KEY", "change-me"),
    SESSION_BACKEND=os.environ.get(
        "SESSION_BACKEND", "file://" + os.path.join(tempfile.gettempdir(), "sessionmw-flask-example")
    ),
    SESSION_COOKIE_PREFIX="flask_",
    SESSION_IDLE_TIMEOUT=3600,
    SESSION_LOCK_TIMEOUT=30,
)
FlaskSession(app)


@app.route("/")
def index() -> str:
    """Count visits; concurrent requests of one user are serialized by the session lock."""
    session["visits"] = session.get("visits", 0) + 1
    return f"visits: {session['visits']}"


@app.route("/status")
@read_only
def status() -> str:
    """Read without locking: answers even while another request of this user holds the lock."""
    return f"visits so far: {session.get('visits', 0)}"
