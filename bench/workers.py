"""Scale-out benchmark: a nightly of N tenants on one process worker against two, on a Prefect server on PostgreSQL.

    .venv/bin/python bench/workers.py [--tenants 20] [--people 10] [--rate-scale 50] [--json PATH]

The deployment of docs/scale-out.md, as tests/e2e/test_postgres_workers.py runs it: a PostgreSQL cluster of its own
(Debian's `postgresql`; tests/support/postgres.py), `prefect server start` on it, one process work pool and the
reconcile flow deployed from this repository. Each tenant (RECON_TENANTS_FILE) has its own pair of sandboxes (in
this process, at `--rate-scale`), data dir and `--people` people. For 1 and then 2 workers (`prefect worker start
--type process --limit 1` each; fresh tenants each time, so both do the same first reconciliation, approved), the
nightly fans out one flow run per tenant; the wall is from the nightly's start to the end of the last tenant's run
(the flow runs' times in Prefect). Printed: both walls, the speedup (information: on this 2-CPU machine the
tenants' runs compete for the CPUs, so two workers cannot give 2x), every tenant's run state.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from figures import Figure, info, write_figures  # noqa: E402

LOOSE = "[guards]\ndeletes_or_inactivations = 1.0\nfield_updates = 1.0\ntag_removals = 1.0\n"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def tenants_file(root: Path, count: int, people: int, rate_scale: float, servers: list[Any]) -> Path:
    """`count` tenants, each with its own sandboxes (started here, kept in `servers`) and data dir."""
    from contact_recon.sandbox import ghl, tinyemail
    from contact_recon.sandbox.fixture import validate_fixture
    from contact_recon.sandbox.generate import generate_fixture
    from contact_recon.sandbox.server import serve_in_thread

    tables = []
    for i in range(count):
        fixture = validate_fixture(generate_fixture(people, seed=100 + i, overlap=0.5, awkward=0.0))
        ghl_server = serve_in_thread(ghl.create_app(fixture["ghl"], rate_scale=rate_scale, search_lag_s=0))
        te_server = serve_in_thread(tinyemail.create_app(fixture["tinyemail"], rate_scale=rate_scale))
        servers += [ghl_server, te_server]
        token = fixture["ghl"]["tokens"][0]
        tables.append(f'[tenants.t{i:02d}]\nghl_base_url = "{ghl_server.base_url}"\nghl_token = "{token["token"]}"\n'
                      f'ghl_location_ids = ["{token["locationId"]}"]\n'
                      f'tinyemail_base_url = "{te_server.base_url}/v1"\n'
                      f'tinyemail_api_key = "{fixture["tinyemail"]["apiKeys"][0]}"\n'
                      f'data_dir = "{root / f"t{i:02d}"}"\n')
    path = root / "tenants.toml"
    path.write_text("\n".join(tables))
    return path


def nightly_wall(api: str, pool: str, deployment_id: str, env: dict[str, str], workers: int, root: Path,
                 tenants: int) -> tuple[float, dict[str, int]]:
    """Start `workers` workers, run the nightly, wait for every tenant's run; (wall, states counted)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    procs = []
    for i in range(workers):
        with (root / f"worker-{i}.log").open("w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                                           "--type", "process", "--limit", "1"], cwd=REPO, env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    try:
        with temporary_settings({PREFECT_API_URL: api}):
            nightly = run_deployment(deployment_id, parameters={"approve": True}, timeout=0, as_subflow=False)
        flt = DeploymentFilter(id=DeploymentFilterId(any_=[uuid.UUID(deployment_id)]))
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            with SyncPrefectClient(api) as client:
                runs = [r for r in client.read_flow_runs(deployment_filter=flt)
                        if r.parameters.get("tenant") and r.parent_task_run_id is None and r.created >= nightly.created]
            if len(runs) == tenants and all(r.state and r.state.type.value in FINAL for r in runs):
                break
            time.sleep(1)
        else:
            raise SystemExit("the tenants' runs did not finish within an hour")
        with SyncPrefectClient(api) as client:
            start = client.read_flow_run(nightly.id).start_time
        states: dict[str, int] = {}
        for run in runs:
            states[run.state.type.value] = states.get(run.state.type.value, 0) + 1
        return (max(r.end_time for r in runs) - start).total_seconds(), states
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--rate-scale", type=float, default=50.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.support.postgres import cluster, prefect_server

    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    (root / "prefect").mkdir()
    servers: list[Any] = []
    walls: dict[int, float] = {}
    figures: list[Figure] = []
    try:
        with cluster(root) as database, prefect_server(database, root / "prefect") as api:
            pool = "recon-bench"
            env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1",
                   "PREFECT_LOGGING_LEVEL": "WARNING", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                   "RECON_GHL_RATE_SCALE": str(args.rate_scale),
                   "RECON_TINYEMAIL_RATE_PER_MINUTE": str(60 * args.rate_scale)}
            for name in ("RECON_GHL_TOKEN", "RECON_GHL_LOCATION_IDS", "RECON_TINYEMAIL_API_KEY", "RECON_DATA_DIR",
                         "RECON_FAILPOINT", "PREFECT_API_DATABASE_CONNECTION_URL"):
                env.pop(name, None)
            (root / "policy.toml").write_text(LOOSE)
            env["RECON_POLICY_FILE"] = str(root / "policy.toml")
            subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
                           cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
            with temporary_settings({PREFECT_API_URL: api}):
                deployment_id = str(flow.from_source(source=REPO, entrypoint="flows/reconcile.py:reconcile_flow")
                                    .deploy(name="bench-workers", work_pool_name=pool, print_next_steps=False,
                                            ignore_warnings=True))
            for workers in (1, 2):
                where = root / f"w{workers}"
                where.mkdir()
                env["RECON_TENANTS_FILE"] = str(tenants_file(where, args.tenants, args.people, args.rate_scale,
                                                             servers))
                walls[workers], states = nightly_wall(api, pool, deployment_id, env, workers, where, args.tenants)
                print(f"{args.tenants} tenants of {args.people} people on {workers} worker(s): "
                      f"{walls[workers]:.1f} s; runs {states}", flush=True)
                figures += [info("workers", f"nightly wall, {workers} worker(s)", walls[workers], "s"),
                            info("workers", f"tenant runs completed, {workers} worker(s)", states.get("COMPLETED", 0))]
    finally:
        for server in servers:
            server.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    speedup = walls[1] / walls[2]
    print(f"two workers against one: {speedup:.2f}x")
    figures += [info("workers", "tenants", args.tenants), info("workers", "speedup, 2 workers / 1", speedup, "x")]
    write_figures(args.json, figures)


if __name__ == "__main__":
    main()
