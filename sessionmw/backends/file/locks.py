"""A file backend's locks: ``flock`` on a session's ``.lock`` file, with a deadline written inside it.

:class:`Locks` is a base of :class:`~sessionmw.backends.file.FileBackend` (its methods are the
backend's own). See the package's notes for why ``flock``, and how a stale lock is broken.

Waiting for a release, in any process on the host: the first waiter of a lock file in a process
starts a watcher thread, which blocks in ``flock(LOCK_SH)`` on that file until its holder lets go
(closes it, or dies), then wakes one of the process's waiters (:class:`~..wakeups.Wakeups`) and waits
for that waiter's try of the lock before it watches again (else, the lock being free until that try,
it would wake them all). A free lock wakes a waiter at once, so a release just before the waiter
queued is not missed. The watcher ends a second after its last waiter left. A holder stuck past its
deadline keeps a watcher blocked on the old file after the lock was broken: the waiters then poll.

A watcher's shared ``flock`` holds the file for an instant after the holder let go (until the watcher's
thread gets the GIL back and closes it), and a try in that instant fails. A holder empties the file
as it lets go, so a try that fails on an empty file knows only a watcher (or a holder about to write
its stamp) is in the way, and tries again a few times within a few milliseconds before it waits.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import threading
import time

from ..wakeups import Wakeups
from .files import Files

__all__ = ["HANDOFF_GRACE", "WATCHER_PAUSES", "WATCH_LINGER", "Locks"]

#: Seconds a watcher waits, after waking a waiter, for its try of the lock before watching again.
HANDOFF_GRACE = 0.05

#: Seconds a watcher thread stays after its last waiter left, for the next one.
WATCH_LINGER = 1.0

#: Pauses (seconds) before each new try of a lock file that failed while the file was empty.
WATCHER_PAUSES = (0.0, 0.0005, 0.001, 0.002)


class _Watching:
    """The watchers of this process (one per lock file someone waits for) and their waiters.

    One per process, whatever the number of backends on a directory: a release, and a try of the
    lock, by any of them reaches the watcher. A forked child starts with an empty one.
    """

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.watches: dict[str, _Watch] = {}
        self.wakeups = Wakeups()

    def reset(self) -> None:
        """Forget the parent's watchers and waiters (in a forked child, where none of them runs)."""
        self.mutex = threading.Lock()
        self.watches = {}
        self.wakeups = Wakeups()

    def tried(self, path: str) -> None:
        """Tell the watcher of ``path``, if any, that its lock was just tried."""
        watch = self.watches.get(path)
        if watch is not None:
            watch.tried()


_watching = _Watching()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_watching.reset)


class _Watch(threading.Thread):
    """The thread of this process that watches one lock file for its holder letting go."""

    def __init__(self, path: str) -> None:
        super().__init__(name="sessionmw-file-lock-watch", daemon=True)
        self.path = path
        #: On the mutex of the watches: a waiter that joined is seen here, or starts another watcher.
        self.cond = threading.Condition(_watching.mutex)
        #: Tries of this lock in this process so far (:meth:`Locks._try_flock` counts them).
        self.tries = 0

    def tried(self) -> None:
        """Count a try of the lock (the woken waiter's, the watcher hopes)."""
        with self.cond:
            self.tries += 1
            self.cond.notify()

    def run(self) -> None:
        path, watches, wakeups = self.path, _watching.watches, _watching.wakeups
        idle_since: float | None = None
        while True:
            with self.cond:
                if not wakeups.waiting(path):
                    now = time.monotonic()
                    idle_since = now if idle_since is None else idle_since
                    if now - idle_since >= WATCH_LINGER:
                        if watches.get(path) is self:
                            del watches[path]
                        return
                    self.cond.wait(WATCH_LINGER - (now - idle_since))
                    continue
                idle_since = None
            self._until_free()
            with self.cond:
                seen = self.tries
            if wakeups.wake(path):
                self._until_tried(seen)

    def _until_tried(self, seen: int) -> None:
        """Wait (at most :data:`HANDOFF_GRACE`) until the lock was tried again since ``seen`` tries."""
        with self.cond:
            self.cond.wait_for(lambda: self.tries != seen, HANDOFF_GRACE)

    def _until_free(self) -> None:
        """Block until nobody holds the lock file (a shared flock waits for the exclusive holder)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return  # no lock file: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            pass  # cannot watch it: the waiter tries, and polls
        finally:
            os.close(fd)  # closing drops the shared lock at once


class Locks(Files):
    """Taking, checking and dropping the locks of :class:`~sessionmw.backends.file.FileBackend`."""

    #: token -> open lock file descriptor (the flock lives as long as it stays open)
    _held: dict[str, int]
    _mutex: threading.Lock

    def _watch(self, path: str) -> None:
        """Make sure a watcher of ``path`` runs (the caller has joined the waiters of ``path``)."""
        with _watching.mutex:
            watch = _watching.watches.get(path)
            if watch is not None and watch.is_alive():
                watch.cond.notify()  # it may linger without waiters: one is here
                return
            watch = _watching.watches[path] = _Watch(path)
        watch.start()

    def wait_released(self, sid: str, timeout: float) -> None:
        """Return when ``sid``'s lock is let go (in any process on the host), at once if it is free, or after
        ``timeout`` seconds."""
        path = self._base(sid) + ".lock"
        with _watching.wakeups.ticket(path) as ticket:
            self._watch(path)
            ticket.wait(timeout)

    async def await_released(self, sid: str, timeout: float) -> None:
        """See :meth:`wait_released`; the wait is on the event loop (the watcher is a thread)."""
        path = self._base(sid) + ".lock"
        with _watching.wakeups.ticket(path, on_loop=True) as ticket:
            self._watch(path)
            await ticket.await_(timeout)

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
            return self._flock_once(path, token, expire)
        finally:
            if _watching.watches:  # someone of this process waits for a lock: its watcher may wait for this try
                _watching.tried(path)

    def _flock_once(self, path: str, token: str, expire: float) -> int | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            raise self._fail(exc, "open a lock file") from exc
        if not self._flock_nb(fd):
            os.close(fd)
            return None
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

    def _flock_nb(self, fd: int) -> bool:
        """Take the exclusive ``flock`` of ``fd`` without waiting for a holder; ``False`` if it is held."""
        for pause in (*WATCHER_PAUSES, None):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise self._fail(exc, "lock a session") from exc
            try:
                stamped = os.fstat(fd).st_size > 0
            except OSError:
                stamped = True
            if pause is None or stamped:  # a holder's stamp: it is held, for real
                return False
            time.sleep(pause)  # emptied by its last holder: a watcher's shared flock, for an instant
        return False

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
            elif ours:
                os.ftruncate(fd, 0)  # let go: a try that fails on an empty file meets only a watcher
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock
        return ours
