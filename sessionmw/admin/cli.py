"""The ``sessionmw`` command line: administration of a site's sessions, and the demo app.

Every command takes ``--backend URL`` (or ``SESSIONMW_BACKEND``) and ``--key-prefix`` (or
``SESSIONMW_KEY_PREFIX``), and for a tiered store ``--durable-backend URL`` (or
``SESSIONMW_DURABLE_BACKEND``), the durable tier behind ``--backend``. ``--json`` prints one JSON
document for scripts. Every error, a usage error included, is one line on stderr (``sessionmw:
error: ...``) with exit code 1 (2 for usage errors, as click does): never a traceback, and no
progress display left above it. ``list``, ``kill``, ``gc`` and ``stats`` (and ``migrate``'s source)
open a store that must exist: they never create a database file, table or directory.

Sessions are named by their handle (``SessionInfo.sid``), an opaque string: ``list`` shows the
shortest prefix of at least :data:`SHORT` characters that tells the listed sessions apart, and
``kill`` takes any unique prefix of at least that length, as git does with commits. How sessions and
figures look on a terminal is :mod:`.display`'s part.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..core.errors import SessionError
from .display import SHORT, abbreviated, console, err_console, figures_table, progress_display, sessions_table

__all__ = ["SHORT", "main"]

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> Any:
    click.echo(f"sessionmw: error: {message}", err=True)
    sys.exit(1)


def _usage_message(exc: click.UsageError) -> str:
    """click's message for a usage error, naming the environment variable a missing option can come from."""
    message = exc.format_message()
    param = exc.param if isinstance(exc, click.BadParameter) else None
    if isinstance(exc, click.MissingParameter) and param is not None and param.envvar:
        envvar = param.envvar if isinstance(param.envvar, str) else param.envvar[0]
        if envvar not in message:  # click 8.2 names it itself: "(env var: 'SESSIONMW_BACKEND')"
            message = f"{message.rstrip('.')} (or set {envvar})."
    if exc.ctx is not None:
        stop = "" if message.endswith((".", "?", "!")) else "."
        message = f"{message}{stop} See '{exc.ctx.command_path} --help'."
    return message


class _Group(click.Group):
    """click's group, printing a usage error on one line as the commands print theirs (click prints
    the usage, a hint and the error on four)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; as click's, but every error is one line on stderr."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            # Not standalone: click hands the errors over instead of printing them its way.
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            click.echo(f"sessionmw: error: {_usage_message(exc)}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"sessionmw: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)  # click returns --help's and --version's exit code


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
        show_envvar=True,
        default="sessmw:",
        show_default=True,
        help="The site's key prefix.",
    )(func)
    func = durable_option(func)
    func = click.option("--backend", envvar="SESSIONMW_BACKEND", show_envvar=True, required=True, help="Backend URL.")(
        func
    )
    return func


def durable_option(func: F) -> F:
    """Add ``--durable-backend``: the durable tier of a tiered store, behind ``--backend``."""
    return click.option(
        "--durable-backend",
        envvar="SESSIONMW_DURABLE_BACKEND",
        show_envvar=True,
        default=None,
        help="Durable backend URL behind --backend (a tiered store).",
    )(func)


def _where(backend: str, durable_backend: str | None) -> str:
    if durable_backend is None:
        return _display(backend)
    return f"{_display(backend)} + {_display(durable_backend)}"


@contextmanager
def _store(backend: str, key_prefix: str, durable_backend: str | None = None) -> Iterator[Any]:
    """The store of ``backend``, which must exist (nothing is created); a :class:`SessionError` is one line."""
    from .store import SessionStore

    try:
        store = SessionStore(backend, key_prefix=key_prefix, durable_backend=durable_backend, create=False)
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


def _confirm(question: str) -> None:
    """Ask ``question`` and exit unless the answer is yes; an answer piped to stdin counts, an empty stdin refuses."""
    if sys.stdin.isatty():
        if not click.confirm(question, err=True):
            _fail("not confirmed: nothing ended")
        return
    line = sys.stdin.readline()
    if not line:
        _fail(
            f"cannot ask {question!r}: stdin is empty and not a terminal; pipe the answer (echo y | ...) or add --yes"
        )
    if line.strip().lower() not in ("y", "yes"):
        _fail(f"not confirmed (the answer read was {line.strip()!r}): nothing ended")


def _resolve(store: Any, given: str, where: str) -> str:
    """The one live session whose name is ``given`` or starts with it; exit naming the problem otherwise."""
    try:
        whole = store.backend.load(given) is not None  # a whole name (from --json): no scan
    except SessionError:
        whole = False  # a name this store cannot even look up (memcached: a space); the scan says more
    if whole:
        return given
    found = [info.sid for info in store.list_sessions() if info.sid.startswith(given)]
    if not found:
        _fail(f"no session {given!r} in {where}")
    if len(found) > 1:
        _fail(f"{given!r} is ambiguous: {len(found)} sessions start with it; give more characters")
    name: str = found[0]
    return name


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    title = f"{len(infos)} session(s) in {_where(backend, durable_backend)}"
    if infos:
        console.print(sessions_table(title, infos, console.width))
    else:
        click.echo(title)


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
    """End one session (SID), a user's sessions (--user) or all sessions (--all).

    SID is a session's name, or any unique prefix of it of at least 8 characters (as `list` shows).
    Without --yes it asks first, reading the answer from stdin when that is not a terminal
    (echo y | sessionmw kill ...).
    """
    chosen = [x for x in (sid is not None, user_id is not None, everything) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of SID, --user ID or --all")
    if sid is not None and len(sid) < SHORT:
        raise click.BadParameter(
            f"{sid!r} is too short: give at least {SHORT} characters of the session's name (as `list` shows)",
            param_hint="SID",
        )
    where = _where(backend, durable_backend)
    with _store(backend, key_prefix, durable_backend) as store:
        if sid is not None:
            sid = _resolve(store, sid, where)
        if sid is not None:
            what = f"session {abbreviated(sid)}"
        elif user_id is not None:
            what = f"every session of user {user_id!r}"
        else:
            what = "EVERY session"
        if not yes:
            _confirm(f"End {what} in {where}?")
        if sid is not None:
            ended = 1 if store.terminate(sid) else 0
            if not ended:
                if as_json:
                    click.echo(json.dumps({"ended": 0}))
                _fail(f"no session {abbreviated(sid)} in {where}")
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
            with progress_display(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()
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
        console.print(figures_table(f"sessions in {_where(backend, durable_backend)}", figures))
    if evicted and "fast_available" in figures:
        err_console.print(
            f"[yellow]note:[/] the fast tier evicted {int(evicted)} item(s); the durable tier keeps every session, "
            "so these cost reads from it, not sessions"
        )
    elif evicted:
        err_console.print(
            f"[yellow]warning:[/] the store evicted {int(evicted)} item(s): evicted sessions are lost sessions "
            "(give it more memory, or use a store that does not evict)"
        )


@main.command("init-db")
@click.option("--backend", envvar="SESSIONMW_BACKEND", show_envvar=True, required=True, help="SQL backend URL.")
@durable_option
@click.option("--key-prefix", envvar="SESSIONMW_KEY_PREFIX", show_envvar=True, default="sessmw:", show_default=True)
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
@click.option(
    "--from", "source", envvar="SESSIONMW_BACKEND", show_envvar=True, required=True, help="Backend URL to copy from."
)
@durable_option
@click.option("--to", "target", required=True, help="Backend URL to copy to.")
@click.option("--key-prefix", envvar="SESSIONMW_KEY_PREFIX", show_envvar=True, default="sessmw:", show_default=True)
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
            with progress_display(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
            ) as progress:
                task = progress.add_task(f"{_where(source, durable_backend)} → {_display(target)}", total=total)
                copied = store.migrate(target, progress=lambda n: progress.advance(task, n))
    if as_json:
        click.echo(json.dumps({"copied": copied}))
    else:
        console.print(f"copied {copied} session(s) to {_display(target)}")


@main.command()
@click.option(
    "--backend",
    envvar="SESSIONMW_BACKEND",
    show_envvar=True,
    default=None,
    help="Backend URL (default: embedded SQLite).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--framework", type=click.Choice(["fastapi", "flask"]), default="fastapi", show_default=True, help="Which app."
)
def demo(backend: str | None, host: str, port: int, framework: str) -> None:
    """Serve the bundled demo app."""
    from ..demo import KEY_PREFIX, build_app, default_demo_backend

    url = backend or default_demo_backend()
    try:
        app = build_app(url, framework=framework)
    except SessionError as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"the demo needs {exc.name}: pip install 'sessionmw[demo]'")
    _create_tables(url, KEY_PREFIX)
    click.echo(f"sessionmw demo ({framework}) on http://{host}:{port}/  (backend: {_display(url)})")
    click.echo(f"list its sessions: sessionmw list --backend {shlex.quote(_display(url))} --key-prefix {KEY_PREFIX}")
    if framework == "flask":
        from werkzeug.serving import run_simple

        run_simple(host, port, app, threaded=True)
        return
    try:
        import uvicorn
    except ImportError:
        _fail("the demo needs uvicorn: pip install 'sessionmw[demo]'")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _create_tables(url: str, key_prefix: str) -> None:
    """Create an SQL backend's table now, so the demo's store can be listed before its first visit.

    A backend that does not answer is left to the app, which answers 503 until it does.
    """
    from ..backends import open_backend

    try:
        backend: Any = open_backend(url, key_prefix=key_prefix)
        try:
            if hasattr(backend, "create_tables"):
                backend.create_tables()
        finally:
            backend.close()
    except SessionError:
        pass


if __name__ == "__main__":
    main()
