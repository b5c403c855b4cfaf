"""The memcached backend's per-user index: one key per user, a JSON list of that user's session ids.

:meth:`~UserIndex.user_sessions` reads it instead of listing every key, so it costs in proportion to
that user's sessions; updates are ``gets``/``cas`` loops. See the package's notes for expiry and eviction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ...core.errors import BackendUnavailable
from ..base import Record
from .keys import data_key, index_key, index_user, sid_of
from .meta import md
from .placement import Node, Servers
from .values import batches, encode_index, parse_index, same_user, version_of

__all__ = ["INDEX_ATTEMPTS", "INDEX_PRUNE_AT", "UserIndex"]

#: Attempts of one ``gets``/``cas`` update of a user index before giving up.
INDEX_ATTEMPTS = 20
#: A user index this long is pruned of ended sessions before it grows further (and again at each multiple).
INDEX_PRUNE_AT = 256


class UserIndex(Servers):
    """The user index part of :class:`~sessionmw.backends.memcached.MemcachedBackend`."""

    def _index_locate(self, user_id: str | int) -> tuple[Node, str]:
        """Return the server and key of ``user_id``'s index (base64url of ``str(user_id)``, or its hash).

        The index lives on the first server in service of its key's list (one copy: see the package's notes).
        """
        key = index_key(self.key_prefix, user_id)
        order = self._order(key)
        live = self._live(order, 1)
        if not live:
            raise self._none_live(order)
        return live[0], key

    def _checked_delete(self, node: Node, key: str, cas: Any) -> bool:
        """Delete ``key`` only if it is unchanged since the read that returned ``cas`` (meta ``md <key> C<cas>``)."""
        return self._meta(node, [md(key, bytes(cas))])[0].ok

    def _fetch(self, sids: Iterable[str]) -> dict[str, Record]:
        """Return the live records of ``sids`` (the freshest copy of each), one ``get_many`` per server and batch."""
        prefix = self.key_prefix
        per_node: dict[Node, list[str]] = {}
        for sid in dict.fromkeys(sids):
            for node in self._live(self._order(data_key(prefix, sid)), self.replicas):
                per_node.setdefault(node, []).append(sid)
        best: dict[str, tuple[int, Record | None]] = {}
        for node, node_sids in per_node.items():
            try:
                for batch in batches(node_sids):
                    blobs = self._run(node, node.client.get_many, [data_key(prefix, sid) for sid in batch])
                    for key, blob in blobs.items():
                        sid = sid_of(prefix, key)
                        found = version_of(bytes(blob))
                        if found[0] > best.get(sid, (-1, None))[0]:
                            best[sid] = found
            except BackendUnavailable:
                if len(per_node) == 1:
                    raise
        return {sid: record for sid, (_, record) in best.items() if record is not None}

    def _index_update(self, node: Node, key: str, change: Callable[[list[str]], list[str]], quiet: bool) -> bool:
        """Apply ``change`` to the index at ``key`` with ``gets``/``cas`` (``add`` when missing); retry on races.

        Returns whether the stored list changed. Gives up after :data:`INDEX_ATTEMPTS` lost races: quietly
        when ``quiet`` (a stale entry is harmless), else with :class:`~sessionmw.errors.BackendUnavailable`.
        """
        client = node.client
        try:
            for _ in range(INDEX_ATTEMPTS):
                value, cas = self._run(node, client.gets, key)
                sids = parse_index(value)
                new = change(sids)
                if new == sids:
                    return False
                if value is None:
                    blob = encode_index(new)
                    if self._run(node, client.add, key, blob, expire=0, noreply=False, size=len(blob)):
                        return True
                elif not new:
                    if self._checked_delete(node, key, cas):
                        return True
                else:
                    blob = encode_index(new)
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
        if sid in parse_index(self._run(node, node.client.get, key)):
            return False  # the usual case on save: one read, no write

        def add(sids: list[str]) -> list[str]:
            if sid in sids:
                return sids
            if len(sids) >= INDEX_PRUNE_AT and len(sids) % INDEX_PRUNE_AT == 0:
                live = self._fetch(sids)
                sids = [s for s in sids if same_user(getattr(live.get(s), "user_id", None), user_id)]
            return [*sids, sid]

        return self._index_update(node, key, add, quiet=False)

    def _index_remove(self, user_id: str | int, gone: Iterable[str], *, quiet: bool) -> None:
        """Remove the sids in ``gone`` from ``user_id``'s index (deleting the key when it empties)."""
        drop = set(gone)
        if drop:
            node, key = self._index_locate(user_id)
            self._index_update(node, key, lambda sids: [s for s in sids if s not in drop], quiet)

    def _prune_index(self, node: Node, key: str) -> None:
        """Drop the entries of ``key``'s index whose session is gone or now someone else's."""
        sids = parse_index(self._run(node, node.client.get, key))
        if not sids:
            return
        # None for a hashed (very long) user id: keep the entries whose session is alive
        user = index_user(self.key_prefix, key)
        records = self._fetch(sids)
        drop = {sid for sid in sids if sid not in records or (user is not None and str(records[sid].user_id) != user)}
        if drop:
            self._index_update(node, key, lambda current: [s for s in current if s not in drop], True)

    def user_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """Return ``(sid, record)`` for every live session of ``user_id``, from its index; cleans stale entries."""
        node, key = self._index_locate(user_id)
        sids = parse_index(self._run(node, node.client.get, key))
        if not sids:
            return []
        records = self._fetch(sids)
        found = [(sid, records[sid]) for sid in sids if sid in records and same_user(records[sid].user_id, user_id)]
        if len(found) < len(sids):
            live = {sid for sid, _ in found}
            self._index_remove(user_id, [sid for sid in sids if sid not in live], quiet=True)
        return found
