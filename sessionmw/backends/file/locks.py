"""A file backend's locks: ``flock`` on a session's ``.lock`` file, with a deadline written inside it.

:class:`Locks` is a base of :class:`~sessionmw.backends.file.FileBackend` (its methods are the
backend's own). See the package's notes for why ``flock``, and how a stale lock is broken.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import threading
import time

from .files import Files

__all__ = ["Locks"]


class Locks(Files):
    """Taking, checking and dropping the locks of :class:`~sessionmw.backends.file.FileBackend`."""

    #: token -> open lock file descriptor (the flock lives as long as it stays open)
    _held: dict[str, int]
    _mutex: threading.Lock

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
