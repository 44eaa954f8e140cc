"""Scale-out: three GHL locations reconciled side by side by a real Prefect process worker, each location within
its own rate budget, and a second run of a busy location refused with a clear message (README "Scale-out").

One flow run of `flows/reconcile.py:reconcile_flow` covers the three locations: the snapshot reads them side by
side and the applier writes each through its own client and budget. The deployment comes from the repository
(`flow.from_source(...).deploy(...)` into a fresh process work pool on the session's Prefect server); the
worker is `prefect worker start --pool <pool> --type process` as a child process, configured like a production
worker by the environment alone (RECON_GHL_LOCATION_TOKENS: one GHL token per location, as the sandbox, like
GHL, scopes a token to one location). The GHL sandbox runs at the published limit (100 requests per 10 s per
token and location), so one location's requests cannot be hurried, and three locations in sequence would take
at least the sum of their budgets' times.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from contact_recon.sandbox import ghl, tinyemail
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from tests.support import REPO
from tests.support.worlds import LOOSE

GHL_LIMIT, GHL_WINDOW_S = 100, 10.0  # the sandbox's budget per (token, location) at rate scale 1
TE_RATE_SCALE = 50
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def prefect(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def deploy(pool: str) -> str:
    """The reconcile flow from this repository as a deployment on `pool` (no schedule, no concurrency limit:
    two runs of the same location may start together, and the flow's own location lock decides)."""
    from prefect import flow

    source = flow.from_source(source=REPO, entrypoint="flows/reconcile.py:reconcile_flow")
    return str(source.deploy(name=f"scale-out-{pool}", work_pool_name=pool, print_next_steps=False,
                             ignore_warnings=True))


def start(deployment_id: str, **parameters: Any) -> str:
    from prefect.deployments import run_deployment

    return str(run_deployment(deployment_id, parameters=parameters, timeout=0, as_subflow=False).id)


def state_of(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(flow_run_id))


def wait_for(flow_run_id: str, states: set[str], timeout_s: float, worker: subprocess.Popen[str]) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = state_of(flow_run_id)
        if run.state and run.state.type.value in states:
            return run
        assert worker.poll() is None, "the worker died"
        time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} not in {states} after {timeout_s} s: {state_of(flow_run_id).state}")


def location_of_requests(server: RunningServer) -> list[tuple[str, float, str, str, int]]:
    """(location, epoch seconds, method, path, status) of every GHL request that names its location: the location's
    task search, and contact-scoped paths (a contact belongs to one location)."""
    state = httpx.get(server.base_url + "/__sandbox/state", timeout=30).json()
    owner = {c["id"]: loc for loc, data in state["locations"].items() for c in data["contacts"]}
    log = httpx.get(server.base_url + "/__sandbox/requests", timeout=30).json()["requests"]
    limited = [r for r in log if r["status"] == 429]
    # the budget books send times and the sandbox counts arrivals: on a loaded machine an event-loop stall longer
    # than the budget's margin can push a few requests into the next window (the client waits those out). A
    # location without its own budget, or locations sharing one, would draw hundreds.
    assert log and len(limited) <= len(log) // 100, f"{len(limited)} of {len(log)} requests over budget: {limited}"
    found = []
    for r in log:
        parts = r["path"].strip("/").split("/")
        location = parts[1] if parts[0] == "locations" else owner.get(parts[1]) if len(parts) > 1 else None
        if location:
            when = datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
            found.append((location, when, r["method"], r["path"], r["status"]))
    return found


@pytest.fixture
def fleet(serve: Callable[[Starlette], RunningServer], tmp_path: Path,
          prefect_server: str) -> tuple[dict[str, Any], RunningServer, dict[str, str]]:
    """Three locations (one token each) in a GHL sandbox at the published limit, TinyEmail, and a worker's env."""
    fixture = validate_fixture(generate_fixture(560, seed=41, locations=3, overlap=0.6, awkward=0.0))
    ghl_server = serve(ghl.create_app(fixture["ghl"], rate_scale=1, search_lag_s=0))
    te_server = serve(tinyemail.create_app(fixture["tinyemail"], rate_scale=TE_RATE_SCALE))
    tokens = {t["locationId"]: t["token"] for t in fixture["ghl"]["tokens"]}
    (tmp_path / "policy.toml").write_text(LOOSE)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_LOGGING_LEVEL": "WARNING", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RECON_DATA_DIR": str(tmp_path / "data"), "RECON_GHL_BASE_URL": ghl_server.base_url,
           "RECON_GHL_LOCATION_IDS": ",".join(tokens),
           "RECON_GHL_LOCATION_TOKENS": ",".join(f"{loc}={token}" for loc, token in tokens.items()),
           "RECON_TINYEMAIL_BASE_URL": te_server.base_url + "/v1",
           "RECON_TINYEMAIL_API_KEY": fixture["tinyemail"]["apiKeys"][0],
           "RECON_TINYEMAIL_RATE_PER_MINUTE": str(60 * TE_RATE_SCALE),
           "RECON_POLICY_FILE": str(tmp_path / "policy.toml")}
    for name in ("RECON_GHL_TOKEN", "RECON_GHL_CLIENT_ID", "RECON_GHL_CLIENT_SECRET", "RECON_USE_GLOBAL_LIMITS"):
        env.pop(name, None)
    return fixture, ghl_server, env


def test_a_worker_pool_reconciles_three_locations_side_by_side_each_within_its_budget(
        fleet: tuple[dict[str, Any], RunningServer, dict[str, str]], tmp_path: Path) -> None:
    fixture, ghl_server, env = fleet
    locations = sorted(fixture["ghl"]["locations"])
    pool = f"scale-out-{uuid.uuid4().hex[:8]}"
    prefect("work-pool", "create", pool, "--type", "process", "--overwrite", env=env)
    deployment_id = deploy(pool)
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                               "process"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        # one flow run over the three locations
        nightly = start(deployment_id, locations=locations)
        wait_for(nightly, {"RUNNING"} | FINAL, 120, worker)
        # the first location again while the nightly holds it: refused at once with the busy message
        second = start(deployment_id, locations=locations[:1], lock_wait_s=0)
        refused = wait_for(second, FINAL, 120, worker)
        done = wait_for(nightly, FINAL, 180, worker)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # the worker and any flow run it still has (its own session)
        worker.wait(timeout=30)
        log.close()
    worker_log = (tmp_path / "worker.log").read_text()
    assert done.state.type.value == "COMPLETED", f"{done.state.message}\n{worker_log[-3000:]}"
    assert refused.state.type.value == "FAILED", f"{refused.state}\n{worker_log[-3000:]}"
    assert "another run is reconciling" in (refused.state.message or ""), refused.state.message
    assert refused.end_time < done.end_time  # it was refused while the nightly ran, not after
    assert_side_by_side_within_budgets(location_of_requests(ghl_server), locations)


def assert_side_by_side_within_budgets(requests: list[tuple[str, float, str, str, int]],
                                       locations: list[str]) -> None:
    """Every location got writes; the locations' request spans overlap; and their requests interleave all along,
    in the order the sandbox logged their arrival (not how long anything took: a loaded machine cannot fail this
    and locations run one after another cannot pass it, which switch location only len(locations) - 1 times); and
    no location ever had more requests in one of the sandbox's 10-second windows than its own budget allows,
    while the locations together did (three budgets, not one shared)."""
    spans = {}
    for location in locations:
        mine = [r for r in requests if r[0] == location]
        writes = [r for r in mine if r[2] in ("PUT", "DELETE") or (r[2] == "POST" and not r[3].endswith("/search"))]
        assert writes, f"location {location} got no writes"
        spans[location] = (min(r[1] for r in mine), max(r[1] for r in mine))
    starts, ends = [s for s, _ in spans.values()], [e for _, e in spans.values()]
    assert max(starts) < min(ends), f"the locations did not run side by side: {spans}"
    order = [r[0] for r in requests]  # the sandbox's log is in arrival order
    switches = sum(1 for a, b in zip(order, order[1:], strict=False) if a != b)
    assert switches >= 10 * len(locations), f"the locations' requests did not interleave ({switches} switches)"
    busiest = {loc: max_in_window([r[1] for r in requests if r[0] == loc and r[4] != 429]) for loc in locations}
    assert all(n <= GHL_LIMIT for n in busiest.values()), f"a location passed its own budget: {busiest}"
    together = max_in_window([r[1] for r in requests if r[4] != 429])
    assert together > GHL_LIMIT, f"the locations never used more than one budget's worth at once ({together})"


def max_in_window(times: list[float], window_s: float = GHL_WINDOW_S) -> int:
    """The most requests any `window_s`-second window holds (the sandbox's sliding window)."""
    times, best, first = sorted(times), 0, 0
    for last, when in enumerate(times):
        while when - times[first] >= window_s:
            first += 1
        best = max(best, last - first + 1)
    return best


def test_each_location_takes_its_own_token_and_a_malformed_list_never_shows_one() -> None:
    import asyncio

    from pydantic import ValidationError

    from contact_recon.settings import Settings
    from contact_recon.systems.ghl.client import credentials_from_settings

    settings = Settings(_env_file=None, ghl_token="shared-token", ghl_location_tokens="L1=tok-one, L2=tok-two")
    tokens = {loc: asyncio.run(credentials_from_settings(settings, loc).token()) for loc in ("L1", "L2", "L3")}
    assert tokens == {"L1": "tok-one", "L2": "tok-two", "L3": "shared-token"}  # L3: not listed, the shared one
    as_json = Settings(_env_file=None, ghl_location_tokens='{"L1": "tok-one"}')
    assert as_json.ghl_location_tokens["L1"].get_secret_value() == "tok-one"
    with pytest.raises(ValidationError) as failure:
        Settings(_env_file=None, ghl_location_tokens="L1=tok-one,tok-secret-two")
    assert "tok-" not in str(failure.value)
