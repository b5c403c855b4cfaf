"""Wiring of a tiered store: the middlewares' and Flask's keywords, SessionStore and the CLI, and their errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette

from sessionmw import ConfigError, SessionMiddleware, SessionStore, WSGISessionMiddleware
from sessionmw.admin.cli import main
from sessionmw.backends import TieredBackend

from ..apps import make_flask_app
from ..cli.test_admin import login
from ..integration.test_middleware_conformance import client_for

pytestmark = pytest.mark.service("memcached")


@pytest.fixture
def durable(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/durable.db"


def _wsgi(**options: Any) -> WSGISessionMiddleware:
    return WSGISessionMiddleware(lambda environ, start_response: [], secret_key="s", **options)


def test_the_three_adapters_build_a_tiered_backend(memcached_url: str, durable: str) -> None:
    w = _wsgi(backend=memcached_url, durable_backend=durable, durable_write_every=4)
    assert isinstance(w.backend, TieredBackend) and w.backend.write_every == 4
    a = SessionMiddleware(Starlette(), secret_key="s", backend=memcached_url, durable_backend=durable)
    assert isinstance(getattr(a.backend, "sync", None), TieredBackend), "run in worker threads under ASGI"
    # Flask config keys, strings as from an environment: SESSION_DURABLE_BACKEND, SESSION_DURABLE_WRITE_EVERY.
    app = make_flask_app(secret_key="s", backend=memcached_url, durable_backend=durable, durable_write_every="10")
    backend = app.extensions["sessionmw"].backend
    assert isinstance(backend, TieredBackend) and backend.write_every == 10
    for b in (w.backend, backend):
        b.close()


@pytest.mark.parametrize(
    ("fast", "durable_value", "extra", "option", "words"),
    [
        pytest.param(False, "sqlite:///x.db", {}, "durable_backend", "needs a fast backend", id="no-fast"),
        pytest.param(True, "SAME", {}, "durable_backend", "same store", id="same"),
        pytest.param(True, "nosuch://x", {}, "durable_backend", "unknown backend URL scheme", id="bad-url"),
        pytest.param(True, "sqlite:///x.db?tabel=t", {}, "durable_backend", "tabel", id="bad-option"),
        pytest.param(True, 42, {}, "durable_backend", "URL or a Backend", id="bad-type"),
        pytest.param(True, "sqlite:///x.db", {"durable_write_every": 0}, "durable_write_every", ">= 1",
                     id="write-every"),
    ],
)  # fmt: skip
def test_bad_values_are_config_errors_naming_the_option(
    fast: bool, durable_value: Any, extra: dict[str, Any], option: str, words: str, memcached_url: str
) -> None:
    options: dict[str, Any] = {"durable_backend": memcached_url if durable_value == "SAME" else durable_value, **extra}
    if fast:
        options["backend"] = memcached_url
    with pytest.raises(ConfigError) as info:
        _wsgi(**options)
    assert info.value.option == option and words in str(info.value), str(info.value)


def test_session_store_and_cli_work_on_the_pair(memcached_url: str, durable: str, key_prefix: str) -> None:
    options = {"backend": memcached_url, "durable_backend": durable, "key_prefix": key_prefix}
    with client_for("asgi", **options) as a1, client_for("asgi", **options) as a2, client_for("wsgi", **options) as b:
        login(a1, "alice")
        login(a2, "alice")
        login(b, "bob")
    with SessionStore(memcached_url, durable_backend=durable, key_prefix=key_prefix) as store:
        figures = store.stats()
        assert figures["sessions"] == 3 and figures["users"] == 2
        assert figures["fast_available"] == 1 and "fast_evictions" in figures and "evictions" in figures
        assert figures["durable_rows"] == 3
    common = ["--backend", memcached_url, "--durable-backend", durable, "--key-prefix", key_prefix, "--json"]
    runner = CliRunner()
    listed = runner.invoke(main, ["list", *common, "--user", "alice"], catch_exceptions=False)
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == 2
    stats = runner.invoke(main, ["stats", *common], catch_exceptions=False)
    assert stats.exit_code == 0 and json.loads(stats.stdout)["durable_rows"] == 3
    killed = runner.invoke(main, ["kill", *common, "--user", "alice", "--yes"], catch_exceptions=False)
    assert killed.exit_code == 0 and json.loads(killed.stdout) == {"ended": 2}
    gc = runner.invoke(main, ["gc", *common], catch_exceptions=False)
    assert gc.exit_code == 0 and json.loads(gc.stdout) == {"removed": 0}
    init = runner.invoke(main, ["init-db", "--backend", memcached_url, "--durable-backend", durable])
    assert init.exit_code == 0 and "tables ready" in init.stdout
    with SessionStore(memcached_url, durable_backend=durable, key_prefix=key_prefix) as store:
        assert [i.user_id for i in store.list_sessions()] == ["bob"]
    bad = runner.invoke(main, ["list", "--backend", memcached_url, "--durable-backend", "nosuch://x"])
    assert bad.exit_code == 1 and "durable_backend" in bad.stderr and "Traceback" not in bad.stderr
