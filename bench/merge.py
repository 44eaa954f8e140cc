"""Benchmark of the three-way merge: the vectorised engine (engine/merge.py) against the pure-Python baseline.

Builds a reconciled base of N matched people (12 fields: email + 11 merged text fields, tags with shared
and GHL-owned namespaces, list memberships, consent), then lets each side drift independently on 2% of
the people (a name, a city, a cleared phone, a tag added, a tag removed, an unsubscribe / DND), plus a
few new people on each side and a few GHL deletions. Both implementations plan the same snapshots;
the op ids (in order) and the conflict rows must be equal.

Prints plan time of each, the speedup (goal >= 10x) and the peak RSS of the process after the
vectorised plan, measured in a fresh process that reads the snapshots from parquet and plans them twice,
so generator garbage and the baseline's dicts are not counted (goal < 2 GiB). When the baseline on the full size
would be slow, `--baseline-size` runs it (and a second vectorised plan) on a prefix as well.

    .venv/bin/python bench/merge.py [--contacts 1000000] [--drift 0.02] [--baseline-size 100000] [--skip-full-baseline]
        [--json PATH]

`--json PATH` also writes the figures there (bench/figures.py; `make bench` collects them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import Figure, goal, info, write_figures  # noqa: E402
from merge_baseline import plan_baseline  # noqa: E402

from contact_recon.engine.merge import plan  # noqa: E402
from contact_recon.model.policy import Policy  # noqa: E402
from contact_recon.model.records import MERGE_SIDE  # noqa: E402

GOAL_SPEEDUP = 10.0
GOAL_PEAK_GIB = 2.0
TODAY = dt.date(2026, 3, 1)


def _base(n: int) -> pl.DataFrame:
    i = pl.int_range(n, dtype=pl.Int64)
    s = i.cast(pl.String)
    return pl.select(
        key=pl.lit("c") + s.str.zfill(7), contact_id=pl.lit("c") + s.str.zfill(7), email=pl.lit("p") + s + "@x.com",
        first_name=pl.lit("F") + (i * 7919 % 5000).cast(pl.String), last_name=pl.lit("L") + (i % 9973).cast(pl.String),
        phone=pl.lit("+1555") + (i % 10_000_000).cast(pl.String).str.zfill(7),
        company=pl.lit("Co ") + (i % 20000).cast(pl.String), address1=(i % 9999).cast(pl.String) + " Main St",
        city=pl.lit("City") + (i % 500).cast(pl.String), state=pl.lit("S") + (i % 50).cast(pl.String),
        country=pl.lit("US"), postal_code=(i % 99999).cast(pl.String).str.zfill(5),
        birthday=pl.lit("19") + (50 + i % 50).cast(pl.String) + "-01-01",
        source=pl.when(i % 3 == 0).then(pl.lit("web")).otherwise(pl.lit("import")),
        tags=pl.concat_list(pl.lit("a") + (i % 50).cast(pl.String), pl.lit("b") + (i % 7).cast(pl.String),
                            pl.lit("ghl:score-") + (i % 3).cast(pl.String)),
        consent=pl.lit("subscribed"),
        lists=pl.when(i % 4 == 0).then(pl.lit(["news"])).otherwise(pl.lit([], dtype=pl.List(pl.String))),
    )


def _drift(frame: pl.DataFrame, side: str, share: float, seed: int) -> pl.DataFrame:
    i = pl.int_range(frame.height, dtype=pl.Int64)
    hit = ((i * 2654435761 + seed * 97) % 1_000_003) < int(share * 1_000_003)
    kind = (i * 31 + seed) % 6
    tight = "unsubscribed" if side == "tinyemail" else "dnd"
    drop = pl.lit("a") + (i % 50).cast(pl.String)
    return frame.with_columns(
        first_name=pl.when(hit & (kind == 0)).then(pl.col("first_name") + side[0]).otherwise(pl.col("first_name")),
        city=pl.when(hit & (kind == 1)).then(pl.lit("Moved-") + side).otherwise(pl.col("city")),
        tags=pl.when(hit & (kind == 2)).then(pl.col("tags").list.concat(pl.lit(["new-" + side])))
        .when(hit & (kind == 3)).then(pl.col("tags").list.set_difference(pl.concat_list(drop)))
        .otherwise(pl.col("tags")),
        consent=pl.when(hit & (kind == 4)).then(pl.lit(tight)).otherwise(pl.col("consent")),
        phone=pl.when(hit & (kind == 5)).then(None).otherwise(pl.col("phone")),
    )


def snapshots(n: int, share: float) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    base = _base(n)
    list_tags = base["lists"].list.eval(pl.lit("list:") + pl.element())
    ghl = base.with_columns(tags=pl.col("tags").list.concat(list_tags), lists=pl.lit(None, pl.List(pl.String)))
    base = base.with_columns(tags=ghl["tags"])
    te = _drift(base.with_columns(tags=_base(n)["tags"]), "tinyemail", share, seed=1)
    ghl = _drift(ghl, "ghl", share, seed=2)
    extra = max(n // 1000, 1)
    new = _base(n + extra).tail(extra)
    te = pl.concat([te, new.with_columns(key=pl.lit("te:") + pl.col("email"), contact_id=None)])
    ghl = pl.concat([ghl.head(n - extra // 2), new.with_columns(key=pl.col("key") + "g", email=pl.col("email") + "g")])
    return base.cast(MERGE_SIDE), te.cast(MERGE_SIDE), ghl.cast(MERGE_SIDE)  # type: ignore[arg-type]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_polars(base, te, ghl, policy):
    t0 = time.perf_counter()
    result = plan(base, te, ghl, policy, today=TODAY)
    return result, time.perf_counter() - t0


def time_baseline(base, te, ghl, policy):
    t0 = time.perf_counter()
    rows = base.to_dicts(), te.to_dicts(), ghl.to_dicts()
    t1 = time.perf_counter()
    ops, conflicts = plan_baseline(*rows, policy, today=TODAY)
    return (ops, conflicts), t1 - t0, time.perf_counter() - t1


def compare(label: str, n: int, base, te, ghl, policy, polars_result=None, polars_s=None,
            figures: list[Figure] | None = None) -> bool:
    if polars_result is None:
        polars_result, polars_s = time_polars(base, te, ghl, policy)
    (ops, conflicts), convert_s, baseline_s = time_baseline(base, te, ghl, policy)
    same = [op.id for op in ops] == polars_result.ops["op_id"].to_list() and \
        conflicts == polars_result.conflicts.to_dicts()
    speedup = baseline_s / polars_s
    print(f"[{label}] {n:,} people: polars {polars_s:.2f} s | baseline {baseline_s:.2f} s "
          f"(+ {convert_s:.2f} s frames -> dicts, not counted) | speedup {speedup:.1f}x "
          f"(goal >= {GOAL_SPEEDUP:.0f}x: {'PASS' if speedup >= GOAL_SPEEDUP else 'FAIL'}) | "
          f"same plan: {'yes' if same else 'NO'} ({polars_result.ops.height:,} ops, "
          f"{polars_result.conflicts.height:,} conflicts)")
    if figures is not None:
        figures += [info("merge", f"{label}: people", n), info("merge", f"{label}: polars plan", polars_s, "s"),
                    info("merge", f"{label}: baseline plan", baseline_s, "s"),
                    goal("merge", f"{label}: speedup", speedup, ">=", GOAL_SPEEDUP, "x"),
                    goal("merge", f"{label}: same plan as the baseline", float(same), "==", 1.0, "(1 = yes)")]
    return same and speedup >= GOAL_SPEEDUP


def child(directory: str) -> int:
    """Measure the vectorised plan alone: a fresh process reads the snapshots (parquet) and plans them."""
    base, te, ghl = (pl.read_parquet(Path(directory) / f"{name}.parquet") for name in ("base", "te", "ghl"))
    loaded = peak_mib()
    result, first = time_polars(base, te, ghl, Policy())
    peak = peak_mib()
    _, again = time_polars(base, te, ghl, Policy())
    print(f"{first} {again} {loaded} {peak} {result.ops.height}")
    return 0


def measure_in_fresh_process(base, te, ghl) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in (("base", base), ("te", te), ("ghl", ghl)):
            frame.write_parquet(Path(tmp) / f"{name}.parquet")
        out = subprocess.run([sys.executable, __file__, "--child", tmp], check=True, capture_output=True, text=True)
    first, again, loaded, peak, _ = (float(x) for x in out.stdout.split())
    return first, again, loaded, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--drift", type=float, default=0.02)
    parser.add_argument("--baseline-size", type=int, default=100_000)
    parser.add_argument("--skip-full-baseline", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    policy = Policy()
    base, te, ghl = snapshots(args.contacts, args.drift)
    polars_s, polars_again, loaded, peak = measure_in_fresh_process(base, te, ghl)
    result, _ = time_polars(base, te, ghl, policy)
    print(f"snapshots: base {base.height:,}, TinyEmail {te.height:,}, GHL {ghl.height:,} (drift {args.drift:.0%} "
          f"per side); ops {result.ops.height:,}, conflicts {result.conflicts.height:,}, held: {result.held}")
    print(f"polars plan (fresh process): {polars_s:.2f} s (again: {polars_again:.2f} s)")
    print(f"peak RSS of that process: {peak:,.0f} MiB (after reading the snapshots: {loaded:,.0f} MiB) "
          f"goal < {GOAL_PEAK_GIB:.0f} GiB: {'PASS' if peak < GOAL_PEAK_GIB * 1024 else 'FAIL'}")
    ok = peak < GOAL_PEAK_GIB * 1024
    figures = [info("merge", "people", args.contacts), info("merge", "ops", result.ops.height),
               info("merge", "polars plan (fresh process)", polars_s, "s"),
               info("merge", "polars plan again", polars_again, "s"),
               goal("merge", "peak RSS of the planning process", peak, "<", GOAL_PEAK_GIB * 1024, "MiB")]
    if args.baseline_size and args.baseline_size < args.contacts:
        small = snapshots(args.baseline_size, args.drift)
        ok = compare("subset", args.baseline_size, *small, policy, figures=figures) and ok
    if not args.skip_full_baseline:
        ok = compare("full", args.contacts, base, te, ghl, policy, result, min(polars_s, polars_again),
                     figures=figures) and ok
    write_figures(args.json, figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
