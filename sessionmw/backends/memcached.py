"""The memcached backend: sessions on one or many memcached servers, locked with ``add``.

Layout, for a session ``sid`` under key prefix ``p``::

    <p><sid>        the record (:func:`~sessionmw.backends.base.encode_record`)
    <p><sid>:lock   the lock: "<token> <deadline in epoch milliseconds>"

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
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymemcache.client.base import PooledClient
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import (
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

from ..errors import BackendUnavailable, ConfigError, RecordTooLarge
from ._url import BackendURL, positive_float, positive_int
from .base import Record, Touch, decode_record, encode_record

__all__ = ["MemcachedBackend", "exptime"]

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


@dataclass
class _Node:
    """One memcached server and what we learned about it."""

    name: str
    client: Any  # PooledClient: pymemcache is untyped
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
            self._nodes[node] = _Node(node, client)
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
        current, cas = self._run(node, node.client.gets, lock_key)
        if current is None:
            return False
        held, deadline = _parse_lock(current)
        now = _now_ms()
        if held != token or deadline <= now:
            return False
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
        stored = self._run(node, node.client.add, data_key, blob, expire=exptime(ttl), noreply=False, size=len(blob))
        return bool(stored)

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock, only if ``token`` still holds the lock.

        A record too large for the server raises :class:`~sessionmw.errors.RecordTooLarge` after
        releasing the lock (the caller no longer holds it once it has called ``save``).
        """
        node, data_key, lock_key = self._locate(sid)
        client = node.client
        blob = encode_record(record)
        try:
            self._check_size(node, data_key, blob)
        except RecordTooLarge:
            self._unlock_quietly(node, lock_key, token)
            raise
        current, cas = self._run(node, client.gets, lock_key)
        if current is None:
            return False
        held, deadline = _parse_lock(current)
        now = _now_ms()
        if held != token or deadline <= now:
            return False
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
            self._run(node, client.set, data_key, blob, expire=exptime(ttl), noreply=False, size=len(blob))
        except BaseException:
            self._unlock_quietly(node, lock_key, token)
            raise
        self._checked_delete(node, lock_key, cas)
        return True

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
        """Remove the session's data (not its lock); a missing session is not an error."""
        node, data_key, _ = self._locate(sid)
        self._run(node, node.client.delete, data_key, noreply=False)

    def close(self) -> None:
        """Close every connection (the backend reconnects if used again)."""
        _close_clients([node.client for node in self._nodes.values()])

    # -- administration ------------------------------------------------------------------------

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

    Options: ``connect_timeout`` and ``timeout`` (seconds, default 2), ``replicas`` (only 1 for now).
    """
    connect_timeout = url.take("connect_timeout", positive_float, 2.0)
    timeout = url.take("timeout", positive_float, 2.0)
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
