"""The core's values: cookies, ids, serializers and configuration errors."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone
from typing import Any

import pytest

from sessionmw.core.config import build_settings
from sessionmw.core.cookies import find_cookie, new_session_id
from sessionmw.core.errors import ConfigError, SerializationError
from sessionmw.core.policy import CookieAction, RequestInfo
from sessionmw.core.serializers import JSONSerializer, TaggedJSONSerializer


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("session=abc", "abc", id="alone"),
        pytest.param("a=1; session=abc; b=2", "abc", id="middle"),
        pytest.param("mysession=x; session=abc", "abc", id="suffix of another name"),
        pytest.param('session="abc"', "abc", id="quoted"),
        pytest.param("other=1", None, id="absent"),
        pytest.param("", None, id="empty header"),
    ],
)
def test_find_cookie(header: str, value: str | None) -> None:
    assert find_cookie(header, "session") == value


def test_tagged_json_keeps_types() -> None:
    data = {
        "when": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
        "naive": datetime(2026, 1, 2, 3, 4, 5, 6),
        "day": date(2026, 11, 24),
        "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "raw": b"\x00\xff",
        "pair": (1, "two", (3,)),
        "nested": {"list": [1, {"t": (4, 5)}]},
        "looks_like_a_tag": {" t": [1, 2]},
        "unicode": "é✓",
    }
    s = TaggedJSONSerializer()
    assert s.loads(s.dumps(data)) == data


@pytest.mark.parametrize("serializer", [TaggedJSONSerializer(), JSONSerializer()], ids=["tagged", "plain"])
def test_unserializable_value_names_its_key(serializer: Any) -> None:
    with pytest.raises(SerializationError) as info:
        serializer.dumps({"ok": 1, "cart": [1, {"item": {1, 2}}]})
    assert "cart[1].item" in str(info.value) and "set" in str(info.value)


@pytest.mark.parametrize(
    ("options", "option", "words"),
    [
        pytest.param({"lock_timout": 3}, "lock_timout", "lock_timeout", id="misspelt keyword"),
        pytest.param({"lock_timeout": -1}, "lock_timeout", ">= 0", id="negative"),
        pytest.param({"idle_timeout": "soon"}, "idle_timeout", "number", id="not a number"),
        pytest.param({"same_site": "lex"}, "same_site", "'lax'", id="bad same_site"),
        pytest.param({"session_cookie": "__Host-s"}, "https_only", "Secure", id="__Host- needs Secure"),
        pytest.param(
            {"session_cookie": "__Host-s", "https_only": True, "path": "/app"}, "path", "path='/'", id="__Host- path"
        ),
        pytest.param(
            {"session_cookie": "__Host-s", "https_only": True, "domain": "x.org"}, "domain", "Domain", id="__Host- dom"
        ),
        pytest.param({"cookie_prefix": "__Secure-"}, "https_only", "Secure", id="__Secure- needs Secure"),
        pytest.param({"session_cookie": "bad name"}, "session_cookie", "characters", id="bad cookie name"),
        pytest.param({"same_site": "none"}, "same_site", "https_only", id="SameSite=None needs Secure"),
        pytest.param({"max_waiters": -1}, "max_waiters", ">= 0", id="max_waiters"),
        pytest.param({"secret_key": None}, "secret_key", "required", id="no secret"),
    ],
)
def test_config_errors_name_the_option(options: dict[str, Any], option: str, words: str) -> None:
    options.setdefault("secret_key", "k")
    with pytest.raises(ConfigError) as info:
        build_settings(**options)
    assert info.value.option == option
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_cookie_action_is_plain_data() -> None:
    assert CookieAction("delete") == CookieAction("delete")
    assert RequestInfo().path == ""


def test_session_ids_are_random_url_safe_and_never_start_with_a_dash() -> None:
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 43 and i[0] != "-" for i in ids)
