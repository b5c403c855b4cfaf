"""The middleware promises on Redis behind Sentinel and on a Redis Cluster, through every adapter.

The backend suites (tests/test_backend_conformance.py, tests/test_admin.py) run on both topologies
in full; here a selection of the middleware conformance suite runs on them too, since the clients
differ (``Sentinel.master_for`` and ``RedisCluster``, sync and asyncio) and the Cluster routes a
session's keys and its user's index to different nodes. The tests are those of
tests/test_conformance.py, collected again with this module's ``backend_url``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import REDIS_TOPOLOGIES, backend_url_for
from .test_middleware_conformance import (
    test_bind_user_regenerates_and_records_the_user,
    test_garbage_cookies_start_a_fresh_session,
    test_invalidate_destroys_and_expires_the_cookie,
    test_lock_timeout_gives_503_with_retry_after,
    test_read_only_route_answers_while_the_lock_is_held,
    test_regenerate_keeps_data_under_a_new_id,
    test_round_trip_across_requests,
    test_untouched_session_sets_no_cookie_and_writes_nothing,
)

__all__ = [
    "test_bind_user_regenerates_and_records_the_user",
    "test_garbage_cookies_start_a_fresh_session",
    "test_invalidate_destroys_and_expires_the_cookie",
    "test_lock_timeout_gives_503_with_retry_after",
    "test_read_only_route_answers_while_the_lock_is_held",
    "test_regenerate_keeps_data_under_a_new_id",
    "test_round_trip_across_requests",
    "test_untouched_session_sets_no_cookie_and_writes_nothing",
]


@pytest.fixture(params=REDIS_TOPOLOGIES)
def backend_url(request: pytest.FixtureRequest, shared_tmp: Path) -> str:
    """Redis behind Sentinel, and a Redis Cluster."""
    return backend_url_for(request.param, request, shared_tmp)
