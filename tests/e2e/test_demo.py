"""`recon demo` as a newcomer first runs it: a process of its own, no PREFECT_API_URL (so Prefect's temporary server,
on a new database in the demo's own Prefect home), a data dir that does not exist yet. A small fixture keeps it short;
the story is the one `make demo` tells at 2,000 people.

What a first impression needs: exit 0, no traceback and no error line anywhere in its output (a temporary server's
telemetry printed a "database is locked" traceback, then a "Failed to send telemetry" error without network), and
last words that say how to open the report and the flow runs it just made in the Prefect UI, each true: the report
file is there, and that Prefect home's database holds those flow runs. Everything it leaves is owner-only.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from tests.support.modes import loose_modes

FLOW_RUN_URL = re.compile(r"http://127\.0\.0\.1:4200/runs/flow-run/([0-9a-f-]{36}) .*the first one is ([0-9a-f-]{36})")


def test_the_demo_prints_no_traceback_and_ends_saying_where_its_report_and_flow_runs_are(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECON_", "PREFECT_"))}
    env |= {"RECON_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    if "RECON_SPECS_DIR" in os.environ:
        env["RECON_SPECS_DIR"] = os.environ["RECON_SPECS_DIR"]
    demo = subprocess.run([sys.executable, "-m", "contact_recon.cli.main", "demo", "--contacts", "40"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=280)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "Traceback" not in output and "database is locked" not in output, output
    assert not [line for line in demo.stderr.splitlines() if " | ERROR " in line or "Error logging" in line], output

    last = demo.stdout[demo.stdout.index("6. what it just did:"):]
    report = Path(unquote(urlparse(re.search(r"file://\S+report\.html", last).group(0)).path))  # type: ignore[union-attr]
    assert report.is_file() and report.with_name("summary.json").is_file()
    assert f"report {report.parent.name}" in last  # `recon report RUN_ID` shows it again
    home = tmp_path / "data" / "demo" / "prefect"
    assert f"PREFECT_HOME={home} " in last and "prefect server start" in last
    nightly, first = FLOW_RUN_URL.search(" ".join(last.split())).groups()  # type: ignore[union-attr]
    with sqlite3.connect(home / "prefect.db") as db:
        kept = {row[0] for row in db.execute("SELECT id FROM flow_run")}
    assert {nightly, first} <= kept, (kept, last)
    assert loose_modes(tmp_path / "data") == []
