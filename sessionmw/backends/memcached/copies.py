"""The memcached backend's copies of a session: reading the freshest, writing each under its holder's fence.

:class:`Copies` is a base of :class:`~sessionmw.backends.memcached.MemcachedBackend`: its methods are the
backend's own. A lock holder's :class:`Hold` keeps the CAS of each copy it read; every copy is written
only if that CAS is unchanged (see "Fencing without clocks" in the package's notes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...core.errors import BackendUnavailable
from ..base import Record
from .meta import Reply, md, mg, ms
from .placement import Node, Servers
from .values import TOMBSTONE, exptime, lock_value, now_ms, version_of

__all__ = ["TOUCH_ATTEMPTS", "Copies", "Hold"]

#: Attempts of one CAS write of a copy that others keep changing in between (touches, mostly).
TOUCH_ATTEMPTS = 5


@dataclass(slots=True)
class Hold:
    """What a lock holder read: where its lock is, and each copy's CAS, so its write is fenced by them."""

    token: str
    lock_node: Node
    lock_cas: bytes
    deadline_ms: int
    #: The data CAS of each server read under the lock (``None``: that server had no copy).
    copies: dict[Node, bytes | None]
    #: The freshest record read, and its version (-1 when there was none).
    record: Record | None
    version: int


class Copies(Servers):
    """The replicated copies part of :class:`~sessionmw.backends.memcached.MemcachedBackend`."""

    _write_margin_ms: int

    # -- reading -------------------------------------------------------------------------------

    def _read_copies(self, order: Sequence[Node], key: str, copies: dict[Node, Reply]) -> dict[Node, Reply]:
        """Add to ``copies`` the replies of ``mg`` on the next servers in service, up to ``replicas`` of them.

        A server that fails is replaced by the next one of the list; raises when none answered at all.
        """
        tried: list[Node] = list(copies)
        last: BackendUnavailable | None = None
        while len(copies) < self.replicas:
            nodes = self._live(order, self.replicas - len(copies), tried)
            if not nodes:
                break
            for node in nodes:
                tried.append(node)
                try:
                    copies[node] = self._meta(node, [mg(key, "v c t")])[0]
                except BackendUnavailable as exc:
                    last = exc
        if not copies:
            raise last if last is not None and len(self._nodes) == 1 else self._none_live(order, last)
        return copies

    @staticmethod
    def _freshest(copies: dict[Node, Reply]) -> tuple[int, Record | None]:
        """The highest ``(version, record)`` among ``copies`` (a tombstone wins, as no record)."""
        best: tuple[int, Record | None] = (-1, None)
        for reply in copies.values():
            found = version_of(reply.value)
            if found[0] > best[0]:
                best = found
        return best

    # -- writing under the holder's fence ------------------------------------------------------

    def _unlock_quietly(self, node: Node, lock: str, lock_cas: bytes, token: str = "") -> None:
        """Release ``node``'s lock by its CAS, ignoring failures (an orphan when ``token`` is given)."""
        try:
            self._meta(node, [md(lock, lock_cas)])
        except Exception:
            if token:
                self._orphan(node, lock, token)  # removed when the server answers again
            # best effort, while another error is on its way

    def _still_ours(self, hold: Hold, lock: str) -> bool:
        """Whether ``hold``'s lock is still its own when it writes; near or past its deadline, check and push it out.

        Within the deadline nobody can take the lock, so the copies' CAS fence the write. Past it, the
        lock may have expired in memcached and been added anew by another request that has not written
        yet: the lock's own CAS tells (a new item has a new CAS), and pushing the deadline out keeps
        anyone from taking it while this write is under way. A lock server that is out of service is
        left to the copies' CAS (see the package's notes).
        """
        now = now_ms()
        if now + self._write_margin_ms < hold.deadline_ms or hold.lock_node.down_until:
            return True
        deadline = now + 2 * self._write_margin_ms
        try:
            pushed = self._meta(
                hold.lock_node,
                [
                    ms(
                        lock,
                        lock_value(hold.token, deadline),
                        exptime(2 * self._write_margin_ms / 1000),
                        cas=hold.lock_cas,
                    )
                ],
            )[0]
        except BackendUnavailable:
            return True
        if not pushed.ok or pushed.cas is None:
            return False
        hold.lock_cas, hold.deadline_ms = pushed.cas, deadline
        return True

    def _write(
        self,
        order: Sequence[Node],
        key: str,
        blob: bytes,
        exp: int,
        copies: dict[Node, bytes | None],
        version: int,
        hold: Hold | None = None,
        lock: str = "",
    ) -> bool:
        """Write ``blob`` to the first ``replicas`` servers in service; with ``hold``, release its lock too.

        A server read under the lock is written with the CAS read then (``copies``); one that had no copy
        is written with ``add``; one not read at all (it came back since) with ``set``. A write that finds
        its copy changed is retried only when the change was a touch (the same ``version``); a newer
        version, a deletion or a tombstone is a conflict: the writes already made are taken back and the
        answer is ``False``. A server that fails is replaced by the next one of the list.
        """
        written: list[tuple[Node, bytes]] = []
        tried: list[Node] = []
        released = hold is None
        last: BackendUnavailable | None = None
        conflict = False
        if hold is not None and hold.lock_node in self._live(order, self.replicas):
            tried.append(hold.lock_node)
            nodes = [hold.lock_node]  # the lock's server first: its copy decides, and the release rides along
        else:
            nodes = []
        while not conflict:
            nodes = nodes or self._live(order, self.replicas - len(written), tried)
            if not nodes:
                break
            for node in nodes:
                if node not in tried:
                    tried.append(node)
                commands = [_write_command(key, blob, exp, node, copies)]
                unlocks = hold is not None and node is hold.lock_node
                if unlocks:
                    assert hold is not None
                    commands.append(md(lock, hold.lock_cas))
                    released = True
                try:
                    replies = self._meta(node, commands, size=len(blob))
                    reply = replies[0]
                    if not reply.ok:
                        reply = self._rewrite(node, key, blob, exp, copies, version)
                except BackendUnavailable as exc:
                    if unlocks:
                        assert hold is not None
                        self._orphan(node, lock, hold.token)  # our unlock may not have run
                    last = exc
                    continue
                if reply.ok and reply.cas is not None:
                    written.append((node, reply.cas))
                else:
                    conflict = True
                    break
            nodes = []
            if len(written) >= self.replicas:
                break
        if not released and hold is not None:
            if hold.lock_node.down_until:
                self._orphan(hold.lock_node, lock, hold.token)
            else:
                self._unlock_quietly(hold.lock_node, lock, hold.lock_cas, hold.token)
        if conflict:
            for node, cas in written:
                try:
                    self._meta(node, [md(key, cas)])  # take our copy back: it lost to a newer one
                except BackendUnavailable:
                    pass
            return False
        if not written:
            if last is not None and len(self._nodes) == 1:
                raise last
            raise self._none_live(order, last)
        return True

    def _rewrite(
        self, node: Node, key: str, blob: bytes, exp: int, copies: dict[Node, bytes | None], version: int
    ) -> Reply:
        """Retry a write that found its copy changed, if only touched since; else return the failed reply."""
        reply = Reply(b"EX", {}, None)
        for _ in range(TOUCH_ATTEMPTS):
            current = self._meta(node, [mg(key, "v c")])[0]
            found, _ = version_of(current.value)
            if current.value is None:
                if copies.get(node) is not None:
                    return Reply(b"NF", {}, None)  # deleted since: never bring it back
                reply = self._meta(node, [ms(key, blob, exp, mode="E")])[0]
            elif found > version and not (version < 0 and current.value == TOMBSTONE):
                return Reply(
                    b"EX", {}, None
                )  # written (or ended) by someone else since; a create may reuse an ended id
            else:
                reply = self._meta(node, [ms(key, blob, exp, cas=current.cas)])[0]
            if reply.ok:
                return reply
        return reply


def _write_command(key: str, blob: bytes, exp: int, node: Node, copies: dict[Node, bytes | None]) -> bytes:
    """The ``ms`` of one copy: with the CAS read under the lock, ``add`` where there was none, else ``set``."""
    if node in copies:
        cas = copies[node]
        return ms(key, blob, exp, cas=cas) if cas is not None else ms(key, blob, exp, mode="E")
    return ms(key, blob, exp)
