"""The review commands while a run holds the store (DuckDB locks its file for one process): `recon runs` waits for
it, and when it stays held says "store busy" in one line, never a DuckDB lock traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contact_recon.cli import report as review
from contact_recon.cli.main import app
from contact_recon.store.db import db_path, open_db

HOLD = ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
        "time.sleep(float(sys.argv[2]))")


def hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def release(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait()
    assert holder.stdout is not None
    holder.stdout.close()


def says_store_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """`recon ARGS` while another process holds a store with one run: one line saying "store busy", exit 1."""
    monkeypatch.setenv("RECON_DATA_DIR", str(tmp_path))
    with open_db(db_path(tmp_path)) as store:
        store.finish_run(store.start_run("plan", ["L1"]), "planned")
    holder = hold(db_path(tmp_path), 30)
    try:
        monkeypatch.setattr(review, "REVIEW_WAIT_S", 1.0)
        busy = CliRunner().invoke(app, list(args))
        assert busy.exit_code == 1, busy.output
        assert "store busy" in busy.output and "Traceback" not in busy.output and "IOException" not in busy.output
    finally:
        release(holder)


def test_recon_runs_waits_for_a_run_thensays_store_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    says_store_busy(tmp_path, monkeypatch, "runs")
    # held only briefly: the command waits for it and answers
    holder = hold(db_path(tmp_path), 1.5)
    monkeypatch.setattr(review, "REVIEW_WAIT_S", 20.0)
    started = time.monotonic()
    waited = CliRunner().invoke(app, ["runs"])
    release(holder)
    assert waited.exit_code == 0, waited.output
    assert "plan" in waited.output and time.monotonic() - started >= 0.5


def test_recon_explainsays_store_busy_while_a_run_holds_the_store(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    says_store_busy(tmp_path, monkeypatch, "explain", "someone@example.com")
    # free again: the command answers (the store has never seen that person)
    answered = CliRunner().invoke(app, ["explain", "someone@example.com"])
    assert answered.exit_code == 1 and "no snapshot, base row or id_map link names" in answered.output
