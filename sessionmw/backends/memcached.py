"""The memcached backend: sessions on one or many memcached servers, locked with ``add``.

Layout, for a session ``sid`` under key prefix ``p``::

    <p><sid>        the record (:func:`~sessionmw.backends.base.encode_record`)
    <p><sid>:lock   the lock: "<token> <deadline in epoch milliseconds>"
    <p>u:<uid>      the user index: a JSON list of the sids of user ``uid`` (base64url of ``str(user_id)``)

Why it is shaped so:

* Many servers: each session lives on ONE server, chosen by rendezvous (highest random weight) hashing
  of its data key, so its data and lock are always together and a server that goes away moves only its
  own share. One thread-safe :class:`pymemcache.client.base.PooledClient` per server, with
  ``no_delay=True`` (Nagle cost about 44 ms a request) and ``default_noreply=False`` (with
  ``noreply`` pymemcache's ``add`` always "succeeds", and a too-large item is lost silently).
* Expiry: memcached counts whole seconds on a clock that ticks once a second, so an item set with
  ``exptime=n`` lives between ``n-1`` and ``n`` seconds. Every TTL is therefore rounded up and given one
  more second (a TTL is only a safety net); values over 30 days are sent as absolute Unix times, since
  memcached reads them so.
* The lock's real expiry is the deadline stored in its value, with millisecond precision; memcached's
  own expiry (one second later) only removes abandoned locks. A contender whose ``add`` fails reads
  the lock with ``gets``; when its deadline has passed it takes the lock over with ``cas``, which only
  one contender can win.
* Fencing: ``save`` writes only if the lock still holds our token and its deadline has not passed. A
  takeover needs the deadline to pass, so a write started well before the deadline is safe; when fewer
  than ``timeout + 0.5`` seconds are left, ``save`` first pushes the deadline out with ``cas``. This
  relies on the web hosts' clocks agreeing to well within that margin (run NTP).
* Release is a compare-and-delete: the classic text protocol has none, so on memcached >= 1.6 we send
  the meta command ``md <key> C<cas>``, which deletes only if nobody changed the lock since our
  ``gets``. On older servers we ``cas`` the lock into an already-expired marker instead (a plain
  ``delete`` after a check could remove a lock another request took over in between); the marker is
  taken over like any expired lock and vanishes by itself a second or two later.
* ``touch`` rewrites the record with ``cas`` and retries on a conflict, so a read-only request never
  undoes a concurrent locked write.
* ``save`` writes the record with ``replace``, which memcached stores only if the key exists: a session
  ended while a request held its lock (administrator, gc) is never resurrected, at no extra round trip.
* Administration: memcached cannot list keys with ordinary commands, so
  :meth:`MemcachedBackend.iter_records` and :meth:`~MemcachedBackend.gc` read ``lru_crawler metadump
  hash`` (memcached >= 1.6.9; on 1.4.31 to 1.6.8 ``metadump all``, which may miss items moving between
  LRUs during the dump) from every server on a connection of their own, keep the keys under the prefix,
  and fetch records with ``get_many``. :meth:`~MemcachedBackend.user_sessions` reads the user index
  instead (one key per user, on the server rendezvous hashing picks for that key, updated with
  ``gets``/``cas`` loops), so it costs in proportion to that user's sessions. Index keys never expire
  (sessions can outlive any TTL we would give them through touches); entries of sessions memcached
  dropped are cleaned when read, and by gc. Memcached may evict an index key like any item: watch
  ``evictions`` (:meth:`~MemcachedBackend.stats`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from pymemcache.client.base import PooledClient
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import (
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

from ..core.errors import BackendUnavailable, ConfigError, RecordTooLarge
from ._url import BackendURL, positive_float, positive_int
from .base import Record, Touch, decode_record, encode_record

__all__ = ["MemcachedBackend", "exptime"]

logger = logging.getLogger("sessionmw")

DEFAULT_PORT = 11211
#: memcached's default item size limit (``-I``), used when ``stats settings`` does not tell.
DEFAULT_ITEM_SIZE_MAX = 1024 * 1024
#: Relative expiries above this are read by memcached as absolute Unix times.
MAX_RELATIVE_EXPTIME = 30 * 24 * 3600
#: memcached rejects longer keys.
MAX_KEY_LENGTH = 250
#: The longest session id a key prefix must leave room for (ids from ``new_session_id`` have 43).
MAX_SID_LENGTH = 64
#: Bytes memcached adds to key and value for an item's header, CAS and line ends (measured: ~60).
ITEM_OVERHEAD = 96
LOCK_SUFFIX = ":lock"
#: An expired lock, written by release on servers without the meta delete command.
RELEASED_MARKER = b"- 0"
TOUCH_ATTEMPTS = 5
LOCK_ATTEMPTS = 3
#: What follows the key prefix in a user index key.
INDEX_INFIX = "u:"
#: Attempts of one ``gets``/``cas`` update of a user index before giving up.
INDEX_ATTEMPTS = 20
#: A user index this long is pruned of ended sessions before it grows further (and again at each multiple).
INDEX_PRUNE_AT = 256
#: Keys per ``get_many`` when fetching many records.
FETCH_BATCH = 100
#: Bytes per ``recv`` of a metadump.
DUMP_RECV_SIZE = 256 * 1024
#: Seconds to keep retrying a metadump while another crawl runs on the server (it answers ``BUSY``).
DUMP_BUSY_WAIT = 30.0
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


def exptime(seconds: float | None, now: float | None = None) -> int:
    """Return memcached's ``exptime`` keeping an item at least ``seconds`` (``None``: forever).

    :param seconds: how long to keep the item; ``None`` or less means no expiry.
    :param now: the wall-clock time (``time.time()``) for absolute expiries, for tests.
    """
    if seconds is None:
        return 0
    if seconds <= 0:
        return -1  # already expired: memcached drops the item at once
    # memcached's clock ticks once a second: exptime=n keeps an item between n-1 and n seconds.
    relative = math.ceil(seconds) + 1
    if relative <= MAX_RELATIVE_EXPTIME:
        return relative
    return math.ceil((time.time() if now is None else now) + seconds) + 1


def _now_ms() -> int:
    return int(time.time() * 1000)


def _lock_value(token: str, deadline_ms: int) -> bytes:
    return f"{token} {deadline_ms}".encode("ascii")


def _parse_lock(value: Any) -> tuple[str, int]:
    """Return ``(token, deadline_ms)`` of a lock value; anything unreadable counts as expired."""
    try:
        token, deadline = bytes(value).decode("ascii").split(" ")
        return token, int(deadline)
    except (TypeError, ValueError):
        return "", 0


def _decode(blob: Any) -> Record | None:
    if blob is None:
        return None
    try:
        return decode_record(bytes(blob))
    except ValueError:
        return None  # not ours, or damaged: no session


def _parse_index(value: Any) -> list[str]:
    """Return the sids in a user index value; anything unreadable (a released marker) is empty."""
    if value is None:
        return []
    try:
        sids = json.loads(bytes(value))
    except (TypeError, ValueError):
        return []
    if not isinstance(sids, list):
        return []
    return [sid for sid in sids if isinstance(sid, str)]


def _encode_index(sids: Iterable[str]) -> bytes:
    return json.dumps(list(sids), separators=(",", ":")).encode("ascii")


def _same_user(a: str | int | None, b: str | int) -> bool:
    return a is not None and (a == b or str(a) == str(b))


def _batches(items: list[str], size: int = FETCH_BATCH) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_key_prefix(key_prefix: str) -> None:
    try:
        raw = key_prefix.encode("ascii")
    except UnicodeEncodeError:
        raise ConfigError(
            f"memcached backend: key_prefix {key_prefix!r} must be ASCII (memcached keys are bytes)",
            option="key_prefix",
        ) from None
    if any(b <= 32 or b == 127 for b in raw):
        raise ConfigError(
            f"memcached backend: key_prefix {key_prefix!r} must not contain spaces or control characters",
            option="key_prefix",
        )
    room = MAX_KEY_LENGTH - MAX_SID_LENGTH - len(LOCK_SUFFIX)
    if len(raw) > room:
        raise ConfigError(
            f"memcached backend: key_prefix is {len(raw)} bytes long; at most {room} leave room for the "
            f"session id in memcached's {MAX_KEY_LENGTH}-byte keys",
            option="key_prefix",
        )


def _close_clients(clients: list[Any]) -> None:
    for client in clients:
        client.close()


def _node_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _DumpRefused(Exception):
    """The server answered ``lru_crawler metadump`` with an error line."""


@dataclass
class _Node:
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


class MemcachedBackend:
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
        _check_key_prefix(key_prefix)
        self.key_prefix = key_prefix
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._nodes: dict[str, _Node] = {}
        for host, port in servers:
            node = _node_name(host, port)
            if node in self._nodes:
                raise ConfigError(f"memcached backend: server {node} is listed twice", option="backend")
            client = PooledClient(
                (host, port),
                connect_timeout=connect_timeout,
                timeout=timeout,
                no_delay=True,
                default_noreply=False,
            )
            self._nodes[node] = _Node(node, client, (host, port))
        self.name = name or "memcached://" + ",".join(self._nodes)
        self._only: _Node | None = next(iter(self._nodes.values())) if len(self._nodes) == 1 else None
        self._ring = RendezvousHash(nodes=list(self._nodes))
        # A write this close to the lock's deadline first pushes the deadline out (see the module doc).
        self._write_margin_ms = int((timeout + 0.5) * 1000)
        # pymemcache's sockets have no finalizer: close them when a backend is dropped without close().
        self._finalizer = weakref.finalize(self, _close_clients, [n.client for n in self._nodes.values()])

    # -- servers, keys and errors --------------------------------------------------------------

    def _node_for(self, data_key: str) -> _Node:
        if self._only is not None:
            return self._only
        return self._nodes[self._ring.get_node(data_key)]

    def _locate(self, sid: str) -> tuple[_Node, str, str]:
        data_key = self.key_prefix + sid
        return self._node_for(data_key), data_key, data_key + LOCK_SUFFIX

    def _unavailable(self, node: _Node, exc: BaseException) -> BackendUnavailable:
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

    def _too_large(self, node: _Node, size: int, limit: int) -> RecordTooLarge:
        return RecordTooLarge(
            f"session record of {size} bytes is too large for memcached server {node.name}, whose item size "
            f"limit is {limit} bytes (memcached -I); store less in the session",
            size=size,
            limit=limit,
            backend=self.name,
        )

    def _run(self, node: _Node, call: Callable[..., Any], *args: Any, size: int | None = None, **kw: Any) -> Any:
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

    def _learn(self, node: _Node) -> None:
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

    def _check_size(self, node: _Node, key: str, blob: bytes) -> None:
        self._learn(node)
        limit = node.item_size_max or DEFAULT_ITEM_SIZE_MAX
        if len(blob) + len(key) + ITEM_OVERHEAD > limit:
            raise self._too_large(node, len(blob), limit)

    # -- the lock ------------------------------------------------------------------------------

    def _checked_delete(self, node: _Node, lock_key: str, cas: Any) -> bool:
        """Delete the lock only if it is unchanged since the ``gets`` that returned ``cas``."""
        self._learn(node)
        if node.meta_delete:
            try:
                answer = self._run(node, node.client.raw_command, b"md " + lock_key.encode("ascii") + b" C" + cas)
            except MemcacheUnknownCommandError:
                node.meta_delete = False
            else:
                return bytes(answer) == b"HD"
        return self._run(node, node.client.cas, lock_key, RELEASED_MARKER, cas, expire=1, noreply=False) is True

    def _our_lock(self, node: _Node, lock_key: str, token: str) -> tuple[Any, int, int] | None:
        """Return ``(cas, deadline_ms, now_ms)`` if ``token`` holds the lock and it has not expired, else ``None``."""
        current, cas = self._run(node, node.client.gets, lock_key)
        if current is None:
            return None
        held, deadline = _parse_lock(current)
        now = _now_ms()
        if held != token or deadline <= now:
            return None
        return cas, deadline, now

    def _unlock_quietly(self, node: _Node, lock_key: str, token: str) -> None:
        try:
            value, cas = self._run(node, node.client.gets, lock_key)
            if value is not None and _parse_lock(value)[0] == token:
                self._checked_delete(node, lock_key, cas)
        except Exception:
            pass  # best effort, while another error is on its way

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid`` (taking over a lock past its deadline); when taken, return its record."""
        node, data_key, lock_key = self._locate(sid)
        client = node.client
        value = _lock_value(token, _now_ms() + int(expire * 1000))
        lock_exp = exptime(expire)
        for _ in range(LOCK_ATTEMPTS):
            if self._run(node, client.add, lock_key, value, expire=lock_exp, noreply=False):
                break
            current, cas = self._run(node, client.gets, lock_key)
            if current is None:
                continue  # released in between: try add again
            if _parse_lock(current)[1] > _now_ms():
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
        return True, _decode(blob)

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's deadline to ``expire`` seconds from now, if ``token`` still holds it."""
        node, _, lock_key = self._locate(sid)
        ours = self._our_lock(node, lock_key, token)
        if ours is None:
            return False
        cas, _, now = ours
        value = _lock_value(token, now + int(expire * 1000))
        return self._run(node, node.client.cas, lock_key, value, cas, expire=exptime(expire), noreply=False) is True

    # -- the other primitives ------------------------------------------------------------------

    def load(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking."""
        node, data_key, _ = self._locate(sid)
        return _decode(self._run(node, node.client.get, data_key))

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
        self, node: _Node, data_key: str, lock_key: str, blob: bytes, token: str, ttl: float | None
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
            value = _lock_value(token, now + margin)
            if not self._run(node, client.cas, lock_key, value, cas, expire=exptime(margin / 1000), noreply=False):
                return False
            current, cas = self._run(node, client.gets, lock_key)
            if current is None or _parse_lock(current)[0] != token:
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
        held, deadline = _parse_lock(current)
        if held != token:
            return False
        if deadline <= _now_ms():
            self._checked_delete(node, lock_key, cas)  # ours but expired: clean up, report it lost
            return False
        if touch is not None:
            self._touch(node, data_key, touch)
        return self._checked_delete(node, lock_key, cas)

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access of a stored session, never undoing a concurrent write (``gets`` + ``cas``)."""
        node, data_key, _ = self._locate(sid)
        self._touch(node, data_key, touch)

    def _touch(self, node: _Node, data_key: str, touch: Touch) -> None:
        client = node.client
        for _ in range(TOUCH_ATTEMPTS):
            blob, cas = self._run(node, client.gets, data_key)
            record = _decode(blob)
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
        old = _decode(self._run(node, node.client.get, data_key))
        self._run(node, node.client.delete, data_key, noreply=False)
        if old is not None and old.user_id is not None:
            self._index_remove(old.user_id, [sid], quiet=True)

    def close(self) -> None:
        """Close every connection (the backend reconnects if used again)."""
        _close_clients([node.client for node in self._nodes.values()])

    # -- the user index ------------------------------------------------------------------------

    def _index_locate(self, user_id: str | int) -> tuple[_Node, str]:
        """Return the server and key of ``user_id``'s index (base64url of ``str(user_id)``, or its hash)."""
        raw = str(user_id).encode("utf-8")
        key = self.key_prefix + INDEX_INFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        if len(key) > MAX_KEY_LENGTH:  # "~" is not in base64url: no clash with a short id's key
            key = self.key_prefix + INDEX_INFIX + "~" + hashlib.sha256(raw).hexdigest()
        return self._node_for(key), key

    def _index_update(self, node: _Node, key: str, change: Callable[[list[str]], list[str]], quiet: bool) -> bool:
        """Apply ``change`` to the index at ``key`` with ``gets``/``cas`` (``add`` when missing); retry on races.

        Returns whether the stored list changed. Gives up after :data:`INDEX_ATTEMPTS` lost races: quietly
        when ``quiet`` (a stale entry is harmless), else with :class:`~sessionmw.errors.BackendUnavailable`.
        """
        client = node.client
        try:
            for _ in range(INDEX_ATTEMPTS):
                value, cas = self._run(node, client.gets, key)
                sids = _parse_index(value)
                new = change(sids)
                if new == sids:
                    return False
                if value is None:
                    blob = _encode_index(new)
                    if self._run(node, client.add, key, blob, expire=0, noreply=False, size=len(blob)):
                        return True
                elif not new:
                    if self._checked_delete(node, key, cas):
                        return True
                else:
                    blob = _encode_index(new)
                    if self._run(node, client.cas, key, blob, cas, expire=0, noreply=False, size=len(blob)):
                        return True
        except Exception:
            if quiet:
                return False
            raise
        if quiet:
            return False
        raise BackendUnavailable(
            f"memcached backend {self.name} is unavailable: could not update the user index {key!r} "
            f"after {INDEX_ATTEMPTS} concurrent changes",
            backend=self.name,
        )

    def _index_add(self, user_id: str | int, sid: str) -> bool:
        """Add ``sid`` to ``user_id``'s index; return whether it was not there yet."""
        node, key = self._index_locate(user_id)
        if sid in _parse_index(self._run(node, node.client.get, key)):
            return False  # the usual case on save: one read, no write

        def add(sids: list[str]) -> list[str]:
            if sid in sids:
                return sids
            if len(sids) >= INDEX_PRUNE_AT and len(sids) % INDEX_PRUNE_AT == 0:
                live = self._fetch(sids)
                sids = [s for s in sids if _same_user(getattr(live.get(s), "user_id", None), user_id)]
            return [*sids, sid]

        return self._index_update(node, key, add, quiet=False)

    def _index_remove(self, user_id: str | int, gone: Iterable[str], *, quiet: bool) -> None:
        """Remove the sids in ``gone`` from ``user_id``'s index (deleting the key when it empties)."""
        drop = set(gone)
        if drop:
            node, key = self._index_locate(user_id)
            self._index_update(node, key, lambda sids: [s for s in sids if s not in drop], quiet)

    def _fetch(self, sids: Iterable[str]) -> dict[str, Record]:
        """Return the live records of ``sids``, with one ``get_many`` per server and batch."""
        per_node: dict[str, list[str]] = {}
        for sid in dict.fromkeys(sids):
            per_node.setdefault(self._node_for(self.key_prefix + sid).name, []).append(sid)
        found: dict[str, Record] = {}
        n = len(self.key_prefix)
        for name, node_sids in per_node.items():
            node = self._nodes[name]
            for batch in _batches(node_sids):
                blobs = self._run(node, node.client.get_many, [self.key_prefix + sid for sid in batch])
                for key, blob in blobs.items():
                    record = _decode(blob)
                    if record is not None:
                        found[(key.decode("ascii") if isinstance(key, bytes) else key)[n:]] = record
        return found

    # -- enumeration: lru_crawler metadump -----------------------------------------------------

    def _read_dump(self, node: _Node, mode: bytes, prefix: bytes) -> list[bytes] | None:
        """Run ``lru_crawler metadump <mode>`` once; return the URL-decoded keys starting with ``prefix``.

        Returns ``None`` when the server is busy with another crawl, raises :class:`_DumpRefused` when
        it refuses the command. Runs on a connection of its own: memcached refuses other commands
        pipelined with a metadump, and the dump can be far larger than one answer pymemcache reads.
        """
        try:
            sock = socket.create_connection(node.address, timeout=self.connect_timeout)
        except OSError as exc:
            raise self._unavailable(node, exc) from exc
        keys: list[bytes] = []
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
            sock.sendall(b"lru_crawler metadump " + mode + b"\r\n")
            rest = b""
            while True:
                chunk = sock.recv(DUMP_RECV_SIZE)
                if not chunk:
                    raise MemcacheUnexpectedCloseError()
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()  # an incomplete line, or b"" after a complete one
                for line in lines:
                    if line.startswith(b"key="):
                        end = line.find(b" ")
                        key = unquote_to_bytes(line[4 : end if end >= 0 else len(line)])
                        if key.startswith(prefix):
                            keys.append(key)
                        continue
                    line = line.rstrip(b"\r")
                    if line == b"END":
                        return keys
                    if line.startswith(b"BUSY"):
                        return None
                    if line:
                        raise _DumpRefused(line.decode("ascii", "replace"))
        except (OSError, MemcacheUnexpectedCloseError) as exc:
            raise self._unavailable(node, exc) from exc
        finally:
            sock.close()

    def _metadump(self, node: _Node, prefix: bytes) -> list[bytes]:
        """Return the keys starting with ``prefix`` on ``node``, as the LRU crawler lists them.

        Uses ``metadump hash`` (memcached >= 1.6.9), which walks the hash table and so sees every item;
        older servers get ``metadump all``, which walks the LRUs and may miss items moving between them
        during the dump. Waits out ``BUSY`` answers while another crawl runs.
        """
        busy_until = time.monotonic() + DUMP_BUSY_WAIT
        pause = 0.05
        while True:
            mode = b"all" if node.dump_all else b"hash"
            try:
                keys = self._read_dump(node, mode, prefix)
            except _DumpRefused as exc:
                if mode == b"hash":
                    node.dump_all = True  # memcached < 1.6.9: fall back to walking the LRUs
                    continue
                detail = (
                    f"lru_crawler metadump failed ({exc.args[0]}); listing sessions needs memcached 1.4.31 or "
                    "later with its LRU crawler enabled and metadump allowed (no -X)"
                )
                raise self._unavailable(node, MemcacheUnknownError(detail)) from None
            if keys is not None:
                return keys
            if time.monotonic() >= busy_until:
                busy = MemcacheUnknownError(f"lru_crawler metadump: the crawler stayed busy for {DUMP_BUSY_WAIT:g} s")
                raise self._unavailable(node, busy)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _dump_keys(self, node: _Node) -> tuple[list[str], list[str]]:
        """Return ``(sids, index keys)`` under this backend's prefix that ``node`` holds and owns."""
        prefix = self.key_prefix.encode("ascii")
        index_head = prefix + INDEX_INFIX.encode("ascii")
        lock = LOCK_SUFFIX.encode("ascii")
        n = len(prefix)
        sids: list[str] = []
        index_keys: list[str] = []
        for raw in self._metadump(node, prefix):
            if raw.endswith(lock) or len(raw) == n:
                continue
            try:
                key = raw.decode("ascii")
            except UnicodeDecodeError:
                continue  # not one of our keys
            if self._node_for(key) is not node:
                continue  # left over from another server list: this backend never reads it there
            if raw.startswith(index_head):
                index_keys.append(key)
            elif ":" not in key[n:]:  # session ids have no ":"; keys of a longer prefix ("<p>other:") do
                sids.append(key[n:])
        return sids, index_keys

    # -- administration ------------------------------------------------------------------------

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        """Yield ``(sid, record)`` for every live session under the key prefix, server by server."""
        n = len(self.key_prefix)
        for node in self._nodes.values():
            sids, _ = self._dump_keys(node)
            for batch in _batches(sids):
                blobs = self._run(node, node.client.get_many, [self.key_prefix + sid for sid in batch])
                for key, blob in blobs.items():
                    record = _decode(blob)
                    if record is not None:
                        yield (key.decode("ascii") if isinstance(key, bytes) else key)[n:], record

    def user_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """Return ``(sid, record)`` for every live session of ``user_id``, from its index; cleans stale entries."""
        node, key = self._index_locate(user_id)
        sids = _parse_index(self._run(node, node.client.get, key))
        if not sids:
            return []
        records = self._fetch(sids)
        found = [(sid, records[sid]) for sid in sids if sid in records and _same_user(records[sid].user_id, user_id)]
        if len(found) < len(sids):
            live = {sid for sid, _ in found}
            self._index_remove(user_id, [sid for sid in sids if sid not in live], quiet=True)
        return found

    def gc(self, now: float) -> int:
        """Remove sessions whose ``expires`` is before ``now`` and prune the user indexes; return how many.

        memcached drops sessions past their TTL by itself; each removal is a compare-and-delete, so a
        session refreshed meanwhile by a request is kept.
        """
        removed = 0
        index_keys: list[tuple[_Node, str]] = []
        for node in self._nodes.values():
            sids, node_index_keys = self._dump_keys(node)
            index_keys.extend((node, key) for key in node_index_keys)
            for batch in _batches(sids):
                found = self._run(node, node.client.gets_many, [self.key_prefix + sid for sid in batch])
                for key, (blob, cas) in found.items():
                    record = _decode(blob)
                    if record is None or record.expires is None or record.expires >= now:
                        continue
                    data_key = key.decode("ascii") if isinstance(key, bytes) else key
                    if self._checked_delete(node, data_key, cas):
                        removed += 1
        for node, key in index_keys:
            self._prune_index(node, key)
        return removed

    def _prune_index(self, node: _Node, key: str) -> None:
        """Drop the entries of ``key``'s index whose session is gone or now someone else's."""
        sids = _parse_index(self._run(node, node.client.get, key))
        if not sids:
            return
        encoded = key[len(self.key_prefix) + len(INDEX_INFIX) :]
        user: str | None = None  # a hashed (very long) user id: keep the entries whose session is alive
        if not encoded.startswith("~"):
            try:
                user = base64.urlsafe_b64decode(encoded + "==").decode("utf-8")
            except ValueError:
                user = None
        records = self._fetch(sids)
        drop = {sid for sid in sids if sid not in records or (user is not None and str(records[sid].user_id) != user)}
        if drop:
            self._index_update(node, key, lambda current: [s for s in current if s not in drop], True)

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


def from_url(url: BackendURL, key_prefix: str) -> MemcachedBackend:
    """Build the backend for ``memcached://host:11211`` or ``memcached://h1:11211,h2:11211``.

    Options: ``connect_timeout`` and ``socket_timeout`` (or its short name ``timeout``; seconds, default
    2), ``replicas`` (only 1 for now).
    """
    connect_timeout = url.take("connect_timeout", positive_float, 2.0)
    # socket_timeout is the name the Redis backend (and the API's examples) use for the same thing.
    socket_timeout: float | None = url.take("socket_timeout", positive_float, None)
    timeout = url.take("timeout", positive_float, socket_timeout if socket_timeout is not None else 2.0)
    replicas = url.take("replicas", positive_int, 1)
    if replicas > 1:
        raise ConfigError(
            f"memcached backend {url.display!r}: replicas>1 is not supported yet; use replicas=1",
            option="replicas",
        )
    if url.username is not None or url.password is not None:
        raise ConfigError(
            f"memcached backend {url.display!r}: credentials are not supported (pymemcache has no SASL)",
            option="backend",
        )
    if url.path not in ("", "/"):
        raise ConfigError(
            f"memcached backend URL {url.display!r} has a path; memcached has no databases: memcached://host:11211",
            option="backend",
        )
    servers: list[tuple[str, int]] = []
    for host, port in url.hosts:
        if not host:
            raise ConfigError(f"memcached backend URL {url.display!r} has an empty host name", option="backend")
        servers.append((host, DEFAULT_PORT if port is None else port))
    if not servers:
        raise ConfigError(
            f"memcached backend URL {url.display!r} names no server: memcached://host:11211", option="backend"
        )
    return MemcachedBackend(servers, key_prefix=key_prefix, connect_timeout=connect_timeout, timeout=timeout)
