"""The ``sessionmw`` command line: the demo app and backend set-up.

Errors are one line on stderr with exit code 1 (2 for usage errors, as click does); no traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .errors import SessionError

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sessionmw")
def main() -> None:
    """Server-side, locked HTTP sessions: demo app and administration."""


@main.command()
@click.option("--backend", envvar="SESSIONMW_BACKEND", default=None, help="Backend URL (default: embedded SQLite).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
def demo(backend: str | None, host: str, port: int) -> None:
    """Serve the bundled demo app."""
    try:
        import uvicorn
    except ImportError:
        _fail("the demo needs uvicorn: pip install 'sessionmw[demo]'")
    from .demo import build_app, default_demo_backend

    url = backend or default_demo_backend()
    try:
        app = build_app(url)
        app.build_middleware_stack()
    except SessionError as exc:
        _fail(str(exc))
    click.echo(f"sessionmw demo on http://{host}:{port}/  (backend: {_display(url)})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command("init-db")
@click.option("--backend", envvar="SESSIONMW_BACKEND", required=True, help="SQL backend URL.")
@click.option("--key-prefix", default="sessmw:", show_default=True)
def init_db(backend: str, key_prefix: str) -> None:
    """Create the sessions table of an SQL backend (it is also created on first use)."""
    from .backends import open_backend

    try:
        store: Any = open_backend(backend, key_prefix=key_prefix)
        if not hasattr(store, "create_tables"):
            _fail(f"{_display(backend)} is not an SQL backend; it has no tables to create")
        store.create_tables()
        store.close()
    except SessionError as exc:
        _fail(str(exc))
    click.echo(f"tables ready in {_display(backend)}")


def _display(url: str) -> str:
    from .backends._url import parse_backend_url

    try:
        return parse_backend_url(url).display
    except SessionError:
        return url


def _fail(message: str) -> Any:
    click.echo(f"sessionmw: error: {message}", err=True)
    sys.exit(1)
