"""What only the file backend promises: the OS frees the lock of a process that dies."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sessionmw.backends.base import Record
from sessionmw.backends.file import FileBackend
from sessionmw.core.cookies import new_session_id
from sessionmw.core.locking import new_lock_token

HOLDER = """
import sys, time
from sessionmw.backends.file import FileBackend
backend = FileBackend(sys.argv[1], key_prefix="t:")
assert backend.lock_and_load(sys.argv[2], "doomed", 3600)[0]
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_of_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path, key_prefix="t:")
    sid = new_session_id()
    backend.create(sid, Record(b'{"a":1}', created=time.time(), last_access=time.time()), None)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), sid], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        assert backend.lock_and_load(sid, new_lock_token(), 30) == (False, None), "held by the other process"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        token = new_lock_token()
        locked, record = backend.lock_and_load(sid, token, 30)
        assert locked, "the OS released the dead process's flock, long before its lock_expire of an hour"
        assert record is not None and record.data == b'{"a":1}'
        assert backend.save(sid, record, token, None)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        backend.close()


def test_two_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    """flock (not lockf) locks belong to the open file: two backends in one process still exclude."""
    a = FileBackend(tmp_path, key_prefix="t:")
    b = FileBackend(tmp_path, key_prefix="t:")
    sid = new_session_id()
    ta = new_lock_token()
    assert a.lock_and_load(sid, ta, 30)[0]
    assert b.lock_and_load(sid, new_lock_token(), 30) == (False, None)
    a.release(sid, ta, None)  # no session is stored under sid: releasing only drops the lock
    assert b.lock_and_load(sid, new_lock_token(), 30)[0]
    a.close()
    b.close()


def _watch_for_an_instant(path: str, seconds: float) -> threading.Thread:
    """Hold a shared flock on ``path`` for ``seconds``, as a lock watcher does just after a release."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    t = threading.Thread(target=lambda: (time.sleep(seconds), os.close(fd)))
    t.start()
    return t


def test_a_watchers_shared_flock_after_a_release_does_not_turn_a_free_lock_away(tmp_path: Path) -> None:
    """A watcher holds the released file for an instant; a try then must not be told the lock is held."""
    backend = FileBackend(tmp_path, key_prefix="t:")
    sid = new_session_id()
    backend.create(sid, Record(b"{}", created=time.time(), last_access=time.time()), None)
    token = new_lock_token()
    assert backend.lock_and_load(sid, token, 30)[0]
    assert backend.release(sid, token, None)
    path = backend._base(sid) + ".lock"
    assert os.path.getsize(path) == 0, "a released lock file is empty"
    watcher = _watch_for_an_instant(path, 0.001)
    try:
        token = new_lock_token()
        assert backend.lock_and_load(sid, token, 30)[0], "only a watcher was in the way"
        assert os.path.getsize(path) > 0, "the holder's stamp"
    finally:
        watcher.join()
        backend.close()


def test_a_held_lock_is_refused_at_once_even_while_watched(tmp_path: Path) -> None:
    """The retries are for an emptied file only: a holder's stamped file is refused on the first try."""
    a = FileBackend(tmp_path, key_prefix="t:")
    b = FileBackend(tmp_path, key_prefix="t:")
    sid = new_session_id()
    assert a.lock_and_load(sid, new_lock_token(), 30)[0]
    tries = 0
    real = fcntl.flock

    def counting(fd: int, op: int) -> None:
        nonlocal tries
        tries += op == fcntl.LOCK_EX | fcntl.LOCK_NB
        real(fd, op)

    fcntl.flock = counting  # type: ignore[assignment]
    try:
        assert b.lock_and_load(sid, new_lock_token(), 30) == (False, None)
    finally:
        fcntl.flock = real
        a.close()
        b.close()
    assert tries == 1
