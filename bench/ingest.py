"""Benchmark of the DuckDB ingest: 1,000,000 snapshot rows written through `Store.write_snapshot`.

Rows are real GHL_CONTACTS rows (from generated contacts, mapped by contact_recon/systems/ghl/mapping.py) repeated
under unique contact ids until there are `--rows` of them, so the raw JSON and hashes have realistic
sizes. The file lives in a temporary directory. Prints the normalisation rate of the sample, the ingest
wall time of ONE write_snapshot transaction (frames + watermark + commit), the read-back time of
`latest_snapshot`, the file size, peak memory (ru_maxrss) and `goal < 10 s: PASS/FAIL`.

    .venv/bin/python bench/ingest.py [--rows 1000000] [--sample 10000] [--json PATH]

`--json PATH` also writes the figures there (bench/figures.py; `make bench` collects them).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import goal, info, write_figures  # noqa: E402  # bench/, the script's own directory

from contact_recon.model.normalise import to_frame
from contact_recon.model.records import GHL_CONTACTS
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.store.db import open_db
from contact_recon.systems.ghl.mapping import ghl_contact_record

GOAL_S = 10.0


def sample_rows(sample: int) -> tuple[pl.DataFrame, float]:
    """Normalised GHL rows of `sample` generated people, and the normalisation rate (rows/s)."""
    fixture = generate_fixture(sample, seed=7, overlap=1.0)
    payloads = [(c, loc) for loc, data in fixture["ghl"]["locations"].items() for c in data["contacts"]]
    t0 = time.perf_counter()
    frame = to_frame([ghl_contact_record(c, loc) for c, loc in payloads], GHL_CONTACTS)
    return frame, len(payloads) / (time.perf_counter() - t0)


def scale(frame: pl.DataFrame, rows: int) -> pl.DataFrame:
    """`frame` repeated to `rows` rows with unique contact ids."""
    times = -(-rows // frame.height)
    big = pl.concat([frame] * times).head(rows)
    return big.with_columns(contact_id=pl.format("c{}", pl.int_range(pl.len(), dtype=pl.Int64)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    sample, rate = sample_rows(args.sample)
    frame = scale(sample, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recon.duckdb"
        with open_db(path) as store:
            run = store.start_run("snapshot", frame["location_id"].unique().to_list())
            t0 = time.perf_counter()
            store.write_snapshot(run, {"ghl_contacts": frame}, {("bench", "ghl_contacts"): "2026-01-01"})
            ingest_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            back = store.latest_snapshot("ghl_contacts")
            read_s = time.perf_counter() - t1
            assert back.height == frame.height
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"rows:           {frame.height:,} (frame {frame.estimated_size() / 2**20:.0f} MiB in memory)")
    print(f"normalise:      {rate:,.0f} rows/s (ghl_contact_record, {sample.height:,} sample rows)")
    print(f"ingest:         {ingest_s:.2f} s ({frame.height / ingest_s:,.0f} rows/s, one transaction)")
    print(f"read back:      {read_s:.2f} s (latest_snapshot, sorted)")
    print(f"file size:      {size / 1e6:.0f} MB")
    print(f"peak RSS:       {maxrss_mb:.0f} MiB (ru_maxrss)")
    passed = ingest_s < GOAL_S
    print(f"goal < {GOAL_S:.0f} s: {'PASS' if passed else 'FAIL'}")
    write_figures(args.json, [
        info("ingest", "rows", frame.height), info("ingest", "normalise rate", rate, "rows/s"),
        goal("ingest", "ingest (one transaction)", ingest_s, "<", GOAL_S, "s"),
        info("ingest", "ingest rate", frame.height / ingest_s, "rows/s"), info("ingest", "read back", read_s, "s"),
        info("ingest", "file size", size / 1e6, "MB"), info("ingest", "peak RSS", maxrss_mb, "MiB")])
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
