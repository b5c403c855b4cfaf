"""The memcached backend's primitives: lock, load, create, save, release, touch, extend, delete.

They compose the servers' ranking (:mod:`.placement`), the session's copies (:mod:`.copies`) and the
administration (:mod:`.figures`). See the package's notes (:mod:`sessionmw.backends.memcached`) for
why each is shaped so.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

from ...core.errors import BackendUnavailable, ConfigError, RecordTooLarge
from ..base import Record, Touch, encode_record
from . import keys
from .copies import TOUCH_ATTEMPTS as TOUCH_ATTEMPTS
from .copies import Copies, Hold
from .figures import STATS_FIGURES as STATS_FIGURES
from .figures import SUMMED_FIGURES as SUMMED_FIGURES
from .figures import Figures
from .meta import Reply, md, mg, ms
from .placement import Node, close_clients, make_nodes
from .values import TOMBSTONE, exptime, lock_value, now_ms, parse_lock, version_of

__all__ = [
    "DEFAULT_FAIL_LIMIT",
    "STATS_FIGURES",
    "SUMMED_FIGURES",
    "DEFAULT_RETRY_AFTER",
    "LOCK_ATTEMPTS",
    "TOUCH_ATTEMPTS",
    "MemcachedBackend",
]

logger = logging.getLogger("sessionmw")

LOCK_ATTEMPTS = 3
#: Failed calls in a row after which a server is ejected (with several servers).
DEFAULT_FAIL_LIMIT = 2
#: Seconds an ejected server gets no call before it is tried again.
DEFAULT_RETRY_AFTER = 5.0
#: Holds kept before the ones past their lock's deadline are dropped (a request that never ended).
HOLDS_PRUNE_AT = 4096


class MemcachedBackend(Copies, Figures):
    """Sessions on memcached servers, each on ``replicas`` servers of its rendezvous ranking, locked on the first.

    :param servers: ``(host, port)`` of every server.
    :param key_prefix: prepended to every key; ASCII without spaces or control characters.
    :param connect_timeout: seconds to wait for a connection.
    :param timeout: seconds to wait for an answer to one command.
    :param replicas: how many servers hold each session (at most the number of servers).
    :param fail_limit: failed calls in a row after which a server is ejected.
    :param retry_after: seconds an ejected server gets no call.
    :param name: the backend's address for messages (default: built from ``servers``).
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        *,
        key_prefix: str = "sessmw:",
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        replicas: int = 1,
        fail_limit: int = DEFAULT_FAIL_LIMIT,
        retry_after: float = DEFAULT_RETRY_AFTER,
        name: str | None = None,
    ) -> None:
        if not servers:
            raise ConfigError("memcached backend needs at least one server: memcached://host:11211", option="backend")
        if not 1 <= replicas <= len(servers):
            raise ConfigError(
                f"memcached backend: replicas={replicas}, but there are {len(servers)} servers; "
                f"use 1 to {len(servers)}",
                option="replicas",
            )
        keys.check_key_prefix(key_prefix)
        self.key_prefix = key_prefix
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.replicas = replicas
        self.fail_limit = fail_limit
        self.retry_after = retry_after
        self._init_servers(make_nodes(servers, connect_timeout, timeout))
        self.name = name or "memcached://" + ",".join(self._nodes)
        self._holds: dict[str, Hold] = {}
        # A write this close to the lock's deadline first checks the lock and pushes the deadline out.
        self._write_margin_ms = int((timeout + 0.5) * 1000)
        # pymemcache's sockets have no finalizer: close them when a backend is dropped without close().
        self._finalizer = weakref.finalize(self, close_clients, list(self._nodes.values()))

    # -- the lock ------------------------------------------------------------------------------

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid`` on its first server in service; when taken, return its freshest record."""
        key = keys.data_key(self.key_prefix, sid)
        lock = keys.lock_key(key)
        order = self._order(key)
        deadline = now_ms() + int(expire * 1000)
        value = lock_value(token, deadline)
        lock_exp = exptime(expire)
        tried: list[Node] = []
        last: BackendUnavailable | None = None
        while True:
            live = self._live(order, 1, tried)
            if not live:
                raise last if last is not None and len(self._nodes) == 1 else self._none_live(order, last)
            node = live[0]
            try:
                taken = self._take_lock(node, key, lock, value, lock_exp)
            except BackendUnavailable as exc:
                self._orphan(node, lock, token)  # the server may still run our add, late
                tried.append(node)
                last = exc
                continue
            break
        if taken is None:
            return False, None
        lock_cas, first = taken
        try:
            copies = self._read_copies(order, key, {node: first})
        except BaseException:
            self._unlock_quietly(node, lock, lock_cas)
            raise
        version, record = self._freshest(copies)
        cas = {n: (r.cas if r.value is not None else None) for n, r in copies.items()}
        self._hold(token, Hold(token, node, lock_cas, deadline, cas, record, version))
        return True, record

    def _take_lock(self, node: Node, key: str, lock: str, value: bytes, lock_exp: int) -> tuple[bytes, Reply] | None:
        """Take the lock on ``node`` (adding it, or taking over one past its deadline); also read the copy there.

        One round trip when the lock is free. Returns the lock's CAS and the copy's ``mg`` reply.
        """
        for _ in range(LOCK_ATTEMPTS):
            added, held, data = self._meta(
                node, [ms(lock, value, lock_exp, mode="E"), mg(lock, "v c"), mg(key, "v c t")]
            )
            if added.ok and added.cas is not None:
                return added.cas, data
            if held.value is None:
                continue  # released in between: add again
            holder, deadline = parse_lock(held.value)
            if deadline > now_ms() and holder != node.orphans.get(lock):
                return None
            # Past its deadline: take it over; the CAS lets only the first contender win.
            took, data = self._meta(node, [ms(lock, value, lock_exp, cas=held.cas), mg(key, "v c t")])
            if took.ok and took.cas is not None:
                node.orphans.pop(lock, None)
                return took.cas, self._fence_previous(node, key, data)
        return None

    def _fence_previous(self, node: Node, key: str, data: Reply) -> Reply:
        """After a takeover, raise the copy's version, so the previous holder's write finds it changed and drops."""
        for _ in range(TOUCH_ATTEMPTS):
            version, record = version_of(data.value)
            if record is None or data.cas is None:
                return data
            blob = encode_record(record._replace(version=version + 1))
            ttl = int(data.flags.get("t", b"-1"))
            stored = self._meta(node, [ms(key, blob, 0 if ttl < 0 else ttl + 1, cas=data.cas)])[0]
            if stored.ok:
                return Reply(b"VA", {"c": stored.cas or b""}, blob)
            data = self._meta(node, [mg(key, "v c t")])[0]  # the previous holder wrote just now: read it
        return data

    def _hold(self, token: str, hold: Hold) -> None:
        holds = self._holds
        if len(holds) >= HOLDS_PRUNE_AT:
            stale = now_ms() - 60_000
            for old in [t for t, h in list(holds.items()) if h.deadline_ms < stale]:
                holds.pop(old, None)
        holds[token] = hold

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's deadline to ``expire`` seconds from now, if ``token`` still holds it."""
        hold = self._holds.get(token)
        if hold is None:
            return False
        lock = keys.lock_key(keys.data_key(self.key_prefix, sid))
        deadline = now_ms() + int(expire * 1000)
        value = lock_value(token, deadline)
        stored = self._meta(hold.lock_node, [ms(lock, value, exptime(expire), cas=hold.lock_cas)])[0]
        if not stored.ok or stored.cas is None:
            return False
        hold.lock_cas = stored.cas
        hold.deadline_ms = deadline
        return True

    # -- the other primitives ------------------------------------------------------------------

    def load(self, sid: str) -> Record | None:
        """Return the freshest record of ``sid`` among its servers in service, without locking."""
        key = keys.data_key(self.key_prefix, sid)
        return self._freshest(self._read_copies(self._order(key), key, {}))[1]

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Store a new session on its ``replicas`` first servers in service, only if ``sid`` is unused (add)."""
        key = keys.data_key(self.key_prefix, sid)
        order = self._order(key)
        blob = encode_record(record)
        targets = self._live(order, self.replicas)
        if not targets:
            raise self._none_live(order)
        self._check_size(targets[0], key, blob)
        # Index first: a session must never exist unindexed (terminate_user would miss it).
        added = record.user_id is not None and self._index_add(record.user_id, sid)
        try:
            # add on each server: an id in use anywhere is a conflict, and our copies are taken back
            stored = self._write(order, key, blob, exptime(ttl), dict.fromkeys(targets), -1)
        except BaseException:
            if added:
                assert record.user_id is not None
                self._index_remove(record.user_id, [sid], quiet=True)
            raise
        if not stored and added:
            assert record.user_id is not None
            self._index_remove(record.user_id, [sid], quiet=True)
        return stored

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock, only if no one wrote or ended the session since ``token`` locked it.

        Each copy is written with the CAS read under the lock: a session deleted meanwhile (terminated,
        gc) is not written again, and a holder whose lock was taken over finds its copy changed. Either
        way ``False``, and the lock is released.

        A record too large for the server raises :class:`~sessionmw.errors.RecordTooLarge` after
        releasing the lock (the caller no longer holds it once it has called ``save``).
        """
        hold = self._holds.pop(token, None)
        if hold is None:
            return False  # this token holds no lock here (never taken, or already given up)
        key = keys.data_key(self.key_prefix, sid)
        lock = keys.lock_key(key)
        blob = encode_record(record)
        try:
            self._check_size(hold.lock_node, key, blob)
        except RecordTooLarge:
            self._unlock_quietly(hold.lock_node, lock, hold.lock_cas)
            raise
        if not self._still_ours(hold, lock):
            return False  # the lock passed its deadline and is someone else's now, or gone
        # Index first (a session must never exist unindexed); an entry added for nothing is taken back.
        added = False
        try:
            if record.user_id is not None:
                added = self._index_add(record.user_id, sid)
            stored = self._write(self._order(key), key, blob, exptime(ttl), hold.copies, hold.version, hold, lock)
        except BaseException:
            self._unlock_quietly(hold.lock_node, lock, hold.lock_cas)
            raise
        if not stored and added:
            assert record.user_id is not None
            self._index_remove(record.user_id, [sid], quiet=True)
        return stored

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, refreshing last access first when ``touch`` is given."""
        hold = self._holds.pop(token, None)
        if hold is None:
            return False
        key = keys.data_key(self.key_prefix, sid)
        lock = keys.lock_key(key)
        commands = [md(lock, hold.lock_cas)]
        record = hold.record
        blob = b""
        if touch is not None and record is not None:
            blob = encode_record(record.touched(touch))
            cas = hold.copies.get(hold.lock_node)
            if cas is not None:
                commands.insert(0, ms(key, blob, exptime(touch.ttl), cas=cas))
        try:
            replies = self._meta(hold.lock_node, commands)
        except BackendUnavailable:
            self._orphan(hold.lock_node, lock, token)  # removed when the server answers again
            raise
        if touch is not None and record is not None:
            for node, cas in hold.copies.items():
                if node is not hold.lock_node and cas is not None:
                    try:
                        self._meta(node, [ms(key, blob, exptime(touch.ttl), cas=cas)])
                    except BackendUnavailable:
                        pass  # a touch is best effort
        return replies[-1].ok and hold.deadline_ms > now_ms()

    def touch(self, sid: str, touch: Touch) -> None:
        """Refresh last access of every copy in service, never undoing a concurrent write (``mg`` + ``ms`` with CAS)."""
        key = keys.data_key(self.key_prefix, sid)
        order = self._order(key)
        for node, reply in self._read_copies(order, key, {}).items():
            try:
                self._touch(node, key, touch, reply)
            except BackendUnavailable:
                pass  # a touch is best effort; the server is counted as failing

    def _touch(self, node: Node, key: str, touch: Touch, reply: Reply) -> None:
        for _ in range(TOUCH_ATTEMPTS):
            _, record = version_of(reply.value)
            if record is None or reply.cas is None:
                return  # touching a missing session does not create it
            new = encode_record(record.touched(touch))
            stored = self._meta(node, [ms(key, new, exptime(touch.ttl), cas=reply.cas)])[0]
            if stored.ok or stored.code == b"NF":
                return  # written, or the session is gone
            reply = self._meta(node, [mg(key, "v c")])[0]
        # Lost every race: others are writing this session right now, with a fresher last access.

    def delete(self, sid: str) -> None:
        """End the session: its copies on every server in service become tombstones; its index entry goes.

        A tombstone (kept as long as the copy it replaces would have lived) outranks any copy, so a server
        that was away and comes back with the session cannot bring it back.
        """
        key = keys.data_key(self.key_prefix, sid)
        order = self._order(key)
        user: str | int | None = None
        reached = 0
        last: BackendUnavailable | None = None
        for node in self._live(order, len(order)):
            try:
                found = self._meta(node, [mg(key, "v t")])[0]
                if found.value is None or found.value == TOMBSTONE:
                    reached += 1
                    continue
                _, record = version_of(found.value)
                if record is not None and record.user_id is not None:
                    user = record.user_id
                ttl = int(found.flags.get("t", b"-1"))
                self._meta(node, [ms(key, TOMBSTONE, 0 if ttl < 0 else ttl + 1)])
                reached += 1
            except BackendUnavailable as exc:
                last = exc
        if not reached:
            raise last if last is not None and len(self._nodes) == 1 else self._none_live(order, last)
        if user is not None:
            self._index_remove(user, [sid], quiet=True)

    def close(self) -> None:
        """Close every connection (the backend reconnects if used again)."""
        close_clients(list(self._nodes.values()))
