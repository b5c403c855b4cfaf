"""The test fixtures' own promises: private servers start even when a picked port is taken meanwhile."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import private_redis, wait_port


def test_a_first_start_on_a_port_taken_since_moves_to_another_port() -> None:
    server = private_redis("redis-server (moved)")
    if server is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as squatter:  # bound, not listening: what a connection's local port looks like
        squatter.bind(("127.0.0.1", 0))
        taken = squatter.getsockname()[1]
        server.port = taken
        try:
            server.start()
            assert server.port != taken and server.running and wait_port(server.port, 1.0)
            moved = server.port
            server.stop()
            server.start()  # a restart keeps the port it has
            assert server.port == moved and server.running
        finally:
            server.stop()


def test_a_restart_on_a_port_taken_meanwhile_fails_instead_of_moving() -> None:
    server = private_redis("redis-server (kept)")
    if server is None:
        pytest.skip("redis-server is not installed")
    server.start()
    port = server.port
    server.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        with pytest.raises(RuntimeError, match="did not start on port"):
            server.start()
    assert server.port == port
