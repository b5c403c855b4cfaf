"""The ``sessionmw`` command line, through click's runner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessionmw import SessionStore
from sessionmw.admin.cli import main

from ..integration.test_middleware_conformance import client_for
from .test_admin import login


def seed(url: str, key_prefix: str) -> dict[str, str]:
    """Three sessions made through the middleware, two of alice and one of bob; return a1, a2, b -> the
    name the store lists each under (an opaque string to the CLI)."""
    names: dict[str, str] = {}
    for label, user in (("a1", "alice"), ("a2", "alice"), ("b", "bob")):
        with client_for("asgi", backend=url, key_prefix=key_prefix) as c:
            login(c, user)
        with SessionStore(url, key_prefix=key_prefix) as store:
            (names[label],) = {i.sid for i in store.list_sessions()} - set(names.values())
    return names


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def site(tmp_path: Path, key_prefix: str) -> tuple[str, str, dict[str, str]]:
    url = f"file://{tmp_path}/sessions"
    return url, key_prefix, seed(url, key_prefix)


def test_list_stats_and_kill_through_the_runner(site: tuple[str, str, dict[str, str]]) -> None:
    url, prefix, sids = site
    base = ["--backend", url, "--key-prefix", prefix]
    code, out, _ = run("list", *base, "--json")
    assert code == 0
    listed = json.loads(out)
    assert {s["sid"] for s in listed} == set(sids.values())
    assert {s["user_id"] for s in listed} == {"alice", "bob"}
    code, out, _ = run("list", *base, "--user", "alice", "--json")
    assert {s["sid"] for s in json.loads(out)} == {sids["a1"], sids["a2"]}
    code, out, _ = run("list", *base)
    assert code == 0 and "3 session(s)" in out and "alice" in out and sids["b"][:8] in out

    code, out, _ = run("stats", *base, "--json")
    figures = json.loads(out)
    assert figures["sessions"] == 3 and figures["users"] == 2 and figures["oldest"] > 0

    code, out, err = run("kill", sids["a1"], *base, "--yes", "--json")
    assert code == 0, err
    assert json.loads(out) == {"ended": 1}
    code, out, err = run("kill", sids["a1"], *base, "--yes")
    assert code == 1 and "no session" in err
    code, out, _ = run("kill", *base, "--user", "alice", "--yes", "--json")
    assert json.loads(out) == {"ended": 1}
    code, out, _ = run("kill", *base, "--all", "--yes")
    assert code == 0 and "ended 1 session(s)" in out
    with SessionStore(url, key_prefix=prefix) as store:
        assert store.list_sessions() == []


def test_kill_asks_for_confirmation(site: tuple[str, str, dict[str, str]]) -> None:
    url, prefix, sids = site
    result = CliRunner().invoke(main, ["kill", "--all", "--backend", url, "--key-prefix", prefix])
    assert result.exit_code == 1 and "stdin is empty" in result.stderr and "add --yes" in result.stderr
    with SessionStore(url, key_prefix=prefix) as store:
        assert len(store.list_sessions()) == 3
    code, _, _ = run("kill", "--backend", url, "--key-prefix", prefix)
    assert code == 2, "kill needs exactly one of SID, --user or --all"


def test_gc_init_db_and_migrate(site: tuple[str, str, dict[str, str]], tmp_path: Path) -> None:
    url, prefix, sids = site
    code, out, _ = run("gc", "--backend", url, "--key-prefix", prefix, "--json")
    assert (code, json.loads(out)) == (0, {"removed": 0})
    db = f"sqlite:///{tmp_path}/moved.db"
    code, out, _ = run("init-db", "--backend", db)
    assert code == 0 and "tables ready" in out
    code, out, _ = run("init-db", "--backend", url)
    assert code == 1
    code, out, _ = run("migrate", "--from", url, "--to", db, "--key-prefix", prefix, "--json")
    assert (code, json.loads(out)) == (0, {"copied": 3})
    with SessionStore(db, key_prefix=prefix) as store:
        assert {i.sid for i in store.list_sessions()} == set(sids.values())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["list", "--backend", "nosuch://x"], "unknown backend URL scheme", id="bad scheme"),
        pytest.param(["list", "--backend", "file:///dev/null/x"], "/dev/null/x does not exist", id="bad directory"),
        pytest.param(["init-db", "--backend", "sqlite:////dev/null/x.db"], "unavailable", id="bad database"),
        pytest.param(["stats", "--backend", "redis://127.0.0.1:1/0"], "unavailable", id="server down"),
    ],
)
def test_errors_are_one_line_without_traceback(args: list[str], words: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sessionmw.admin.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sessionmw: error:") and words in lines[0], proc.stderr


def test_real_subprocess_with_backend_from_the_environment(site: tuple[str, str, dict[str, str]]) -> None:
    url, prefix, sids = site
    env = {**os.environ, "SESSIONMW_BACKEND": url, "SESSIONMW_KEY_PREFIX": prefix}
    proc = subprocess.run(
        [sys.executable, "-m", "sessionmw.admin.cli", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert {s["sid"] for s in json.loads(proc.stdout)} == set(sids.values())
    proc = subprocess.run(
        [sys.executable, "-m", "sessionmw.admin.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "migrate" in proc.stdout
