"""failover_wait (a Redis Sentinel or Cluster URL option) never exceeds the middleware's lock_timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sessionmw import SessionMiddleware, WSGISessionMiddleware

SENTINEL = "redis+sentinel://127.0.0.1:1/mymaster/0?failover_wait=5"


def wait_of(backend: Any) -> float:
    """The failover wait of a Redis backend, behind a thread wrapper or a tiered pair."""
    backend = getattr(backend, "sync", backend)
    backend = getattr(backend, "fast", backend)
    return float(backend.failover_wait)


@pytest.mark.parametrize("lock_timeout", [1.0, 120.0])
def test_the_wait_is_capped_by_lock_timeout(lock_timeout: float, tmp_path: Path) -> None:
    expected = min(5.0, lock_timeout)
    wsgi = WSGISessionMiddleware(lambda e, s: [], secret_key="k", backend=SENTINEL, lock_timeout=lock_timeout)
    assert wait_of(wsgi.backend) == expected
    wsgi.close()
    asgi = SessionMiddleware(lambda s, r, se: None, secret_key="k", backend=SENTINEL, lock_timeout=lock_timeout)
    assert wait_of(asgi.backend) == expected
    tiered = WSGISessionMiddleware(
        lambda e, s: [],
        secret_key="k",
        backend=SENTINEL,
        durable_backend=f"sqlite:///{tmp_path}/d.db",
        lock_timeout=lock_timeout,
    )
    assert wait_of(tiered.backend) == expected
    tiered.close()
