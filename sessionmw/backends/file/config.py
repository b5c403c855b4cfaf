"""The file backend's URL: ``file:///absolute/dir``, or ``file://`` for the default directory."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import unquote

from ...core.errors import ConfigError
from .._url import BackendURL
from .backend import FileBackend

__all__ = ["default_directory", "from_url"]


def default_directory() -> Path:
    """Return the default sessions directory: ``sessionmw`` under the system temp dir."""
    return Path(tempfile.gettempdir()) / "sessionmw"


def from_url(url: BackendURL, key_prefix: str) -> FileBackend:
    """Build the backend for ``file:///absolute/dir`` (``file://`` alone: the default directory)."""
    path = unquote(url.path)
    if not path:
        return FileBackend(default_directory(), key_prefix=key_prefix)
    if not path.startswith("/"):
        raise ConfigError(
            f"file backend URL {url.raw!r} needs an absolute path: file:///var/lib/app/sessions",
            option="backend",
        )
    return FileBackend(path, key_prefix=key_prefix)
