"""Backend URLs, parsed in one place.

Rules of this module: no I/O. A URL is split into scheme, hosts (a comma-separated list is allowed),
path, credentials and query options. A backend takes the options it knows with :meth:`BackendURL.take`
and calls :meth:`BackendURL.finish`, which rejects what is left, naming it and the closest valid one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import parse_qsl, unquote

from ..core.errors import ConfigError

__all__ = ["BackendURL", "parse_backend_url"]

T = TypeVar("T")


@dataclass
class BackendURL:
    """A parsed backend URL; options are consumed with :meth:`take` and checked by :meth:`finish`."""

    raw: str
    scheme: str
    hosts: list[tuple[str, int | None]]
    path: str
    username: str | None
    password: str | None
    options: dict[str, str]
    _known: list[str] = field(default_factory=list)

    @property
    def display(self) -> str:
        """The URL with any password replaced by ``***``, for messages and logs."""
        if self.password is None:
            return self.raw.split("?", 1)[0]
        user = self.username or ""
        hosts = ",".join(h if p is None else f"{h}:{p}" for h, p in self.hosts)
        return f"{self.scheme}://{user}:***@{hosts}{self.path}"

    def take(self, name: str, convert: Callable[[str], T], default: T) -> T:
        """Remove option ``name`` from the query string and return it converted, or ``default``."""
        self._known.append(name)
        if name not in self.options:
            return default
        value = self.options.pop(name)
        try:
            return convert(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"backend URL option {name}={value!r} is not valid for {self.scheme}://", option=name
            ) from None

    def finish(self) -> None:
        """Raise :class:`ConfigError` for any option no one took."""
        for name in self.options:
            close = difflib.get_close_matches(name, self._known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self._known)) or "none"
            raise ConfigError(
                f"unknown backend URL option {name!r} for {self.scheme}://{hint} (known: {known})",
                option=name,
            )


def positive_float(value: str) -> float:
    """Convert a URL option to a float > 0."""
    f = float(value)
    if not f > 0:
        raise ValueError(value)
    return f


def positive_int(value: str) -> int:
    """Convert a URL option to an int > 0."""
    i = int(value)
    if i <= 0:
        raise ValueError(value)
    return i


def boolean(value: str) -> bool:
    """Convert a URL option to a bool (1/0, true/false, yes/no, on/off)."""
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def parse_backend_url(url: str) -> BackendURL:
    """Split ``url`` into its parts; raise :class:`ConfigError` when it is not a URL at all."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"backend {url!r} is not a backend URL such as memory://, file:///path or redis://host:6379/0",
            option="backend",
        )
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    rest, _, query = rest.partition("?")
    rest = rest.split("#", 1)[0]
    if scheme in ("file", "sqlite") or scheme.startswith("sqlite+"):
        netloc, path = "", rest
    else:
        netloc, slash, path = rest.partition("/")
        path = slash + path
    username = password = None
    if "@" in netloc:
        cred, netloc = netloc.rsplit("@", 1)
        user, colon, pw = cred.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    hosts: list[tuple[str, int | None]] = []
    for part in filter(None, netloc.split(",")):
        if part.startswith("["):  # [ipv6]:port
            host, _, port = part[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = part.rpartition(":") if part.count(":") == 1 else (part, "", "")
        try:
            hosts.append((host, int(port) if port else None))
        except ValueError:
            raise ConfigError(f"backend URL {url!r}: port {port!r} is not a number", option="backend") from None
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        options[key] = value
    return BackendURL(
        raw=url,
        scheme=scheme,
        hosts=hosts,
        path=path,
        username=username,
        password=password,
        options=options,
    )
