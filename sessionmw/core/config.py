"""Options: one frozen ``Settings`` object, checked once when the middleware is built.

Rules of this module: no I/O except reading ``os.environ`` in :func:`options_from_config`. Every
option a user can set is a field of :class:`Settings`; every error names the option, and a misspelt
name is answered with the closest valid one.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .cookies import check_cookie_name, cookie_flags
from .errors import ConfigError

__all__ = ["OPTION_NAMES", "Settings", "closest_option", "options_from_config"]

SameSite = Literal["lax", "strict", "none"]


@dataclass(frozen=True)
class Settings:
    """Every sessionmw option, validated; built by the adapters from their keywords."""

    secret_key: tuple[str, ...]
    backend: Any = None
    session_cookie: str = "session"
    max_age: int | None = 14 * 24 * 3600
    path: str = "/"
    same_site: SameSite | None = "lax"
    https_only: bool = False
    domain: str | None = None
    partitioned: bool = False
    httponly: bool = True
    cookie_prefix: str = ""
    idle_timeout: float | None = None
    absolute_timeout: float | None = None
    lock_timeout: float = 120.0
    lock_expire: float = 7200.0
    key_prefix: str = "sessmw:"
    read_only_paths: tuple[str, ...] = ()
    read_only_debug: bool = False
    lock_warn: float | None = None
    max_waiters: int = 32
    touch_interval: float = 60.0
    max_sessions_per_user: int | None = None
    exclude_paths: tuple[str, ...] = ()
    lazy_paths: tuple[str, ...] = ()
    serializer: Any = "json"
    durable_backend: Any = None
    durable_write_every: int = 1
    #: Callables (plain or coroutine functions) receiving every :class:`~sessionmw.SessionEvent`.
    listeners: tuple[Callable[..., Any], ...] = ()
    #: Seconds after which a session gets a new id on its next read-write request (``None``: never).
    rotate_every: float | None = None
    #: Seconds the id replaced by ``rotate_every`` still leads to the new session.
    rotate_grace: float = 5.0
    #: Keys encrypting records at rest (the first encrypts, all decrypt); empty: not encrypted.
    encryption_key: tuple[bytes, ...] = ()
    #: A session whose stored form is larger than this raises RecordTooLarge at write (``None``: no limit).
    max_session_bytes: int | None = 512 * 1024
    #: Seconds between background collections of expired sessions (file and SQL backends), one worker
    #: at a time; ``None``: never (run ``sessionmw gc`` from cron instead).
    gc_interval: float | None = 300.0
    #: Derived: the full cookie name (``cookie_prefix + session_cookie``).
    cookie_name: str = field(init=False)
    #: Derived: the Set-Cookie attribute tail.
    cookie_flags: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cookie_name", self.cookie_prefix + self.session_cookie)
        object.__setattr__(
            self,
            "cookie_flags",
            cookie_flags(
                httponly=self.httponly,
                same_site=self.same_site,
                secure=self.https_only,
                domain=self.domain,
                partitioned=self.partitioned,
            ),
        )
        self._validate()

    def _validate(self) -> None:
        errors: list[ConfigError] = []

        def check(test: Callable[[], None]) -> None:
            try:
                test()
            except ConfigError as exc:
                errors.append(exc)

        check(lambda: _positive("lock_timeout", self.lock_timeout, allow_zero=True))
        check(lambda: _positive("lock_expire", self.lock_expire))
        check(lambda: _positive("touch_interval", self.touch_interval, allow_zero=True))
        check(lambda: _positive("rotate_grace", self.rotate_grace, allow_zero=True))
        for name in ("idle_timeout", "absolute_timeout", "lock_warn", "rotate_every", "gc_interval"):
            value = getattr(self, name)
            if value is not None:
                check(lambda name=name, value=value: _positive(name, value))  # type: ignore[misc]
        if self.max_age is not None and not _is_int(self.max_age):
            errors.append(ConfigError(f"max_age must be an int or None, not {self.max_age!r}", option="max_age"))
        if not _is_int(self.max_waiters) or self.max_waiters < 0:
            errors.append(
                ConfigError(f"max_waiters must be an int >= 0, not {self.max_waiters!r}", option="max_waiters")
            )
        if self.max_sessions_per_user is not None and (
            not _is_int(self.max_sessions_per_user) or self.max_sessions_per_user < 1
        ):
            errors.append(
                ConfigError(
                    f"max_sessions_per_user must be an int >= 1 or None, not {self.max_sessions_per_user!r}",
                    option="max_sessions_per_user",
                )
            )
        if not _is_int(self.durable_write_every) or self.durable_write_every < 1:
            errors.append(ConfigError("durable_write_every must be an int >= 1", option="durable_write_every"))
        if self.max_session_bytes is not None and (not _is_int(self.max_session_bytes) or self.max_session_bytes < 1):
            errors.append(
                ConfigError(
                    f"max_session_bytes must be an int >= 1 (bytes) or None, not {self.max_session_bytes!r}",
                    option="max_session_bytes",
                )
            )
        if self.same_site is not None and self.same_site not in ("lax", "strict", "none"):
            errors.append(
                ConfigError(
                    f"same_site must be 'lax', 'strict' or 'none' (any case), not {self.same_site!r}",
                    option="same_site",
                )
            )
        elif self.same_site == "none" and not self.https_only:
            errors.append(
                ConfigError(
                    "same_site='none' is accepted by browsers only with Secure: set https_only=True",
                    option="same_site",
                )
            )
        path_ok = isinstance(self.path, str) and self.path.startswith("/")
        if not path_ok:
            errors.append(ConfigError(f"path must start with '/', not {self.path!r}", option="path"))
        if not isinstance(self.key_prefix, str):
            errors.append(ConfigError("key_prefix must be a str", option="key_prefix"))
        if path_ok:
            check(
                lambda: check_cookie_name(self.cookie_name, secure=self.https_only, path=self.path, domain=self.domain)
            )
        for i, listener in enumerate(self.listeners):
            if not callable(listener):
                errors.append(
                    ConfigError(
                        f"listeners[{i}] must be a function or coroutine function taking a SessionEvent, "
                        f"not {listener!r}",
                        option="listeners",
                    )
                )
        if self.encryption_key and importlib.util.find_spec("cryptography") is None:
            errors.append(
                ConfigError(
                    "encryption_key needs the cryptography package: pip install 'sessionmw[crypto]'",
                    option="encryption_key",
                )
            )
        if errors:
            raise ConfigError.combine(errors)

    @property
    def effective_touch_interval(self) -> float:
        """The touch interval, never more than a quarter of the idle timeout."""
        if self.idle_timeout is not None:
            return min(self.touch_interval, self.idle_timeout / 4)
        return self.touch_interval


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > 0 or (allow_zero and value == 0)):
        return
    rule = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"{name} must be a number {rule} (seconds), not {value!r}", option=name)


#: The keyword names the middlewares accept (besides ``app``).
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings) if f.init and f.name not in ("httponly",))


def closest_option(name: str, valid: Iterable[str] = OPTION_NAMES) -> str | None:
    """Return the valid option name closest to a misspelt ``name``, if any is close."""
    by_lower = {v.lower(): v for v in valid}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def unknown_option_error(name: str, valid: Iterable[str] = OPTION_NAMES, *, what: str = "option") -> ConfigError:
    """Return the error for an unknown option ``name``, naming the closest valid one."""
    hint = closest_option(name, valid)
    more = f"; did you mean {hint!r}?" if hint else ""
    return ConfigError(f"unknown {what} {name!r}{more}", option=name)


def _as_keys(option: str, value: Any) -> tuple[str, ...]:
    """Return a key option (``secret_key``, ``encryption_key``) as a tuple of str."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, bytes):
        return (value.decode("utf-8", "surrogateescape"),)
    if type(value).__name__ == "Secret":  # starlette.datastructures.Secret
        return (str(value),)
    wrong = ConfigError(
        f"{option} must be a str, bytes, or a list of them (the first is used, all are accepted), "
        f"not {type(value).__name__}",
        option=option,
    )
    if not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise wrong
    keys = []
    for k in value:
        if isinstance(k, bytes):
            keys.append(k.decode("utf-8", "surrogateescape"))
        elif isinstance(k, str) or type(k).__name__ == "Secret":
            keys.append(str(k))
        else:
            raise ConfigError(
                f"{option} must be a str, bytes, or a list of them, not a list holding {type(k).__name__}",
                option=option,
            )
    return tuple(keys)


def _as_listeners(value: Any) -> tuple[Callable[..., Any], ...]:
    if value is None:
        return ()
    if callable(value):
        return (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError(
            f"listeners must be a list of functions taking a SessionEvent, not {type(value).__name__}",
            option="listeners",
        )
    return tuple(value)


def _as_patterns(option: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    try:
        return tuple(str(p) for p in value)
    except TypeError:
        raise ConfigError(f"{option} must be a list of path patterns", option=option) from None


def build_settings(**options: Any) -> Settings:
    """Return validated :class:`Settings` from keyword options; every bad name or value is named at once."""
    errors: list[ConfigError] = []
    for name in list(options):
        if name not in OPTION_NAMES and name != "httponly":
            errors.append(unknown_option_error(name))
            del options[name]

    def take(name: str, convert: Callable[[Any], Any]) -> None:
        if name in options:
            try:
                options[name] = convert(options[name])
            except ConfigError as exc:
                errors.append(exc)
                del options[name]

    keys: tuple[str, ...] = ()
    try:
        keys = _as_keys("secret_key", options.pop("secret_key", None))
        if not keys:
            errors.append(
                ConfigError(
                    "secret_key is required: it signs the session id in the cookie (a list rotates keys)",
                    option="secret_key",
                )
            )
    except ConfigError as exc:
        errors.append(exc)
    for name in ("read_only_paths", "exclude_paths", "lazy_paths"):
        take(name, lambda v, name=name: _as_patterns(name, v))  # type: ignore[misc]
    take("listeners", _as_listeners)
    take("encryption_key", lambda v: tuple(k.encode("utf-8", "surrogateescape") for k in _as_keys("encryption_key", v)))
    if isinstance(options.get("same_site"), str):
        options["same_site"] = options["same_site"].lower()
    try:
        settings = Settings(secret_key=keys or ("",), **options)
    except ConfigError as exc:
        errors.append(exc)
    except TypeError as exc:  # pragma: no cover - names are checked above
        errors.append(ConfigError(str(exc)))
    if errors:
        raise ConfigError.combine(errors)
    return settings


# Conversions for values that arrive as strings (environment variables, .env-backed settings).
def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{v!r} is not a boolean")


def _to_opt_float(v: Any) -> float | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null")):
        return None
    if hasattr(v, "total_seconds"):
        return float(v.total_seconds())
    return float(v)


def _to_opt_int(v: Any) -> int | None:
    f = _to_opt_float(v)
    return None if f is None else int(f)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "max_age": _to_opt_int,
    "https_only": _to_bool,
    "partitioned": _to_bool,
    "httponly": _to_bool,
    "read_only_debug": _to_bool,
    "idle_timeout": _to_opt_float,
    "absolute_timeout": _to_opt_float,
    "lock_timeout": float,
    "lock_expire": float,
    "lock_warn": _to_opt_float,
    "max_waiters": int,
    "touch_interval": float,
    "max_sessions_per_user": _to_opt_int,
    "durable_write_every": int,
    "rotate_every": _to_opt_float,
    "rotate_grace": float,
    "max_session_bytes": _to_opt_int,
    "gc_interval": _to_opt_float,
}

# Config keys whose name is not SESSION_ + the option's upper-cased name.
_ALIASES = {
    "SECRET_KEY": "secret_key",
    "SESSION_SECRET_KEY": "secret_key",
    "SESSION_COOKIE_NAME": "session_cookie",
    "SESSION_COOKIE": "session_cookie",
    "SESSION_COOKIE_PATH": "path",
    "SESSION_COOKIE_DOMAIN": "domain",
    "SESSION_COOKIE_SECURE": "https_only",
    "SESSION_COOKIE_HTTPONLY": "httponly",
    "SESSION_COOKIE_SAMESITE": "same_site",
    "SESSION_COOKIE_PARTITIONED": "partitioned",
    "SESSION_MAX_AGE": "max_age",
}


def options_from_config(
    config: Mapping[str, Any] | object | None = None,
    *,
    prefix: str = "SESSION_",
    env: bool = True,
    env_prefix: str = "SESSIONMW_",
    strict: bool = True,
) -> dict[str, Any]:
    """Collect middleware keywords from an app's config and ``SESSIONMW_*`` environment variables.

    ``config`` is a mapping (Flask's ``app.config``, a dict) or a settings object with attributes (a
    pydantic ``BaseSettings``, Starlette's ``Config`` values): keys ``SECRET_KEY`` and
    ``SESSION_<OPTION>`` (``SESSION_BACKEND``, ``SESSION_IDLE_TIMEOUT``, ``SESSION_COOKIE_PREFIX``...),
    in upper or lower case. Environment variables ``SESSIONMW_<OPTION>`` fill what the config leaves
    unset (other ``SESSIONMW_*`` variables are ignored). String values are converted (``"3600"``,
    ``"true"``). The result is meant for ``SessionMiddleware(app, **options)``.

    :param strict: raise :class:`ConfigError` for an unknown ``SESSION_*`` key, naming the closest
        option; with ``False`` unknown keys are skipped (Flask, where other extensions share the prefix).
    """
    out: dict[str, Any] = {}
    if env:
        for key, value in os.environ.items():
            if key.startswith(env_prefix):
                env_name = key[len(env_prefix) :].lower()
                # Other SESSIONMW_* variables (the test suite's, the CLI's) are not options: skip them.
                if env_name in OPTION_NAMES:
                    out[env_name] = _convert(env_name, value, key)
    for key, value in _config_items(config):
        upper = key.upper()
        alias = _ALIASES.get(upper)
        if alias is not None:
            name = alias
        else:
            if not upper.startswith(prefix):
                continue
            name = upper[len(prefix) :].lower()
            if name not in OPTION_NAMES:
                if strict:
                    raise unknown_option_error(key, [prefix + n.upper() for n in OPTION_NAMES])
                continue
        if value is None and name in ("secret_key", "backend"):
            continue
        out[name] = _convert(name, value, key)
    return out


def _config_items(config: Any) -> Iterable[tuple[str, Any]]:
    if config is None:
        return ()
    if isinstance(config, Mapping):
        return [(str(k), v) for k, v in config.items()]
    if hasattr(config, "model_dump"):  # pydantic settings
        return [(str(k), v) for k, v in config.model_dump().items()]
    return [(k, getattr(config, k)) for k in dir(config) if not k.startswith("_")]


def _convert(name: str, value: Any, key: str) -> Any:
    conv = _CONVERT.get(name)
    if conv is None:
        if name == "same_site" and isinstance(value, str):
            return value.lower()
        return value
    try:
        return conv(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a valid value for {name}", option=key) from None
