"""Servers the in-process benchmarks start for themselves: a private redis-server or memcached on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["memcached_server", "redis_server"]


@contextmanager
def _private(binary_name: str, argv: Callable[[str, int], list[str]], url: str) -> Iterator[str | None]:
    """Start ``argv(binary, port)`` on a free loopback port; yield ``url`` with ``{port}`` filled, or None."""
    binary = shutil.which(binary_name)
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(argv(binary, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        up = False
        for _ in range(100):
            if proc.poll() is not None:
                break  # it exited: it did not start
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                up = True
                break
            except OSError:
                time.sleep(0.05)
        yield url.format(port=port) if up else None
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def redis_server(url: str | None) -> Iterator[str | None]:
    """``url``, else a private redis-server on a free loopback port, or None when none is installed."""
    if url:
        yield url
        return

    def argv(binary: str, port: int) -> list[str]:
        return [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]

    with _private("redis-server", argv, "redis://127.0.0.1:{port}/0") as started:
        yield started


@contextmanager
def memcached_server(memory_mb: int = 64) -> Iterator[str | None]:
    """A private memcached on a free loopback port, or None when none is installed."""

    def argv(binary: str, port: int) -> list[str]:
        user = ["-u", "nobody"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # it refuses root
        return [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(memory_mb), *user]

    with _private("memcached", argv, "memcached://127.0.0.1:{port}") as started:
        yield started
