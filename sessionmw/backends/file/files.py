"""Where a file backend keeps a session's files, and how it reads and writes them.

:class:`Files` is a base of :class:`~sessionmw.backends.file.FileBackend` (its methods are the
backend's own): the paths, the record file (its first line the TTL deadline, then the encoded record)
merged with the ``.touch`` file, atomic writes, and the per-user index directories; and
:func:`require_directory`, the check of a store opened without creating anything.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from pathlib import Path

from ...core.errors import BackendUnavailable, ConfigError
from ..base import Record, Touch, decode_record, encode_record

__all__ = ["Files", "require_directory", "safe_prefix"]


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
