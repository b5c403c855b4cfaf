"""The middleware promises on tiered stores, through every adapter: the whole middleware suite again.

The tests are those of tests/integration/test_middleware_conformance.py, collected again with this
module's ``backend_url``: a :class:`~sessionmw.backends.tiered.TieredSpec` (memcached or Redis in
front of SQLite or PostgreSQL), which ``backend=`` takes as it takes a URL. The keywords
``durable_backend=`` and ``durable_write_every=`` build the same pair (tests/adapters/test_tiered_config.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..conftest import TIERED, backend_url_for
from .test_middleware_conformance import (
    test_a_dead_holders_lock_is_broken_after_lock_expire,
    test_a_test_client_without_with_block,
    test_absolute_timeout_ends_an_active_session,
    test_bind_user_regenerates_and_records_the_user,
    test_cookie_attributes_exactly_as_configured,
    test_flask_cookie_attributes_follow_flask_config,
    test_garbage_cookies_start_a_fresh_session,
    test_idle_timeout_ends_the_session,
    test_invalidate_destroys_and_expires_the_cookie,
    test_lock_timeout_gives_503_with_retry_after,
    test_max_waiters_fails_fast,
    test_read_only_debug_writes_and_logs_the_changed_keys,
    test_read_only_route_answers_while_the_lock_is_held,
    test_read_only_route_does_not_write_and_refuses_changes,
    test_regenerate_keeps_data_under_a_new_id,
    test_round_trip_across_requests,
    test_secret_key_rotation_keeps_sessions,
    test_two_cookie_prefixes_on_one_host_stay_apart,
    test_two_key_prefixes_on_one_backend_stay_apart,
    test_unknown_but_validly_signed_id_is_never_adopted,
    test_untouched_session_sets_no_cookie_and_writes_nothing,
)

__all__ = [
    "test_round_trip_across_requests",
    "test_cookie_attributes_exactly_as_configured",
    "test_flask_cookie_attributes_follow_flask_config",
    "test_untouched_session_sets_no_cookie_and_writes_nothing",
    "test_two_cookie_prefixes_on_one_host_stay_apart",
    "test_two_key_prefixes_on_one_backend_stay_apart",
    "test_regenerate_keeps_data_under_a_new_id",
    "test_invalidate_destroys_and_expires_the_cookie",
    "test_bind_user_regenerates_and_records_the_user",
    "test_idle_timeout_ends_the_session",
    "test_absolute_timeout_ends_an_active_session",
    "test_read_only_route_does_not_write_and_refuses_changes",
    "test_read_only_debug_writes_and_logs_the_changed_keys",
    "test_lock_timeout_gives_503_with_retry_after",
    "test_read_only_route_answers_while_the_lock_is_held",
    "test_a_dead_holders_lock_is_broken_after_lock_expire",
    "test_max_waiters_fails_fast",
    "test_garbage_cookies_start_a_fresh_session",
    "test_unknown_but_validly_signed_id_is_never_adopted",
    "test_secret_key_rotation_keeps_sessions",
    "test_a_test_client_without_with_block",
]


@pytest.fixture(params=[p for p in TIERED if p.id in ("tiered-memcached-sqlite", "tiered-redis-sqlite")])
def backend_url(request: pytest.FixtureRequest, shared_tmp: Path) -> Any:
    """Memcached and Redis in front of SQLite, as a TieredSpec (the backend suite covers every pair)."""
    return backend_url_for(request.param, request, shared_tmp)
