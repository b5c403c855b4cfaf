"""Both drivers renew a held lock every third of ``lock_expire``, so a long request keeps it."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from ..apps import SLOW_ENTERED
from ..integration.test_middleware_conformance import ADAPTERS, client_for


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_request_longer_than_lock_expire_keeps_its_lock(adapter: str) -> None:
    backend = f"memory://renewal-{uuid.uuid4().hex[:8]}"
    with client_for(adapter, backend=backend, lock_expire=1.2, lock_timeout=10) as c:
        c.get("/inc")
        slow: dict[str, Any] = {}

        def hold() -> None:
            slow["response"] = c.get("/slow", params={"t": "3.0"})
            slow["done"] = time.monotonic()

        seen = SLOW_ENTERED.count
        holder = threading.Thread(target=hold)
        holder.start()
        SLOW_ENTERED.past(seen)
        time.sleep(1.5)  # past lock_expire: without renewal, the next request would take the lock now
        r = c.get("/inc")
        finished = time.monotonic()
        holder.join()
        assert slow["response"].json() == {"n": 2}
        assert r.json() == {"n": 3}, "the waiter saw the slow request's write: it waited for the lock"
        assert finished >= slow["done"] - 0.05, "the lock was held for the whole slow request"
