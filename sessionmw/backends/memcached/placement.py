"""Which memcached servers hold a key, which of them are in service, and how one call to a server runs.

One pooled client per server. A key's servers are ranked by rendezvous hashing with pymemcache's own
hasher (:class:`pymemcache.client.rendezvous.RendezvousHash`), so each key has a fixed list, and a server
that leaves moves only its own share. A server that fails ``fail_limit`` times in a row is ejected for
``retry_after`` seconds; the next call after that tries it once more. :class:`Servers` is the base of
:class:`~sessionmw.backends.memcached.MemcachedBackend`: its methods are the backend's own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymemcache.client.base import PooledClient
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

from ...core.errors import BackendUnavailable, ConfigError, RecordTooLarge
from .keys import data_key, lock_key
from .meta import Connections, Reply, md, mg

__all__ = ["DEFAULT_ITEM_SIZE_MAX", "ITEM_OVERHEAD", "ORDER_CACHE", "Node", "Servers", "close_clients", "make_nodes"]

logger = logging.getLogger("sessionmw")

#: memcached's default item size limit (``-I``), used when ``stats settings`` does not tell.
DEFAULT_ITEM_SIZE_MAX = 1024 * 1024
#: Bytes memcached adds to key and value for an item's header, CAS and line ends (measured: ~60).
ITEM_OVERHEAD = 96
#: Orphaned locks remembered per server (the oldest are forgotten; they expire by their deadline).
MAX_ORPHANS = 10000
#: Server rankings kept per backend (one per recent session), so hashing runs once per session.
ORDER_CACHE = 65536


@dataclass(eq=False)
class Node:
    """One memcached server, what we learned about it, and whether it is in service."""

    name: str
    client: Any  # PooledClient: pymemcache is untyped
    #: ``(host, port)``, for the metadump connection.
    address: tuple[str, int] = ("", 0)
    #: Whether the server lacks ``lru_crawler metadump hash`` (memcached < 1.6.9), learned on first dump.
    dump_all: bool = False
    #: ``stats settings`` item_size_max, read on first write.
    item_size_max: int | None = None
    #: Failures in a row (a success resets it); at ``fail_limit`` the server is ejected.
    failures: int = 0
    #: ``time.monotonic()`` until which an ejected server gets no call; 0 while in service.
    down_until: float = 0.0
    #: Round trips to this server, and those that failed, since the backend was built (figures, tests).
    calls: int = 0
    failed_calls: int = 0
    #: Locks this process may have left on the server by a call that failed after sending (lock key ->
    #: token): the server may still run it, late. Such a lock is taken over, and removed when the server
    #: answers again.
    orphans: dict[str, str] = field(default_factory=dict)
    info_mutex: threading.Lock = field(default_factory=threading.Lock)
    #: The idle connections of the meta commands (the pooled ``client`` keeps its own for the others).
    meta: Connections = field(init=False)

    def __post_init__(self) -> None:
        self.meta = Connections(self.client)


def node_name(host: str, port: int) -> str:
    """A server's name in messages and :meth:`~MemcachedBackend.server_stats`: ``host:port``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_nodes(servers: Sequence[tuple[str, int]], connect_timeout: float, timeout: float) -> dict[str, Node]:
    """One :class:`Node` with its pooled client per server, by name; a server listed twice is an error."""
    nodes: dict[str, Node] = {}
    for host, port in servers:
        name = node_name(host, port)
        if name in nodes:
            raise ConfigError(f"memcached backend: server {name} is listed twice", option="backend")
        client = PooledClient(
            (host, port),
            connect_timeout=connect_timeout,
            timeout=timeout,
            no_delay=True,
            default_noreply=False,
        )
        nodes[name] = Node(name, client, (host, port))
    return nodes


def close_clients(nodes: list[Node]) -> None:
    """Close every idle connection to ``nodes`` (they reconnect if used again)."""
    for node in nodes:
        node.meta.close()
        node.client.close()


class Servers:
    """The servers of a memcached backend: where a key lives, which servers serve, one call to a server."""

    key_prefix: str
    connect_timeout: float
    timeout: float
    name: str
    replicas: int
    fail_limit: int
    retry_after: float
    _nodes: dict[str, Node]

    def _init_servers(self, nodes: dict[str, Node]) -> None:
        self._nodes = nodes
        self._hasher = RendezvousHash(nodes=list(nodes))
        self._orders: dict[str, tuple[Node, ...]] = {}

    # -- placement -----------------------------------------------------------------------------

    def _order(self, key: str) -> tuple[Node, ...]:
        """Every server, ranked for ``key`` by rendezvous hashing (the first is ``RendezvousHash.get_node``'s)."""
        order = self._orders.get(key)
        if order is None:
            if len(self._nodes) == 1:
                order = tuple(self._nodes.values())
            else:
                score = self._hasher.hash_function
                ranked = sorted(self._nodes, key=lambda name: (score(f"{name}-{key}"), name), reverse=True)
                order = tuple(self._nodes[name] for name in ranked)
            if len(self._orders) >= ORDER_CACHE:
                self._orders.clear()
            self._orders[key] = order
        return order

    def _locate(self, sid: str) -> tuple[Node, str, str]:
        """Return the first server of ``sid``'s list (where its lock lives while that server serves), its keys."""
        key = data_key(self.key_prefix, sid)
        return self._order(key)[0], key, lock_key(key)

    def _live(self, order: Iterable[Node], count: int, skip: Iterable[Node] = ()) -> list[Node]:
        """The first ``count`` servers of ``order`` in service, leaving out ``skip``.

        An ejected server whose retry time has come is included, and its retry is claimed (its next
        retry time set), so one call per process tries it while the others keep going around it.
        """
        live: list[Node] = []
        now = 0.0
        for node in order:
            if node in skip:
                continue
            if node.down_until:
                now = now or time.monotonic()
                if now < node.down_until:
                    continue
                node.down_until = now + self.retry_after  # this call is the retry
            live.append(node)
            if len(live) == count:
                break
        return live

    def _none_live(self, order: Sequence[Node], cause: BaseException | None = None) -> BackendUnavailable:
        """The error for a call that found none of ``order``'s servers in service."""
        if len(self._nodes) == 1:
            assert cause is not None
            return self._unavailable(order[0], cause)
        names = ", ".join(node.name for node in order)
        detail = f": last error {_detail(cause, self)}" if cause is not None else ""
        return BackendUnavailable(
            f"memcached backend {self.name} is unavailable: every server of this session is down ({names}){detail}",
            backend=self.name,
        )

    # -- health --------------------------------------------------------------------------------

    def _failed(self, node: Node, exc: BaseException) -> None:
        """Count a failed call on ``node``; eject it at ``fail_limit`` failures in a row (with several servers)."""
        node.failed_calls += 1
        node.failures += 1
        if len(self._nodes) > 1 and node.failures >= self.fail_limit:
            first = not node.down_until
            node.down_until = time.monotonic() + self.retry_after
            if first:
                logger.warning(
                    "memcached backend %s: server %s ejected for %g s after %d failed calls (%s); its sessions "
                    "are served by the next servers of their lists",
                    self.name,
                    node.name,
                    self.retry_after,
                    node.failures,
                    _detail(exc, self),
                )

    def _succeeded(self, node: Node) -> None:
        """A call on ``node`` worked: it is in service again, and the locks left by failed calls are removed."""
        if node.down_until:
            logger.warning("memcached backend %s: server %s answers again", self.name, node.name)
        node.failures = 0
        node.down_until = 0.0
        if node.orphans:
            self._remove_orphans(node)

    def _orphan(self, node: Node, lock: str, token: str) -> None:
        """Remember that a failed call may have left ``token``'s lock at ``lock`` on ``node``."""
        if len(node.orphans) >= MAX_ORPHANS:
            node.orphans.pop(next(iter(node.orphans)))
        node.orphans[lock] = token

    def _remove_orphans(self, node: Node) -> None:
        """Delete every lock of :attr:`Node.orphans` still holding its token (checked by CAS)."""
        orphans, node.orphans = node.orphans, {}
        try:
            for lock, token in orphans.items():
                held = node.meta.exchange([mg(lock, "v c")])[0]
                if held.value is not None and held.cas is not None and held.value.split(b" ")[0] == token.encode():
                    node.meta.exchange([md(lock, held.cas)])
        except Exception:
            pass  # the server failed again: the locks expire by their deadline

    # -- one call ------------------------------------------------------------------------------

    def _unavailable(self, node: Node, exc: BaseException) -> BackendUnavailable:
        where = "" if len(self._nodes) == 1 else f"server {node.name}: "
        message = f"memcached backend {self.name} is unavailable: {where}{_detail(exc, self)}"
        return BackendUnavailable(" ".join(message.split()), backend=self.name)

    def _too_large(self, node: Node, size: int, limit: int) -> RecordTooLarge:
        return RecordTooLarge(
            f"session record of {size} bytes is too large for memcached server {node.name}, whose item size "
            f"limit is {limit} bytes (memcached -I); store less in the session",
            size=size,
            limit=limit,
            backend=self.name,
        )

    def _run(self, node: Node, call: Callable[..., Any], *args: Any, size: int | None = None, **kw: Any) -> Any:
        """Run one pymemcache call, turning connection and server failures into our exceptions.

        A failure counts against the server's health (see :meth:`_failed`); a success restores it. The
        pooled client destroys a connection that failed, so the next call reconnects.
        """
        node.calls += 1
        try:
            result = call(*args, **kw)
        except MemcacheServerError as exc:
            if size is not None and "too large" in str(exc):
                raise self._too_large(node, size, node.item_size_max or DEFAULT_ITEM_SIZE_MAX) from exc
            self._failed(node, exc)
            raise self._unavailable(node, exc) from exc
        except (OSError, MemcacheUnexpectedCloseError, MemcacheUnknownError, MemcacheClientError) as exc:
            self._failed(node, exc)
            raise self._unavailable(node, exc) from exc
        if node.failures:
            self._succeeded(node)
        return result

    def _meta(self, node: Node, commands: list[bytes], size: int | None = None) -> list[Reply]:
        """Send meta ``commands`` to ``node`` in one round trip; return their replies."""
        result: list[Reply] = self._run(node, node.meta.exchange, commands, size=size)
        return result

    def _learn(self, node: Node) -> None:
        """Read, once, the server's item size limit."""
        if node.item_size_max is not None:
            return
        with node.info_mutex:
            if node.item_size_max is not None:
                return
            settings = self._run(node, node.client.stats, "settings")
            try:
                node.item_size_max = int(settings.get(b"item_size_max", DEFAULT_ITEM_SIZE_MAX))
            except (TypeError, ValueError):
                node.item_size_max = DEFAULT_ITEM_SIZE_MAX

    def _check_size(self, node: Node, key: str, blob: bytes) -> None:
        self._learn(node)
        limit = node.item_size_max or DEFAULT_ITEM_SIZE_MAX
        if len(blob) + len(key) + ITEM_OVERHEAD > limit:
            raise self._too_large(node, len(blob), limit)


def _detail(exc: BaseException | None, servers: Servers) -> str:
    """What went wrong, in words."""
    if isinstance(exc, MemcacheUnexpectedCloseError):
        return "the server closed the connection"
    if isinstance(exc, TimeoutError):
        return f"timed out (connect_timeout={servers.connect_timeout}, timeout={servers.timeout})"
    if isinstance(exc, MemcacheUnknownCommandError):
        return "the server does not know the meta commands (mg/ms/md); sessionmw needs memcached 1.6 or later"
    if isinstance(exc, MemcacheServerError | MemcacheUnknownError | MemcacheClientError):
        said = exc.args[0] if exc.args else type(exc).__name__
        return "server error: " + (said.decode("ascii", "replace") if isinstance(said, bytes) else str(said))
    if exc is None:
        return "no server"
    return str(exc) or type(exc).__name__
