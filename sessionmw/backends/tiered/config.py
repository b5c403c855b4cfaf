"""How a tiered store is named: a pair of backends, opened with the site's key prefix.

Rules of this module: no I/O. :class:`TieredSpec` is what the adapters build from ``backend=`` and
``durable_backend=``, and what :func:`sessionmw.backends.open_backend` opens; it is a value, so a test
can open it twice with two key prefixes as it would a URL.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import ConfigError
from ..base import Backend

__all__ = ["TieredSpec"]


@dataclass(frozen=True)
class TieredSpec:
    """A fast backend in front of a durable one, each a URL or an instance, not opened yet.

    :param fast: the fast tier (``backend=``): memcached or Redis; it holds the locks.
    :param durable: the durable tier (``durable_backend=``): SQL, file or Redis; it holds the registry.
    :param write_every: ``durable_write_every``: write a session's data through every this many writes.
    :param refresh_every: seconds between refreshes of last access in the durable tier (the touch interval).
    """

    fast: str | Backend
    durable: str | Backend
    write_every: int = 1
    refresh_every: float = 60.0

    def __post_init__(self) -> None:
        for option, value in (("backend", self.fast), ("durable_backend", self.durable)):
            if isinstance(value, TieredSpec) or not isinstance(value, str | Backend):
                raise ConfigError(
                    f"{option} of a tiered store must be a backend URL or a Backend, not {type(value).__name__}",
                    option=option,
                )
        if self.fast is self.durable or (
            isinstance(self.fast, str) and isinstance(self.durable, str) and _same_url(self.fast, self.durable)
        ):
            raise ConfigError(
                "durable_backend names the same store as backend; a tiered store needs two stores "
                "(e.g. backend='memcached://...' and durable_backend='postgresql+psycopg://...')",
                option="durable_backend",
            )
        if not isinstance(self.write_every, int) or isinstance(self.write_every, bool) or self.write_every < 1:
            raise ConfigError(
                f"durable_write_every must be an int >= 1, not {self.write_every!r}", option="durable_write_every"
            )


def _same_url(a: str, b: str) -> bool:
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()
