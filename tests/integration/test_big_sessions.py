"""Big sessions through the middlewares: a changed session is stored as its base plus tails of changed keys.

On the backends with the tail primitive (memory, file, Redis) a request that changes one key of a 64 KB
session writes a frame of that key; on the others (SQLite here) the whole record, as before. Either
way every reader (the next request, ASGI or WSGI, and a ``SessionStore`` migration) sees the merged
session.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sessionmw import SessionMiddleware, SessionStore, WSGISessionMiddleware
from sessionmw.backends import Record, open_backend
from sessionmw.core.patches import measure, merge
from sessionmw.core.serializers import TaggedJSONSerializer

from ..conftest import backend_url_for

SECRET = "test-secret"
KEYS = 64
TAGGED = TaggedJSONSerializer()

KINDS = [
    pytest.param("memory", True, id="memory"),
    pytest.param("file", True, id="file"),
    pytest.param("redis", True, id="redis", marks=pytest.mark.service("redis")),
    pytest.param("sqlite", False, id="sqlite (whole records)"),
]


def _act(session: Any, op: str, key: str, value: str) -> None:
    if op == "fill":
        for i in range(KEYS):
            session[f"k{i}"] = f"{i}:" + "x" * 1000
        session["cart"] = {"items": []}
    elif op == "set":
        session[key] = value
    elif op == "del":
        del session[key]
    elif op == "nested":  # in place: the session does not see it; another key's change makes it write
        session["cart"]["items"].append(value)
        session["n"] = session.get("n", 0) + 1


async def _endpoint(request: Request) -> JSONResponse:
    q = request.query_params
    _act(request.session, q.get("op", ""), q.get("k", ""), q.get("v", ""))
    return JSONResponse(dict(request.session))


def _wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    session = environ["sessionmw.session"]
    _act(session, q.get("op", ""), q.get("k", ""), q.get("v", ""))
    body = json.dumps(dict(session)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def url(request: pytest.FixtureRequest, shared_tmp: Path) -> str:
    return str(backend_url_for(request.param, request, shared_tmp))


def _stored(url: str, key_prefix: str) -> Record:
    b = open_backend(url, key_prefix=key_prefix)
    try:
        records = list(b.iter_records())  # type: ignore[attr-defined]
    finally:
        b.close()
    assert len(records) == 1
    rec: Record = records[0][1]
    return rec


@pytest.fixture
def asgi(url: str, key_prefix: str) -> Iterator[TestClient]:
    app = Starlette(routes=[Route("/", _endpoint)])
    app.add_middleware(SessionMiddleware, secret_key=SECRET, backend=url, key_prefix=key_prefix, gc_interval=None)
    with TestClient(app) as client:
        yield client


def _expected() -> dict[str, Any]:
    data: dict[str, Any] = {}
    _act(data, "fill", "", "")
    return data


@pytest.mark.parametrize(("url", "appends"), KINDS, indirect=["url"])
def test_one_changed_key_is_written_as_a_tail_and_read_back_merged(
    asgi: TestClient, url: str, appends: bool, key_prefix: str
) -> None:
    expected = _expected()
    assert asgi.get("/", params={"op": "fill"}).json() == expected
    base = _stored(url, key_prefix)
    frames_seen = []
    for i in range(20):
        expected[f"k{i % 3}"] = f"v{i}"
        asgi.get("/", params={"op": "set", "k": f"k{i % 3}", "v": f"v{i}"})
        rec = _stored(url, key_prefix)
        frames_seen.append(measure(rec.data).frames)
        assert merge(rec.data, TAGGED.loads) == expected
    assert asgi.get("/").json() == expected, "the next request reads the merged session"
    if appends:
        assert frames_seen[:3] == [1, 2, 3]
        assert len(_stored(url, key_prefix).data) < len(base.data) * 1.25
    else:
        assert set(frames_seen) == {0}


@pytest.mark.parametrize(("url", "appends"), KINDS, indirect=["url"])
def test_deleted_keys_and_nested_changes_reach_the_store(
    asgi: TestClient, url: str, appends: bool, key_prefix: str
) -> None:
    expected = _expected()
    asgi.get("/", params={"op": "fill"})
    asgi.get("/", params={"op": "del", "k": "k7"})
    del expected["k7"]
    asgi.get("/", params={"op": "nested", "v": "apple"})
    asgi.get("/", params={"op": "nested", "v": "pear"})
    expected["cart"] = {"items": ["apple", "pear"]}
    expected["n"] = 2
    rec = _stored(url, key_prefix)
    assert merge(rec.data, TAGGED.loads) == expected
    assert measure(rec.data).frames == (3 if appends else 0)
    assert asgi.get("/").json() == expected


class Ops:
    """A listener that notes the name of every backend operation."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, event: Any) -> None:
        """Events are not noted."""

    def backend_call(self, op: str, seconds: float) -> None:
        self.names.append(op)


@pytest.mark.parametrize("url", ["memory"], indirect=True)
def test_encryption_at_rest_writes_whole_records(url: str, key_prefix: str) -> None:
    ops = Ops()
    app = Starlette(routes=[Route("/", _endpoint)])
    app.add_middleware(
        SessionMiddleware,
        secret_key=SECRET,
        backend=url,
        key_prefix=key_prefix,
        encryption_key="e" * 32,
        gc_interval=None,
        listeners=[ops],
    )
    with TestClient(app) as client:
        client.get("/", params={"op": "fill"})
        for i in range(3):
            client.get("/", params={"op": "set", "k": "k1", "v": f"v{i}"})
        assert client.get("/").json()["k1"] == "v2"
    assert ops.names.count("Save") == 3 and "SaveTail" not in ops.names


@pytest.mark.parametrize("url", ["memory"], indirect=True)
def test_the_same_writes_without_encryption_are_tails(url: str, key_prefix: str) -> None:
    ops = Ops()
    app = Starlette(routes=[Route("/", _endpoint)])
    app.add_middleware(
        SessionMiddleware, secret_key=SECRET, backend=url, key_prefix=key_prefix, gc_interval=None, listeners=[ops]
    )
    with TestClient(app) as client:
        client.get("/", params={"op": "fill"})
        for i in range(3):
            client.get("/", params={"op": "set", "k": "k1", "v": f"v{i}"})
    assert ops.names.count("SaveTail") == 3 and "Save" not in ops.names


@pytest.mark.parametrize(
    "url", ["file", "memory", pytest.param("redis", marks=pytest.mark.service("redis"))], indirect=True
)
def test_wsgi_writes_tails_and_reads_them(url: str, key_prefix: str) -> None:
    app = WSGISessionMiddleware(_wsgi, secret_key=SECRET, backend=url, key_prefix=key_prefix, gc_interval=None)
    expected = _expected()
    try:
        with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as client:
            client.get("/", params={"op": "fill"})
            for i in range(5):
                client.get("/", params={"op": "set", "k": "k3", "v": f"w{i}"})
            expected["k3"] = "w4"
            assert client.get("/").json() == expected
    finally:
        app.close()
    assert measure(_stored(url, key_prefix).data).frames == 5


@pytest.mark.parametrize("url", ["file", "memory"], indirect=True)
def test_a_migrated_session_keeps_its_tails_readable(
    asgi: TestClient, url: str, key_prefix: str, shared_tmp: Path
) -> None:
    expected = _expected()
    asgi.get("/", params={"op": "fill"})
    asgi.get("/", params={"op": "set", "k": "k9", "v": "moved"})
    expected["k9"] = "moved"
    target = f"sqlite:///{shared_tmp}/migrated-{key_prefix.strip(':')}.db"
    with SessionStore(url, key_prefix=key_prefix) as store:
        assert store.migrate(target) == 1
    app = Starlette(routes=[Route("/", _endpoint)])
    app.add_middleware(SessionMiddleware, secret_key=SECRET, backend=target, key_prefix=key_prefix, gc_interval=None)
    with TestClient(app, cookies=dict(asgi.cookies)) as client:
        assert client.get("/").json() == expected
