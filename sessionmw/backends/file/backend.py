"""The file backend's primitives: lock, load, save, release, touch, delete; gc.

See the package's notes (:mod:`sessionmw.backends.file`) for why each is shaped so.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ...core.errors import ConfigError
from ..base import Record, Touch
from .files import safe_prefix
from .locks import Locks

__all__ = ["FileBackend"]


class FileBackend(Locks):
    """Sessions as files in ``directory``, shared by every worker process on the host.

    :param directory: where the files go; created (mode 0700) if missing.
    :param key_prefix: prepended to every file name, so two apps can share a directory.
    """

    def __init__(self, directory: str | os.PathLike[str], *, key_prefix: str = "sessmw:") -> None:
        self.dir = Path(directory)
        self.name = f"file://{self.dir}"
        self.key_prefix = safe_prefix(key_prefix)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"file backend: cannot create {self.dir}: {exc.strerror}", option="backend") from exc
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise ConfigError(f"file backend: {self.dir} is not writable", option="backend")
        # token -> open lock file descriptor (the flock lives as long as it stays open)
        self._held: dict[str, int] = {}
        self._mutex = threading.Lock()

    # -- the lock ------------------------------------------------------------------------------

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

    def save_tail(self, sid: str, head: Record, tail: bytes, token: str, ttl: float | None) -> bool:
        """Append ``tail`` and store ``head``'s metadata, releasing the lock, if ``token`` holds it.

        See :meth:`.files.Files._append_tail` for the ``.head`` file and what a crash leaves.
        """
        base = self._base(sid)
        if not self._holds(base, token) or not os.path.exists(base + ".session"):
            self._unlock(base, token)  # lost, or ended meanwhile: never resurrected
            return False
        try:
            self._append_tail(base, head, tail, ttl)
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
        for suffix in (".session", ".touch", ".head"):
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

    def gc(self, now: float, limit: int | None = None) -> int:
        """Remove sessions past their expiry or TTL (and their left-over files), at most ``limit``; return how many.

        See :mod:`.files` for the walk: lazy, going on where the last batch stopped.
        """
        return self._collect(now, limit)

    def stats(self) -> dict[str, float]:
        """The file store has no figures of its own."""
        return {}
