"""The tiered backend: a fast store (memcached, Redis) in front of a durable one (SQL, file, Redis).

As Moodle keeps session data in memcached and a row per session in its database: locks and reads
are served by the fast tier, and the durable tier keeps a copy of every session and the registry
(listing, per-user look-up, gc), so a fast tier that evicts, is flushed or dies loses no session.
Built only on the :class:`~sessionmw.backends.base.Backend` and
:class:`~sessionmw.backends.base.AdminBackend` protocols of its two tiers; sync only (the ASGI adapter
runs it in worker threads, as any sync backend).

How it works, and why:

* Reads: the fast tier first. A miss (eviction, ``flush_all``, a restarted server) reads the durable
  tier and refills the fast one with ``create`` (never over a copy that is there), then reads the
  durable tier once more: whoever ends a session deletes it from the durable tier first and the fast
  tier second, so either that second read sees it gone (and the copy is removed), or the delete comes
  after the copy and removes it. An ended session never comes back from the durable tier. A miss
  under a lock is not refilled at once (a fast tier's ``save`` may insist on finding what its lock
  found, i.e. nothing): that request's write goes through to the durable tier first, as a due write
  would, and then to the fast tier; if it writes nothing, its release refills the fast tier.
* Writes: every ``create`` goes to both tiers, the durable one first (it is the registry, and the
  judge of whether an id is free). A ``save`` goes to the fast tier, and through to the durable one
  when ``record.version % write_every == 0`` (the core raises the version by one on every write, and
  ``bind_user`` and ``regenerate`` are a create plus a delete). So with ``write_every=N`` the durable
  copy is at most N-1 writes behind, and a fast-tier loss costs at most the last N-1 changes.
* Write-through under the fast lock: the durable tier's ``save`` is fenced by a token lock like any
  backend's, so a write-through takes the durable tier's lock with the request's own token
  (``lock_and_load``, then ``save``, which releases it), and does so *before* the fast ``save``, while
  the request still holds the fast lock (checked, and pushed :data:`~.backend.WRITE_WINDOW` seconds out,
  with ``extend``). All durable writes of one session are thereby serialized by the fast lock: two
  requests never race for the durable lock, and an older version never lands after a newer one. The
  record that ``lock_and_load`` returns also lets the write refuse to go over a copy of a later
  version (one written while the fast tier was down), or where the row is gone (an ended session:
  never resurrected). Cost of a due write: one more fast round trip and two durable ones.
  The alternatives were worse: writing the durable tier after the fast ``save`` lets the next holder
  race the previous one for the durable lock; a delete-and-create is a moment with no session in the
  registry, and resurrects ended sessions.
* A refused fast write: the fast ``save`` answers ``False`` both when the request was fenced (another
  request holds the lock, or wrote since) and when the lock or record vanished (eviction, flush,
  restart). To tell them apart the backend tries the fast lock again with the same token: taken by
  another token, or a record of the same or a later version there, means fenced, and nothing is
  written anywhere; otherwise nobody wrote since our load, and the write goes to the durable tier and
  back into the fast one.
* Fast tier down (:class:`~sessionmw.core.errors.BackendUnavailable`): the durable tier serves alone,
  locks included, instead of answering 503; a warning is logged on the ``sessionmw`` logger when an
  outage starts and when it ends, not per request. Each lock token taken in the durable tier is
  remembered until its save or release (so renewals, saves and releases go to the tier holding the
  lock), and each session written or deleted while the fast tier could not be reached is remembered
  as "maybe stale there": the next use of it first deletes the fast copy, so a server that returns
  with its old memory (paused, partitioned) does not serve an older session. Both maps are bounded
  (:data:`~.tiers.MAX_TRACKED`, least recently used go first) and guarded by one mutex.
* The durable tier down: existing sessions go on in the fast tier (their write-throughs are skipped,
  with a warning once per outage); creating a session needs the registry and answers 503.
* Last access in the durable tier: writes not due for it still refresh its last access and expiry
  (a ``touch``) when they cross a multiple of ``refresh_every`` seconds (the middleware's touch
  interval), and every touch reaches both tiers, so the registry's idle timeouts, TTLs and gc never
  end a session that is alive in the fast tier.
* Administration: ``iter_records``, ``user_sessions`` and ``gc`` are the durable tier's (gc also
  clears the fast tier's leftovers when it can). ``stats`` reports the durable tier's figures as
  ``durable_*``, the fast tier's as ``fast_*``, ``fast_available`` (1 or 0) and ``evictions``, what the
  fast tier dropped to make room (memcached ``evictions``, Redis ``evicted_keys``): cache misses here,
  not lost sessions.

Where each part lives: :mod:`.config` (:class:`TieredSpec`, the pair before it is opened),
:mod:`.tiers` (calling each tier, outages, the memory of held tokens and stale ids),
:mod:`.backend` (:class:`TieredBackend`: the refill, the write-through and the primitives).
"""

from __future__ import annotations

from .backend import MAX_TRACKED as MAX_TRACKED
from .backend import REFILL_TTL_MARGIN as REFILL_TTL_MARGIN
from .backend import WRITE_WINDOW as WRITE_WINDOW
from .backend import TieredBackend as TieredBackend
from .config import TieredSpec as TieredSpec

__all__ = ["MAX_TRACKED", "REFILL_TTL_MARGIN", "WRITE_WINDOW", "TieredBackend", "TieredSpec"]
