"""Held means held, in the Prefect UI (flows/reconcile.py, flows/approval.py): a deployment run whose plan trips a
guard suspends itself with an approval form, and its answer decides what is written.

A real process worker (`prefect worker start`) runs `flows/reconcile.py:reconcile_flow` from this repository against
both sandboxes and the session's Prefect server, with a strict guard (every field update holds the run). One
world lives through three held nights:

1. held -> Suspended (not Completed), with the form (decision, guards, note) and the guards' figures in its
   description; nothing written; resumed with an approval exactly as the UI resumes it (`resume_flow_run` with
   the form's input) -> the same flow run applies that plan and completes, with its artifacts;
2. held again -> `recon approve RUN_ID --reject` resumes it with a reject -> Cancelled, named Rejected, nothing
   written;
3. held with a short window (`RECON_APPROVAL_WINDOW_HOURS` for that flow run) and left unanswered -> a resume
   after the window is refused by Prefect, nothing is written, and the next run marks it expired (its flow run
   Cancelled, named Expired) and plans afresh.

And outside a deployment, a held `recon run` ends in a Prefect state named Held (not Completed) and exits 3.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.store.db import db_path, open_db
from tests.support import REPO
from tests.support.worlds import World, make_settings

STRICT = "[guards]\nfield_updates = 0.0\ntag_removals = 0.0\nmin_ops = 1\n"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def world(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path, prefect_server: str,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    fixture = generate_fixture(30, seed=5, overlap=0.7, awkward=0.0)
    ghl, te = sandboxes(fixture, rate_scale=50)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    (tmp_path / "strict.toml").write_text(STRICT)
    w = World(fixture, ghl, te, settings, None)  # type: ignore[arg-type]
    for name, value in {**w.env(), "RECON_POLICY_FILE": str(tmp_path / "strict.toml")}.items():
        monkeypatch.setenv(name, value)
    yield w


@pytest.fixture
def worker(world: World, tmp_path: Path, prefect_server: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A process work pool with the reconcile deployment and a worker on it: (deployment id, worker process)."""
    from prefect import flow

    env = {**os.environ, **world.env(), "PREFECT_API_URL": prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "RECON_POLICY_FILE": str(tmp_path / "strict.toml"), "PREFECT_LOGGING_LEVEL": "WARNING",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    pool = f"held-{uuid.uuid4().hex[:8]}"
    created = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process",
                              "--overwrite"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    source = flow.from_source(source=REPO, entrypoint="flows/reconcile.py:reconcile_flow")
    deployment_id = str(source.deploy(name=f"nightly-{pool}", work_pool_name=pool, print_next_steps=False,
                                      ignore_warnings=True))
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                                "process"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        yield deployment_id, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def start(deployment_id: str, **env: str) -> str:
    from prefect.deployments import run_deployment

    variables = {"env": env} if env else None
    return str(run_deployment(deployment_id, timeout=0, as_subflow=False, job_variables=variables).id)


def flow_run(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(flow_run_id))


def wait_for(flow_run_id: str, types: set[str], worker: subprocess.Popen[str], log: Path,
             timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = flow_run(flow_run_id)
        if run.state and run.state.type.value in types:
            return run
        assert worker.poll() is None, "the worker died:\n" + log.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} not in {types}: {flow_run(flow_run_id).state}\n"
                         + log.read_text()[-3000:])


def writes(world: World) -> int:
    count = 0
    for server in (world.ghl, world.te):
        for r in world.requests(server):
            count += not (r["method"] == "GET" or (r["method"] == "POST" and r["path"].endswith("/search")))
    return count


def store_run(world: World, flow_run_id: str) -> dict[str, Any]:
    with open_db(db_path(world.settings.data_dir)) as store:
        runs = store.runs().filter(store.runs()["flow_run_id"] == flow_run_id).to_dicts()
        assert len(runs) == 1, runs
        run = store.get_run(runs[0]["run_id"])
        run["journal"] = store.con.execute("SELECT status, count(*) FROM journal WHERE run_id = ? GROUP BY ALL",
                                           [run["run_id"]]).fetchall()
        return run


def form_of(run: Any) -> tuple[dict[str, Any], str]:
    """The suspended run's form: its JSON schema and its description (what the UI shows on Resume)."""
    from prefect.client.orchestration import get_client
    from prefect.input.run_input import keyset_from_paused_state

    keyset = keyset_from_paused_state(run.state)
    with get_client(sync_client=True) as client:
        import json

        schema = json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
        description = json.loads(client.read_flow_run_input(run.id, keyset["description"]))
    return schema, description


def drift(world: World, seed: int) -> None:
    """A few GHL companies changed: field updates to TinyEmail, which the strict guard holds."""
    assert world.drift(12, seed=seed)["changes"] == 12


def test_a_held_deployment_run_waits_in_the_ui_then_applies_rejects_or_expires(
        world: World, worker: tuple[str, subprocess.Popen[str]], tmp_path: Path) -> None:
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import resume_flow_run

    deployment_id, process = worker
    log = tmp_path / "worker.log"

    # night 1: held -> suspended with the form; nothing written
    first = start(deployment_id)
    suspended = wait_for(first, {"PAUSED"} | FINAL, process, log)
    assert suspended.state.name == "Suspended", suspended.state
    held = store_run(world, first)
    assert suspended.state.name == "Suspended"
    assert held["status"] == "held" and held["held_reasons"] and held["approval_expires_at"] is not None
    assert writes(world) == 0
    schema, description = form_of(suspended)
    assert {"decision", "guards", "note"} <= set(schema["properties"])
    assert held["run_id"] in description and all(reason in description for reason in held["held_reasons"])
    # the UI's Resume: the form's input; the same flow run applies that plan
    resume_flow_run(suspended.id, run_input={"decision": "approve all guards", "guards": [], "note": "checked"})
    done = wait_for(first, FINAL, process, log)
    assert done.state.type.value == "COMPLETED", f"{done.state}\n{log.read_text()[-3000:]}"
    applied = store_run(world, first)
    assert applied["status"] == "completed" and applied["approval_json"] and '"checked"' in applied["approval_json"]
    assert dict(applied["journal"]).get("done", 0) > 0
    assert writes(world) > 0

    # night 2: held again, rejected with `recon approve --reject`: nothing of it is written
    drift(world, seed=1)
    before = writes(world)
    second = start(deployment_id)
    wait_for(second, {"PAUSED"} | FINAL, process, log)
    run_id = store_run(world, second)["run_id"]
    answered = CliRunner().invoke(app, ["approve", run_id, "--reject", "--note", "not tonight"])
    assert answered.exit_code == 0, answered.output
    rejected = wait_for(second, FINAL, process, log)
    assert (rejected.state.type.value, rejected.state.name) == ("CANCELLED", "Rejected"), rejected.state
    assert "not tonight" in (rejected.state.message or "")
    assert store_run(world, second)["status"] == "rejected" and store_run(world, second)["journal"] == []
    assert writes(world) == before

    # night 3: held with a short window, unanswered: it expires, writes nothing, the next run plans afresh
    third = start(deployment_id, RECON_APPROVAL_WINDOW_HOURS="0.002")  # about 7 s
    waiting = wait_for(third, {"PAUSED"} | FINAL, process, log)
    assert waiting.state.name == "Suspended", waiting.state
    expired_id = store_run(world, third)["run_id"]
    time.sleep(9)
    with pytest.raises(FlowPauseTimeout):  # Prefect refuses a resume after the window
        resume_flow_run(waiting.id, run_input={"decision": "approve all guards", "guards": [], "note": "late"})
    assert writes(world) == before
    fourth = start(deployment_id)
    wait_for(fourth, {"PAUSED"} | FINAL, process, log)
    with open_db(db_path(world.settings.data_dir)) as store:
        assert store.get_run(expired_id)["status"] == "expired"
    assert store_run(world, third)["journal"] == []
    closed = flow_run(third)
    assert closed.state.name in ("Expired", "Failed"), closed.state  # closed by the next run, or by the refusal
    assert writes(world) == before


def test_a_held_recon_run_ends_in_a_state_named_held(world: World) -> None:
    from prefect.client.orchestration import get_client

    held = CliRunner().invoke(app, ["run"])
    assert held.exit_code == 3, held.output
    run_id = held.output.split("run ", 1)[1].split()[0]
    with open_db(db_path(world.settings.data_dir)) as store:
        assert store.get_run(run_id)["status"] == "held"
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    mine = [r for r in runs if r.state and r.state.message and run_id in r.state.message]
    assert mine and mine[0].state.name == "Held" and mine[0].state.type.value == "COMPLETED", \
        [(r.name, r.state) for r in runs[-5:]]
    # `recon approve` applies it in a flow run of its own, with its artifacts
    approved = CliRunner().invoke(app, ["approve", run_id, "--note", "fine"])
    assert approved.exit_code == 0, approved.output
    assert "applied" in approved.output and "completed" in approved.output
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        runs = client.read_flow_runs(limit=200)
    assert any(flows.get(r.flow_id) == "apply-approved" and r.state and r.state.is_completed() for r in runs)


def test_approving_chosen_guards_writes_only_their_ops(sandboxes: Callable[..., tuple[RunningServer, RunningServer]],
                                                       tmp_path: Path) -> None:
    """`approve chosen guards`: the ops of the chosen guard's kinds are sent, the other guard's stay held."""
    from contact_recon.model.approval import Approval, tripped_guards
    from contact_recon.model.policy import GUARD_KINDS, load_policy
    from contact_recon.stages.run import answer_held
    from tests.support.worlds import planning_world

    (tmp_path / "strict.toml").write_text(STRICT)
    for w in planning_world(sandboxes, tmp_path, generate_fixture(40, seed=8, overlap=0.7, awkward=0.0), {}):
        w.policy = None  # the default guards: a first fill, approved up front
        first = w.reconcile(approve=True)
        assert first.status == "completed", first.error
        w.policy = load_policy(tmp_path / "strict.toml")
        assert w.drift(40, seed=3)["changes"] == 40
        held = w.reconcile()
        assert held.status == "held" and held.plan is not None
        tripped = tripped_guards(held.plan.held_reasons)
        assert {"field_updates", "tag_removals"} <= set(tripped), held.plan.held_reasons
        chosen = Approval("approve", ("field_updates",), "names only")
        outcome = answer_held(w.settings, held.run_id, chosen, [w.location], store=w.store,
                              ghl_client=w.ghl_client, tinyemail_client=w.te_client)
        assert outcome.status == "completed", outcome.error
        journal = w.store.con.execute("SELECT kind, status, count(*) FROM journal WHERE run_id = ? GROUP BY ALL",
                                      [held.run_id]).fetchall()
        by_kind: dict[str, set[str]] = {}
        for kind, status, _ in journal:
            by_kind.setdefault(kind, set()).add(status)
        assert by_kind["update"] & {"done", "stale"}, journal  # the chosen guard's ops were sent
        removals = [k for k in GUARD_KINDS["tag_removals"] if k in by_kind]
        assert removals and all(by_kind[k] == {"held"} for k in removals), journal  # the other guard's were not
        assert w.store.get_run(held.run_id)["approval_json"] is not None
