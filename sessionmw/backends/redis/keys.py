"""The key layout of the Redis backend, written once: every key name comes from :class:`Keys`.

Rules of this module: no I/O. For a session ``sid`` under key prefix ``p``::

    p{sid}          the record: one string, a JSON line of metadata, then the data (see records.py)
    p{sid}:lock     the lock: a string holding the owner's token, with a PX expiry
    p{sid}:waiters  while requests wait for the lock: how many wait for a wake-up (a counter, with a PX expiry)
    p{sid}:wakeups  a list a release pushes one element onto per wake-up, popped by a waiter's BLPOP
    puser:{uid}     the per-user index: a set of the sids of user ``uid`` (``str(user_id)``), no TTL

The ``{sid}`` hash tag puts the keys of one session in one Cluster slot, so every script may use
them all, and a pipeline of them goes to one node. The two keys of waiting exist only while someone
waits (see scripts.py). The record is one string, so a save is one SET and a
load one GET of one bulk reply. (Versions before kept the last touch in a ``p{sid}:a`` key; one left
over is ignored and expires with its TTL.)

The per-user index has its own hash tag, so in Cluster it lives in another slot than the session: it
is updated by a separate command, never inside a session's script. ``create`` of a session with a
user adds the sid (pipelined with the SET: still one round trip on a single server); ``save`` adds
and removes only when its script sees that the user changed (it compares the user of the record it
overwrites, server-side), so an ordinary save stays one round trip; ``delete`` removes the sid, with
a second round trip only when the deleted session had a user. Index sets get no TTL: a touch
extends a session's TTL without a round trip to the index, so no TTL set at create could be known
to outlive the session. Members whose session Redis dropped on its own (TTL, eviction) are skipped
and removed by ``user_sessions`` and by ``gc``, which also drops emptied sets.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LOCK_SUFFIX", "LOCK_SUFFIX_BYTES", "WAITERS_SUFFIX_BYTES", "WAKEUPS_SUFFIX_BYTES", "Keys"]

#: What a session's lock key adds to its data key.
LOCK_SUFFIX = ":lock"
#: The same, for the hot commands, whose keys go as bytes: ``keys.data(sid).encode() + LOCK_SUFFIX_BYTES``
#: is ``keys.lock(sid)`` without a second call.
LOCK_SUFFIX_BYTES = LOCK_SUFFIX.encode()
#: What the counter of a session's waiters, and its list of wake-ups, add to its data key.
WAITERS_SUFFIX = ":waiters"
WAKEUPS_SUFFIX = ":wakeups"
WAITERS_SUFFIX_BYTES = WAITERS_SUFFIX.encode()
WAKEUPS_SUFFIX_BYTES = WAKEUPS_SUFFIX.encode()


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one key prefix."""

    prefix: str

    def data(self, sid: str) -> str:
        """The string holding the record of ``sid``."""
        return f"{self.prefix}{{{sid}}}"

    def lock(self, sid: str) -> str:
        """The lock of ``sid``; same hash tag as its data, so same Cluster slot."""
        return self.data(sid) + LOCK_SUFFIX

    def waiters(self, sid: str) -> str:
        """How many requests wait for a wake-up on ``sid``'s lock; same hash tag as its data."""
        return self.data(sid) + WAITERS_SUFFIX

    def wakeups(self, sid: str) -> str:
        """The list of wake-ups a release of ``sid``'s lock pushes; same hash tag as its data."""
        return self.data(sid) + WAKEUPS_SUFFIX

    def user(self, user_id: str | int) -> str:
        """The set of the sids of ``user_id``; its own hash tag, so in Cluster another slot than the sessions."""
        return f"{self.prefix}user:{{{user_id}}}"

    def _escaped(self) -> str:
        return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix)

    def scan_pattern(self) -> str:
        """A SCAN MATCH pattern for every data key under this prefix (lock keys do not end in ``}``)."""
        return self._escaped() + "{*}"

    def user_scan_pattern(self) -> str:
        """A SCAN MATCH pattern for every per-user index set under this prefix."""
        return self._escaped() + "user:{*}"

    def sid_of(self, key: bytes | str) -> str:
        """The session id in a data key (what :meth:`data` wrapped around it)."""
        text = key.decode("utf-8") if isinstance(key, bytes) else key
        return text[len(self.prefix) + 1 : -1]
