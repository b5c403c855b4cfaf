"""The memcached backend: sessions on one or many memcached servers, locked with ``add``.

Layout, for a session ``sid`` under key prefix ``p`` (:mod:`.keys` writes it)::

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

Where each part lives:

* :mod:`.keys`: the key format; :mod:`.values`: what the items hold (records, locks, index lists, expiry).
* :mod:`.placement`: which server a key goes to, the pooled clients, one call to a server and its errors.
* :mod:`.index`: the per-user index; :mod:`.enumeration`: the metadump client and key listing.
* :mod:`.backend`: :class:`MemcachedBackend`, the primitives; :mod:`.config`: the URL and its options.
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
