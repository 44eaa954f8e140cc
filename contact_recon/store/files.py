"""A run's files under the data dir, and the one way we write a file: whole or not at all.

Layout: `<data_dir>/runs/<run_id>/` holds `plan.parquet` and `conflicts.csv` (the plan stage),
`state/*.parquet` (what the apply stage needs to advance the base), `summary.json` and `report.html`
(the report). Every writer goes through `atomic_write` / `atomic_text`: a temporary file beside the
target, then `os.replace`, so a reader (or a crash) never sees half a file. The one exception is the
token file (`systems/auth.py`), which also sets mode 0600 and fsyncs before the rename.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUNS_DIR = "runs"
PLAN_FILE = "plan.parquet"
CONFLICTS_FILE = "conflicts.csv"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"


def run_dir(data_dir: str | Path, run_id: str) -> Path:
    """Where a run's files live: `<data_dir>/runs/<run_id>/`."""
    return Path(data_dir) / RUNS_DIR / run_id


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then move it into place (same file system)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` whole or not at all."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
