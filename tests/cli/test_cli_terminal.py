"""The command line in a terminal: a table that fits 80 columns, `kill` by a prefix of the name, read-only
commands that create nothing, whole numbers, one line per error, piped answers, the demo's paste line."""

from __future__ import annotations

import json
import os
import pty
import re
import secrets
import select
import shlex
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sessionmw.admin.cli import main
from sessionmw.admin.display import human_bytes
from sessionmw.backends import open_backend
from sessionmw.backends.base import Record

from ..conftest import free_port

HOUR = 3600.0
CLI = [sys.executable, "-m", "sessionmw.admin.cli"]


def run(*args: str, columns: int = 80, stdin: str | None = None) -> tuple[int, str, str]:
    """Run the CLI through click's runner in a terminal ``columns`` wide, with no backend in the environment."""
    env = {"COLUMNS": str(columns), "SESSIONMW_BACKEND": None, "SESSIONMW_KEY_PREFIX": None}
    result = CliRunner(env=env).invoke(main, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def put(url: str, prefix: str, name: str, **fields: object) -> None:
    """Store a session named ``name`` straight in the backend, as the middleware would."""
    now = time.time()
    values: dict[str, object] = {"first_ip": "203.0.113.7", "last_ip": "203.0.113.8", "expires": now + HOUR}
    values.update(fields)
    backend = open_backend(url, key_prefix=prefix)
    try:
        assert backend.create(name, Record(b"{}", now - 90, now - 30, **values), HOUR)  # type: ignore[arg-type]
    finally:
        backend.close()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/sessions"


# -- list: a table that fits -----------------------------------------------------------------------


def test_list_fits_80_columns_with_short_names_and_whole_dates(store_url: str, key_prefix: str) -> None:
    names = [secrets.token_urlsafe(32) for _ in range(3)]
    put(store_url, key_prefix, names[0], user_id="alice@example.com", user_agent="Mozilla/5.0 (X11; Linux x86_64) " * 3)
    put(store_url, key_prefix, names[1], first_ip="2001:db8:85a3::8a2e:370:7334", last_ip="2001:db8::1")
    put(store_url, key_prefix, names[2], user_id="[/]12345", user_agent="[bold]curl")  # no markup
    for columns in (80, 200):
        code, out, err = run("list", "--backend", store_url, "--key-prefix", key_prefix, columns=columns)
        assert code == 0, err
        lines = out.splitlines()
        assert all(len(line) <= columns for line in lines), out
        assert "3 session(s)" in out and "alice@example.com" in out and "[/]12345" in out
        for name in names:
            row = [line for line in lines if line.startswith(name[:8])]
            assert len(row) == 1, out  # one row, its name not wrapped onto the next line
            assert name[8:12] not in out  # a prefix of the name, not the name
            assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d  \d{4}-\d\d-\d\d \d\d:\d\d", row[0]), out  # both dates whole
    code, out, _ = run("list", "--backend", store_url, "--key-prefix", key_prefix, "--json")
    assert {s["sid"] for s in json.loads(out)} == set(names)  # --json keeps the whole name


def test_list_shows_longer_prefixes_where_eight_characters_are_shared(store_url: str, key_prefix: str) -> None:
    for name in ("sharedAAx1-rest-of-the-name", "sharedAAy2-rest-of-the-name", "otherBBBz3-rest-of-the-name"):
        put(store_url, key_prefix, name)
    code, out, _ = run("list", "--backend", store_url, "--key-prefix", key_prefix)
    assert code == 0
    assert "sharedAAx " in out and "sharedAAy " in out and "otherBBBz " in out  # one more than the shared 8
    code, out, _ = run("list", "--backend", store_url, "--key-prefix", key_prefix + "none:")
    assert (code, out.strip()) == (0, f"0 session(s) in {store_url}")


# -- kill: any unique prefix of at least 8 characters ----------------------------------------------


def test_kill_takes_a_unique_prefix_of_at_least_eight_characters(store_url: str, key_prefix: str) -> None:
    names = ["abcdefgh1xyz", "abcdefgh2xyz", "zyxwvuts-one", "exactly8", "exactly8-and-more"]
    for name in names:
        put(store_url, key_prefix, name)
    base = ["--backend", store_url, "--key-prefix", key_prefix, "--yes"]

    def left() -> set[str]:
        code, out, _ = run("list", "--backend", store_url, "--key-prefix", key_prefix, "--json")
        return {s["sid"] for s in json.loads(out)}

    code, out, err = run("kill", "zyxwvuts", *base, "--json")
    assert (code, json.loads(out)) == (0, {"ended": 1}), err
    assert left() == set(names) - {"zyxwvuts-one"}

    code, out, err = run("kill", "abcdefgh", *base)
    assert code == 1 and len(error_lines(err)) == 1
    assert "ambiguous" in err and "2 sessions" in err
    code, out, err = run("kill", "abcd", *base)
    assert code == 2 and len(error_lines(err)) == 1 and "at least 8 characters" in err
    code, out, err = run("kill", "nosuchsession", *base)
    assert code == 1 and len(error_lines(err)) == 1 and "no session 'nosuchsession'" in err
    assert left() == set(names) - {"zyxwvuts-one"}  # nothing ended by the refusals

    code, out, err = run("kill", "abcdefgh2", *base)
    assert code == 0 and "ended 1 session(s)" in out, err
    code, out, err = run("kill", "exactly8", *base)  # a whole name wins over the longer one it starts
    assert code == 0, err
    assert left() == {"abcdefgh1xyz", "exactly8-and-more"}
    code, out, err = run("kill", "exactly8-and-more", *base)
    assert code == 0, err
    assert left() == {"abcdefgh1xyz"}


# -- kill: a piped answer ---------------------------------------------------------------------------


def test_kill_accepts_an_answer_piped_to_stdin_and_refuses_an_empty_stdin(store_url: str, key_prefix: str) -> None:
    put(store_url, key_prefix, "piped-one-session")
    put(store_url, key_prefix, "piped-two-session")
    env = {**os.environ, "SESSIONMW_BACKEND": store_url, "SESSIONMW_KEY_PREFIX": key_prefix}

    def kill(name: str, stdin: str | None) -> subprocess.CompletedProcess[str]:
        # stdin a pipe (echo y | sessionmw kill ...), or /dev/null: never a terminal
        return subprocess.run(
            [*CLI, "kill", name],
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    empty = kill("piped-one", None)
    assert empty.returncode == 1 and len(error_lines(empty.stderr)) == 1, empty.stderr
    assert "stdin is empty" in empty.stderr and "--yes" in empty.stderr
    no = kill("piped-one", "n\n")
    assert no.returncode == 1 and len(error_lines(no.stderr)) == 1 and "not confirmed" in no.stderr
    yes = kill("piped-one", "y\n")
    assert yes.returncode == 0 and "ended 1 session(s)" in yes.stdout, yes.stderr
    code, out, _ = run("list", "--backend", store_url, "--key-prefix", key_prefix, "--json")
    assert [s["sid"] for s in json.loads(out)] == ["piped-two-session"]
    code, out, err = run("kill", "--all", "--backend", store_url, "--key-prefix", key_prefix, stdin="yes\n")
    assert code == 0 and "ended 1 session(s)" in out, err


# -- read-only commands create nothing --------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["list"], ["stats"], ["gc"], ["kill", "--all", "--yes"], ["kill", "somesession", "--yes"]],
    ids=["list", "stats", "gc", "kill-all", "kill-one"],
)
def test_a_missing_sqlite_file_or_directory_is_one_line_and_nothing_is_created(
    command: list[str], tmp_path: Path
) -> None:
    for url, missing in (
        (f"sqlite:///{tmp_path}/typo.db", tmp_path / "typo.db"),
        (f"file://{tmp_path}/no/such/dir", tmp_path / "no"),
    ):
        code, out, err = run(*command, "--backend", url)
        assert code == 1 and out == "", (url, out, err)
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("sessionmw: error:") and "does not exist" in lines[0], err
        assert str(tmp_path / missing.name) in lines[0]
        assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_sqlite_file_without_the_table_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    for command in (["list"], ["stats"], ["gc"]):
        code, _, err = run(*command, "--backend", f"sqlite:///{path}")
        assert code == 1 and len(error_lines(err)) == 1 and "no table 'sessmw_sessions'" in err, err
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]
    code, out, _ = run("init-db", "--backend", f"sqlite:///{path}")  # init-db creates
    assert code == 0
    code, out, err = run("list", "--backend", f"sqlite:///{path}")
    assert code == 0 and "0 session(s)" in out, err


@pytest.fixture(params=["postgresql", "mysql"])
def server_db(request: pytest.FixtureRequest) -> str:
    fixture = "postgres_url" if request.param == "postgresql" else "mysql_url"
    url: str = request.getfixturevalue(fixture)
    return url


def test_a_missing_table_on_a_database_server_is_one_line_and_not_created(server_db: str, key_prefix: str) -> None:
    table = f"t_{uuid.uuid4().hex[:12]}"
    url = f"{server_db}?table={table}"
    for command in (["list"], ["stats"], ["gc"], ["kill", "--all", "--yes"]):
        code, out, err = run(*command, "--backend", url, "--key-prefix", key_prefix)
        lines = error_lines(err)
        assert code == 1 and len(lines) == 1 and f"no table {table!r}" in lines[0], err
    engine = sa.create_engine(server_db)
    try:
        assert not sa.inspect(engine).has_table(table)
        code, _, err = run("init-db", "--backend", url)
        assert code == 0, err
        code, out, err = run("list", "--backend", url, "--key-prefix", key_prefix)
        assert code == 0 and "0 session(s)" in out, err
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


# -- stats: whole numbers, sizes for people ---------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1_284_340, "1.2 MiB"), (5 * 1024**3, "5.0 GiB")],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_stats_counts_are_integers(tmp_path: Path, key_prefix: str) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    for n in range(3):
        put(url, key_prefix, f"stats-session-{n}")
    code, out, err = run("stats", "--backend", url, "--key-prefix", key_prefix, "--json")
    figures = json.loads(out)
    assert code == 0, err
    assert figures["sessions"] == 3 and figures["rows"] == 3 and figures["expired_rows"] == 0
    assert all(type(figures[k]) is int for k in ("sessions", "users", "rows", "expired_rows")), out
    code, out, _ = run("stats", "--backend", url, "--key-prefix", key_prefix)
    shown = {
        cells[1].strip(): cells[2].strip()
        for cells in (line.split("│") for line in out.splitlines())
        if len(cells) == 4
    }
    assert shown["sessions"] == "3" and shown["rows"] == "3" and shown["expired_rows"] == "0", out


def test_stats_of_redis_shows_memory_in_mebibytes_and_exact_in_json(redis_url: str, key_prefix: str) -> None:
    code, out, err = run("stats", "--backend", redis_url, "--key-prefix", key_prefix, "--json")
    assert code == 0, err
    used = json.loads(out)["used_memory"]
    assert type(used) is int and used > 1024
    code, out, _ = run("stats", "--backend", redis_url, "--key-prefix", key_prefix)
    row = next(line for line in out.splitlines() if "used_memory" in line)
    assert re.search(r"\d+\.\d (KiB|MiB|GiB)", row), out


# -- one line per error -----------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a server that hangs."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        yield srv.getsockname()[1]


def _screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: text, CR, LF (the terminal's, so back to column 0), cursor up
    and erase line, the codes rich's live display uses; other escape sequences change nothing shown."""
    lines = [""]
    row = col = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", raw):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = ""
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [line for line in lines if line.strip()]


def test_gc_on_a_hanging_server_in_a_terminal_leaves_only_the_error(silent_port: int) -> None:
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100", "NO_COLOR": "1"}
    url = f"redis://127.0.0.1:{silent_port}/0?socket_timeout=1&connect_timeout=1"
    proc = subprocess.Popen(
        [*CLI, "gc", "--backend", url], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    raw = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
        assert proc.wait(timeout=30) == 1
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        assert proc.stdout is not None
        proc.stdout.close()
    text = raw.decode()
    assert "collecting expired sessions" in text  # the spinner was there while it waited...
    shown = _screen(text)
    assert len(shown) == 1 and shown[0].startswith("sessionmw: error:"), shown  # ...and is gone


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0",
        "memcached://127.0.0.1:{port}",
        "postgresql+psycopg://postgres@127.0.0.1:{port}/test",
    ],
    ids=["redis", "memcached", "postgresql"],
)
def test_gc_on_a_dead_server_prints_exactly_one_line(url: str) -> None:
    proc = subprocess.run(
        [*CLI, "gc", "--backend", url.format(port=free_port())], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and proc.stdout == ""
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("sessionmw: error:") and "unavailable" in lines[0], proc.stderr


@pytest.mark.parametrize("command", ["list", "kill", "gc", "stats", "init-db", "migrate"])
def test_a_missing_backend_names_the_environment_variable_on_one_line(command: str) -> None:
    code, out, err = run(command, *(["--to", "memory://"] if command == "migrate" else []))
    lines = error_lines(err)
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("sessionmw: error: Missing option") and lines[0].count("SESSIONMW_BACKEND") == 1


def test_other_usage_errors_are_one_line_too() -> None:
    for args in (["list", "--backend", "memory://", "--bogus"], ["nosuch"], ["kill", "--backend", "memory://"]):
        code, _, err = run(*args)
        assert code == 2 and len(error_lines(err)) == 1 and err.startswith("sessionmw: error:"), err


@pytest.mark.parametrize(
    ("scheme", "meant"),
    [("redsi", "redis"), ("memcache", "memcached"), ("sqlit", "sqlite"), ("postgress+psycopg", "postgresql+psycopg")],
)
def test_an_unknown_scheme_gets_a_did_you_mean(scheme: str, meant: str) -> None:
    code, _, err = run("list", "--backend", f"{scheme}://127.0.0.1/x")
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and f"did you mean {meant!r}?" in lines[0], err


# -- the demo ---------------------------------------------------------------------------------------


def test_the_demo_prints_a_line_that_lists_its_sessions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/demo.db"
    port = free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "SESSIONMW_KEY_PREFIX": "wrong:"}
    proc = subprocess.Popen(
        [*CLI, "demo", "--backend", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        line = proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert line.startswith("list its sessions: sessionmw list --backend"), line
    command = shlex.split(line.split(": ", 1)[1])
    assert command[-2:] == ["--key-prefix", "demo:"]

    def listed() -> list[str]:
        proc = subprocess.run([*CLI, *command[1:], "--json"], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [s["sid"] for s in json.loads(proc.stdout)]

    assert listed() == []  # it works before the demo's first visit
    put(url, "demo:", "a-demo-session-name")
    assert listed() == ["a-demo-session-name"]
