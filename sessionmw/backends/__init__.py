"""Storage backends, chosen by URL scheme.

Each backend module offers ``from_url(url, key_prefix) -> Backend`` and may offer
``async_from_url(url, key_prefix) -> AsyncBackend`` when its client has a native asyncio twin;
otherwise ASGI apps get the sync backend run in worker threads. Client libraries are imported only
when their scheme is used; a missing one names the extra to install. A :class:`~.tiered.TieredSpec`
(a fast and a durable backend) opens as a :class:`~.tiered.TieredBackend`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from ._url import BackendURL, parse_backend_url
from .base import AsyncBackend, Backend, Record, SessionInfo, Touch

if TYPE_CHECKING:
    from .threaded import ThreadedAsyncBackend
    from .tiered import TieredBackend, TieredSpec

__all__ = [
    "AsyncBackend",
    "Backend",
    "BackendURL",
    "Record",
    "SessionInfo",
    "ThreadedAsyncBackend",
    "TieredBackend",
    "TieredSpec",
    "Touch",
    "as_async",
    "open_async_backend",
    "open_backend",
]

# scheme -> (module, extra to install for its client)
_SCHEMES: dict[str, tuple[str, str | None]] = {
    "memory": ("sessionmw.backends.memory", None),
    "file": ("sessionmw.backends.file", None),
    "redis": ("sessionmw.backends.redis", "redis"),
    "rediss": ("sessionmw.backends.redis", "redis"),
    "unix": ("sessionmw.backends.redis", "redis"),
    "redis+unix": ("sessionmw.backends.redis", "redis"),
    "redis+sentinel": ("sessionmw.backends.redis", "redis"),
    "redis+cluster": ("sessionmw.backends.redis", "redis"),
    "memcached": ("sessionmw.backends.memcached", "memcached"),
}
_SQL_EXTRA = "sql"
_CLIENTS = {"redis": "redis", "memcached": "pymemcache", "sql": "sqlalchemy"}


def _module_for(url: BackendURL) -> Any:
    scheme = url.scheme
    if scheme in _SCHEMES:
        modname, extra = _SCHEMES[scheme]
    elif scheme.split("+", 1)[0] in (
        "sqlite",
        "postgresql",
        "postgres",
        "mysql",
        "mariadb",
        "oracle",
        "mssql",
    ):
        modname, extra = "sessionmw.backends.sql", _SQL_EXTRA
    else:
        known = ", ".join(sorted(set(_SCHEMES) | {"sqlite", "postgresql+psycopg", "mysql+pymysql"}))
        raise ConfigError(f"unknown backend URL scheme {scheme!r} in {url.display!r}; known: {known}", option="backend")
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if extra is not None and exc.name is not None and exc.name.split(".")[0] == _CLIENTS.get(extra, extra):
            raise ConfigError(
                f"the {scheme}:// backend needs {exc.name}: pip install 'sessionmw[{extra}]'",
                option="backend",
            ) from exc
        raise


def _build(spec: str, key_prefix: str, factory_name: str) -> Any:
    url = parse_backend_url(spec)
    module = _module_for(url)
    factory: Callable[[BackendURL, str], Any] | None = getattr(module, factory_name, None)
    if factory is None:
        return None
    backend = factory(url, key_prefix)
    url.finish()
    return backend


def open_backend(spec: str | Backend | TieredSpec, *, key_prefix: str = "sessmw:") -> Backend:
    """Return the sync backend for a URL or a tiered pair (or ``spec`` itself when it already is a backend)."""
    from .tiered import TieredSpec  # here, not at the top: the core imports this package, never a tier

    if isinstance(spec, TieredSpec):
        return _open_tiered(spec, key_prefix)
    if not isinstance(spec, str):
        if isinstance(spec, Backend):
            return spec
        raise ConfigError(f"backend must be a URL or a Backend, not {type(spec).__name__}", option="backend")
    backend: Backend = _build(spec, key_prefix, "from_url")
    return backend


def _open_tiered(spec: TieredSpec, key_prefix: str) -> TieredBackend:
    """Open both tiers of ``spec`` with ``key_prefix``; an error in the durable one names ``durable_backend``."""
    from .tiered import TieredBackend

    fast = open_backend(spec.fast, key_prefix=key_prefix)
    try:
        durable = open_backend(spec.durable, key_prefix=key_prefix)
    except ConfigError as exc:
        if fast is not spec.fast:
            fast.close()
        raise ConfigError(f"durable_backend: {exc.message}", option="durable_backend") from exc
    try:
        return TieredBackend(fast, durable, write_every=spec.write_every, refresh_every=spec.refresh_every)
    except ConfigError:
        for opened, given in ((fast, spec.fast), (durable, spec.durable)):
            if opened is not given:
                opened.close()
        raise


def open_async_backend(spec: str | Backend | AsyncBackend | TieredSpec, *, key_prefix: str = "sessmw:") -> AsyncBackend:
    """Return an asyncio backend for a URL: the native one where the client has it, else threaded."""
    if not isinstance(spec, str):
        if isinstance(spec, AsyncBackend):
            return spec
        return as_async(open_backend(spec, key_prefix=key_prefix))
    native: AsyncBackend | None = _build(spec, key_prefix, "async_from_url")
    if native is not None:
        return native
    return as_async(open_backend(spec, key_prefix=key_prefix))


def as_async(backend: Backend | AsyncBackend) -> AsyncBackend:
    """Return ``backend`` itself if it is async already, else a threaded async wrapper of it."""
    if isinstance(backend, AsyncBackend):
        return backend
    from .threaded import ThreadedAsyncBackend  # anyio: only for ASGI apps

    return ThreadedAsyncBackend(backend)


def __getattr__(name: str) -> Any:
    if name == "ThreadedAsyncBackend":
        from .threaded import ThreadedAsyncBackend

        return ThreadedAsyncBackend
    if name in ("TieredBackend", "TieredSpec"):
        from . import tiered

        return getattr(tiered, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
