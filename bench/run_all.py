"""Run every registered benchmark and write one report: `bench/results/latest.json` and `latest.md`.

`make bench` runs the full sizes; `make bench-quick` (`--quick`) runs small ones in about two minutes
to prove the machinery and writes `quick.json` / `quick.md` instead, so it never replaces the full
figures. Goals that only mean something at scale (the merge speedup) are left out of the quick
arguments.

How a run goes:
1. Each benchmark of `BENCHMARKS` runs as its own process (`python <script> <args> --json <tmp>`), one
   after another, so timings do not compete and each process's peak memory is its own. Its output
   is echoed with a `[name]` prefix; the last lines are kept for the report.
2. The script writes its figures (bench/figures.py) to the `--json` file. The runner reads them back
   and also records, from `os.wait4`, the process's wall time, CPU time and peak RSS.
3. A benchmark that crashes, writes no figures or runs past its timeout (its process group is
   killed) is recorded as failed with the error and its last output; the next one runs anyway.
4. The report lists one row per figure (benchmark, figure, goal, measured, unit, PASS/FAIL; a figure
   is filed under the registered name, whatever the script called itself), the machine (CPU, memory,
   Python, library versions, commit when readable) and the date (UTC); then the growth curve: night 2's
   peak memory and CPU time at each size the nightly ran (10,000, 100,000 and 1,000,000 contacts in
   `make bench`), with the slope in MiB per 1,000 contacts between sizes (`growth` in the JSON).
5. Exit 0 when every benchmark completed and no goal was missed, else 1.

Registering a benchmark (e.g. `bench/apply.py`, the nightly end-to-end run): append a `Bench` to
`BENCHMARKS` with its full and quick arguments and a timeout. The script's contract: accept
`--json PATH` and write its figures there with `figures.write_figures`; print what it likes.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--out bench/results] [--name latest] [--list]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import Figure, read_figures  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TAIL_LINES = 30
VERSIONS = ("polars", "duckdb", "prefect", "great-expectations", "httpx", "pydantic")


@dataclass(frozen=True)
class Bench:
    """One registered benchmark: a script under the repo, its arguments per mode, and a timeout."""

    name: str
    script: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    timeout_s: float = 3600.0
    quick_timeout_s: float = 300.0

    def command(self, quick: bool, json_path: Path) -> list[str]:
        args = self.quick if quick else self.full
        return [sys.executable, str(REPO / self.script), *args, "--json", str(json_path)]


BENCHMARKS: list[Bench] = [
    Bench("generate", "bench/generate.py", (), ("--contacts", "5000"), timeout_s=600),
    Bench("ingest", "bench/ingest.py", (), ("--rows", "50000", "--sample", "2000"), timeout_s=900),
    Bench("merge", "bench/merge.py", (),
          ("--contacts", "20000", "--baseline-size", "0", "--skip-full-baseline"), timeout_s=3600),
    Bench("checks", "bench/checks.py", (), ("--contacts", "2000"), timeout_s=900),
    Bench("snapshot", "bench/snapshot.py", (), ("--contacts", "1000", "--changes", "60"), timeout_s=7200),
    Bench("apply", "bench/apply.py", (), ("--contacts", "300"), timeout_s=1800),
    Bench("rejects", "bench/rejects.py", (), ("--contacts", "300", "--share", "0.02"), timeout_s=1800),
    Bench("events", "bench/events.py", (), ("--quick",), timeout_s=1800, quick_timeout_s=900),
    Bench("connectors", "bench/connectors.py", (),
          ("--seconds", "10", "--skip-tinyemail", "--contacts", "500"), timeout_s=1200),
    Bench("nightly", "bench/nightly.py", (), ("--contacts", "2000"), timeout_s=5400,
          quick_timeout_s=600),
    # the growth curve beside the 100,000 above: night 2's peak memory and CPU time at 10,000 contacts
    Bench("nightly-10k", "bench/nightly.py", ("--contacts", "10000"), ("--contacts", "1000"), timeout_s=2400,
          quick_timeout_s=600),
    # ... and at 1,000,000 (issue 20): night 2 below 2 GiB, the first night's peak printed as `base run peak RSS`;
    # both nights at rate scale 100 (at 10 the base night alone would read a million notes for hours); the whole
    # benchmark took 46 minutes on 2026-12-06 (fixture, base night, next day, drift, a night 2 that stopped in its
    # apply stage), about 48 with the whole night 2: 1.5x that
    Bench("nightly-1m", "bench/nightly.py", ("--contacts", "1000000", "--rate-scale", "100"), ("--contacts", "3000"),
          timeout_s=4500, quick_timeout_s=600),
    Bench("tenants", "bench/tenants.py", (), ("--tenants", "3", "--contacts", "100"), timeout_s=1800,
          quick_timeout_s=600),
    Bench("workers", "bench/workers.py", ("--tenants", "20"), ("--tenants", "3"), timeout_s=3600, quick_timeout_s=900),
]


@dataclass
class BenchResult:
    name: str
    script: str
    args: list[str]
    status: str  # "completed" | "failed" | "timeout"
    exit_code: int | None
    seconds: float
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    error: str | None = None
    output_tail: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "completed" and all(f.passed is not False for f in self.figures)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["figures"] = [f.to_dict() for f in self.figures]
        return data


# ------------------------------------------------------------------------------------------ running


def run_bench(bench: Bench, quick: bool, echo: bool = True) -> BenchResult:
    """Run one benchmark in its own process group and judge what it left (module docstring, 1-3)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{bench.name}-") as tmp:
        json_path = Path(tmp) / "figures.json"
        command = bench.command(quick, json_path)
        timeout = bench.quick_timeout_s if quick else bench.timeout_s
        started = time.perf_counter()
        exit_code, usage, tail, timed_out = _execute(command, timeout, bench.name if echo else None)
        result = BenchResult(bench.name, bench.script, command[2:-2], "completed", exit_code,
                             round(time.perf_counter() - started, 3), output_tail=list(tail))
        if usage is not None:
            result.cpu_s = round(usage.ru_utime + usage.ru_stime, 3)
            result.peak_rss_mib = round(usage.ru_maxrss / 1024, 1)
        _judge(result, json_path, timed_out, timeout)
    # under the registered name: nightly-10k, nightly and nightly-1m run one script that says "nightly"
    result.figures = [replace(f, benchmark=bench.name) for f in result.figures]
    return result


def _execute(command: list[str], timeout: float, prefix: str | None
             ) -> tuple[int | None, Any, deque[str], bool]:
    """Run `command`, echo its output, kill its process group after `timeout` s; (exit, rusage, tail, timed out)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=env, start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        _kill_group(proc.pid)

    timer = threading.Timer(timeout, kill)
    timer.start()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if prefix:
                print(f"[{prefix}] {line}", end="", flush=True)
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        _kill_group(proc.pid)  # whatever the benchmark left running (sandbox servers) goes with it
        if proc.stdout is not None:
            proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage, tail, timed_out.is_set()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _judge(result: BenchResult, json_path: Path, timed_out: bool, timeout: float) -> None:
    """Read the figures and set the status: a timeout, a crash or missing figures make a failed benchmark."""
    if json_path.exists():
        try:
            result.figures = read_figures(json_path)
        except (ValueError, TypeError, KeyError) as exc:
            result.error = f"unreadable figures: {type(exc).__name__}: {exc}"
    if timed_out:
        result.status, result.error = "timeout", f"killed after the {timeout:.0f} s timeout"
    elif result.error is not None:
        result.status = "failed"
    elif not result.figures:
        result.status, result.error = "failed", f"exit code {result.exit_code}, no figures written"
    elif result.exit_code != 0 and all(f.passed is not False for f in result.figures):
        result.status, result.error = "failed", f"exit code {result.exit_code} although every goal passed"
    if result.error and result.output_tail:
        result.error += f" (last output: {result.output_tail[-1][:300]})"


# ------------------------------------------------------------------------------------------ reporting


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, memory, load, Python, library versions, the commit if readable."""
    info: dict[str, Any] = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": _cpu_model(), "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(), "load_average_at_start": round(os.getloadavg()[0], 2),
        "commit": _commit(),
    }
    info["versions"] = {name: _version(name) for name in VERSIONS}
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _commit() -> str | None:
    """The checked-out commit, read from .git without running git (None when not readable)."""
    git = REPO / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def report(results: Sequence[BenchResult], mode: str, started: dt.datetime, host: dict[str, Any]) -> dict[str, Any]:
    return {
        "date": started.isoformat(timespec="seconds"), "mode": mode,
        "passed": all(r.passed for r in results), "machine": host,
        "figures": [f.to_dict() for r in results for f in r.figures],
        "benchmarks": [{k: v for k, v in r.to_dict().items() if k != "figures"} | {"passed": r.passed}
                       for r in results],
        "growth": growth(results),
    }


GROWTH_FIGURES = {"peak_rss_mib": "peak RSS", "cpu_s": "CPU", "snapshot_cpu_s": "CPU: snapshot",
                  "plan_cpu_s": "CPU: merge + checks"}  # the nightly's night-2 figures (bench/nightly.py)


def growth(results: Sequence[BenchResult]) -> list[dict[str, Any]]:
    """The growth curve: one point per benchmark that reports `contacts` and `peak RSS` (the nightly at each
    size), by contacts, each with the memory slope from the point before in MiB per 1,000 contacts."""
    points: list[dict[str, Any]] = []
    for result in results:
        measured = {f.figure: f.measured for f in result.figures}
        if measured.get("contacts") and measured.get("peak RSS") is not None:
            points.append({"benchmark": result.name, "contacts": int(measured["contacts"] or 0)}
                          | {key: measured.get(name) for key, name in GROWTH_FIGURES.items()})
    points.sort(key=lambda point: point["contacts"])
    for before, after in pairwise(points):
        step = (after["contacts"] - before["contacts"]) / 1000
        after["mib_per_1000"] = round((after["peak_rss_mib"] - before["peak_rss_mib"]) / step, 3) if step else None
    return points


def markdown(data: dict[str, Any]) -> str:
    host = data["machine"]
    lines = [f"# Benchmarks ({data['mode']}): {'PASS' if data['passed'] else 'FAIL'}", "",
             f"- date: {data['date']}",
             f"- machine: {host['cpu']}, {host['cpus_usable']} of {host['cpus']} CPUs, {host['memory_gib']} GiB, "
             f"load {host['load_average_at_start']} at start; {host['platform']}; Python {host['python']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in host["versions"].items() if v),
             f"- commit: {host['commit'] or 'unknown'}", "",
             "| benchmark | figure | goal | measured | unit | pass/fail |", "|---|---|---|---|---|---|"]
    for bench in data["benchmarks"]:
        rows = [f for f in data["figures"] if f["benchmark"] == bench["name"]]
        lines += [_row(f) for f in rows]
        if bench["status"] != "completed":
            lines.append(f"| {bench['name']} | (the benchmark itself) | runs to the end | {bench['status']} | | FAIL |")
    lines += ["", "| benchmark | status | exit | wall s | CPU s | peak RSS MiB | arguments |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {b['name']} | {b['status']} | {b['exit_code']} | {b['seconds']:.1f} | {b['cpu_s']} | "
              f"{b['peak_rss_mib']} | `{' '.join(b['args']) or '(defaults)'}` |" for b in data["benchmarks"]]
    if data.get("growth"):
        lines += ["", "## Growth: night 2 by location size", "",
                  "| benchmark | contacts | peak RSS MiB | MiB per 1,000 contacts since the row above | CPU s | "
                  "snapshot CPU s | plan CPU s |", "|---|---|---|---|---|---|---|"]
        lines += [_growth_row(point) for point in data["growth"]]
    errors = [b for b in data["benchmarks"] if b["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- **{b['name']}**: {_cell(b['error'])}" for b in errors]
    return "\n".join(lines) + "\n"


def _growth_row(p: dict[str, Any]) -> str:
    return (f"| {p['benchmark']} | {p['contacts']:,} | {_fmt(p['peak_rss_mib'])} | {_fmt(p.get('mib_per_1000'))} | "
            f"{_fmt(p['cpu_s'])} | {_fmt(p['snapshot_cpu_s'])} | {_fmt(p['plan_cpu_s'])} |")


def _row(f: dict[str, Any]) -> str:
    verdict = {True: "PASS", False: "FAIL", None: ""}[f["passed"]]
    return (f"| {f['benchmark']} | {_cell(f['figure'])} | {_cell(f['goal'])} | {_fmt(f['measured'])} | "
            f"{_cell(f['unit'])} | {verdict} |")


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(data: dict[str, Any], out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / f"{name}.json", out_dir / f"{name}.md"
    for path, text in zip(paths, (json.dumps(data, indent=2) + "\n", markdown(data)), strict=True):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


# ------------------------------------------------------------------------------------------ main


def run_all(benches: Sequence[Bench], *, quick: bool, out_dir: Path, name: str, echo: bool = True) -> int:
    """Run `benches` one after another, write the report, return the exit status (module docstring)."""
    started, host = dt.datetime.now(dt.UTC), machine()
    results = []
    for bench in benches:
        if echo:
            print(f"== {bench.name}: {bench.script} ({'quick' if quick else 'full'})", flush=True)
        results.append(run_bench(bench, quick, echo))
        if echo:
            print(f"== {bench.name}: {results[-1].status}, {'PASS' if results[-1].passed else 'FAIL'} "
                  f"({results[-1].seconds:.1f} s)", flush=True)
    data = report(results, "quick" if quick else "full", started, host)
    json_path, md_path = write_report(data, out_dir, name)
    if echo:
        print(markdown(data))
        print(f"written: {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}, "
              f"{md_path.name}")
    return 0 if data["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about two minutes)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes (bench/results)")
    parser.add_argument("--name", help="report file name without suffix (default: latest, or quick with --quick)")
    parser.add_argument("--list", action="store_true", help="list the registered benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for bench in BENCHMARKS:
            print(f"{bench.name:12} {bench.script:22} full: {' '.join(bench.full) or '(defaults)'}; "
                  f"quick: {' '.join(bench.quick)}")
        return 0
    benches = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    unknown = set(args.only or ()) - {b.name for b in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return run_all(benches, quick=args.quick, out_dir=args.out, name=args.name or ("quick" if args.quick else "latest"))


if __name__ == "__main__":
    raise SystemExit(main())
