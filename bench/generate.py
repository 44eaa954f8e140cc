"""Benchmark of the fixture generator: 100,000 contacts generated and written to a temporary file.

Prints wall time (generate, write, total), file size, peak memory (ru_maxrss of this process) and
`goal < 30 s: PASS/FAIL`. With `--tracemalloc` a second, traced run follows and prints the Python heap
peak; tracing slows Python down several times, so the goal is judged on the first, untraced run only.

    .venv/bin/python bench/generate.py [--contacts 100000] [--seed 0] [--tracemalloc] [--json PATH]

`--json PATH` also writes the figures there (bench/figures.py; `make bench` collects them).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import goal, info, write_figures  # noqa: E402  # bench/, the script's own directory

from contact_recon.sandbox.generate import generate_fixture, write_fixture  # noqa: E402

GOAL_S = 30.0


def run(contacts: int, seed: int, trace: bool) -> dict[str, float]:
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    fixture = generate_fixture(contacts, seed=seed)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_fixture(fixture, Path(tmp) / "fixture.json")
        t2 = time.perf_counter()
        size = path.stat().st_size
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    if trace:
        tracemalloc.stop()
    return {"generate_s": t1 - t0, "write_s": t2 - t1, "total_s": t2 - t0, "size": size, "heap_peak": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    r = run(args.contacts, args.seed, trace=False)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"contacts:       {args.contacts:,}")
    print(f"generate:       {r['generate_s']:.2f} s")
    print(f"write:          {r['write_s']:.2f} s")
    print(f"wall time:      {r['total_s']:.2f} s")
    print(f"file size:      {r['size'] / 1e6:.1f} MB ({r['size']:,} bytes)")
    print(f"peak RSS:       {maxrss_mb:.0f} MiB (ru_maxrss)")
    passed = r["total_s"] < GOAL_S
    print(f"goal < {GOAL_S:.0f} s: {'PASS' if passed else 'FAIL'}")
    figures = [info("generate", "contacts", args.contacts),
               info("generate", "generate", r["generate_s"], "s"), info("generate", "write", r["write_s"], "s"),
               goal("generate", "wall time", r["total_s"], "<", GOAL_S, "s"),
               info("generate", "file size", r["size"] / 1e6, "MB"), info("generate", "peak RSS", maxrss_mb, "MiB")]
    if args.tracemalloc:
        traced = run(args.contacts, args.seed, trace=True)
        print(f"peak heap:      {traced['heap_peak'] / 2**20:.0f} MiB (tracemalloc, second run, not timed)")
        figures.append(info("generate", "peak heap (tracemalloc)", traced["heap_peak"] / 2**20, "MiB"))
    write_figures(args.json, figures)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
