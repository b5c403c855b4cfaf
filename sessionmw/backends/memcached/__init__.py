"""The memcached backend: sessions on one or many memcached servers, with replicas, locked with ``add``.

Layout, for a session ``sid`` under key prefix ``p`` (:mod:`.keys` writes it)::

    <p><sid>        a copy of the record (:func:`~sessionmw.backends.base.encode_record`), or a tombstone
    <p><sid>:lock   the lock: "<token> <deadline in epoch milliseconds>"
    <p>u:<uid>      the user index: a JSON list of the sids of user ``uid`` (base64url of ``str(user_id)``)

Why it is shaped so:

* Placement: every key has a fixed ranking of the servers, by rendezvous (highest random weight) hashing
  with pymemcache's own hasher (:class:`~pymemcache.client.rendezvous.RendezvousHash`; the first of the
  ranking is its ``get_node``). A session's copies go to the first ``replicas`` servers of its ranking
  that are in service; its lock to the first. A server that leaves moves only its own share.
* Ejection: a server that fails ``fail_limit`` calls in a row is ejected for ``retry_after`` seconds: no
  call goes to it, and its sessions are served by the next servers of their rankings. After that time
  one call tries it again. A call that fails on one server moves on to the next at once, so one dead
  server of several never answers a request with a 503; only "every server of this session is down"
  does. (One server alone is never ejected: there is nowhere else to go.)
* Versions: every write raises the record's version (:attr:`~sessionmw.backends.base.Record.version`, set
  by the core). A read takes the copy with the highest version among the servers it reads, so a server
  that comes back empty, or with the data it had before an outage (a frozen process), is never
  believed over a newer copy; its copy is repaired by the session's next write.
* Round trips, with memcached's meta protocol (:mod:`.meta`; memcached >= 1.6): lock and load are one
  (``ms <lock> ME`` + ``mg <lock>`` + ``mg <data>`` in one write), save and unlock one (``ms <data> C<cas>``
  + ``md <lock> C<cas>``), a read-only load one; with ``replicas=N``, one more per other replica.
* Fencing without clocks: a lock holder remembers (per token, in this process) the CAS of each copy it
  read and of its lock, and writes each copy only if its CAS is unchanged. A write finding its copy
  changed is retried only when the change was a touch (same version); a newer version, a deletion or a
  tombstone means someone else wrote or ended the session: the write is dropped (``False``), copies
  already written are taken back, and an ended session is never resurrected. A lock past its deadline
  is taken over with CAS (one contender wins), and the new holder raises the copy's version, so the old
  holder's write fails even if it comes before the new holder's. memcached may also drop an expired lock item by itself
  (it counts whole seconds), after which a new request adds a fresh lock without a takeover; so a
  holder within ``timeout + 0.5`` s of its deadline, or past it, first checks its lock by CAS and pushes
  the deadline out (one more round trip, only then). A holder whose lock server died finds,
  on the next server, the copy a later holder wrote, and is fenced the same way.
* Ending a session replaces each of its copies by a tombstone (version above any write, kept as long as
  the copy would have lived), so a server that was away during the deletion cannot bring it back.
* Ambiguous failures: a server that times out may still run what it was sent (a frozen process that is
  continued). A lock add sent to a server that then failed is remembered as an orphan: a lock found
  holding that token is taken over at once, and the orphans are deleted (by CAS) when the server answers
  again. A lock that another process orphaned waits for that process to see the server back, or for its
  deadline.
* Expiry: memcached counts whole seconds on a clock that ticks once a second, so an item set with
  ``exptime=n`` lives between ``n-1`` and ``n`` seconds. Every TTL is therefore rounded up and given one
  more second (a TTL is only a safety net); values over 30 days are sent as absolute Unix times, since
  memcached reads them so. The lock's real expiry is the deadline in its value, in milliseconds.
* ``touch`` rewrites each copy with CAS and retries on a conflict, so a read-only request never undoes a
  concurrent locked write.
* Administration: memcached cannot list keys with ordinary commands, so
  :meth:`MemcachedBackend.iter_records` and :meth:`~MemcachedBackend.gc` read ``lru_crawler metadump
  hash`` (memcached >= 1.6.9; on older servers ``metadump all``, which may miss items moving between
  LRUs during the dump) from every server in service on a connection of their own, keep the keys under
  the prefix, fetch the copies and keep the freshest of each session. :meth:`~MemcachedBackend.user_sessions`
  reads the user index instead (one key per user, on the first server in service of that key's ranking,
  updated with ``gets``/``cas`` loops), so it costs in proportion to that user's sessions. The index has
  one copy: a server lost with it loses those users' listings (not their sessions); a tiered store keeps
  the registry in its durable backend. Index keys never expire; entries of sessions memcached dropped are
  cleaned when read, and by gc. Memcached may evict an index key like any item: watch ``evictions``.

Where each part lives:

* :mod:`.keys`: the key format; :mod:`.values`: what the items hold (records, locks, index lists, expiry).
* :mod:`.placement`: the servers' ranking per key, ejection, the pooled clients, one call and its errors.
* :mod:`.meta`: the meta commands, sent several at once over pymemcache's pooled connections.
* :mod:`.index`: the per-user index; :mod:`.enumeration`: the metadump client and key listing.
* :mod:`.copies`: a session's copies, the freshest read and each written under the lock holder's fence.
* :mod:`.backend`: :class:`MemcachedBackend`, the primitives; :mod:`.figures`: gc, stats, server health;
  :mod:`.config`: the URL and its options.
"""

from __future__ import annotations

from .backend import MemcachedBackend as MemcachedBackend
from .config import from_url as from_url
from .enumeration import _DumpRefused as _DumpRefused
from .index import INDEX_PRUNE_AT as INDEX_PRUNE_AT
from .placement import DEFAULT_ITEM_SIZE_MAX as DEFAULT_ITEM_SIZE_MAX
from .values import MAX_RELATIVE_EXPTIME as MAX_RELATIVE_EXPTIME
from .values import TOMBSTONE as TOMBSTONE
from .values import exptime as exptime

__all__ = [
    "DEFAULT_ITEM_SIZE_MAX",
    "INDEX_PRUNE_AT",
    "MAX_RELATIVE_EXPTIME",
    "TOMBSTONE",
    "MemcachedBackend",
    "exptime",
    "from_url",
]
