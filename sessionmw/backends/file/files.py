"""Where a file backend keeps a session's files, and how it reads and writes them.

:class:`Files` is a base of :class:`~sessionmw.backends.file.FileBackend` (its methods are the
backend's own): the paths, the record file (its first line the TTL deadline, then the encoded record)
merged with the ``.touch`` file and, for a session written as tails, the ``.head`` file
(:meth:`Files._append_tail`), atomic writes, the per-user index directories, and gc (the walk
over the directory and the turn of the background gc); and :func:`require_directory`, the check of
a store opened without creating anything.

gc, and why so:

* The directory is walked lazily (``os.scandir``) and each ``.session`` file read only as far as its
  metadata line. A batch (``limit``) stops after that many removals, and the next batch goes on
  where it stopped (the next name is kept), so a backlog of millions costs one walk, not
  one per batch; at the end of the directory the next walk starts over.
* An expired session goes with its ``.touch`` file, its user index entry and its ``.lock`` file. The
  lock file is removed only under its ``flock`` (taken without waiting), and the expiry is read
  again under it, since a request that held it may have just saved the session. A lock held by a
  request stays: its holder removes it when it lets go (no session is left), and its save is dropped.
* Left-overs are removed too: a ``.lock`` or ``.touch`` file whose session is gone (a request ended
  on a session gc removed; versions before this one left a lock file per collected session), and
  the temporary file of a write interrupted more than :data:`TMP_AGE` seconds ago.
* The background gc's turn (:meth:`Files.claim_gc`) is a small file whose content is the turn's
  end, read and rewritten under its ``flock``, and never released: it runs out.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Generator
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

from ...core.errors import BackendUnavailable, ConfigError
from ..base import Record, Touch, decode_record, encode_record

__all__ = ["GC_LEASE", "TMP_AGE", "Files", "require_directory", "safe_prefix"]

#: Seconds after which the temporary file of an interrupted write is removed by gc.
TMP_AGE = 3600.0

#: The file (under the key prefix) holding the end of the background gc's turn: never a session's
#: name, which ends ``.session`` (and is a handle or a raw id, :mod:`sessionmw.core.handles`).
GC_LEASE = "gc.lease"

# How much of a session file gc reads first: the TTL line and the metadata line fit, in all but
# sessions with a very long user agent or user id (which are read whole).
_HEAD = 4096

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

# One gc walk at a time per process: batches go on from the name the last one stopped at.
_WALK = threading.Lock()


def safe_prefix(prefix: str) -> str:
    """``prefix`` made safe as the start of a file name."""
    return prefix.replace("/", "_").replace("\\", "_").replace("\0", "_")


def require_directory(directory: Path) -> None:
    """Raise :class:`ConfigError` naming ``directory`` unless it is a directory (a store opened with
    ``create=False``, which must not make one)."""
    if directory.is_dir():
        return
    what = "is not a directory" if directory.exists() else "does not exist"
    raise ConfigError(f"file backend: {directory} {what} (the middleware creates it when it starts)", option="backend")


class Head(NamedTuple):
    """A ``.head`` file: the metadata of a session written as a tail, and how much of its file is committed."""

    #: The TTL deadline (wall-clock seconds), or ``None``.
    deadline: float | None
    #: Bytes of the ``.session`` file that are committed: what follows is an unfinished tail.
    length: int
    #: The metadata line and its newline (:func:`~sessionmw.backends.base.encode_record` of the metadata).
    meta: bytes


class Files:
    """The files of :class:`~sessionmw.backends.file.FileBackend`'s sessions."""

    dir: Path
    name: str
    key_prefix: str

    def _base(self, sid: str) -> str:
        return str(self.dir / (self.key_prefix + sid))

    def _fail(self, exc: OSError, what: str) -> BackendUnavailable:
        return BackendUnavailable(f"file backend {self.dir}: cannot {what}: {exc.strerror or exc}", backend=self.name)

    def _read_record(self, base: str) -> Record | None:
        try:
            with open(base + ".session", "rb") as f:
                # The .head first: a tail appended after it was read lies past its committed length.
                tailed = self._read_head(base, os.fstat(f.fileno()).st_ino)
                blob = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(exc, "read a session") from exc
        if tailed is not None:
            blob = blob[: tailed.length]  # bytes after it: a tail whose write did not finish
        head, _, body = blob.partition(b"\n")
        try:
            deadline = float(head) if head and head != b"-" else None
            record = decode_record(body)
            if tailed is not None:
                deadline = tailed.deadline
                record = decode_record(tailed.meta)._replace(data=record.data)
        except ValueError:
            return None
        if deadline is not None and deadline <= time.time():
            return None
        try:
            with open(base + ".touch", "rb") as f:
                touch = json.loads(f.read())
            if touch[0] > record.last_access:
                record = record.touched(Touch(touch[0], touch[1], touch[2], None))
        except (OSError, ValueError, IndexError, TypeError):
            pass
        return record

    def _write_atomic(self, path: str, blob: bytes) -> None:
        tmp = f"{path}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._fail(exc, "write a session") from exc

    def _user_dir(self, user_id: str | int) -> Path:
        encoded = base64.urlsafe_b64encode(str(user_id).encode()).decode().rstrip("=")
        return self.dir / ".users" / (self.key_prefix + encoded)

    def _index(self, sid: str, user_id: str | int | None) -> None:
        if user_id is None:
            return
        folder = self._user_dir(user_id)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            (folder / sid).touch()
        except OSError as exc:
            raise self._fail(exc, "index a session by user") from exc

    def _unindex(self, sid: str, user_id: str | int | None) -> None:
        if user_id is None:
            return
        try:
            os.unlink(self._user_dir(user_id) / sid)
        except OSError:
            pass

    def _write_record(self, sid: str, record: Record, ttl: float | None) -> None:
        base = self._base(sid)
        deadline = b"-" if ttl is None else repr(time.time() + ttl).encode()
        self._index(sid, record.user_id)
        self._write_atomic(base + ".session", deadline + b"\n" + encode_record(record))
        for suffix in (".head", ".touch"):  # a .head left by a crash here names the old file: ignored
            try:
                os.unlink(base + suffix)
            except FileNotFoundError:
                pass

    # -- tails ---------------------------------------------------------------------------------

    def _read_head(self, base: str, ino: int) -> Head | None:
        """Return the ``.head`` of the ``.session`` file whose inode is ``ino``, or ``None``.

        A ``.head`` written for another file (the session was written whole since) is ignored.
        """
        try:
            with open(base + ".head", "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        first, _, meta = blob.partition(b"\n")
        try:
            deadline, length, of = first.split(b" ")
            if int(of) != ino:
                return None
            return Head(None if deadline == b"-" else float(deadline), int(length), meta)
        except ValueError:
            return None

    def _append_tail(self, base: str, head: Record, tail: bytes, ttl: float | None) -> None:
        """Append ``tail`` to the ``.session`` file and commit it with a new ``.head`` (the lock is held).

        The ``.head`` file (``<TTL deadline> <committed length> <inode of the .session file>``, then
        the metadata line) is the commit: readers take the metadata from it and read the ``.session``
        file only up to the committed length. Its first write after a whole save holds the metadata
        the ``.session`` file has, so the bytes a crash leaves after that length are never read.
        The tail is written at the committed length (over any such bytes) and fsynced before the
        new ``.head`` is renamed into place: a crash before the rename leaves the session as it was,
        after it, with the tail; never a part of a tail.
        """
        path = base + ".session"
        try:
            fd = os.open(path, os.O_WRONLY | _NOFOLLOW)
        except OSError as exc:
            raise self._fail(exc, "append to a session") from exc
        try:
            ino = os.fstat(fd).st_ino
            committed = self._read_head(base, ino)
            size = os.fstat(fd).st_size
            if committed is None:
                with open(path, "rb") as f:  # the whole save's lines, as they are (never parsed)
                    first = f.readline()
                    meta = f.readline()
                length = size
                self._write_atomic(base + ".head", b"%b %d %d\n%b" % (first.rstrip(b"\n"), length, ino, meta))
            else:
                length = committed.length
            os.pwrite(fd, tail, length)
            if size > length + len(tail):  # what an unfinished write left past the committed length
                os.ftruncate(fd, length + len(tail))
            os.fsync(fd)
        except OSError as exc:
            raise self._fail(exc, "append to a session") from exc
        finally:
            os.close(fd)
        deadline = b"-" if ttl is None else repr(time.time() + ttl).encode()
        self._write_atomic(base + ".head", b"%b %d %d\n%b" % (deadline, length + len(tail), ino, encode_record(head)))
        try:
            os.unlink(base + ".touch")
        except FileNotFoundError:
            pass

    # -- gc ------------------------------------------------------------------------------------

    #: The name the next batch of gc starts at (where the last one stopped), or ``None``: from the start.
    _gc_from: str | None = None

    def claim_gc(self, every: float) -> bool:
        """Take this prefix's turn to collect expired sessions for ``every`` seconds, unless another worker has it.

        The turn is the content of the :data:`GC_LEASE` file (when it ends), read and rewritten under
        its ``flock``; it is never released, it runs out.
        """
        path = str(self.dir / (self.key_prefix + GC_LEASE))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
        except OSError as exc:
            raise self._fail(exc, "open the gc turn's file") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another worker is taking it this very moment
            now = time.time()
            try:
                until = float(os.pread(fd, 64, 0) or b"0")
            except ValueError:
                until = 0.0  # unreadable: as if it had run out
            if until > now:
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, repr(now + every).encode(), 0)
            return True
        except OSError as exc:
            raise self._fail(exc, "take the gc turn") from exc
        finally:
            os.close(fd)  # the flock goes with it; the turn stays, written in the file

    def _collect(self, now: float, limit: int | None) -> int:
        """Remove the sessions under this prefix expired at ``now``, at most ``limit``; return how many.

        With a ``limit`` the walk goes on from where the last batch stopped.
        """
        with _WALK:
            start = self._gc_from if limit is not None else None
            removed = 0
            resume: str | None = None
            with closing(self._names_from(start)) as names:
                for name in names:
                    removed += self._collect_name(name, now)
                    if limit is not None and removed >= limit:
                        # The next name, not this one: this one's file may be gone now.
                        resume = next(names, None)
                        break
            if limit is not None:
                self._gc_from = resume  # None: the walk reached the end, the next starts over
            return removed

    def _names_from(self, start: str | None) -> Generator[str, None, None]:
        """Yield the directory's names from ``start`` on (all of them if ``start`` is ``None`` or gone)."""
        if start is not None:
            with os.scandir(self.dir) as entries:
                found = False
                for entry in entries:
                    found = found or entry.name == start
                    if found:
                        yield entry.name
            if found:
                return
        with os.scandir(self.dir) as entries:
            for entry in entries:
                yield entry.name

    def _collect_name(self, name: str, now: float) -> int:
        """Collect what the file ``name`` is, if it is this prefix's garbage; return the sessions removed (0 or 1)."""
        prefix = self.key_prefix
        if name.startswith(".") or not name.startswith(prefix):
            return 0  # another prefix's, or the directory's own (.users, .break.lock)
        path = str(self.dir / name)
        if name.endswith(".session"):
            return self._collect_session(name[len(prefix) : -len(".session")], now)
        for suffix in (".lock", ".touch", ".head"):
            if name.endswith(suffix):
                base = path[: -len(suffix)]
                if not os.path.exists(base + ".session"):
                    self._remove_leftover(path, locked=suffix == ".lock")
                return 0
        if name.endswith(".tmp"):
            try:
                if os.stat(path).st_mtime < now - TMP_AGE:
                    os.unlink(path)
            except OSError:
                pass
        return 0

    def _collect_session(self, sid: str, now: float) -> int:
        """Remove session ``sid`` if it expired at ``now``; return 1 if it was removed."""
        base = self._base(sid)
        expired = self._expired(base, now)
        if expired is None:
            return 0
        fd = self._try_lock_file(base + ".lock")
        try:
            if fd is not None:
                expired = self._expired(base, now)  # under the lock: a save just before may have renewed it
                if expired is None:
                    return 0
            self._unindex(sid, expired.user_id)
            for suffix in (".session", ".touch", ".head"):
                try:
                    os.unlink(base + suffix)
                except OSError:
                    pass
            if fd is not None:
                self._unlink_held(fd, base + ".lock")
        finally:
            if fd is not None:
                os.close(fd)
        return 1

    def _expired(self, base: str, now: float) -> Record | None:
        """Return the metadata of the session at ``base`` if it expired at ``now`` (its data left out);
        ``None`` when it is live, missing or unreadable."""
        try:
            with open(base + ".session", "rb") as f:
                tailed = self._read_head(base, os.fstat(f.fileno()).st_ino)
                if tailed is not None:  # its metadata is the newer
                    blob = b"%b\n%b" % (
                        b"-" if tailed.deadline is None else repr(tailed.deadline).encode(),
                        tailed.meta,
                    )
                else:
                    blob = f.read(_HEAD)
                head, _, rest = blob.partition(b"\n")
                meta, sep, _ = rest.partition(b"\n")
                if not sep and len(blob) == _HEAD:
                    blob += f.read()
                    head, _, rest = blob.partition(b"\n")
                    meta, _, _ = rest.partition(b"\n")
        except OSError:
            return None
        try:
            ttl_deadline = float(head) if head and head != b"-" else None
            record = decode_record(meta + b"\n")
        except ValueError:
            return None  # not a record: left for inspection
        expires = record.expires
        try:
            with open(base + ".touch", "rb") as f:
                touched = json.loads(f.read())
            if touched[0] > record.last_access:
                expires = touched[2]
        except (OSError, ValueError, IndexError, TypeError):
            pass
        if (ttl_deadline is not None and ttl_deadline <= now) or (expires is not None and expires < now):
            return record
        return None

    @staticmethod
    def _try_lock_file(path: str) -> int | None:
        """Open and ``flock`` an existing lock file without waiting; ``None`` if it is missing or held."""
        try:
            fd = os.open(path, os.O_RDWR | _NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def _unlink_held(fd: int, path: str) -> None:
        """Remove the lock file at ``path``, which ``fd`` holds, if ``path`` still names that file."""
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
        except OSError:
            pass

    def _remove_leftover(self, path: str, *, locked: bool) -> None:
        """Remove a ``.lock`` (under its flock, if nobody holds it) or ``.touch`` file whose session is gone."""
        if not locked:
            try:
                os.unlink(path)
            except OSError:
                pass
            return
        fd = self._try_lock_file(path)
        if fd is None:
            return  # held: its holder removes it when it lets go
        try:
            if not os.path.exists(path[: -len(".lock")] + ".session"):
                self._unlink_held(fd, path)
        finally:
            os.close(fd)
