"""A short soak in CI: 200 concurrent mixed clients for 5 s against a duplex server in a
subprocess (tests/soak.py; ``nox -s soak`` runs 2,000 clients for 60 s).

The soak runs once for the module; each test checks one of its outcomes.
"""

from __future__ import annotations

import pytest
import trio

from soak import MIB, SoakReport, run_soak

CLIENTS = 200
DURATION = 5.0
RSS_MARGIN = 32 * MIB


@pytest.fixture(scope="module")
def soak() -> SoakReport:
    async def bounded() -> SoakReport:
        with trio.fail_after(DURATION + 90):
            return await run_soak(CLIENTS, DURATION, exchange_timeout=20, settle_timeout=20)

    return trio.run(bounded)


def test_every_exchange_of_every_kind_completes_with_every_byte_verified(soak: SoakReport) -> None:
    assert soak.failures == []
    assert soak.failure_count == 0
    assert set(soak.exchanges) == {"plain", "echo", "sse", "websocket", "long-poll"}
    assert all(soak.verified_bytes[kind] > 0 for kind in ("plain", "echo", "sse", "websocket"))


def test_clients_that_reset_or_close_mid_exchange_were_part_of_the_load(soak: SoakReport) -> None:
    assert soak.disconnects.get("reset", 0) > 0
    assert soak.disconnects.get("close", 0) > 0


def test_the_server_logs_no_error_and_exits_cleanly(soak: SoakReport) -> None:
    assert soak.server_log_errors == []
    assert soak.server_exit_code == 0


def test_the_server_has_no_connection_left_after_the_load(soak: SoakReport) -> None:
    assert soak.server_connections_after == 1  # the one asking


def test_the_server_has_as_many_tasks_after_the_load_as_before(soak: SoakReport) -> None:
    assert soak.server_before is not None and soak.server_after is not None
    assert soak.server_after.tasks == soak.server_before.tasks


def test_the_server_has_as_many_file_descriptors_after_the_load_as_before(
    soak: SoakReport,
) -> None:
    assert soak.server_before is not None and soak.server_after is not None
    assert soak.server_after.fds == soak.server_before.fds


def test_the_server_memory_returns_near_its_starting_level(soak: SoakReport) -> None:
    assert soak.server_before is not None and soak.server_after is not None
    assert soak.server_after.rss < soak.server_before.rss + RSS_MARGIN


def test_the_clients_leave_no_task_or_file_descriptor_behind(soak: SoakReport) -> None:
    assert soak.client_before is not None and soak.client_after is not None
    assert soak.client_after.tasks == soak.client_before.tasks
    assert soak.client_after.fds == soak.client_before.fds
