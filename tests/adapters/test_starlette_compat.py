"""Starlette's own SessionMiddleware behaviour, checked against ours (a drop-in replacement).

Written from Starlette's documented cookie behaviour: the same app, the same requests, the same
assertions as its session tests, with ``sessionmw.SessionMiddleware`` in place of Starlette's.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from sessionmw import SessionMiddleware


async def view_session(request: Request) -> JSONResponse:
    return JSONResponse({"session": request.session})


async def update_session(request: Request) -> JSONResponse:
    data = await request.json()
    request.session.update(data)
    return JSONResponse({"session": request.session})


async def clear_session(request: Request) -> JSONResponse:
    request.session.clear()
    return JSONResponse({"session": request.session})


def make(**options: Any) -> Starlette:
    options.setdefault("secret_key", "example")
    options.setdefault("backend", f"memory://compat-{uuid.uuid4().hex[:8]}")
    return Starlette(
        routes=[
            Route("/view_session", endpoint=view_session),
            Route("/update_session", endpoint=update_session, methods=["POST"]),
            Route("/clear_session", endpoint=clear_session, methods=["POST"]),
        ],
        middleware=[Middleware(SessionMiddleware, **options)],
    )


def test_session() -> None:
    client = TestClient(make())
    assert client.get("/view_session").json() == {"session": {}}
    response = client.post("/update_session", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    set_cookie = response.headers["set-cookie"]
    max_age_matches = re.search(r"; Max-Age=([0-9]+);", set_cookie)
    assert max_age_matches is not None
    assert int(max_age_matches[1]) == 14 * 24 * 3600
    assert client.get("/view_session").json() == {"session": {"some": "data"}}
    assert client.post("/clear_session").json() == {"session": {}}
    assert client.get("/view_session").json() == {"session": {}}


def test_session_expires() -> None:
    app = make(max_age=-1)
    client = TestClient(app)
    response = client.post("/update_session", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    # the client drops expired cookies, so send the value explicitly
    expired_cookie_header = response.headers["set-cookie"]
    match = re.search(r"session=([^;]*);", expired_cookie_header)
    assert match is not None
    client = TestClient(app, cookies={"session": match[1]})
    assert client.get("/view_session").json() == {"session": {}}


def test_secure_session() -> None:
    app = make(https_only=True)
    secure_client = TestClient(app, base_url="https://testserver")
    unsecure_client = TestClient(app, base_url="http://testserver")

    assert unsecure_client.get("/view_session").json() == {"session": {}}
    response = unsecure_client.post("/update_session", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    assert "secure" in response.headers["set-cookie"]
    # an http client does not send back a Secure cookie
    assert unsecure_client.get("/view_session").json() == {"session": {}}

    assert secure_client.get("/view_session").json() == {"session": {}}
    response = secure_client.post("/update_session", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    assert secure_client.get("/view_session").json() == {"session": {"some": "data"}}
    assert secure_client.post("/clear_session").json() == {"session": {}}
    assert secure_client.get("/view_session").json() == {"session": {}}


def test_session_cookie_subpath() -> None:
    second_app = make(path="/second_app")
    app = Starlette(routes=[Mount("/second_app", app=second_app)])
    client = TestClient(app, base_url="http://testserver/second_app")
    response = client.post("/update_session", json={"some": "data"})
    assert response.status_code == 200
    cookie = response.headers["set-cookie"]
    cookie_path_match = re.search(r"; path=(\S+);", cookie)
    assert cookie_path_match is not None
    assert cookie_path_match.groups()[0] == "/second_app"


def test_invalid_session_cookie() -> None:
    client = TestClient(make())
    assert client.post("/update_session", json={"some": "data"}).json() == {"session": {"some": "data"}}
    client = TestClient(make(), cookies={"session": "invalid"})
    assert client.get("/view_session").json() == {"session": {}}


def test_session_cookie() -> None:
    client = TestClient(make(max_age=None))
    response = client.post("/update_session", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    assert "Max-Age" not in response.headers["set-cookie"]
    client.cookies.delete("session")
    assert client.get("/view_session").json() == {"session": {}}


def test_domain_cookie() -> None:
    client = TestClient(make(domain=".example.com"), base_url="http://testserver.example.com")
    response = client.post("/update_session", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    assert "domain=.example.com" in response.headers["set-cookie"]
    client.cookies.delete("session")
    assert client.get("/view_session").json() == {"session": {}}


def test_partitioned_cookie() -> None:
    client = TestClient(make(partitioned=True, https_only=True, same_site="none"))
    response = client.post("/update_session", json={"some": "data"})
    assert response.headers["set-cookie"].endswith("; secure; partitioned")


def test_set_cookie_format_is_starlettes() -> None:
    client = TestClient(make())
    header = client.post("/update_session", json={"a": 1}).headers["set-cookie"]
    assert re.fullmatch(r"session=[A-Za-z0-9_\-.]+; path=/; Max-Age=1209600; httponly; samesite=lax", header), header


def test_vary_cookie_only_when_accessed() -> None:
    async def untouched(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = make()
    app.router.routes.append(Route("/untouched", untouched))
    client = TestClient(app)
    assert "vary" not in client.get("/untouched").headers
    assert client.get("/view_session").headers["vary"] == "Cookie"


def test_session_is_a_dict_and_json_serializable() -> None:
    async def dump(request: Request) -> JSONResponse:
        request.session["x"] = [1, 2]
        assert isinstance(request.session, dict)
        return JSONResponse({"session": request.session, "dict": dict(request.session)})

    app = make()
    app.router.routes.append(Route("/dump", dump))
    assert TestClient(app).get("/dump").json() == {"session": {"x": [1, 2]}, "dict": {"x": [1, 2]}}
