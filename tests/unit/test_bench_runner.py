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
