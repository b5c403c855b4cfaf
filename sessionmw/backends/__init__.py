"""Storage backends, chosen by URL scheme.

Each backend module offers ``from_url(url, key_prefix) -> Backend`` and may offer
``async_from_url(url, key_prefix) -> AsyncBackend`` when its client has a native asyncio twin;
otherwise ASGI apps get the sync backend run in worker threads. Client libraries are imported only
when their scheme is used; a missing one names the extra to install. A :class:`~.tiered.TieredSpec`
(a fast and a durable backend) opens as a :class:`~.tiered.TieredBackend`.

``open_backend(..., create=False)`` opens a store that must exist already (the administration
commands): a missing file-backend directory, SQLite file or SQL table is a :class:`ConfigError`
naming it, and nothing is created. Redis, memcached and memory create nothing by reading.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

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
_SQL_DIALECTS = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
# What an unknown scheme is compared with for a did-you-mean, beyond _SCHEMES and _SQL_DIALECTS.
_SQL_SCHEMES = ("postgresql+psycopg", "postgresql+psycopg2", "mysql+pymysql", "mariadb+pymysql")
_CLIENTS = {"redis": "redis", "memcached": "pymemcache", "sql": "sqlalchemy"}
_FILE_MODULE = "sessionmw.backends.file"
_SQL_MODULE = "sessionmw.backends.sql"


def _unknown_scheme(url: BackendURL) -> ConfigError:
    """The error for a scheme no backend serves, naming the closest known one (``redsi`` -> ``redis``)."""
    scheme = url.scheme
    candidates = sorted(set(_SCHEMES) | set(_SQL_DIALECTS) | set(_SQL_SCHEMES))
    close = difflib.get_close_matches(scheme, candidates, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted(set(_SCHEMES) | {"sqlite", "postgresql+psycopg", "mysql+pymysql"}))
    return ConfigError(
        f"unknown backend URL scheme {scheme!r} in {url.display!r}{hint} (known: {known})", option="backend"
    )


def _module_for(url: BackendURL) -> Any:
    scheme = url.scheme
    if scheme in _SCHEMES:
        modname, extra = _SCHEMES[scheme]
    elif scheme.split("+", 1)[0] in _SQL_DIALECTS:
        modname, extra = _SQL_MODULE, _SQL_EXTRA
    else:
        raise _unknown_scheme(url)
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if extra is not None and exc.name is not None and exc.name.split(".")[0] == _CLIENTS.get(extra, extra):
            raise ConfigError(
                f"the {scheme}:// backend needs {exc.name}: pip install 'sessionmw[{extra}]'",
                option="backend",
            ) from exc
        raise


def _build(spec: str, key_prefix: str, factory_name: str, create: bool = True) -> Any:
    url = parse_backend_url(spec)
    module = _module_for(url)
    factory: Callable[..., Any] | None = getattr(module, factory_name, None)
    if factory is None:
        return None
    backend = factory(url, key_prefix) if create else _build_existing(module, factory, url, key_prefix)
    url.finish()
    return backend


def _build_existing(module: ModuleType, factory: Callable[..., Any], url: BackendURL, key_prefix: str) -> Any:
    """Build the backend of ``url`` with ``factory`` without creating its storage (``create=False``)."""
    if module.__name__ == _SQL_MODULE:  # checks the SQLite file now, and the table at the first call
        return factory(url, key_prefix, create=False)
    if module.__name__ == _FILE_MODULE:
        # The file backend makes its directory when it is built: look first. (The same path its
        # from_url takes; a relative one is left to it, which names that mistake.)
        from .file import default_directory
        from .file.files import require_directory

        path = unquote(url.path)
        if not path or path.startswith("/"):
            require_directory(Path(path) if path else default_directory())
    return factory(url, key_prefix)  # memory, Redis, memcached: reading creates nothing


def open_backend(spec: str | Backend | TieredSpec, *, key_prefix: str = "sessmw:", create: bool = True) -> Backend:
    """Return the sync backend for a URL or a tiered pair (or ``spec`` itself when it already is a backend).

    :param create: ``False`` opens only a store that exists: a missing file-backend directory, SQLite
        file or SQL table is a :class:`ConfigError` naming it (the table's at the first call), and
        nothing is ever created. A backend instance is returned as it is.
    """
    from .tiered import TieredSpec  # here, not at the top: the core imports this package, never a tier

    if isinstance(spec, TieredSpec):
        return _open_tiered(spec, key_prefix, create)
    if not isinstance(spec, str):
        if isinstance(spec, Backend):
            return spec
        raise ConfigError(f"backend must be a URL or a Backend, not {type(spec).__name__}", option="backend")
    backend: Backend = _build(spec, key_prefix, "from_url", create)
    return backend


def _open_tiered(spec: TieredSpec, key_prefix: str, create: bool = True) -> TieredBackend:
    """Open both tiers of ``spec`` with ``key_prefix``; an error in the durable one names ``durable_backend``."""
    from .tiered import TieredBackend

    fast = open_backend(spec.fast, key_prefix=key_prefix, create=create)
    try:
        durable = open_backend(spec.durable, key_prefix=key_prefix, create=create)
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
