"""The session's Prefect server, and reading Prefect events back from it.

`prefect_server` is one throwaway server (the test harness, a temporary SQLite database) for the whole test
session; under pytest-xdist each worker is a session of its own, so each has its own server (on a free port,
with its own database: nothing is shared between workers).

Prefect's `EventsWorker` is one per process and keeps the API URL it was started with; `prefect_events`
(module-scoped) drains it so the next `emit_event` starts a fresh worker (on that server), and drains it again
after, so no websocket thread outlives the module that needed it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One throwaway Prefect server (~12 s to start) for the whole session; its API URL, so subprocesses can be
    pointed at it through PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness gave no API URL"
        yield str(url)


@pytest.fixture(scope="module")
def prefect_events(prefect_server: str) -> Iterator[str]:
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10, at_exit=False)
    yield prefect_server
    # closed again after the module: its websocket keepalive draws from `random` in a background
    # thread, which Hypothesis reports as a strategy using the global random module
    EventsWorker.drain_all(timeout=10, at_exit=False)


def events_of(resource_id: str) -> list[Any]:
    """The events of one resource on the current server (up to 50, any time up to an hour ahead)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

    flt = EventFilter(resource=EventResourceFilter(id=[resource_id]),
                      occurred=EventOccurredFilter(until=datetime.now(UTC) + timedelta(hours=1)))
    with get_client(sync_client=True) as client:
        return list(client.read_events(filter=flt, limit=50).events)


def wait_for_events(resource_id: str, names: Iterable[str], timeout: float = 30.0) -> list[Any]:
    """The events of a resource once every name in `names` is among them (AssertionError on timeout)."""
    wanted = set(names)
    deadline = time.monotonic() + timeout
    while True:
        found = events_of(resource_id)
        if wanted <= {e.event for e in found}:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"events {wanted} of {resource_id} not seen; got {[e.event for e in found]}")
        time.sleep(0.3)
