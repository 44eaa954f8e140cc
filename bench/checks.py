"""Benchmark of the hygiene checks: every suite on 100,000 contacts with their tasks and notes, and the plan.

Prepares the inputs first (not timed): a `contact_recon.sandbox.generate` fixture with N GHL contacts (N / 0.85
people, 5% awkward, two locations, duplicates allowed, half a task and one note per contact), its
canonical frames through the normalise row builders, and a first-run plan through the identity
matcher and the merge engine; all written to parquet. Then a fresh
process reads them and runs `checks.run_checks` (all five suites through great-expectations, quarantine,
Data Docs) plus `apply_quarantine`, so the figures count only the checks: wall time (GX import, checks
and docs, quarantine) and the peak RSS of that process (ru_maxrss). Goal: < 30 s.

    .venv/bin/python bench/checks.py [--contacts 100000] [--seed 0] [--json PATH]

`--json PATH` also writes the figures there (bench/figures.py; `make bench` collects them); the
measuring child process writes them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import goal, info, write_figures  # noqa: E402  # bench/, the script's own directory

GOAL_S = 30.0
FRAMES = ("ghl_contacts", "te_customers", "ghl_tasks", "ghl_notes")
GHL_SHARE = 0.85  # the generator's default overlap 0.7 puts 70% + 15% of the people in GHL


def prepare(contacts: int, seed: int, out: Path) -> None:
    """Fixture -> canonical frames -> plan, written to `out` as parquet (+ meta.json)."""
    from contact_recon.engine.identity import ID_MAP, match_identities, merge_sides
    from contact_recon.engine.merge import plan
    from contact_recon.model.normalise import to_frame
    from contact_recon.model.policy import Policy
    from contact_recon.model.records import GHL_CONTACTS, GHL_NOTES, GHL_TASKS, MERGE_SIDE, TINYEMAIL_CUSTOMERS
    from contact_recon.sandbox.generate import generate_fixture
    from contact_recon.systems.ghl.mapping import ghl_contact_record, ghl_note_record, ghl_task_record
    from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record

    people = round(contacts / GHL_SHARE)  # so the GHL side holds `contacts` contacts
    fixture = generate_fixture(people, seed=seed, awkward=0.05, locations=2, allow_duplicates=True)
    rows: dict[str, list] = {name: [] for name in FRAMES}
    for loc, data in fixture["ghl"]["locations"].items():
        rows["ghl_contacts"] += [ghl_contact_record(c, loc) for c in data["contacts"]]
        rows["ghl_tasks"] += [ghl_task_record(t, loc) for t in data["tasks"]]
        rows["ghl_notes"] += [ghl_note_record(n, loc) for n in data["notes"]]
    lists: dict[str, list[str]] = {}
    for lst in fixture["tinyemail"]["lists"]:
        for email in lst["members"]:
            lists.setdefault(email, []).append(lst["id"])
    rows["te_customers"] = [tinyemail_customer_record(c, lists.get(c["email"], []))
                            for c in fixture["tinyemail"]["customers"]]
    schemas = {"ghl_contacts": GHL_CONTACTS, "te_customers": TINYEMAIL_CUSTOMERS, "ghl_tasks": GHL_TASKS,
               "ghl_notes": GHL_NOTES}
    frames = {name: to_frame(rows[name], schemas[name]) for name in FRAMES}
    identity = match_identities(frames["ghl_contacts"], frames["te_customers"], pl.DataFrame(schema=ID_MAP))
    ghl_side, te_side = merge_sides(identity, frames["ghl_contacts"], frames["te_customers"])
    today = dt.date.fromisoformat(fixture["_meta"]["baseDate"][:10])
    result = plan(pl.DataFrame(schema=MERGE_SIDE), te_side, ghl_side, Policy(), ghl_tasks=frames["ghl_tasks"],
                  today=today)
    for name, frame in frames.items():
        frame.write_parquet(out / f"{name}.parquet")
    result.ops.write_parquet(out / "plan.parquet")
    identity.matched.write_parquet(out / "matched.parquet")
    (out / "meta.json").write_text(json.dumps({"today": today.isoformat(), "people": result.stats["people"]}))


def measure(inputs: Path, json_path: Path | None = None) -> None:
    """In a fresh process: read the inputs, run every suite, print the figures."""
    frames = {name: pl.read_parquet(inputs / f"{name}.parquet") for name in FRAMES}
    ops, matched = pl.read_parquet(inputs / "plan.parquet"), pl.read_parquet(inputs / "matched.parquet")
    meta = json.loads((inputs / "meta.json").read_text())
    start = time.perf_counter()
    from contact_recon.checks import (  # sets GX_ANALYTICS_ENABLED=false before GX is imported
        apply_quarantine,
        run_checks,
    )

    importlib.import_module("great_expectations")  # timed on its own: seconds of import

    imported = time.perf_counter()
    before_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    report = run_checks(frames, ops, None, "bench", inputs / "data", today=dt.date.fromisoformat(meta["today"]),
                        people=meta["people"])
    checked = time.perf_counter()
    marked = apply_quarantine(ops, report.quarantined, matched)
    done = time.perf_counter()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    held = marked.filter(pl.col("status") == "quarantined").height
    print(f"rows: {', '.join(f'{n} {f.height:,}' for n, f in frames.items())}, plan ops {ops.height:,}")
    print(f"expectations: {len(report.results)}, blocking failures: {len(report.blocking_failures)}, "
          f"warnings: {len(report.warnings)}, quarantined records: {report.quarantined.height:,}, "
          f"quarantined ops: {held:,}")
    print(f"GX import:            {imported - start:6.2f} s")
    print(f"checks + Data Docs:   {checked - imported:6.2f} s")
    print(f"quarantine:           {done - checked:6.2f} s")
    print(f"wall time:            {done - start:6.2f} s   goal < {GOAL_S:.0f} s: "
          f"{'PASS' if done - start < GOAL_S else 'FAIL'}")
    print(f"peak RSS:             {peak_mib:6.0f} MiB (ru_maxrss of the checking process; "
          f"{before_mib:.0f} MiB with the inputs read and GX imported, before the checks)")
    print(f"Data Docs:            {report.docs_index}")
    write_figures(json_path, [
        info("checks", "ghl contacts", frames["ghl_contacts"].height), info("checks", "plan ops", ops.height),
        info("checks", "expectations", len(report.results)),
        info("checks", "quarantined records", report.quarantined.height),
        info("checks", "GX import", imported - start, "s"),
        info("checks", "checks + Data Docs", checked - imported, "s"),
        info("checks", "quarantine", done - checked, "s"),
        goal("checks", "wall time", done - start, "<", GOAL_S, "s"),
        info("checks", "peak RSS", peak_mib, "MiB")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.json)
        return
    with tempfile.TemporaryDirectory(prefix="bench-checks-") as tmp:
        started = time.perf_counter()
        prepare(args.contacts, args.seed, Path(tmp))
        print(f"prepared {args.contacts:,} GHL contacts in {time.perf_counter() - started:.1f} s (not timed below)")
        subprocess.run([sys.executable, __file__, "--measure", tmp,
                        *(["--json", str(args.json.resolve())] if args.json else [])], check=True)


if __name__ == "__main__":
    main()
