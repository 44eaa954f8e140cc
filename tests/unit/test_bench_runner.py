"""The benchmark runner (bench/run_all.py) with stand-in benchmark scripts: it runs each one in its own
process, keeps going past a crash, a silent exit and a timeout, writes the JSON and Markdown reports, and
exits 1 when a benchmark failed or a goal was missed. No timing is judged here (bench/ does that)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support import REPO

BENCH = REPO / "bench"
sys.path.append(str(BENCH))  # appended: bench/checks.py must not hide the checks package

from figures import Figure, goal, info, read_figures, write_figures  # noqa: E402
from run_all import Bench, run_all  # noqa: E402

WRITES = f"""
import argparse, sys
sys.path.insert(0, {str(BENCH)!r})
from figures import goal, info, write_figures
parser = argparse.ArgumentParser()
parser.add_argument("--json")
parser.add_argument("--measured", type=float, default=1.0)
args = parser.parse_args()
print("working")
figures = [info("{{name}}", "rows", 3), goal("{{name}}", "wall time", args.measured, "<", 2.0, "s")]
write_figures(args.json, figures)
sys.exit(0 if args.measured < 2.0 else 1)
"""


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(body.replace("{name}", name), encoding="utf-8")
    return str(path)


def test_a_figure_knows_its_goal_and_survives_the_json_round_trip(tmp_path: Path) -> None:
    figures = [goal("b", "wall", 3.5, "<", 30, "s"), goal("b", "share", 0.8, ">=", 0.9), info("b", "size", 12.25, "MB"),
               goal("b", "never measured", None, "==", 0)]
    assert [f.passed for f in figures] == [True, False, None, False]
    assert figures[0].goal == "< 30 s" and figures[2].goal == ""
    write_figures(tmp_path / "f.json", figures)
    assert read_figures(tmp_path / "f.json") == figures
    with pytest.raises(ValueError, match="operator"):
        Figure("b", "x", 1.0, op="~", target=1.0)


def test_the_runner_keeps_going_and_reports_every_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    benches = [
        Bench("good", script(tmp_path, "good", WRITES), quick=()),
        Bench("crash", script(tmp_path, "crash", "raise RuntimeError('the bench broke')\n")),
        Bench("silent", script(tmp_path, "silent", "print('forgot the figures')\n")),
        Bench("slow", script(tmp_path, "slow", "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n"),
              quick_timeout_s=1.0),
        Bench("missed", script(tmp_path, "missed", WRITES), quick=("--measured", "5")),
    ]
    status = run_all(benches, quick=True, out_dir=tmp_path / "results", name="latest", echo=True)

    assert status == 1
    data = json.loads((tmp_path / "results" / "latest.json").read_text())
    by_name = {b["name"]: b for b in data["benchmarks"]}
    assert [b["name"] for b in data["benchmarks"]] == ["good", "crash", "silent", "slow", "missed"]
    assert by_name["good"]["status"] == "completed" and by_name["good"]["passed"]
    assert by_name["crash"]["status"] == "failed" and "the bench broke" in by_name["crash"]["error"]
    assert by_name["silent"]["status"] == "failed" and "no figures" in by_name["silent"]["error"]
    assert by_name["slow"]["status"] == "timeout" and "timeout" in by_name["slow"]["error"]  # killed, not waited for
    assert by_name["slow"]["output_tail"] == ["sleeping"] and by_name["slow"]["exit_code"] == -9
    assert by_name["missed"]["status"] == "completed" and not by_name["missed"]["passed"]
    assert by_name["good"]["peak_rss_mib"] > 0 and by_name["good"]["output_tail"] == ["working"]
    assert {(f["benchmark"], f["figure"], f["passed"]) for f in data["figures"]} == {
        ("good", "rows", None), ("good", "wall time", True), ("missed", "rows", None), ("missed", "wall time", False)}
    assert data["passed"] is False and data["mode"] == "quick" and data["machine"]["cpus"] >= 1

    md = (tmp_path / "results" / "latest.md").read_text()
    assert md.startswith("# Benchmarks (quick): FAIL")
    assert "| good | wall time | < 2 s | 1 | s | PASS |" in md
    assert "| missed | wall time | < 2 s | 5 | s | FAIL |" in md
    assert "| crash | (the benchmark itself) | runs to the end | failed | | FAIL |" in md
    assert "| slow | (the benchmark itself) | runs to the end | timeout | | FAIL |" in md
    assert "[good] working" in capsys.readouterr().out


def test_the_runner_exits_0_when_every_goal_is_met(tmp_path: Path) -> None:
    benches = [Bench("one", script(tmp_path, "one", WRITES)), Bench("two", script(tmp_path, "two", WRITES))]
    assert run_all(benches, quick=False, out_dir=tmp_path, name="latest", echo=False) == 0
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["passed"] is True and len(data["figures"]) == 4
    assert (tmp_path / "latest.md").read_text().startswith("# Benchmarks (full): PASS")


NIGHTLY = f"""
import argparse, sys
sys.path.insert(0, {str(BENCH)!r})
from figures import info, write_figures
parser = argparse.ArgumentParser()
parser.add_argument("--json")
parser.add_argument("--contacts", type=int)
parser.add_argument("--peak", type=float)
args = parser.parse_args()
write_figures(args.json, [info("nightly", "contacts", args.contacts), info("nightly", "peak RSS", args.peak, "MiB"),
                          info("nightly", "CPU", args.contacts / 1000, "s"),
                          info("nightly", "CPU: snapshot", args.contacts / 4000, "s")])
"""


def test_the_report_files_figures_under_the_registered_name_and_draws_the_growth_curve(tmp_path: Path) -> None:
    """Three sizes of one script that calls itself "nightly": each size's figures under its own name, and
    the growth curve by contacts (registered out of order) with the slope between neighbours."""
    path = script(tmp_path, "nightly", NIGHTLY)
    benches = [Bench("nightly", path, ("--contacts", "100000", "--peak", "700")),
               Bench("nightly-10k", path, ("--contacts", "10000", "--peak", "400")),
               Bench("nightly-1m", path, ("--contacts", "1000000", "--peak", "1600")),
               Bench("other", script(tmp_path, "other", WRITES))]
    assert run_all(benches, quick=False, out_dir=tmp_path, name="latest", echo=False) == 0
    data = json.loads((tmp_path / "latest.json").read_text())
    peaks = {(f["benchmark"], f["measured"]) for f in data["figures"] if f["figure"] == "peak RSS"}
    assert peaks == {("nightly", 700), ("nightly-10k", 400), ("nightly-1m", 1600)}
    assert [(p["benchmark"], p["contacts"], p["peak_rss_mib"], p.get("mib_per_1000")) for p in data["growth"]] == [
        ("nightly-10k", 10_000, 400, None), ("nightly", 100_000, 700, 3.333), ("nightly-1m", 1_000_000, 1600, 1.0)]
    assert data["growth"][2]["cpu_s"] == 1000 and data["growth"][2]["snapshot_cpu_s"] == 250
    assert data["growth"][2]["plan_cpu_s"] is None
    md = (tmp_path / "latest.md").read_text()
    assert "## Growth: night 2 by location size" in md
    assert "| nightly-1m | 1,000,000 | 1,600 | 1 | 1,000 | 250 | n/a |" in md
    assert "| nightly-10k | nightly-10k | contacts |" not in md and "| nightly-10k | contacts |  | 10,000 |" in md
