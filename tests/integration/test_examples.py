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
        home = c.get("/").json()
        assert home["cart"] == [] and home["user"] is None and "POST /cart/{item}" in home["try"]
        assert c.post("/cart/apple").json() == {"cart": ["apple"]}
        assert c.post("/cart/pear").json() == {"cart": ["apple", "pear"]}
        assert c.get("/cart").json() == {"cart": ["apple", "pear"]}
        assert c.post("/login/ann").json() == {"user": "ann"}
        assert c.get("/cart").json() == {"cart": ["apple", "pear"]}
        assert c.get("/").json()["user"] == "ann"
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


@pytest.mark.parametrize("name", ["fastapi_app", "flask_app", "starlette_app", "wsgi_app"])
def test_each_example_answers_on_its_root_names_its_routes_and_writes_nothing_here(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SESSIONMW_BACKEND", raising=False)
    monkeypatch.delenv("SESSION_BACKEND", raising=False)
    assert "Routes:" in (EXAMPLES / f"{name}.py").read_text()
    spec = importlib.util.spec_from_file_location(f"default_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    if name == "flask_app":
        assert module.app.test_client().get("/").status_code == 200
    elif name == "wsgi_app":
        with httpx2.Client(transport=httpx2.WSGITransport(app=module.app), base_url="http://testserver") as c:
            assert c.get("/").status_code == 200
    else:
        with TestClient(module.app) as c:
            assert c.get("/").status_code == 200
    assert list(tmp_path.iterdir()) == [], "the example wrote into the current directory"


def test_wsgi_example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = load("wsgi_app", monkeypatch, tmp_path).app
    with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as c:
        assert c.get("/").text == "request number 1 in this session\n"
        assert c.get("/").text == "request number 2 in this session\n"
