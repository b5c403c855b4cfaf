"""Every example in examples/ runs as is: import it and serve a few requests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx2
import pytest
from starlette.testclient import TestClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    monkeypatch.setenv("SESSIONMW_BACKEND", f"file://{tmp_path}/sessions")
    monkeypatch.setenv("SESSION_BACKEND", f"file://{tmp_path}/sessions")
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_fastapi_example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = load("fastapi_app", monkeypatch, tmp_path).app
    with TestClient(app) as c:
        assert c.post("/cart/apple").json() == {"cart": ["apple"]}
        assert c.post("/cart/pear").json() == {"cart": ["apple", "pear"]}
        assert c.get("/cart").json() == {"cart": ["apple", "pear"]}
        assert c.post("/login/ann").json() == {"user": "ann"}
        assert c.get("/cart").json() == {"cart": ["apple", "pear"]}
        assert "fastapi_session" in c.cookies


def test_starlette_example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = load("starlette_app", monkeypatch, tmp_path).app
    with TestClient(app) as c:
        assert [c.get("/").json()["n"] for _ in range(3)] == [1, 2, 3]


def test_flask_example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = load("flask_app", monkeypatch, tmp_path).app
    c = app.test_client()
    assert c.get("/").text == "visits: 1"
    assert c.get("/").text == "visits: 2"
    assert c.get("/status").text == "visits so far: 2"
    assert c.get_cookie("flask_session") is not None


def test_wsgi_example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = load("wsgi_app", monkeypatch, tmp_path).app
    with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as c:
        assert c.get("/").text == "request number 1 in this session\n"
        assert c.get("/").text == "request number 2 in this session\n"
