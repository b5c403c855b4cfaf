"""Listing a memcached backend's keys, with a client of ``lru_crawler metadump`` of its own.

memcached cannot list keys with ordinary commands; see the package's notes for which metadump runs on
which server version, and what it may miss.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from pymemcache.exceptions import MemcacheUnexpectedCloseError, MemcacheUnknownError

from ...core.errors import BackendUnavailable
from ..base import Record
from .keys import INDEX_INFIX, LOCK_SUFFIX, data_key, sid_of
from .placement import Node, Servers
from .values import batches, version_of

__all__ = ["DUMP_BUSY_WAIT", "DUMP_RECV_SIZE", "Enumeration"]

#: Bytes per ``recv`` of a metadump.
DUMP_RECV_SIZE = 256 * 1024
#: Seconds to keep retrying a metadump while another crawl runs on the server (it answers ``BUSY``).
DUMP_BUSY_WAIT = 30.0


class _DumpRefused(Exception):
    """The server answered ``lru_crawler metadump`` with an error line."""


class Enumeration(Servers):
    """The key listing part of :class:`~sessionmw.backends.memcached.MemcachedBackend`."""

    def _read_dump(self, node: Node, mode: bytes, prefix: bytes) -> list[bytes] | None:
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

    def _metadump(self, node: Node, prefix: bytes) -> list[bytes]:
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

    def _dump_keys(self, node: Node) -> tuple[list[str], list[str]]:
        """Return ``(sids, index keys)`` under this backend's prefix that ``node`` holds (copies among them)."""
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
            if raw.startswith(index_head):
                index_keys.append(key)
            elif ":" not in key[n:]:  # session ids have no ":"; keys of a longer prefix ("<p>other:") do
                sids.append(key[n:])
        return sids, index_keys

    def _each_dump(self) -> Iterator[tuple[Node, list[str], list[str]]]:
        """Yield ``(server, sids, index keys)`` for every server in service (all of them with one server)."""
        for node in self._nodes.values():
            if node.down_until and len(self._nodes) > 1:
                continue  # ejected: its copies are also on the next servers of their lists
            try:
                sids, index_keys = self._dump_keys(node)
            except BackendUnavailable:
                if len(self._nodes) == 1:
                    raise
                continue
            yield node, sids, index_keys

    def _gets(self, node: Node, sids: list[str]) -> dict[str, tuple[bytes, Any]]:
        """Return ``sid -> (value, cas)`` of the copies of ``sids`` on ``node``."""
        prefix = self.key_prefix
        found: dict[str, tuple[bytes, Any]] = {}
        for batch in batches(sids):
            got = self._run(node, node.client.gets_many, [data_key(prefix, sid) for sid in batch])
            for key, (blob, cas) in got.items():
                found[sid_of(prefix, key)] = (bytes(blob), cas)
        return found

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        """Yield ``(sid, record)`` for every live session under the key prefix: the freshest of its copies."""
        best: dict[str, tuple[int, Record | None]] = {}
        for node, sids, _ in self._each_dump():
            for sid, (blob, _cas) in self._gets(node, sids).items():
                found = version_of(blob)
                if found[0] > best.get(sid, (-1, None))[0]:
                    best[sid] = found
        for sid, (_, record) in best.items():
            if record is not None:
                yield sid, record
