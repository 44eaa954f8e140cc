"""The nightly's fan-out on a real work pool: a `prefect worker` (process type) runs the deployment of
flows/reconcile.py; the nightly's parent run starts one child per tenant and the two tenants' children run side by
side, while two runs of one tenant queue on its slot (`recon-tenant:<tenant>`) and never overlap.

The proof is a rendezvous (contact_recon/stages/failpoints.py `RECON_RENDEZVOUS`) at the point where a run holds its
locations: the two tenants' children both wait there for each other, so both marks say `met` only if both were
inside at once; of two runs of one tenant given no time to wait, one reaches that point, alone, and the other is
refused busy while it is there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from contact_recon.sandbox.generate import generate_fixture
from tests.e2e.test_tenants import Sandboxes, tenant_table
from tests.support import REPO
from tests.support.worlds import LOOSE

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def wait_final(flow_run_ids: list[Any], deadline_s: float = 600) -> dict[str, Any]:
    """Each flow run once it is final (a bound on waiting, not a figure of the test)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + deadline_s
    with get_client(sync_client=True) as client:
        while True:
            runs = {str(i): client.read_flow_run(i) for i in flow_run_ids}
            if all(r.state is not None and r.state.type.value in FINAL for r in runs.values()):
                return runs
            assert time.monotonic() < deadline, {k: r.state.name if r.state else None for k, r in runs.items()}
            time.sleep(1)


def children_of(client: Any, deployment_id: Any) -> list[Any]:
    """The deployment's flow runs that reconcile one tenant (those the parent fanned out)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return [r for r in runs if r.parameters.get("tenant")]


def marks(folder: Path) -> list[dict[str, Any]]:
    return sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda m: m["arrived"])


@pytest.fixture
def worker(tmp_path: Path, prefect_server: str) -> Any:
    """A process work pool, the reconcile deployment on it (no concurrency limit, as prefect.yaml), and one worker."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = f"recon-test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name("reconcile")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=f"nightly-{pool}", work_pool_name=pool,
            entrypoint="flows/reconcile.py:reconcile_flow",
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}])
    started: dict[str, Any] = {"pool": pool, "deployment_id": deployment_id, "proc": None, "log": None}

    def start(env: dict[str, str]) -> None:
        log = started["log"] = (tmp_path / "worker.log").open("w")
        started["proc"] = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
            env={**os.environ, **env, "PREFECT_API_URL": prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1",
                 "PREFECT_WORKER_PREFETCH_SECONDS": "30"}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    started["start"] = start
    yield started
    if started["proc"] is not None:
        started["proc"].terminate()
        try:
            started["proc"].wait(timeout=60)
        except subprocess.TimeoutExpired:
            started["proc"].kill()
    if started["log"] is not None:
        started["log"].close()


def test_tenants_children_overlap_and_one_tenants_runs_queue(sandboxes: Sandboxes, tmp_path: Path, worker: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    fixtures = {"north": generate_fixture(20, seed=45, overlap=0.6, awkward=0.0),
                "south": generate_fixture(20, seed=46, overlap=0.6, awkward=0.0)}
    pairs = {name: sandboxes(fixture, rate_scale=50) for name, fixture in fixtures.items()}
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("\n".join(tenant_table(name, *pairs[name], fixtures[name], tmp_path) for name in fixtures))
    (tmp_path / "policy.toml").write_text(LOOSE)
    side_by_side, one_tenant = tmp_path / "side-by-side", tmp_path / "one-tenant"
    side_by_side.mkdir()
    one_tenant.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECON_")}
    env.update({"RECON_TENANTS_FILE": str(tenants), "RECON_POLICY_FILE": str(tmp_path / "policy.toml"),
                "RECON_TINYEMAIL_RATE_PER_MINUTE": "3000", "RECON_GHL_RATE_SCALE": "50",
                # the children of the nightly wait at their lock for each other (up to 240 s)
                "RECON_RENDEZVOUS": f"locked:{side_by_side}:2:240"})
    monkeypatch.setenv("RECON_TENANTS_FILE", str(tenants))
    worker["start"](env)

    # the nightly: one parent run (no tenant) on the pool, which fans out one child per tenant
    parent = run_deployment(name=worker["deployment_id"], parameters={"dry_run": True, "approve": True}, timeout=0)
    wait_final([parent.id])  # type: ignore[union-attr]
    with get_client(sync_client=True) as client:
        children = children_of(client, worker["deployment_id"])
    assert sorted(c.parameters["tenant"] for c in children) == ["north", "south"]
    finished = wait_final([c.id for c in children])
    assert {r.state.type.value for r in finished.values()} == {"COMPLETED"}, \
        (tmp_path / "worker.log").read_text()[-3000:]
    met = marks(side_by_side)
    assert sorted(Path(m["data_dir"]).name for m in met) == ["north", "south"]
    assert all(m["met"] for m in met), met  # both tenants' runs were holding their locations at the same time

    # two runs of one tenant at once (neither waits: lock_wait_s 0): the first holds the tenant's slot, the second
    # is refused busy while the first is inside, and the first was there alone
    rendezvous = {"env": {"RECON_RENDEZVOUS": f"locked:{one_tenant}:2:30"}}
    runs = [run_deployment(name=worker["deployment_id"], timeout=0, job_variables=rendezvous,
                           parameters={"tenant": "north", "dry_run": True, "approve": True, "lock_wait_s": 0})
            for _ in range(2)]
    finished = wait_final([r.id for r in runs])  # type: ignore[union-attr]
    states = sorted(finished.values(), key=lambda r: r.state.type.value)
    assert [r.state.type.value for r in states] == ["COMPLETED", "FAILED"], \
        (tmp_path / "worker.log").read_text()[-3000:]
    completed, refused = states
    assert "another run is reconciling tenant north" in (refused.state.message or ""), refused.state.message
    (alone,) = marks(one_tenant)  # only the run that held the slot reached its locations
    assert not alone["met"] and Path(alone["data_dir"]).name == "north"
    assert refused.end_time < completed.end_time  # refused while the first ran, not after
