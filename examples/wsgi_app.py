"""Any WSGI app: the session is environ["sessionmw.session"].

Routes: any path  count this visitor's requests (holds the session lock)

Run:  python examples/wsgi_app.py     (then open http://127.0.0.1:8000/; sessions in the system temp directory)
On Redis:      SESSIONMW_BACKEND=redis://127.0.0.1:6379/0 python examples/wsgi_app.py
On memcached:  SESSIONMW_BACKEND=memcached://127.0.0.1:11211 python examples/wsgi_app.py
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import make_server

from sessionmw import WSGISessionMiddleware


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Count this visitor's requests."""
    session = environ["sessionmw.session"]
    session["n"] = session.get("n", 0) + 1
    body = f"request number {session['n']} in this session\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = WSGISessionMiddleware(
    hello,
    secret_key=os.environ.get("APP_SECRET_KEY", "change-me"),
    backend=os.environ.get(
        "SESSIONMW_BACKEND", "file://" + os.path.join(tempfile.gettempdir(), "sessionmw-wsgi-example")
    ),
    idle_timeout=3600,
)

if __name__ == "__main__":
    with make_server("127.0.0.1", 8000, app) as server:
        print("http://127.0.0.1:8000/")
        server.serve_forever()
