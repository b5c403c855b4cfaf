"""Which memcached server a key goes to, and how one call to a server runs.

One pooled client per server, placed by rendezvous hashing (see the package's notes for why).
:class:`Servers` is the base of :class:`~sessionmw.backends.memcached.MemcachedBackend`: placement,
error translation, what each server supports, and the commands every part of the backend shares
(compare-and-delete, fetching many records). Its methods are the backend's own, so a primitive calls
them with no layer in between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymemcache.client.base import PooledClient
from pymemcache.exceptions import (
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

from ...core.errors import BackendUnavailable, ConfigError, RecordTooLarge
from ..base import Record
from .keys import data_key, lock_key, sid_of
from .values import RELEASED_MARKER, batches, decode

__all__ = ["DEFAULT_ITEM_SIZE_MAX", "ITEM_OVERHEAD", "Node", "Servers", "close_clients", "make_nodes"]

#: memcached's default item size limit (``-I``), used when ``stats settings`` does not tell.
DEFAULT_ITEM_SIZE_MAX = 1024 * 1024
#: Bytes memcached adds to key and value for an item's header, CAS and line ends (measured: ~60).
ITEM_OVERHEAD = 96


@dataclass
class Node:
    """One memcached server and what we learned about it."""

    name: str
    client: Any  # PooledClient: pymemcache is untyped
    #: ``(host, port)``, for the metadump connection.
    address: tuple[str, int] = ("", 0)
    #: Whether the server lacks ``lru_crawler metadump hash`` (memcached < 1.6.9), learned on first dump.
    dump_all: bool = False
    #: ``stats settings`` item_size_max, read on first write.
    item_size_max: int | None = None
    #: Whether the server knows the meta delete command (memcached >= 1.6), read on first release.
    meta_delete: bool | None = None
    info_mutex: threading.Lock = field(default_factory=threading.Lock)


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


def close_clients(clients: list[Any]) -> None:
    """Close every connection of ``clients`` (they reconnect if used again)."""
    for client in clients:
        client.close()


class Servers:
    """The servers of a memcached backend: where a key lives, and one call to its server."""

    key_prefix: str
    connect_timeout: float
    timeout: float
    name: str
    _nodes: dict[str, Node]
    #: The server when there is only one: no hashing at all.
    _only: Node | None
    _ring: Any  # RendezvousHash over the node names

    def _node_for(self, key: str) -> Node:
        """The server of ``key``: of a session's data key for its record and lock, of an index key for it."""
        if self._only is not None:
            return self._only
        return self._nodes[self._ring.get_node(key)]

    def _locate(self, sid: str) -> tuple[Node, str, str]:
        """Return the server of ``sid``, its data key and its lock key."""
        key = data_key(self.key_prefix, sid)
        return self._node_for(key), key, lock_key(key)

    def _unavailable(self, node: Node, exc: BaseException) -> BackendUnavailable:
        if isinstance(exc, MemcacheUnexpectedCloseError):
            detail = "the server closed the connection"
        elif isinstance(exc, TimeoutError):
            detail = f"timed out (connect_timeout={self.connect_timeout}, timeout={self.timeout})"
        elif isinstance(exc, MemcacheServerError | MemcacheUnknownError):
            said = exc.args[0] if exc.args else type(exc).__name__
            detail = "server error: " + (said.decode("ascii", "replace") if isinstance(said, bytes) else str(said))
        else:
            detail = str(exc) or type(exc).__name__
        where = "" if self._only is not None else f"server {node.name}: "
        message = f"memcached backend {self.name} is unavailable: {where}{detail}"
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

        The pooled client destroys a connection that failed, so the next call reconnects.
        """
        try:
            return call(*args, **kw)
        except MemcacheServerError as exc:
            if size is not None and "too large" in str(exc):
                raise self._too_large(node, size, node.item_size_max or DEFAULT_ITEM_SIZE_MAX) from exc
            raise self._unavailable(node, exc) from exc
        except (OSError, MemcacheUnexpectedCloseError, MemcacheUnknownError) as exc:
            raise self._unavailable(node, exc) from exc

    def _learn(self, node: Node) -> None:
        """Read, once, the server's item size limit and whether it has the meta delete command."""
        if node.item_size_max is not None and node.meta_delete is not None:
            return
        with node.info_mutex:
            if node.item_size_max is not None and node.meta_delete is not None:
                return
            settings = self._run(node, node.client.stats, "settings")
            try:
                size_max = int(settings.get(b"item_size_max", DEFAULT_ITEM_SIZE_MAX))
            except (TypeError, ValueError):
                size_max = DEFAULT_ITEM_SIZE_MAX
            version = bytes(self._run(node, node.client.version))
            try:
                major, minor = (int(x) for x in version.decode("ascii").split(".")[:2])
                meta = (major, minor) >= (1, 6)
            except ValueError:
                meta = False
            node.item_size_max = size_max
            node.meta_delete = meta

    def _check_size(self, node: Node, key: str, blob: bytes) -> None:
        self._learn(node)
        limit = node.item_size_max or DEFAULT_ITEM_SIZE_MAX
        if len(blob) + len(key) + ITEM_OVERHEAD > limit:
            raise self._too_large(node, len(blob), limit)

    def _checked_delete(self, node: Node, key: str, cas: Any) -> bool:
        """Delete ``key`` (a lock, an emptied index) only if it is unchanged since the ``gets`` that returned ``cas``.

        On memcached >= 1.6 this is the meta command ``md <key> C<cas>``; older servers get the key
        ``cas``-ed into an already-expired marker instead (see the package's notes).
        """
        self._learn(node)
        if node.meta_delete:
            try:
                answer = self._run(node, node.client.raw_command, b"md " + key.encode("ascii") + b" C" + cas)
            except MemcacheUnknownCommandError:
                node.meta_delete = False
            else:
                return bytes(answer) == b"HD"
        return self._run(node, node.client.cas, key, RELEASED_MARKER, cas, expire=1, noreply=False) is True

    def _fetch(self, sids: Iterable[str]) -> dict[str, Record]:
        """Return the live records of ``sids``, with one ``get_many`` per server and batch."""
        prefix = self.key_prefix
        per_node: dict[str, list[str]] = {}
        for sid in dict.fromkeys(sids):
            per_node.setdefault(self._node_for(data_key(prefix, sid)).name, []).append(sid)
        found: dict[str, Record] = {}
        for name, node_sids in per_node.items():
            node = self._nodes[name]
            for batch in batches(node_sids):
                blobs = self._run(node, node.client.get_many, [data_key(prefix, sid) for sid in batch])
                for key, blob in blobs.items():
                    record = decode(blob)
                    if record is not None:
                        found[sid_of(prefix, key)] = record
        return found
