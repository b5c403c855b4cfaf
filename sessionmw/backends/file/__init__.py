"""The file backend: one file per session in a directory, locked with the OS file lock.

Layout, for a session ``sid`` under key prefix ``p``::

    <dir>/<p><sid>.session   the record (first line: TTL deadline, then the encoded record)
    <dir>/<p><sid>.lock      the lock: held with flock() for the request; holds "token deadline"
    <dir>/<p><sid>.touch     last access written by read-only requests, which hold no lock
    <dir>/<p><sid>.head      for a session written as tails: "<TTL deadline> <committed length> <inode>",
                             then the metadata line; bytes of .session past that length are not yet in
    <dir>/.users/<p><uid>/<sid>  an empty file per session of a user (uid base64url-encoded)

Why it is shaped so:

* ``flock`` (not ``lockf``) locks belong to the open file, so two threads of one worker exclude each
  other, and the OS releases the lock of a process that dies.
* A holder that is alive but stuck keeps its flock; after its deadline a waiter moves the lock file
  aside (under a directory-wide guard, re-checking the deadline there) and locks a fresh one. The
  stuck holder then fails the fencing check on save (its file is no longer the lock file), and its
  write is dropped.
* Records are written to a temporary file, fsynced and renamed over the old one: a reader sees the
  old record or the new one, never half of one. A big session's tail (only its changed keys) is
  appended at the committed length and fsynced, then committed by renaming a new ``.head`` into
  place: a crash before the rename leaves the session as it was, never part of a tail.
* Read-only requests never rewrite the record (that could undo a concurrent locked write); they
  write the small ``.touch`` file, which loads merge.

Where each part lives: :mod:`.files` (paths, reading and writing records, the user index),
:mod:`.locks` (``flock`` and breaking stale locks), :mod:`.backend` (:class:`FileBackend`, the
primitives), :mod:`.config` (the URL and the default directory).
"""

from __future__ import annotations

from .backend import FileBackend as FileBackend
from .config import default_directory as default_directory
from .config import from_url as from_url

__all__ = ["FileBackend", "default_directory"]
