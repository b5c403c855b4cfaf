"""The file backend: one file per session in a directory, locked with the OS file lock.

Layout, for a session ``sid`` under key prefix ``p``::

    <dir>/<p><sid>.session   the record (first line: TTL deadline, then the encoded record)
    <dir>/<p><sid>.lock      the lock: held with flock() for the request; holds "token deadline"
    <dir>/<p><sid>.touch     last access written by read-only requests, which hold no lock
    <dir>/.users/<p><uid>/<sid>  an empty file per session of a user (uid base64url-encoded)

Why it is shaped so:

* ``flock`` (not ``lockf``) locks belong to the open file, so two threads of one worker exclude each
  other, and the OS releases the lock of a process that dies.
* A holder that is alive but stuck keeps its flock; after its deadline a waiter moves the lock file
  aside (under a directory-wide guard, re-checking the deadline there) and locks a fresh one. The
  stuck holder then fails the fencing check on save (its file is no longer the lock file), and its
  write is dropped.
* Records are written to a temporary file, fsynced and renamed over the old one: a reader sees the
  old record or the new one, never half of one.
* Read-only requests never rewrite the record (that could undo a concurrent locked write); they
  write the small ``.touch`` file, which loads merge.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from ..core.errors import BackendUnavailable, ConfigError
from ._url import BackendURL
from .base import Record, Touch, decode_record, encode_record

__all__ = ["FileBackend", "default_directory"]


def default_directory() -> Path:
    """Return the default sessions directory: ``sessionmw`` under the system temp dir."""
    return Path(tempfile.gettempdir()) / "sessionmw"


def _safe(prefix: str) -> str:
    return prefix.replace("/", "_").replace("\\", "_").replace("\0", "_")


class FileBackend:
    """Sessions as files in ``directory``, shared by every worker process on the host.

    :param directory: where the files go; created (mode 0700) if missing.
    :param key_prefix: prepended to every file name, so two apps can share a directory.
    """

    def __init__(self, directory: str | os.PathLike[str], *, key_prefix: str = "sessmw:") -> None:
        self.dir = Path(directory)
        self.name = f"file://{self.dir}"
        self.key_prefix = _safe(key_prefix)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"file backend: cannot create {self.dir}: {exc.strerror}", option="backend") from exc
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise ConfigError(f"file backend: {self.dir} is not writable", option="backend")
        # token -> open lock file descriptor (the flock lives as long as it stays open)
        self._held: dict[str, int] = {}
        self._mutex = threading.Lock()

    # -- paths and small helpers ---------------------------------------------------------------

    def _base(self, sid: str) -> str:
        return str(self.dir / (self.key_prefix + sid))

    def _fail(self, exc: OSError, what: str) -> BackendUnavailable:
        return BackendUnavailable(f"file backend {self.dir}: cannot {what}: {exc.strerror or exc}", backend=self.name)

    def _read_record(self, base: str) -> Record | None:
        try:
            with open(base + ".session", "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(exc, "read a session") from exc
        head, _, body = blob.partition(b"\n")
        try:
            deadline = float(head) if head and head != b"-" else None
            record = decode_record(body)
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
        try:
            os.unlink(base + ".touch")
        except FileNotFoundError:
            pass

    def _holds(self, base: str, token: str) -> bool:
        """Tell whether ``token`` still holds the lock of ``base`` (fencing check)."""
        fd = self._held.get(token)
        if fd is None:
            return False
        try:
            if os.fstat(fd).st_ino != os.stat(base + ".lock").st_ino:
                return False
            content = os.pread(fd, 200, 0).split()
        except OSError:
            return False
        return len(content) == 2 and content[0].decode() == token

    # -- locking -------------------------------------------------------------------------------

    def _try_flock(self, path: str, token: str, expire: float) -> int | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            raise self._fail(exc, "open a lock file") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise self._fail(exc, "lock a session") from exc
        try:
            # The path may have been moved aside between open() and flock(): then this is not the lock.
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                os.close(fd)
                return None
            stamp = f"{token} {time.time() + expire!r}".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp, 0)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _break_if_stale(self, path: str) -> bool:
        """Move a lock file aside if its holder is past its deadline; return whether it did."""
        guard_path = str(self.dir / ".break.lock")
        try:
            guard = os.open(guard_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._fail(exc, "open the lock-breaking guard") from exc
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                with open(path, "rb") as f:
                    content = f.read(200).split()
                deadline = float(content[1])
            except (OSError, ValueError, IndexError):
                return False  # being set up, or gone: not stale
            if deadline > time.time():
                return False
            aside = f"{path}.{secrets.token_hex(6)}.broken"
            try:
                os.rename(path, aside)
                os.unlink(aside)
            except OSError:
                return False
            return True
        finally:
            os.close(guard)

    def lock_and_load(self, sid: str, token: str, expire: float) -> tuple[bool, Record | None]:
        """Try once to lock ``sid`` (breaking a stale lock); when taken, return its record too."""
        base = self._base(sid)
        path = base + ".lock"
        fd = self._try_flock(path, token, expire)
        if fd is None and self._break_if_stale(path):
            fd = self._try_flock(path, token, expire)
        if fd is None:
            return False, None
        with self._mutex:
            self._held[token] = fd
        try:
            return True, self._read_record(base)
        except BaseException:
            self._unlock(base, token)
            raise

    def _unlock(self, base: str, token: str) -> bool:
        with self._mutex:
            fd = self._held.pop(token, None)
        if fd is None:
            return False
        ours = False
        try:
            ours = os.fstat(fd).st_ino == os.stat(base + ".lock").st_ino
            if ours and not os.path.exists(base + ".session"):
                os.unlink(base + ".lock")  # no session left: do not leave lock files behind
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock
        return ours

    # -- the other primitives ------------------------------------------------------------------

    def load(self, sid: str) -> Record | None:
        """Return the record of ``sid`` without locking."""
        return self._read_record(self._base(sid))

    def create(self, sid: str, record: Record, ttl: float | None) -> bool:
        """Store a new session if ``sid`` is unused (``O_EXCL`` reserves the name)."""
        base = self._base(sid)
        try:
            fd = os.open(base + ".session", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._fail(exc, "create a session") from exc
        os.close(fd)
        self._write_record(sid, record, ttl)
        return True

    def save(self, sid: str, record: Record, token: str, ttl: float | None) -> bool:
        """Store ``record`` and release the lock, if ``token`` still holds it."""
        base = self._base(sid)
        if not self._holds(base, token) or not os.path.exists(base + ".session"):
            # The lock is lost, or the session was ended meanwhile (terminate, gc): never resurrect it.
            self._unlock(base, token)
            return False
        try:
            self._write_record(sid, record, ttl)
        finally:
            self._unlock(base, token)
        return True

    def release(self, sid: str, token: str, touch: Touch | None) -> bool:
        """Release the lock if ``token`` holds it, writing last access first when ``touch`` is given."""
        base = self._base(sid)
        try:
            if touch is not None and self._holds(base, token):
                self.touch(sid, touch)
        finally:
            ours = self._unlock(base, token)
        return ours

    def touch(self, sid: str, touch: Touch) -> None:
        """Write last access to the ``.touch`` file (the record itself is not rewritten)."""
        base = self._base(sid)
        if not os.path.exists(base + ".session"):
            return
        blob = json.dumps([touch.last_access, touch.last_ip, touch.expires]).encode()
        self._write_atomic(base + ".touch", blob)

    def extend(self, sid: str, token: str, expire: float) -> bool:
        """Push the lock's deadline out, if ``token`` still holds it."""
        base = self._base(sid)
        if not self._holds(base, token):
            return False
        fd = self._held.get(token)
        if fd is None:
            return False
        try:
            stamp = f"{token} {time.time() + expire!r}".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp, 0)
        except OSError:
            return False
        return True

    def delete(self, sid: str) -> None:
        """Remove the session's files (a lock file stays while someone holds it)."""
        base = self._base(sid)
        old = self._read_record(base)
        if old is not None:
            self._unindex(sid, old.user_id)
        for suffix in (".session", ".touch"):
            try:
                os.unlink(base + suffix)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._fail(exc, "delete a session") from exc

    def close(self) -> None:
        """Release every lock this backend object still holds."""
        with self._mutex:
            fds = list(self._held.values())
            self._held.clear()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    # -- administration ------------------------------------------------------------------------

    def _sids(self) -> Iterator[str]:
        n = len(self.key_prefix)
        with os.scandir(self.dir) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(".session") and name.startswith(self.key_prefix):
                    yield name[n : -len(".session")]

    def iter_records(self) -> Iterator[tuple[str, Record]]:
        """Yield ``(sid, record)`` for every live session under this key prefix."""
        for sid in self._sids():
            record = self._read_record(self._base(sid))
            if record is not None:
                yield sid, record

    def user_sessions(self, user_id: str | int) -> list[tuple[str, Record]]:
        """Return the live sessions bound to ``user_id`` (one directory listing, one read each)."""
        folder = self._user_dir(user_id)
        try:
            sids = os.listdir(folder)
        except FileNotFoundError:
            return []
        found = []
        for sid in sids:
            record = self._read_record(self._base(sid))
            if record is None or record.user_id != user_id and str(record.user_id) != str(user_id):
                self._unindex(sid, user_id)  # the session is gone: drop the stale entry
                continue
            found.append((sid, record))
        return found

    def gc(self, now: float) -> int:
        """Remove sessions past their expiry or TTL; return how many."""
        removed = 0
        for sid in list(self._sids()):
            base = self._base(sid)
            try:
                with open(base + ".session", "rb") as f:
                    blob = f.read()
            except OSError:
                continue
            head, _, body = blob.partition(b"\n")
            try:
                ttl_deadline = float(head) if head and head != b"-" else None
                record = decode_record(body)
            except ValueError:
                continue
            expires = record.expires
            try:
                with open(base + ".touch", "rb") as f:
                    touched = json.loads(f.read())
                if touched[0] > record.last_access:
                    expires = touched[2]
            except (OSError, ValueError, IndexError, TypeError):
                pass
            if (ttl_deadline is not None and ttl_deadline <= now) or (expires is not None and expires < now):
                self._unindex(sid, record.user_id)
                for suffix in (".session", ".touch"):
                    try:
                        os.unlink(base + suffix)
                    except OSError:
                        pass
                removed += 1
        return removed

    def stats(self) -> dict[str, float]:
        """The file store has no figures of its own."""
        return {}


def from_url(url: BackendURL, key_prefix: str) -> FileBackend:
    """Build the backend for ``file:///absolute/dir`` (``file://`` alone: the default directory)."""
    path = unquote(url.path)
    if not path:
        return FileBackend(default_directory(), key_prefix=key_prefix)
    if not path.startswith("/"):
        raise ConfigError(
            f"file backend URL {url.raw!r} needs an absolute path: file:///var/lib/app/sessions",
            option="backend",
        )
    return FileBackend(path, key_prefix=key_prefix)
