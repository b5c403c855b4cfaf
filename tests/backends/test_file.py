"""What only the file backend promises: the OS frees the lock of a process that dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
