"""Benchmark of the snapshot stage against both sandboxes (one `recon sandbox serve --only` subprocess each).

Generates a fixture (default: 100,000 GHL contacts, 1.5 tasks and 2 notes per contact, TinyEmail
customers = 95% of the contacts), serves it at `--rate-scale` (default 10: GHL 1,000 requests per
10 s per location, TinyEmail 600 a minute), then runs two nights through `contact_recon.stages.snapshot.run_snapshot`
into a fresh store:

- night 1: the first snapshot (no watermark: every contact's tasks and notes are read);
- between the nights, `--changes` edits through the GHL API (a third name edits, a third new notes
  on unchanged contacts, a third deletions);
- night 2: the nightly incremental snapshot (changed contacts + 1/K sweep).

For each night it prints the requests used against the minimum the design needs (the listing at 500
a page, one task search per 100 read contacts or 100 tasks, one notes request per read contact,
TinyEmail one request per 100 members of each list plus the lists call), the wall time against the
rate-limit floor (requests / allowed rate, per budget; the slowest budget sets the floor), the DuckDB
ingest time (one `write_snapshot` transaction), peak memory (ru_maxrss; it includes generating the
fixture in this process), the client's CPU time and how long the GHL sandbox spent answering (its
request log's durations: the sandbox is single-threaded, so a high share means the sandbox, not the
client, set the pace), and where the wall went (reading the previous snapshot, the fetch with its
phases, the ingest). After night 2 it writes 1,000,000 snapshot rows in tonight's mix (night 2's
frames repeated in proportion under new ids) into a fresh store in ONE `write_snapshot` and times it.
Goals: wall <= 1.2x floor on both nights; that ingest < 10 s.

    .venv/bin/python bench/snapshot.py [--contacts 100000] [--rate-scale 10] [--changes 600]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import Figure, goal, info, write_figures  # noqa: E402  # bench/: `--json` (make bench)

from contact_recon.sandbox.generate import generate_fixture, write_fixture  # noqa: E402
from contact_recon.sandbox.server import free_port  # noqa: E402
from contact_recon.settings import Settings  # noqa: E402
from contact_recon.stages.snapshot import SnapshotResult, run_snapshot  # noqa: E402
from contact_recon.store.db import Store, open_db  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GHL_RATE_PER_S = 100 / 10  # per location, times the rate scale
TE_RATE_PER_S = 60 / 60
INGEST_ROWS, INGEST_GOAL_S = 1_000_000, 10.0
ROW_IDS = {"ghl_contacts": "contact_id", "ghl_tasks": "task_id", "ghl_notes": "note_id", "te_customers": "email"}


def make_fixture(contacts: int, tasks: float, notes: float, seed: int) -> dict[str, Any]:
    """A fixture with about `contacts` GHL contacts and 95% as many TinyEmail customers."""
    people = round(contacts / 0.85)  # overlap 0.7: 85% of the people are in GHL, 85% in TinyEmail
    fixture = generate_fixture(people, seed=seed, tasks_per_contact=tasks, notes_per_contact=notes, awkward=0.02)
    te = fixture["tinyemail"]
    keep = te["customers"][: round(contacts * 0.95)]
    emails = {c["email"] for c in keep}
    te["customers"] = keep
    for lst in te["lists"]:
        lst["members"] = [m for m in lst["members"] if m in emails]
    return fixture


def serve(fixture_path: Path, rate_scale: float) -> tuple[list[subprocess.Popen[str]], str, str]:
    """One `recon sandbox serve --only ...` process per system (as in production, two separate services:
    one process serving both would queue TinyEmail pages behind slow GHL searches on its one event loop)."""
    ghl_port, te_port = free_port(), free_port()
    procs = []
    for only, ready in (("ghl", "GHL sandbox"), ("tinyemail", "TinyEmail sandbox")):
        proc = subprocess.Popen(
            [str(REPO / ".venv/bin/recon"), "sandbox", "serve", "--fixture", str(fixture_path), "--ghl-port",
             str(ghl_port), "--tinyemail-port", str(te_port), "--rate-scale", str(rate_scale), "--only", only],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        assert proc.stdout is not None
        for line in proc.stdout:
            if ready in line:
                break
        procs.append(proc)
    return procs, f"http://127.0.0.1:{ghl_port}", f"http://127.0.0.1:{te_port}/v1"


def mutate(ghl_url: str, token: str, location: str, contact_ids: list[str], changes: int, seed: int) -> None:
    """Edits, new notes and deletions through the GHL API (the rate limiter's 429s are waited out)."""
    rng = random.Random(seed)
    targets = rng.sample(contact_ids, min(changes, len(contact_ids)))
    headers = {"Authorization": f"Bearer {token}", "Version": "2021-07-28"}
    with httpx.Client(base_url=ghl_url, headers=headers, timeout=30) as http:
        for i, contact_id in enumerate(targets):
            kind = i % 3
            if kind == 0:
                call = ("PUT", f"/contacts/{contact_id}", {"firstName": f"Bench{i}"})
            elif kind == 1:
                call = ("POST", f"/contacts/{contact_id}/notes", {"body": f"bench note {i}"})
            else:
                call = ("DELETE", f"/contacts/{contact_id}", None)
            while (answer := http.request(call[0], call[1], json=call[2])).status_code == 429:
                time.sleep(float(answer.headers.get("retry-after", "1")))
            answer.raise_for_status()


def minimum(result: SnapshotResult, store: Any, location: str) -> dict[str, int]:
    """The fewest requests the design could do for what this night read."""
    plan = result.plans[f"ghl:{location}"]
    contacts = result.counts["ghl_contacts"]
    n = plan["changed"] + plan["dirty"] + plan["sweep"]
    tasks_read = round(result.counts["ghl_tasks"] * n / max(contacts, 1))
    lists = store.latest_snapshot("te_customers")["lists"].explode().value_counts()
    te = 1 + sum(math.ceil(count / 100) for count in lists["count"])
    return {"ghl": math.ceil(contacts / 500) + max(math.ceil(n / 100), math.ceil(tasks_read / 100)) + n,
            "tinyemail": te}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def log_size(url: str) -> int:
    return int(httpx.get(url + "/__sandbox/requests", params={"offset": 10**9}).json()["total"])


def server_busy_s(url: str, offset: int) -> float:
    """Seconds the (single-threaded) sandbox spent answering the requests logged after `offset`."""
    log = httpx.get(url + "/__sandbox/requests", params={"offset": offset}, timeout=120).json()["requests"]
    return sum(r.get("duration_ms") or 0 for r in log) / 1000


def report(name: str, result: SnapshotResult, store: Any, location: str, rate_scale: float, wall: float,
           cpu: float, busy: float) -> None:
    ghl_used = result.used[f"ghl:{location}"]
    te_used = result.used["tinyemail"]
    floor = max(ghl_used["total"] / (GHL_RATE_PER_S * rate_scale), te_used["total"] / (TE_RATE_PER_S * rate_scale))
    least = minimum(result, store, location)
    rows = sum(result.counts.values())
    plan = result.plans[f"ghl:{location}"]
    print(f"\n== {name} ==")
    print("  rows: " + ", ".join(f"{k} {v:,}" for k, v in result.counts.items()))
    print(f"  notes/tasks read for: changed {plan['changed']:,} + dirty {plan['dirty']:,} + sweep {plan['sweep']:,}")
    print(f"  GHL requests: used {ghl_used['total']:,} (contacts {ghl_used['contacts']:,}, "
          f"tasks {ghl_used['tasks']:,}, notes {ghl_used['notes']:,}; 429s {ghl_used['rate_limited']}, "
          f"retries {ghl_used['retried']}; {ghl_used['wall_s']:.1f} s) "
          f"planned {plan['total']:,}, minimum {least['ghl']:,} -> {ghl_used['total'] / least['ghl']:.3f}x")
    print(f"  TinyEmail requests: used {te_used['total']:,} (429s {te_used['rate_limited']}; "
          f"{te_used['wall_s']:.1f} s), minimum {least['tinyemail']:,} -> {te_used['total'] / least['tinyemail']:.3f}x")
    print(f"  wall {wall:.1f} s, rate-limit floor {floor:.1f} s -> {wall / floor:.3f}x (goal <= 1.2x: "
          f"{'PASS' if wall <= 1.2 * floor else 'FAIL'}); client CPU {cpu:.1f} s, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; GHL sandbox busy {busy:.1f} s "
          f"({busy / wall:.0%} of the wall)")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in ghl_used["phase_s"].items())
    print(f"  time: previous snapshot read {result.load_s:.1f} s, fetch {result.fetch_s:.1f} s (GHL {phases}; "
          f"TinyEmail {te_used['wall_s']:.1f} s), ingest {result.ingest_s:.1f} s")
    print(f"  DuckDB ingest {result.ingest_s:.2f} s for {rows:,} rows ({rows / result.ingest_s:,.0f} rows/s; "
          f"1,000,000 rows at this rate: {1_000_000 / rows * result.ingest_s:.1f} s)")
    print(f"  peak memory (ru_maxrss) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def figures(name: str, result: SnapshotResult, store: Any, location: str, rate_scale: float,
            wall: float) -> list[Figure]:
    """The figures `report` prints, for `--json` (bench/run_all.py)."""
    ghl_used, te_used = result.used[f"ghl:{location}"], result.used["tinyemail"]
    floor = max(ghl_used["total"] / (GHL_RATE_PER_S * rate_scale), te_used["total"] / (TE_RATE_PER_S * rate_scale))
    least, rows = minimum(result, store, location), sum(result.counts.values())
    return [info("snapshot", f"{name}: rows", rows), info("snapshot", f"{name}: GHL requests", ghl_used["total"]),
            info("snapshot", f"{name}: GHL requests / minimum", ghl_used["total"] / least["ghl"], "x"),
            info("snapshot", f"{name}: TinyEmail requests", te_used["total"]),
            info("snapshot", f"{name}: TinyEmail requests / minimum", te_used["total"] / least["tinyemail"], "x"),
            info("snapshot", f"{name}: wall", wall, "s"), info("snapshot", f"{name}: rate-limit floor", floor, "s"),
            goal("snapshot", f"{name}: wall / floor", wall / floor, "<=", 1.2, "x"),
            info("snapshot", f"{name}: DuckDB ingest", result.ingest_s, "s"),
            info("snapshot", f"{name}: peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MiB")]


def scaled_frames(store: Store, rows: int) -> dict[str, Any]:
    """The latest snapshot of every entity, repeated in proportion to `rows` rows in all, ids made unique."""
    import polars as pl

    latest = {entity: store.latest_snapshot(entity) for entity in ROW_IDS}
    total = sum(frame.height for frame in latest.values())
    wanted = {entity: rows * frame.height // total for entity, frame in latest.items()}
    wanted["ghl_notes"] += rows - sum(wanted.values())  # exactly `rows` in all
    out = {}
    for entity, frame in latest.items():
        want = wanted[entity]
        if not frame.height:
            out[entity] = frame
            continue
        big = pl.concat([frame] * -(-want // frame.height), rechunk=True).head(want)
        out[entity] = big.with_columns(pl.format("{}~{}", ROW_IDS[entity], pl.int_range(pl.len(), dtype=pl.Int64))
                                       .alias(ROW_IDS[entity]))
    return out


def ingest_million(store: Store, location: str, tmp: Path) -> tuple[int, float]:
    """(rows, seconds) of ONE write_snapshot of INGEST_ROWS rows in tonight's mix into a fresh store."""
    frames = scaled_frames(store, INGEST_ROWS)
    with open_db(tmp / "ingest.duckdb") as fresh:
        run_id = fresh.start_run("snapshot", [location])
        t0 = time.perf_counter()
        fresh.write_snapshot(run_id, frames, {(location, "ghl_contacts"): "2026-01-01T00:00:00.000Z"},
                             location_ids=[location])
        return sum(f.height for f in frames.values()), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--tasks-per-contact", type=float, default=1.5)
    parser.add_argument("--notes-per-contact", type=float, default=2.0)
    parser.add_argument("--rate-scale", type=float, default=10.0)
    parser.add_argument("--changes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    collected: list[Figure] = []

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fixture = make_fixture(args.contacts, args.tasks_per_contact, args.notes_per_contact, args.seed)
        location = fixture["ghl"]["tokens"][0]["locationId"]
        loc = fixture["ghl"]["locations"][location]
        print(f"fixture: {len(loc['contacts']):,} GHL contacts, {len(loc['tasks']):,} tasks, {len(loc['notes']):,} "
              f"notes, {len(fixture['tinyemail']['customers']):,} TinyEmail customers "
              f"({time.perf_counter() - t0:.1f} s)")
        path = write_fixture(fixture, Path(tmp) / "fixture.json")
        token, key = fixture["ghl"]["tokens"][0]["token"], fixture["tinyemail"]["apiKeys"][0]
        del fixture, loc
        procs, ghl_url, te_url = serve(path, args.rate_scale)
        try:
            settings = Settings(_env_file=None, data_dir=Path(tmp) / "data", ghl_base_url=ghl_url, ghl_token=token,
                                tinyemail_base_url=te_url, tinyemail_api_key=key,
                                tinyemail_rate_per_minute=60 * args.rate_scale)
            with open_db(Path(tmp) / "data" / "recon.duckdb") as store:
                for night in (1, 2):
                    if night == 2:
                        ids = store.latest_snapshot("ghl_contacts")["contact_id"].to_list()
                        mutate(ghl_url, token, location, ids, args.changes, args.seed)
                        time.sleep(11)  # let the mutations leave the server's 10 s window
                    start, cpu, offset = time.perf_counter(), cpu_s(), log_size(ghl_url)
                    result = run_snapshot(settings, store, [location], night_index=night)
                    wall, cpu = time.perf_counter() - start, cpu_s() - cpu
                    report(f"night {night}" + (" (first snapshot)" if night == 1 else " (incremental)"), result,
                           store, location, args.rate_scale, wall, cpu, server_busy_s(ghl_url, offset))
                    collected += figures(f"night {night}", result, store, location, args.rate_scale, wall)
                rows, ingest_s = ingest_million(store, location, Path(tmp))
            print(f"\n== DuckDB ingest of {rows:,} snapshot rows (night 2's mix, one transaction) ==\n"
                  f"  {ingest_s:.2f} s ({rows / ingest_s:,.0f} rows/s; goal < {INGEST_GOAL_S:.0f} s: "
                  f"{'PASS' if ingest_s < INGEST_GOAL_S else 'FAIL'}); peak memory (ru_maxrss) "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
            collected.append(goal("snapshot", f"ingest of {rows:,} snapshot rows", ingest_s, "<", INGEST_GOAL_S, "s"))
            write_figures(args.json, collected)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
