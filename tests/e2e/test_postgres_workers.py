"""The multi-machine deployment of docs/scale-out.md, run: a Prefect server on PostgreSQL, one process work pool, two
process workers, and a nightly of three tenants (RECON_TENANTS_FILE) fanned out over both; one worker SIGKILLed
mid-run; Prefect marks its flow run Crashed; the next run of that tenant recovers the run from its journal.

- PostgreSQL: Debian's `postgresql` (installed with apt-get when missing, as root), a cluster of its own in a
  temporary folder on 127.0.0.1, started and stopped here (tests/support/postgres.py). The Prefect server is
  `prefect server start` on it (PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...).
- The deployment is `flows/reconcile.py:reconcile_flow` from this repository on a process pool; each worker is
  `prefect worker start --pool ... --type process --limit 1` in a session of its own, with the tenants file and
  flow heartbeats every 30 s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, Prefect's minimum). Zombie detection is
  Prefect's documented automation: a flow run whose heartbeat is not followed by another heartbeat or a final
  state within 45 s is set Crashed.
- The kill happens at a known point: `RECON_FAILPOINT=answered:ghl.create` with `RECON_FAILPOINT_HOLD` holds the
  first flow run that reaches it (GHL answered a contact create, the journal does not know yet) and writes its pid;
  the test then SIGKILLs that flow run's process and the worker that started it, as a machine that dies would.
- Nothing is lost or written twice: the recovery run's `recover` step re-reads the write the journal did not
  know of (it landed), every op of the crashed run ends done, and the sandboxes hold no duplicate. The writers run
  side by side, so the TinyEmail writer may have a batch `sending` when the process freezes, its request sent or
  not: the sandboxes' state at the kill tells which interrupted creates landed (never sent again) and which did
  not (made by the recovery run).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from contact_recon.model.keys import TE_KEY_PREFIX, is_te_key
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.store.db import db_path, open_db
from contact_recon.store.journal import Journal
from tests.support import REPO
from tests.support.postgres import cluster, prefect_server
from tests.support.servers import Sandboxes
from tests.support.worlds import LOOSE, duplicates

TENANTS = ("north", "south", "west")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RATE_SCALE = 50


@pytest.fixture
def postgres_prefect() -> Iterator[str]:
    """A Prefect server on a PostgreSQL cluster of its own; its API URL."""
    root = Path(tempfile.mkdtemp(prefix="recon-pg-"))
    home = root / "prefect"
    home.mkdir()
    try:
        with cluster(root) as database, prefect_server(database, home) as url:
            yield url
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def tenant_table(name: str, ghl: Any, te: Any, fixture: dict[str, Any], root: Path) -> str:
    location = fixture["ghl"]["tokens"][0]["locationId"]
    return (f'[tenants.{name}]\nghl_base_url = "{ghl.base_url}"\nghl_token = "{fixture["ghl"]["tokens"][0]["token"]}"\n'
            f'ghl_location_ids = ["{location}"]\ntinyemail_base_url = "{te.base_url}/v1"\n'
            f'tinyemail_api_key = "{fixture["tinyemail"]["apiKeys"][0]}"\ndata_dir = "{root / name}"\n')


def client_of(api: str) -> Any:
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api)


def zombie_automation(api: str) -> None:
    """Prefect's documented zombie detection: no heartbeat (or final state) within 45 s of a heartbeat -> Crashed."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    automation = AutomationCore(
        name="crash zombie flow runs",
        trigger=EventTrigger(after={"prefect.flow-run.heartbeat"},
                             expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                                     "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                                     "prefect.flow-run.Crashed"},
                             match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                             for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                             within=timedelta(seconds=45)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="no heartbeat: the flow run's machine is gone")])
    with client_of(api) as client:
        client.create_automation(automation)


def deploy(api: str, pool: str) -> str:
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        source = flow.from_source(source=REPO, entrypoint="flows/reconcile.py:reconcile_flow")
        return str(source.deploy(name=f"nightly-{pool}", work_pool_name=pool, print_next_steps=False,
                                 ignore_warnings=True))


def start(api: str, deployment_id: str, **parameters: Any) -> str:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        return str(run_deployment(deployment_id, parameters=parameters, timeout=0, as_subflow=False).id)


def runs_of(api: str, deployment_id: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with client_of(api) as client:
        return list(client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[uuid.UUID(deployment_id)]))))


def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def tenant_runs(api: str, deployment_id: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for run in runs_of(api, deployment_id):
        if run.parameters.get("tenant"):
            found.setdefault(run.parameters["tenant"], []).append(run)
    return found


def start_worker(pool: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                                 "process", "--limit", "1"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_a_nightly_spread_over_two_workers_on_postgres_survives_a_killed_worker(
        sandboxes: Sandboxes, tmp_path: Path, postgres_prefect: str) -> None:
    api = postgres_prefect
    fixtures = {name: generate_fixture(12, seed=60 + i, overlap=0.5, awkward=0.0) for i, name in enumerate(TENANTS)}
    pairs = {name: sandboxes(fixture, rate_scale=RATE_SCALE) for name, fixture in fixtures.items()}
    (tmp_path / "policy.toml").write_text(LOOSE)
    tables = [tenant_table(name, *pairs[name], fixtures[name], tmp_path) for name in TENANTS]
    (tmp_path / "tenants.toml").write_text("\n".join(tables))
    held = tmp_path / "held.pid"
    pool = f"recon-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "PREFECT_LOGGING_LEVEL": "INFO",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RECON_TENANTS_FILE": str(tmp_path / "tenants.toml"), "RECON_POLICY_FILE": str(tmp_path / "policy.toml"),
           "RECON_GHL_RATE_SCALE": str(RATE_SCALE), "RECON_TINYEMAIL_RATE_PER_MINUTE": str(60 * RATE_SCALE),
           "RECON_FAILPOINT": "answered:ghl.create", "RECON_FAILPOINT_HOLD": str(held)}
    for name in ("RECON_GHL_TOKEN", "RECON_GHL_LOCATION_IDS", "RECON_TINYEMAIL_API_KEY", "RECON_DATA_DIR",
                 "RECON_USE_GLOBAL_LIMITS", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    zombie_automation(api)
    deployment_id = deploy(api, pool)
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(pool, env, log) for log in logs]
    try:
        nightly = start(api, deployment_id, approve=True)
        held_pid = int(wait_until(lambda: held.exists() and held.read_text(), 180, "a flow run held at the failpoint"))
        # the worker that started the held flow run: its parent (a worker starts each flow run as its child)
        parent = int(Path(f"/proc/{held_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        victim = next(w for w in workers if w.pid == parent or _ancestor(parent, w.pid))
        os.kill(held_pid, signal.SIGKILL)  # the machine dies: the flow run and its worker at once
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        runs = wait_until(lambda: _settled(tenant_runs(api, deployment_id)), 240, "every tenant's run final")
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(timeout=30)
    worker_logs = "\n".join(log.read_text() for log in logs)
    states = {name: runs[name][0].state.type.value for name in TENANTS}
    crashed = [name for name, state in states.items() if state == "CRASHED"]
    assert len(crashed) == 1, f"{states}\n{worker_logs[-3000:]}"
    assert all(state == "COMPLETED" for name, state in states.items() if name not in crashed), states
    assert "no heartbeat" in (runs[crashed[0]][0].state.message or "")
    at_kill = _emails(*pairs[crashed[0]])
    # the tenants were spread over both workers: each worker submitted at least one of the nightly's flow runs
    ids = {str(run.id) for name in TENANTS for run in runs[name]} | {nightly}
    for log in logs:
        assert any(i in log.read_text() for i in ids), f"{log.name} ran none of the nightly's flow runs"

    # the next run of the crashed tenant (on the surviving worker) recovers the interrupted apply from the journal
    survivor = start_worker(pool, env, tmp_path / "worker-c.log")
    try:
        again = start(api, deployment_id, tenant=crashed[0], approve=True)
        final = wait_until(lambda: _final(api, again), 240, "the recovery run final")
    finally:
        os.killpg(survivor.pid, signal.SIGTERM)
        survivor.wait(timeout=30)
    assert final.state.type.value == "COMPLETED", f"{final.state}\n{(tmp_path / 'worker-c.log').read_text()[-3000:]}"
    with open_db(db_path(tmp_path / crashed[0])) as store:
        runs_table = store.runs()
        first, second = runs_table.filter(runs_table["kind"] == "reconcile").sort("started_at")["run_id"][:2]
        journal = Journal(store)
        killed, recovery = journal.frame(first), journal.frame(second)
    # the ops the killed run left `sending`: recovery marked them failed, unknown, for the next snapshot to tell
    unknown = killed.filter(killed["status"] == "failed")
    assert unknown.height and "interrupted while sending" in unknown["last_error"][0], killed["status"].value_counts()
    assert "sending" not in killed["status"].to_list()
    same = ["target", "key", "kind", "field"]
    # which of them had landed: the writers run side by side, so beside the GHL create held after its answer (it
    # landed) the TinyEmail writer may have had a batch `sending` whose request had or had not left when the
    # process froze; the sandboxes' state at the kill tells (nothing writes to them between the kill and recovery)
    creates = unknown.filter(unknown["kind"] == "create")
    made = [_created(op, at_kill) for op in creates.iter_rows(named=True)]
    landed = creates.filter(pl.Series(made, dtype=pl.Boolean))
    assert landed.filter(landed["target"] == "ghl").height, f"the held GHL create is not in GHL: {creates}"
    assert landed.select(same).join(recovery.select(same), on=same, nulls_equal=True).height == 0, \
        "a write that had landed was sent again"
    assert set(unknown.filter(unknown["target"] == "ghl")["kind"].to_list()) == {"create"}, unknown
    missing = creates.join(landed.select(same), on=same, how="anti", nulls_equal=True).select(same)
    written = recovery.filter(recovery["status"] == "done").select(same)
    assert missing.join(written, on=same, how="anti", nulls_equal=True).height == 0, \
        "an interrupted create that had not landed was not made by the recovery run"
    # nothing lost: every op the killed run never sent was planned again and written by the recovery run
    unsent = killed.filter(killed["status"] == "planned").select(same)
    assert unsent.join(written, on=same, how="anti", nulls_equal=True).height == 0, "an op of the killed run was lost"
    assert set(recovery.filter(~recovery["status"].is_in(["quarantined", "held"]))["status"].to_list()) <= {"done"}
    ghl, te = pairs[crashed[0]]
    state = httpx.get(ghl.base_url + "/__sandbox/state", timeout=30).json()
    assert not duplicates(state), duplicates(state)
    customers = httpx.get(te.base_url + "/__sandbox/state", timeout=30).json()["customers"]
    emails = [c["email"].strip().lower() for c in (customers.values() if isinstance(customers, dict) else customers)]
    assert len(emails) == len(set(emails)), "a TinyEmail customer was created twice"


def _emails(ghl: Any, te: Any) -> dict[str, Any]:
    """What the sandboxes hold now: GHL contact id -> email, and the set of emails of each system."""
    contacts = next(iter(httpx.get(ghl.base_url + "/__sandbox/state", timeout=30).json()["locations"].values()))
    by_id = {c["id"]: (c.get("email") or "").strip().lower() for c in contacts["contacts"]}
    customers = httpx.get(te.base_url + "/__sandbox/state", timeout=30).json()["customers"]
    te_emails = {c["email"].strip().lower() for c in (customers.values() if isinstance(customers, dict) else customers)}
    return {"by_id": by_id, "ghl": set(by_id.values()) - {""}, "tinyemail": te_emails}


def _created(op: dict[str, Any], held: dict[str, Any]) -> bool:
    """A create op's person is in its target system in `held` (`_emails`): the create had landed."""
    key = op["key"]
    email = key.removeprefix(TE_KEY_PREFIX) if is_te_key(key) else held["by_id"].get(key, "")
    return bool(email) and email.strip().lower() in held[op["target"]]


def _ancestor(pid: int, ancestor: int) -> bool:
    """`ancestor` is an ancestor of process `pid`."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def _settled(runs: dict[str, list[Any]]) -> dict[str, list[Any]] | None:
    if set(runs) == set(TENANTS) and all(r.state and r.state.type.value in FINAL for rs in runs.values() for r in rs):
        return runs
    return None


def _final(api: str, flow_run_id: str) -> Any:
    with client_of(api) as client:
        run = client.read_flow_run(uuid.UUID(flow_run_id))
    return run if run.state and run.state.type.value in FINAL else None
