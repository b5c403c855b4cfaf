"""Flask, as Flask does it: cookie rules, per-request keys and SameSite checks, from Flask's documentation.

Flask's ``SessionInterface.should_set_cookie``: the cookie is set when the session was modified, or
when it is permanent and ``SESSION_REFRESH_EACH_REQUEST`` is on. ``SECRET_KEY`` and
``SECRET_KEY_FALLBACKS`` are read on every request. ``response.set_cookie`` refuses a SameSite value
other than Strict, Lax or None with ``ValueError``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import pytest
from flask import Flask, session

from sessionmw.flask import FlaskSession


def flask_app(**config: Any) -> Flask:
    app = Flask("flask_rules")
    app.config.update(SECRET_KEY="first", SESSION_BACKEND=f"memory://flask-rules-{uuid.uuid4().hex[:8]}", **config)
    FlaskSession(app)

    @app.route("/set/<key>/<value>")
    def set_value(key: str, value: str) -> str:
        session[key] = value
        return "ok"

    @app.route("/get/<key>")
    def get_value(key: str) -> str:
        return str(session.get(key))

    @app.route("/permanent/<flag>")
    def permanent(flag: str) -> str:
        session.permanent = flag == "on"
        return "ok"

    return app


def test_a_modified_session_sends_its_cookie_even_when_the_id_stays() -> None:
    c = flask_app(SESSION_REFRESH_EACH_REQUEST=False).test_client()
    first = c.get("/set/a/1").headers.get("Set-Cookie")
    assert first is not None
    again = c.get("/set/a/2").headers.get("Set-Cookie")
    assert again is not None and again.split(";")[0] == first.split(";")[0], "same id, cookie sent again"
    assert "Set-Cookie" not in c.get("/get/a").headers, "an unmodified session sends no cookie"


def test_permanent_to_browser_session_reaches_the_browser() -> None:
    c = flask_app(SESSION_REFRESH_EACH_REQUEST=False).test_client()
    assert "Expires=" in c.get("/permanent/on").headers["Set-Cookie"]
    cookie = c.get("/permanent/off").headers.get("Set-Cookie")
    assert cookie is not None and "Expires=" not in cookie, "the cookie became a browser-session cookie"


def test_a_changed_samesite_setting_reaches_the_browser_with_the_next_change() -> None:
    app = flask_app(SESSION_REFRESH_EACH_REQUEST=False)
    c = app.test_client()
    assert "SameSite=Lax" not in (c.get("/set/a/1").headers["Set-Cookie"])
    app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    assert "SameSite=Strict" in c.get("/set/a/2").headers["Set-Cookie"]


def test_a_permanent_session_is_refreshed_on_every_request_when_configured() -> None:
    app = flask_app(SESSION_REFRESH_EACH_REQUEST=True)
    c = app.test_client()
    c.get("/permanent/on")
    assert "Expires=" in c.get("/get/a").headers["Set-Cookie"]
    app.config["SESSION_REFRESH_EACH_REQUEST"] = False
    assert "Set-Cookie" not in c.get("/get/a").headers


def test_secret_key_is_read_per_request() -> None:
    app = flask_app()
    c = app.test_client()
    c.get("/set/a/1")
    assert c.get("/get/a").text == "1"  # the cookie is verified (and remembered) under "first"
    app.secret_key = "second"
    assert c.get("/get/a").text == "None", "a cookie signed with a key no longer in use loads nothing"
    app.config["SECRET_KEY_FALLBACKS"] = ["first"]
    assert c.get("/get/a").text == "1", "a fallback key still verifies the old cookie"
    c.get("/set/b/2")
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert c.get("/get/b").text == "2", "a cookie re-signed with the new key loads"


def test_fallback_keys_changed_in_place_and_bytes_keys_are_read_per_request() -> None:
    app = flask_app()
    c = app.test_client()
    c.get("/set/a/1")
    app.config["SECRET_KEY"] = b"second"
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert c.get("/get/a").text == "None"
    app.config["SECRET_KEY_FALLBACKS"].append("first")  # the same list, one key more
    assert c.get("/get/a").text == "1", "a fallback appended to the same list verifies the old cookie"
    c.get("/set/b/2")  # re-signed with b"second"
    app.config["SECRET_KEY"] = "second"  # the same key as str
    app.config["SECRET_KEY_FALLBACKS"].clear()
    assert c.get("/get/b").text == "2", "a str key signs as the bytes key of the same text"


def test_the_session_cookie_is_found_among_others_and_quoted() -> None:
    app = flask_app()
    set_cookie = app.test_client().get("/set/a/1").headers["Set-Cookie"]
    value = set_cookie.split(";")[0].split("=", 1)[1]
    c = app.test_client(use_cookies=False)
    header = {"Cookie": f"xsession=junk; other=1;session={value}; session=later"}
    assert c.get("/get/a", headers=header).text == "1", "the first cookie named session, not xsession"
    assert c.get("/get/a", headers={"Cookie": f'session="{value}"'}).text == "1", "a quoted value"
    assert c.get("/get/a", headers={"Cookie": "a=1; session=forged"}).text == "None"


def test_vary_cookie_is_added_or_merged_into_the_apps_vary() -> None:
    app = flask_app()

    @app.route("/vary/<value>")
    def own_vary(value: str) -> Any:
        session.get("a")
        return "ok", 200, {"Vary": value}

    c = app.test_client()
    c.get("/set/a/1")
    assert c.get("/get/a").headers.get_all("Vary") == ["Cookie"]
    assert c.get("/vary/Accept-Encoding").headers.get_all("Vary") == ["Accept-Encoding, Cookie"]
    assert c.get("/vary/cookie").headers.get_all("Vary") == ["cookie"], "already there: not added twice"


def test_an_invalid_samesite_value_raises_when_the_cookie_is_set() -> None:
    app = flask_app(SESSION_REFRESH_EACH_REQUEST=False)
    app.testing = True
    c = app.test_client()
    c.get("/set/a/1")
    app.config["SESSION_COOKIE_SAMESITE"] = "Sometimes"
    assert "Set-Cookie" not in c.get("/get/a").headers, "no cookie to set, nothing to refuse"
    with pytest.raises(ValueError, match="SameSite"):
        c.get("/set/a/2")
    with pytest.raises(ValueError, match="SameSite"):
        flask_app(SESSION_COOKIE_SAMESITE="Sometimes", TESTING=True).test_client().get("/set/a/1")


@pytest.mark.parametrize("module", ["sessionmw.flask", "sessionmw.wsgi"])
def test_flask_and_wsgi_apps_load_no_starlette_and_no_anyio(module: str) -> None:
    code = f"""
import sys, uuid
import {module}
from sessionmw import WSGISessionMiddleware

def app(environ, start_response):
    environ["sessionmw.session"]["n"] = 1
    start_response("200 OK", [])
    return [b"ok"]

mw = WSGISessionMiddleware(app, secret_key="k", backend="memory://" + uuid.uuid4().hex)
out = mw({{"PATH_INFO": "/", "REQUEST_METHOD": "GET"}}, lambda status, headers, exc_info=None: None)
list(out)
out.close()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("starlette", "anyio"))
print(loaded)
assert not loaded, loaded
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
