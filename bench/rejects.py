"""Benchmark of refused batch members (issue 22): a first reconciliation against a TinyEmail that refuses a share
of the members it is sent (`--faults "te_reject=SHARE"`: a member is refused by a hash of its email and the seed,
and its whole call answers 400 naming its index).

    .venv/bin/python bench/rejects.py [--contacts 2000] [--share 0.01] [--rate-scale 10] [--seed 5] [--json PATH]

1. Generate a fixture, start both sandboxes as their own processes (`recon sandbox serve --only ...`), the
   TinyEmail one with the fault.
2. Reconcile once (guards loose: a first run fills blanks in bulk) and read the journal and the sandbox's
   request log.
3. Print and record:
   - members refused: TinyEmail ops ended `rejected` (and the emails the fault refuses among those sent);
   - landed: every other TinyEmail op is done (goal: none failed, none left planned or sending), and every
     customer created is in TinyEmail;
   - extra calls: TinyEmail calls answered 400 (each is followed by the call without its member), against the
     bound of 2·log2(batch) per refused member (goal: within it), and the TinyEmail requests in all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

from apply import LOOSE, bench_against_sandboxes  # noqa: E402
from figures import goal, info  # noqa: E402

from contact_recon.model.policy import load_policy  # noqa: E402
from contact_recon.sandbox.faults import FaultInjector, FaultSpec  # noqa: E402
from contact_recon.settings import Settings  # noqa: E402
from contact_recon.stages.run import reconcile  # noqa: E402
from contact_recon.store.db import open_db  # noqa: E402
from contact_recon.store.journal import Journal  # noqa: E402
from contact_recon.systems.tinyemail.client import BATCH_SIZE  # noqa: E402

BATCH_PATHS = ("/v1/account/customer", "/v1/audiences")  # TinyEmail's batched write calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--share", type=float, default=0.01)
    parser.add_argument("--rate-scale", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    bench_against_sandboxes(args, "bench-rejects-", f"te_reject={args.share}", run)


def te_calls(te_url: str) -> list[dict[str, Any]]:
    base = te_url.removesuffix("/v1")
    log = httpx.get(base + "/__sandbox/requests", timeout=120).json()["requests"]
    return [r for r in log if r["method"] in ("PUT", "POST") and r["path"].startswith(BATCH_PATHS)]


def run(args: argparse.Namespace, fixture: dict[str, Any], tmp: Path, ghl_url: str, te_url: str) -> list[Any]:
    (tmp / "policy.toml").write_text(LOOSE)
    token = fixture["ghl"]["tokens"][0]
    settings = Settings(_env_file=None, data_dir=tmp / "data", ghl_base_url=ghl_url,
                        ghl_token=token["token"], ghl_location_ids=token["locationId"], tinyemail_base_url=te_url,
                        tinyemail_api_key=fixture["tinyemail"]["apiKeys"][0], ghl_rate_scale=args.rate_scale,
                        tinyemail_rate_per_minute=60 * args.rate_scale, policy_file=tmp / "policy.toml")
    settings.data_dir.mkdir(parents=True)
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    started = time.monotonic()
    with open_db(settings.data_dir / "recon.duckdb") as store:
        outcome = reconcile(settings, store, locations=[token["locationId"]], policy=load_policy(settings.policy_file),
                            docs=False)
        journal = Journal(store).frame(outcome.run_id)
    wall = time.monotonic() - started
    te = journal.filter(pl.col("target") == "tinyemail")
    statuses = dict(te.group_by("status").len().iter_rows())
    rejected = te.filter(pl.col("status") == "rejected")
    refused_people = rejected["key"].n_unique()
    not_landed = te.filter(pl.col("status").is_in(["failed", "planned", "sending"])).height
    injector = FaultInjector(FaultSpec(te_reject=args.share), args.seed)
    sent_creates = te.filter((pl.col("kind") == "create") & (pl.col("status") != "quarantined"))  # a check held those
    created = [json.loads(r["new"])["email"] for r in sent_creates.iter_rows(named=True)]
    refused_creates = [e for e in created if injector.refuses_member(e)]
    missing = missing_customers(te_url, [e for e in created if not injector.refuses_member(e)])
    calls = te_calls(te_url)
    refusals = sum(1 for c in calls if c["status"] == 400)
    bound = refused_people * 2 * math.ceil(math.log2(BATCH_SIZE))
    print(f"reconcile: {journal.height:,} ops, TinyEmail {te.height:,} "
          f"({', '.join(f'{k} {v:,}' for k, v in sorted(statuses.items()))}); wall {wall:.1f} s")
    print(f"te_reject={args.share}: {rejected.height} ops of {refused_people} people rejected; the fault refuses "
          f"{len(refused_creates)} of the {len(created)} customers created")
    print(f"landed: {not_landed} other TinyEmail ops not landed (goal 0); {missing} created customers missing in "
          f"TinyEmail (goal 0)")
    print(f"batched calls: {len(calls)} ({refusals} answered 400, each followed by a call without its member); "
          f"bound {bound} (2·log2({BATCH_SIZE}) = {2 * math.ceil(math.log2(BATCH_SIZE))} per refused person)")
    return [
        info("rejects", "TinyEmail ops", te.height),
        info("rejects", "people refused", refused_people),
        info("rejects", "ops rejected", rejected.height),
        goal("rejects", "other TinyEmail ops not landed", not_landed, "==", 0),
        goal("rejects", "created customers missing", missing, "==", 0),
        info("rejects", "batched calls", len(calls)),
        goal("rejects", "extra calls (400 answers)", refusals, "<=", bound),
        info("rejects", "extra-call bound", bound),
        info("rejects", "wall", wall, "s"),
    ]


def missing_customers(te_url: str, emails: list[str]) -> int:
    state = httpx.get(te_url.removesuffix("/v1") + "/__sandbox/state", timeout=120).json()
    have = {c["email"].strip().lower() for c in state["customers"]}
    return sum(1 for e in emails if e.strip().lower() not in have)


if __name__ == "__main__":
    main()
