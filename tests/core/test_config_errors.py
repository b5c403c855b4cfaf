"""Configuration errors: every bad option named at once, key types, SameSite in any case, new options."""

from __future__ import annotations

from typing import Any

import pytest

from sessionmw import ConfigError, SessionMiddleware, WSGISessionMiddleware
from sessionmw.core.config import build_settings, options_from_config


def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


def test_several_wrong_options_are_all_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_settings(secret_key="k", idle_timout=3, lock_timeout=-1, max_waiterz=2)
    err = info.value
    assert set(err.options) == {"idle_timout", "lock_timeout", "max_waiterz"}
    assert "3 configuration errors" in str(err)
    assert "did you mean 'idle_timeout'" in str(err)
    assert "did you mean 'max_waiters'" in str(err)
    assert "\n" not in str(err)


def test_one_wrong_option_keeps_its_own_message() -> None:
    with pytest.raises(ConfigError) as info:
        SessionMiddleware(_app, secret_key="k", idle_timout=3)
    assert str(info.value) == "unknown option 'idle_timout'; did you mean 'idle_timeout'?"
    assert info.value.option == "idle_timout"
    assert info.value.options == ("idle_timout",)


@pytest.mark.parametrize("key", [12345, 1.5, {"a": "b"}, ["ok", 3], object()])
def test_a_secret_key_of_the_wrong_type_is_a_config_error_naming_it(key: Any) -> None:
    with pytest.raises(ConfigError) as info:
        WSGISessionMiddleware(_app, secret_key=key)
    assert info.value.option == "secret_key"
    assert "str, bytes, or a list of them" in str(info.value)


def test_a_missing_secret_key_is_named_with_the_other_errors() -> None:
    with pytest.raises(ConfigError) as info:
        build_settings(max_waiters=-1)
    assert set(info.value.options) == {"secret_key", "max_waiters"}


@pytest.mark.parametrize("given", ["Lax", "LAX", "lax", "Strict", "sTrIcT"])
def test_same_site_is_accepted_in_any_case_and_written_lower_case(given: str) -> None:
    settings = build_settings(secret_key="k", same_site=given)
    assert settings.same_site == given.lower()
    assert f"samesite={given.lower()}" in settings.cookie_flags


def test_the_new_options_are_checked() -> None:
    ok = build_settings(secret_key="k", listeners=print, rotate_every=60, rotate_grace=0, max_session_bytes=1000)
    assert ok.listeners == (print,)
    assert ok.rotate_every == 60
    assert ok.rotate_grace == 0
    assert ok.max_session_bytes == 1000
    assert build_settings(secret_key="k").max_session_bytes == 512 * 1024
    assert build_settings(secret_key="k", encryption_key=["a", b"b"]).encryption_key == (b"a", b"b")
    with pytest.raises(ConfigError) as info:
        build_settings(
            secret_key="k", listeners=[print, 3], rotate_every=0, rotate_grace=-1, max_session_bytes=0, encryption_key=5
        )
    assert set(info.value.options) == {
        "listeners",
        "rotate_every",
        "rotate_grace",
        "max_session_bytes",
        "encryption_key",
    }


def test_the_new_options_come_from_config_strings() -> None:
    opts = options_from_config(
        {"SESSION_ROTATE_EVERY": "3600", "SESSION_ROTATE_GRACE": "2.5", "SESSION_MAX_SESSION_BYTES": "4096"},
        env=False,
    )
    assert opts == {"rotate_every": 3600.0, "rotate_grace": 2.5, "max_session_bytes": 4096}
