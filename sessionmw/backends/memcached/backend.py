"""The memcached backend's primitives: lock, load, save, release, touch, delete; gc and figures.

See the package's notes (:mod:`sessionmw.backends.memcached`) for why each is shaped so.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

from pymemcache.client.rendezvous import RendezvousHash

from ...core.errors import ConfigError, RecordTooLarge
from ..base import Record, Touch, encode_record
from . import keys
from .enumeration import Enumeration
from .index import UserIndex
from .placement import Node, close_clients, make_nodes
from .values import batches, decode, exptime, lock_value, now_ms, parse_lock

__all__ = ["LOCK_ATTEMPTS", "STATS_FIGURES", "SUMMED_FIGURES", "TOUCH_ATTEMPTS", "MemcachedBackend"]

logger = logging.getLogger("sessionmw")

TOUCH_ATTEMPTS = 5
LOCK_ATTEMPTS = 3
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


class MemcachedBackend(UserIndex, Enumeration):
    """Sessions on memcached servers; each session (data and lock) on one server chosen by rendezvous hashing.

    :param servers: ``(host, port)`` of every server.
    :param key_prefix: prepended to every key; ASCII without spaces or control characters.
    :param connect_timeout: seconds to wait for a connection.
    :param timeout: seconds to wait for an answer to one command.
    :param name: the backend's address for messages (default: built from ``servers``).
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        *,
        key_prefix: str = "sessmw:",
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        name: str | None = None,
    ) -> None:
        if not servers:
            raise ConfigError("memcached backend needs at least one server: memcached://host:11211", option="backend")
        keys.check_key_prefix(key_prefix)
        self.key_prefix = key_prefix
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._nodes = make_nodes(servers, connect_timeout, timeout)
        self.name = name or "memcached://" + ",".join(self._nodes)
        self._only = next(iter(self._nodes.values())) if len(self._nodes) == 1 else None
        self._ring = RendezvousHash(nodes=list(self._nodes))
        # A write this close to the lock's deadline first pushes the deadline out (see the package's notes).
        self._write_margin_ms = int((timeout + 0.5) * 1000)
        # pymemcache's sockets have no finalizer: close them when a backend is dropped without close().
        self._finalizer = weakref.finalize(self, close_clients, [n.client for n in self._nodes.values()])

    # -- the lock ------------------------------------------------------------------------------

    def _our_lock(self, node: Node, lock_key: str, token: str) -> tuple[Any, int, int] | None:
        """Return ``(cas, deadline_ms, now_ms)`` if ``token`` holds the lock and it has not expired, else ``None``."""
        current, cas = self._run(node, node.client.gets, lock_key)
        if current is None:
            return None
        held, deadline = parse_lock(current)
        now = now_ms()
        if held != token or deadline <= now:
            return None
        return cas, deadline, now

    def _unlock_quietly(self, node: Node, lock_key: str, token: str) -> None:
        try:
            value, cas = self._run(node, node.client.gets, lock_key)
            if value is not None and parse_lock(value)[0] == token:
                self._checked_delete(node, lock_key, cas)
        except Exception:
            pass  # best effort, while another error is on its way

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid`` (taking over a lock past its deadline); when taken, return its record."""
        node, data_key, lock_key = self._locate(sid)
        client = node.client
        value = lock_value(token, now_ms() + int(expire * 1000))
        lock_exp = exptime(expire)
        for _ in range(LOCK_ATTEMPTS):
            if self._run(node, client.add, lock_key, value, expire=lock_exp, noreply=False):
                break
            current, cas = self._run(node, client.gets, lock_key)
            if current is None:
                continue  # released in between: try add again
            if parse_lock(current)[1] > now_ms():
                return False, None
            # Past its deadline: take it over. cas fails for every contender but the first.
            if self._run(node, client.cas, lock_key, value, cas, expire=lock_exp, noreply=False):
                break
        else:
            return False, None
        try:
            blob = self._run(node, client.get, data_key)
        except BaseException:
            self._unlock_quietly(node, lock_key, token)
            raise
        return True, decode(blob)

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's deadline to ``expire`` seconds from now, if ``token`` still holds it."""
        node, _, lock_key = self._locate(sid)
        ours = self._our_lock(node, lock_key, token)
        if ours is None:
            return False
        cas, _, now = ours
        value = lock_value(token, now + int(expire * 1000))
        return self._run(node, node.client.cas, lock_key, value, cas, expire=exptime(expire), noreply=False) is True

    # -- the other primitives ------------------------------------------------------------------

    def load(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking."""
        node, data_key, _ = self._locate(sid)
        return decode(self._run(node, node.client.get, data_key))

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Store a new session only if ``sid`` is unused (memcached ``add``)."""
        node, data_key, _ = self._locate(sid)
        blob = encode_record(record)
        self._check_size(node, data_key, blob)
        # Index first: a session must never exist unindexed (terminate_user would miss it).
        added = record.user_id is not None and self._index_add(record.user_id, sid)
        stored = self._run(node, node.client.add, data_key, blob, expire=exptime(ttl), noreply=False, size=len(blob))
        if not stored and added:
            assert record.user_id is not None
            self._index_remove(record.user_id, [sid], quiet=True)
        return bool(stored)

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock, only if ``token`` still holds the lock and the session exists.

        A session deleted while the lock was held (terminated, gc) is not written again: ``False``, and
        the lock is released.

        A record too large for the server raises :class:`~sessionmw.errors.RecordTooLarge` after
        releasing the lock (the caller no longer holds it once it has called ``save``).
        """
        node, data_key, lock_key = self._locate(sid)
        blob = encode_record(record)
        try:
            self._check_size(node, data_key, blob)
        except RecordTooLarge:
            self._unlock_quietly(node, lock_key, token)
            raise
        # Index first (before the lock checks, so the fencing margin covers only the write itself): a
        # session must never exist unindexed. An entry added for nothing is taken back.
        added = False
        if record.user_id is not None:
            try:
                added = self._index_add(record.user_id, sid)
            except BaseException:
                self._unlock_quietly(node, lock_key, token)
                raise
        stored = self._write_locked(node, data_key, lock_key, blob, token, ttl)
        if not stored and added:
            assert record.user_id is not None
            self._index_remove(record.user_id, [sid], quiet=True)
        return stored

    def _write_locked(
        self, node: Node, data_key: str, lock_key: str, blob: bytes, token: str, ttl: float | None
    ) -> bool:
        """The fenced write of :meth:`save`: ``replace`` the record if ``token`` holds the lock, then release it."""
        client = node.client
        ours = self._our_lock(node, lock_key, token)
        if ours is None:
            return False
        cas, deadline, now = ours
        if deadline - now < self._write_margin_ms:
            # Too close to the deadline: a contender could take over while our write is in flight.
            margin = 2 * self._write_margin_ms
            value = lock_value(token, now + margin)
            if not self._run(node, client.cas, lock_key, value, cas, expire=exptime(margin / 1000), noreply=False):
                return False
            current, cas = self._run(node, client.gets, lock_key)
            if current is None or parse_lock(current)[0] != token:
                return False
        try:
            # replace stores only if the record still exists: an ended session is never resurrected.
            stored = self._run(node, client.replace, data_key, blob, expire=exptime(ttl), noreply=False, size=len(blob))
        except BaseException:
            self._unlock_quietly(node, lock_key, token)
            raise
        self._checked_delete(node, lock_key, cas)  # released whether or not the record was written
        return bool(stored)

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, refreshing last access first when ``touch`` is given."""
        node, data_key, lock_key = self._locate(sid)
        current, cas = self._run(node, node.client.gets, lock_key)
        if current is None:
            return False
        held, deadline = parse_lock(current)
        if held != token:
            return False
        if deadline <= now_ms():
            self._checked_delete(node, lock_key, cas)  # ours but expired: clean up, report it lost
            return False
        if touch is not None:
            self._touch(node, data_key, touch)
        return self._checked_delete(node, lock_key, cas)

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access of a stored session, never undoing a concurrent write (``gets`` + ``cas``)."""
        node, data_key, _ = self._locate(sid)
        self._touch(node, data_key, touch)

    def _touch(self, node: Node, data_key: str, touch: Touch) -> None:
        client = node.client
        for _ in range(TOUCH_ATTEMPTS):
            blob, cas = self._run(node, client.gets, data_key)
            record = decode(blob)
            if record is None:
                return  # touching a missing session does not create it
            new = encode_record(record.touched(touch))
            stored = self._run(
                node, client.cas, data_key, new, cas, expire=exptime(touch.ttl), noreply=False, size=len(new)
            )
            if stored is None or stored:
                return  # written, or the session is gone
        # Lost every race: others are writing this session right now, with a fresher last access.

    def delete(self, sid: str) -> None:
        """Remove the session's data (not its lock) and its user index entry; a missing session is not an error."""
        node, data_key, _ = self._locate(sid)
        old = decode(self._run(node, node.client.get, data_key))
        self._run(node, node.client.delete, data_key, noreply=False)
        if old is not None and old.user_id is not None:
            self._index_remove(old.user_id, [sid], quiet=True)

    def close(self) -> None:
        """Close every connection (the backend reconnects if used again)."""
        close_clients([node.client for node in self._nodes.values()])

    # -- administration (iter_records and user_sessions come with the listing and the index) ---

    def gc(self, now: float) -> int:
        """Remove sessions whose ``expires`` is before ``now`` and prune the user indexes; return how many.

        memcached drops sessions past their TTL by itself; each removal is a compare-and-delete, so a
        session refreshed meanwhile by a request is kept.
        """
        removed = 0
        index_keys: list[tuple[Node, str]] = []
        for node in self._nodes.values():
            sids, node_index_keys = self._dump_keys(node)
            index_keys.extend((node, key) for key in node_index_keys)
            for batch in batches(sids):
                found = self._run(node, node.client.gets_many, [keys.data_key(self.key_prefix, sid) for sid in batch])
                for key, (blob, cas) in found.items():
                    record = decode(blob)
                    if record is None or record.expires is None or record.expires >= now:
                        continue
                    if self._checked_delete(node, keys.key_text(key), cas):
                        removed += 1
        for node, key in index_keys:
            self._prune_index(node, key)
        return removed

    def stats(self) -> dict[str, float]:
        """Return memcached's ``evictions``, ``curr_items``, ``bytes`` and ``limit_maxbytes``, summed over servers.

        Logs a warning when ``evictions`` is above zero: memcached dropped items to make room, and an
        evicted session is a lost session (a logged-out user).
        """
        totals: dict[str, float] = dict.fromkeys(SUMMED_FIGURES, 0.0)
        for figures in self.server_stats().values():
            for name in SUMMED_FIGURES:
                totals[name] += figures.get(name, 0)
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
        result: dict[str, dict[str, int]] = {}
        for node in self._nodes.values():
            raw = self._run(node, node.client.stats)
            figures: dict[str, int] = {}
            for name in STATS_FIGURES:
                value = raw.get(name.encode("ascii"))
                if isinstance(value, int | float):
                    figures[name] = int(value)
            result[node.name] = figures
        return result
