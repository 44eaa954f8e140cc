"""Tenants benchmark (issue 18, item 5): many tenants of a few hundred people each reconciled in one nightly.

    .venv/bin/python bench/tenants.py [--tenants 20] [--contacts 500] [--rate-scale 20] [--seed 31] [--json PATH]

1. Fixtures: `--tenants` clients, each `--contacts` people (generate_fixture, its own seed: its own GHL location,
   token and TinyEmail API key), each served by its own sandbox pair (GHL and TinyEmail, in threads of this
   process: a TinyEmail sandbox holds one audience, so a tenant is a pair) at `--rate-scale`.
2. The nightly (timed): one `recon run --approve` with no `--tenant` and RECON_TENANTS_FILE naming every tenant
   (a loose policy: each tenant's first reconciliation fills blanks in bulk), as a child process against a
   Prefect test server, with client budgets matching the sandboxes. Each tenant's share of the wall is taken from
   the moment the command prints `tenant NAME` to the next one.
3. The slowest tenant alone (timed): the same tenant's fixture served again by a fresh pair, a fresh data dir, and
   `recon run --approve --tenant NAME` in a tenants file of its own.

Figures: the wall of the nightly for all tenants against the wall of the slowest tenant alone (`recon run`
reconciles the tenants one after another, so the ratio is about the number of tenants; the nightly deployment
fans them out side by side on the work pool instead, limited by the worker machine); requests per tenant
against that tenant's minimum, the same minimum as bench/nightly.py (the pages needed to read: the GHL listing at
500 a page, the task searches at 100 contact ids a batch, one notes read per contact read tonight, TinyEmail's
lists and member pages at 100 a page; plus the writes needed: GHL one POST per create and per contact with ops
2 for field ops, 1 per tag direction, 1 per task or note; TinyEmail batched upserts and list calls at 500 a call,
with its precondition reads), the worst tenant's ratio and the sum over tenants; the sandboxes' request logs
checked against the clients' counts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

from figures import Figure, goal, info, run_on_prefect  # noqa: E402

LOOSE = "[guards]\ndeletes_or_inactivations = 1.0\nfield_updates = 1.0\ntag_removals = 1.0\n"
WALL_GOAL_S = 600  # the whole nightly of 20 x 500 on this machine


@dataclass
class Tenant:
    name: str
    fixture: dict[str, Any]
    ghl: Any = None  # RunningServer
    te: Any = None

    @property
    def location(self) -> str:
        return str(self.fixture["ghl"]["tokens"][0]["locationId"])

    def table(self, root: Path) -> str:
        return (f'[tenants.{self.name}]\nghl_base_url = "{self.ghl.base_url}"\n'
                f'ghl_token = "{self.fixture["ghl"]["tokens"][0]["token"]}"\nghl_location_ids = ["{self.location}"]\n'
                f'tinyemail_base_url = "{self.te.base_url}/v1"\n'
                f'tinyemail_api_key = "{self.fixture["tinyemail"]["apiKeys"][0]}"\n'
                f'data_dir = "{root / self.name}"\n')

    def serve(self, rate_scale: float) -> None:
        from contact_recon.sandbox import ghl, tinyemail
        from contact_recon.sandbox.fixture import validate_fixture
        from contact_recon.sandbox.server import serve_in_thread

        data = validate_fixture(self.fixture)
        self.ghl = serve_in_thread(ghl.create_app(data["ghl"], search_lag_s=0.0, rate_scale=rate_scale))
        self.te = serve_in_thread(tinyemail.create_app(data["tinyemail"], rate_scale=rate_scale))

    def stop(self) -> None:
        for server in (self.ghl, self.te):
            if server is not None:
                server.stop()

    def logged(self) -> dict[str, int]:
        """Requests each sandbox answered, its own admin routes left out."""
        out = {}
        for system, server in (("ghl", self.ghl), ("tinyemail", self.te)):
            log = httpx.get(server.base_url + "/__sandbox/requests", timeout=120).json()["requests"]
            out[system] = sum(1 for r in log if not r["path"].startswith("/__sandbox"))
        return out


def tenants_of(count: int, contacts: int, seed: int) -> list[Tenant]:
    from contact_recon.sandbox.generate import generate_fixture

    return [Tenant(f"t{i:02d}", generate_fixture(contacts, seed=seed + i, overlap=0.6, awkward=0.02))
            for i in range(count)]


def recon_run(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, float, dict[str, float], str]:
    """`recon run ARGS`: exit code, wall, and each tenant's seconds (from its `tenant NAME` line to the next)."""
    started = time.perf_counter()
    proc = subprocess.Popen([str(REPO / ".venv/bin/recon"), "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    marks: list[tuple[str, float]] = []
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("tenant "):
            marks.append((line.split()[1], time.perf_counter()))
    code = proc.wait()
    ended = time.perf_counter()
    each = {name: (marks[i + 1][1] if i + 1 < len(marks) else ended) - at for i, (name, at) in enumerate(marks)}
    return code, ended - started, each, "".join(lines)


def run_env(api: str, tenants_file: Path, policy: Path, rate_scale: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECON_")}
    return {**env, "PREFECT_API_URL": api, "RECON_TENANTS_FILE": str(tenants_file), "RECON_POLICY_FILE": str(policy),
            "RECON_GHL_RATE_SCALE": str(rate_scale), "RECON_TINYEMAIL_RATE_PER_MINUTE": str(60 * rate_scale),
            "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}


def requests_against_minimum(tenant: Tenant, data: Path) -> tuple[int, int]:
    """The tenant's requests (clients' counts, both systems) and its minimum (bench/nightly.py's)."""
    import polars as pl
    from nightly import minimum_ghl, minimum_te, read_back

    from contact_recon.store.db import open_db

    with open_db(data / "recon.duckdb") as store:
        runs = store.runs().filter(pl.col("kind") == "reconcile").sort("started_at")
    night = read_back(data, runs["run_id"][-1], tenant.location)
    used = sum(night.used[stage][system] for stage in night.used for system in ("ghl", "tinyemail"))
    least = sum(sum(m.values()) for m in (minimum_ghl(night), minimum_te(night)))
    return used, least


def nightly(tenants: list[Tenant], root: Path, api: str, args: argparse.Namespace) -> dict[str, Any]:
    """Step 2: every tenant in one `recon run`."""
    (root / "policy.toml").write_text(LOOSE)
    (root / "tenants.toml").write_text("\n".join(t.table(root) for t in tenants))
    code, wall, each, output = recon_run(run_env(api, root / "tenants.toml", root / "policy.toml", args.rate_scale),
                                         root, "--approve")
    if code != 0 or len(each) != len(tenants):
        raise SystemExit(f"the nightly of {len(tenants)} tenants failed (exit {code}):\n{output[-4000:]}")
    per = {t.name: requests_against_minimum(t, root / t.name) for t in tenants}
    logged = {t.name: sum(t.logged().values()) for t in tenants}
    return {"wall": wall, "each": each, "requests": per, "logged": logged}


def alone(tenant: Tenant, root: Path, api: str, args: argparse.Namespace) -> float:
    """Step 3: the tenant by itself, from its fixture again, on a fresh pair and a fresh data dir."""
    again = Tenant(tenant.name, tenant.fixture)
    again.serve(args.rate_scale)
    try:
        (root / "policy.toml").write_text(LOOSE)
        (root / "tenants.toml").write_text(again.table(root))
        code, wall, _, output = recon_run(run_env(api, root / "tenants.toml", root / "policy.toml", args.rate_scale),
                                          root, "--approve", "--tenant", tenant.name)
    finally:
        again.stop()
    if code != 0:
        raise SystemExit(f"the run of {tenant.name} alone failed (exit {code}):\n{output[-4000:]}")
    return wall


def report(night: dict[str, Any], slowest: str, alone_s: float, args: argparse.Namespace) -> list[Figure]:
    n = len(night["each"])
    ratios = {name: used / max(least, 1) for name, (used, least) in night["requests"].items()}
    worst = max(ratios, key=lambda name: ratios[name])
    used_all = sum(used for used, _ in night["requests"].values())
    least_all = sum(least for _, least in night["requests"].values())
    mismatched = [name for name, (used, _) in night["requests"].items() if used != night["logged"][name]]
    print(f"\n== {n} tenants x {args.contacts} people, one `recon run` ==")
    print(f"  wall, every tenant: {night['wall']:.1f} s; slowest tenant {slowest} in the nightly "
          f"{night['each'][slowest]:.1f} s, alone {alone_s:.1f} s -> {night['wall'] / alone_s:.1f}x")
    for name in night["each"]:
        used, least = night["requests"][name]
        print(f"  {name}: {night['each'][name]:6.1f} s, requests {used:,} against the minimum {least:,} "
              f"({ratios[name]:.3f}x; sandbox logs {night['logged'][name]:,})")
    print(f"  all tenants: {used_all:,} requests against {least_all:,} ({used_all / max(least_all, 1):.3f}x); "
          f"worst {worst} {ratios[worst]:.3f}x; clients' counts differ from the sandbox logs for: "
          f"{', '.join(mismatched) or 'none'}")
    b = "tenants"
    figures = [info(b, "tenants", n), info(b, "people per tenant", args.contacts),
               info(b, "wall, every tenant in one nightly", night["wall"], "s"),
               info(b, "wall, slowest tenant alone", alone_s, "s"),
               info(b, "wall, slowest tenant within the nightly", night["each"][slowest], "s"),
               info(b, "nightly wall / slowest tenant alone", night["wall"] / alone_s, "x"),
               info(b, "mean tenant wall within the nightly", sum(night["each"].values()) / n, "s"),
               info(b, "requests, all tenants", used_all), info(b, "minimum requests, all tenants", least_all),
               info(b, "requests / minimum, all tenants", used_all / max(least_all, 1), "x"),
               info(b, "requests / minimum, worst tenant", ratios[worst], "x"),
               goal(b, "tenants whose clients' counts differ from the sandbox logs", len(mismatched), "==", 0)]
    if n >= 20:  # the size: the nightly fits the machine's night
        figures.append(goal(b, "wall, 20 tenants", night["wall"], "<", WALL_GOAL_S, "s"))
    return figures


def bench(args: argparse.Namespace, tmp: Path, api: str) -> list[Figure]:
    started = time.perf_counter()
    tenants = tenants_of(args.tenants, args.contacts, args.seed)
    for tenant in tenants:
        tenant.serve(args.rate_scale)
    print(f"{len(tenants)} tenants of {args.contacts} people, each on its own sandbox pair "
          f"({time.perf_counter() - started:.1f} s)", flush=True)
    try:
        night = nightly(tenants, tmp / "nightly", api, args)
    finally:
        for tenant in tenants:
            tenant.stop()
    slowest = max(night["each"], key=lambda name: night["each"][name])
    alone_s = alone(next(t for t in tenants if t.name == slowest), tmp / "alone", api, args)
    figures = report(night, slowest, alone_s, args)
    print(f"  (whole benchmark {time.perf_counter() - started:.0f} s)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--contacts", type=int, default=500)
    parser.add_argument("--rate-scale", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    run_on_prefect("bench-tenants-", lambda tmp, api: bench(args, tmp, api), args.json, folders=("nightly", "alone"))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
