"""The memcached backend's administration: gc, the servers' figures and their health.

:class:`Figures` is a base of :class:`~sessionmw.backends.memcached.MemcachedBackend`: its methods are
the backend's own.
"""

from __future__ import annotations

import logging
import time

from ...core.errors import BackendUnavailable
from . import keys
from .enumeration import Enumeration
from .index import UserIndex
from .placement import Node
from .values import version_of

__all__ = ["STATS_FIGURES", "SUMMED_FIGURES", "Figures"]

logger = logging.getLogger("sessionmw")

#: Figures of ``stats`` that :meth:`MemcachedBackend.stats` sums over the servers.
SUMMED_FIGURES = ("evictions", "curr_items", "bytes", "limit_maxbytes")
#: Figures of ``stats`` that :meth:`MemcachedBackend.server_stats` reports.
STATS_FIGURES = (
    "evictions",
    "curr_items",
    "total_items",
    "bytes",
    "limit_maxbytes",
    "get_hits",
    "get_misses",
    "curr_connections",
    "uptime",
)


class Figures(UserIndex, Enumeration):
    """The administration part of :class:`~sessionmw.backends.memcached.MemcachedBackend`."""

    def gc(self, now: float, limit: int | None = None) -> int:
        """Remove sessions whose ``expires`` is before ``now`` and prune the user indexes; return how many.

        memcached drops sessions past their TTL by itself; each removal is a compare-and-delete, so a
        session refreshed meanwhile by a request is kept. ``limit`` is accepted for the protocol's sake:
        the background collection never runs on memcached, and a full pass has no batches to cut.
        """
        removed: set[str] = set()
        index_keys: list[tuple[Node, str]] = []
        for node, sids, node_index_keys in self._each_dump():
            index_keys.extend((node, key) for key in node_index_keys)
            for sid, (blob, cas) in self._gets(node, sids).items():
                _, record = version_of(blob)
                if record is None or record.expires is None or record.expires >= now:
                    continue
                if self._checked_delete(node, keys.data_key(self.key_prefix, sid), cas):
                    removed.add(sid)
        for node, key in index_keys:
            self._prune_index(node, key)
        return len(removed)

    def stats(self) -> dict[str, float]:
        """Return memcached's ``evictions``, ``curr_items``, ``bytes`` and ``limit_maxbytes``, summed over servers.

        With several servers, one that does not answer is counted in ``servers_down`` instead. Logs a
        warning when ``evictions`` is above zero: memcached dropped items to make room, and an evicted
        session is a lost session (a logged-out user).
        """
        totals: dict[str, float] = dict.fromkeys(SUMMED_FIGURES, 0.0)
        down = 0
        for node in self._nodes.values():
            try:
                figures = self._server_figures(node)
            except BackendUnavailable:
                if len(self._nodes) == 1:
                    raise
                down += 1
                continue
            for name in SUMMED_FIGURES:
                totals[name] += figures.get(name, 0)
        if len(self._nodes) > 1:
            totals["servers"] = float(len(self._nodes))
            totals["servers_down"] = float(down)
            totals["replicas"] = float(self.replicas)
        if totals["evictions"] > 0:
            logger.warning(
                "memcached backend %s: %d items were evicted to make room; evicted sessions are lost sessions "
                "(give memcached more memory: -m)",
                self.name,
                int(totals["evictions"]),
            )
        return totals

    def server_stats(self) -> dict[str, dict[str, int]]:
        """Return, per server (``host:port``), the ``stats`` figures an operator watches.

        ``evictions`` above zero means memcached dropped items, sessions among them, to make room.
        Raises :class:`~sessionmw.errors.BackendUnavailable` when a server does not answer.
        """
        return {node.name: self._server_figures(node) for node in self._nodes.values()}

    def _server_figures(self, node: Node) -> dict[str, int]:
        raw = self._run(node, node.client.stats)
        figures: dict[str, int] = {}
        for name in STATS_FIGURES:
            value = raw.get(name.encode("ascii"))
            if isinstance(value, int | float):
                figures[name] = int(value)
        return figures

    def server_health(self) -> dict[str, dict[str, float]]:
        """Return, per server: whether it is ejected, its failures in a row, its round trips and failed ones so far."""
        now = time.monotonic()
        return {
            node.name: {
                "ejected": float(node.down_until > now),
                "failures": float(node.failures),
                "calls": float(node.calls),
                "failed_calls": float(node.failed_calls),
            }
            for node in self._nodes.values()
        }
