"""The session's Prefect server, and reading Prefect events (and all a flow run left) back from it.

`prefect_server` is one throwaway server (the test harness, a temporary SQLite database) for the whole test
session; under pytest-xdist each worker is a session of its own, so each has its own server (on a free port,
with its own database: nothing is shared between workers).

Prefect's `EventsWorker` is one per process and keeps the API URL it was started with; `prefect_events`
(module-scoped) drains it so the next `emit_event` starts a fresh worker (on that server), and drains it again
after, so no websocket thread outlives the module that needed it.
"""

from __future__ import annotations

import os
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

    from contact_recon.stages.process import EPHEMERAL_SERVER_DEFAULTS

    # the server process reads these from the environment: no telemetry (its first write races the migrations of
    # the new database: "database is locked"), time enough to start on a busy machine; as `recon` sets them
    saved = {name: os.environ.get(name) for name in EPHEMERAL_SERVER_DEFAULTS}
    os.environ.update(EPHEMERAL_SERVER_DEFAULTS)
    try:
        with prefect_test_harness(server_startup_timeout=60):
            url = PREFECT_API_URL.value()
            assert url, "the Prefect test harness gave no API URL"
            yield str(url)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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


async def flow_run_texts(flow_run_id: str) -> dict[str, str]:
    """What the current Prefect server keeps of one flow run, as text by place, for `find_secrets(texts=...)`:
    "logs" (the flow run's and its task runs' log records), "artifacts" (each whole: key, description, data,
    metadata), "flow run" (its parameters, state and message, tags, context), "flow run states" (every state of
    its history, messages included), "task runs" (each with its inputs and state) and "task run states"."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    run_id, page = UUID(flow_run_id), 200
    async with get_client() as client:
        logs: list[Any] = []
        while True:
            batch = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=page,
                                           offset=len(logs))
            logs += batch
            if len(batch) < page:
                break
        artifacts: list[Any] = []
        while True:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])), limit=page,
                offset=len(artifacts))
            artifacts += found
            if len(found) < page:
                break
        flow_run = await client.read_flow_run(run_id)
        flow_run_states = await client.read_flow_run_states(run_id)
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        task_run_states = [state for task_run in task_runs for state in await client.read_task_run_states(task_run.id)]
    return {
        "logs": "\n".join(f"{log.level} {log.name} task_run={log.task_run_id} {log.message}" for log in logs),
        "artifacts": "\n".join(a.model_dump_json() for a in artifacts),
        "flow run": flow_run.model_dump_json(),
        "flow run states": "\n".join(s.model_dump_json() for s in flow_run_states),
        "task runs": "\n".join(t.model_dump_json() for t in task_runs),
        "task run states": "\n".join(s.model_dump_json() for s in task_run_states),
    }
