"""The ``sessionmw`` command line: administration of a site's sessions, and the demo app.

Every command takes ``--backend URL`` (or ``SESSIONMW_BACKEND``) and ``--key-prefix`` (or
``SESSIONMW_KEY_PREFIX``), and for a tiered store ``--durable-backend URL`` (or
``SESSIONMW_DURABLE_BACKEND``), the durable tier behind ``--backend``. ``--json`` prints one JSON
document for scripts. Errors are one line on stderr with exit code 1 (2 for usage errors, as click
does); never a traceback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core.errors import SessionError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> Any:
    click.echo(f"sessionmw: error: {message}", err=True)
    sys.exit(1)


def _display(url: str) -> str:
    from ..backends._url import parse_backend_url

    try:
        return parse_backend_url(url).display
    except SessionError:
        return url


def backend_options(func: F) -> F:
    """Add the ``--backend``, ``--key-prefix`` and ``--json`` options every admin command takes."""
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(func)
    func = click.option(
        "--key-prefix",
        envvar="SESSIONMW_KEY_PREFIX",
        default="sessmw:",
        show_default=True,
        help="The site's key prefix.",
    )(func)
    func = durable_option(func)
    func = click.option("--backend", envvar="SESSIONMW_BACKEND", required=True, help="Backend URL.")(func)
    return func


def durable_option(func: F) -> F:
    """Add ``--durable-backend``: the durable tier of a tiered store, behind ``--backend``."""
    return click.option(
        "--durable-backend",
        envvar="SESSIONMW_DURABLE_BACKEND",
        default=None,
        help="Durable backend URL behind --backend (a tiered store).",
    )(func)


def _where(backend: str, durable_backend: str | None) -> str:
    if durable_backend is None:
        return _display(backend)
    return f"{_display(backend)} + {_display(durable_backend)}"


@contextmanager
def _store(backend: str, key_prefix: str, durable_backend: str | None = None) -> Iterator[Any]:
    from .store import SessionStore

    try:
        store = SessionStore(backend, key_prefix=key_prefix, durable_backend=durable_backend)
    except SessionError as exc:
        _fail(str(exc))
    try:
        yield store
    except SessionError as exc:
        _fail(str(exc))
    finally:
        try:
            store.close()
        except SessionError:
            pass


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sessionmw")
def main() -> None:
    """Server-side, locked HTTP sessions: administration and the demo app."""


@main.command("list")
@backend_options
@click.option("--user", "user_id", default=None, help="Only this user's sessions.")
def list_(backend: str, durable_backend: str | None, key_prefix: str, as_json: bool, user_id: str | None) -> None:
    """List sessions (never their data), oldest first."""
    with _store(backend, key_prefix, durable_backend) as store:
        infos = store.list_sessions(user_id=user_id)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(info) for info in infos]))
        return
    table = Table(title=f"{len(infos)} session(s) in {_where(backend, durable_backend)}")
    table.add_column("session id", overflow="fold")  # wrapped, never cut: it is what `kill` takes
    for column in ("user", "created", "last access", "first IP", "last IP", "user agent"):
        table.add_column(column)
    for i in infos:
        table.add_row(
            i.sid,
            "" if i.user_id is None else str(i.user_id),
            _when(i.created),
            _when(i.last_access),
            i.first_ip or "",
            i.last_ip or "",
            (i.user_agent or "")[:40],
        )
    console.print(table)


@main.command()
@backend_options
@click.argument("sid", required=False)
@click.option("--user", "user_id", default=None, help="End every session of this user.")
@click.option("--all", "everything", is_flag=True, help="End every session of the site.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def kill(
    backend: str,
    durable_backend: str | None,
    key_prefix: str,
    as_json: bool,
    sid: str | None,
    user_id: str | None,
    everything: bool,
    yes: bool,
) -> None:
    """End one session (SID), a user's sessions (--user) or all sessions (--all)."""
    chosen = [x for x in (sid is not None, user_id is not None, everything) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of SID, --user ID or --all")
    what = f"session {sid}" if sid else f"every session of user {user_id!r}" if user_id else "EVERY session"
    if not yes:
        if not sys.stdin.isatty():
            _fail(f"refusing to end {what} without confirmation: add --yes")
        click.confirm(f"End {what} in {_where(backend, durable_backend)}?", abort=True)
    with _store(backend, key_prefix, durable_backend) as store:
        if sid is not None:
            ended = 1 if store.terminate(sid) else 0
            if not ended:
                if as_json:
                    click.echo(json.dumps({"ended": 0}))
                _fail(f"no session {sid[:12]}… in {_where(backend, durable_backend)}")
        elif user_id is not None:
            ended = store.terminate_user(user_id)
        else:
            ended = store.terminate_all()
    if as_json:
        click.echo(json.dumps({"ended": ended}))
    else:
        console.print(f"ended {ended} session(s)")


@main.command()
@backend_options
def gc(backend: str, durable_backend: str | None, key_prefix: str, as_json: bool) -> None:
    """Remove expired sessions and their index entries."""
    with _store(backend, key_prefix, durable_backend) as store:
        if as_json:
            removed = store.gc()
        else:
            with Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err_console
            ) as progress:
                where = _where(backend, durable_backend)
                task = progress.add_task(f"collecting expired sessions in {where}", total=None)
                removed = store.gc()
                progress.update(task, total=1, completed=1)
    if as_json:
        click.echo(json.dumps({"removed": removed}))
    else:
        console.print(f"removed {removed} expired session(s)")


@main.command()
@backend_options
def stats(backend: str, durable_backend: str | None, key_prefix: str, as_json: bool) -> None:
    """Show figures: sessions, users, oldest, and the store's own (memcached evictions...)."""
    with _store(backend, key_prefix, durable_backend) as store:
        figures = store.stats()
    evicted = figures.get("evictions", 0) or figures.get("evicted_keys", 0)
    if as_json:
        click.echo(json.dumps(figures))
    else:
        table = Table(title=f"sessions in {_where(backend, durable_backend)}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for name, value in figures.items():
            table.add_row(name, _when(value) if name == "oldest" else f"{value:g}")
        console.print(table)
    if evicted and "fast_available" in figures:
        err_console.print(
            f"[yellow]note:[/] the fast tier evicted {evicted:g} item(s); the durable tier keeps every session, "
            "so these cost reads from it, not sessions"
        )
    elif evicted:
        err_console.print(
            f"[yellow]warning:[/] the store evicted {evicted:g} item(s): evicted sessions are lost sessions "
            "(give it more memory, or use a store that does not evict)"
        )


@main.command("init-db")
@click.option("--backend", envvar="SESSIONMW_BACKEND", required=True, help="SQL backend URL.")
@durable_option
@click.option("--key-prefix", envvar="SESSIONMW_KEY_PREFIX", default="sessmw:", show_default=True)
def init_db(backend: str, durable_backend: str | None, key_prefix: str) -> None:
    """Create the sessions table of an SQL backend, or of a tiered store's durable tier (also done on first use)."""
    from ..backends import open_backend

    sql = backend if durable_backend is None else durable_backend
    try:
        store: Any = open_backend(sql, key_prefix=key_prefix)
        if not hasattr(store, "create_tables"):
            store.close()
            _fail(f"{_display(sql)} is not an SQL backend; it has no tables to create")
        store.create_tables()
        store.close()
    except SessionError as exc:
        _fail(str(exc))
    click.echo(f"tables ready in {_display(sql)}")


@main.command()
@click.option("--from", "source", envvar="SESSIONMW_BACKEND", required=True, help="Backend URL to copy from.")
@durable_option
@click.option("--to", "target", required=True, help="Backend URL to copy to.")
@click.option("--key-prefix", envvar="SESSIONMW_KEY_PREFIX", default="sessmw:", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def migrate(source: str, durable_backend: str | None, target: str, key_prefix: str, as_json: bool) -> None:
    """Copy every live session to another backend, keeping ids: nobody is logged out."""
    from ..backends import open_backend

    with _store(source, key_prefix, durable_backend) as store:
        try:
            open_backend(target, key_prefix=key_prefix).close()  # a bad target fails before any copying
        except SessionError as exc:
            _fail(str(exc))
        if as_json:
            copied = store.migrate(target)
        else:
            total = store.count()
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=err_console,
            ) as progress:  # fmt: skip
                task = progress.add_task(f"{_where(source, durable_backend)} → {_display(target)}", total=total)
                copied = store.migrate(target, progress=lambda n: progress.advance(task, n))
    if as_json:
        click.echo(json.dumps({"copied": copied}))
    else:
        console.print(f"copied {copied} session(s) to {_display(target)}")


@main.command()
@click.option("--backend", envvar="SESSIONMW_BACKEND", default=None, help="Backend URL (default: embedded SQLite).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--framework", type=click.Choice(["fastapi", "flask"]), default="fastapi", show_default=True, help="Which app."
)
def demo(backend: str | None, host: str, port: int, framework: str) -> None:
    """Serve the bundled demo app."""
    from ..demo import build_app, default_demo_backend

    url = backend or default_demo_backend()
    try:
        app = build_app(url, framework=framework)
    except SessionError as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"the demo needs {exc.name}: pip install 'sessionmw[demo]'")
    click.echo(f"sessionmw demo ({framework}) on http://{host}:{port}/  (backend: {_display(url)})")
    if framework == "flask":
        from werkzeug.serving import run_simple

        run_simple(host, port, app, threaded=True)
        return
    try:
        import uvicorn
    except ImportError:
        _fail("the demo needs uvicorn: pip install 'sessionmw[demo]'")
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
