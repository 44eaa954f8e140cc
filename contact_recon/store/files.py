"""A run's files under the data dir, the one way we write a file (whole or not at all), and owner-only modes.

Layout: `<data_dir>/runs/<run_id>/` holds `plan.parquet`, `conflicts.csv`, `identity.csv` (the open identity
reviews) and `quarantine.parquet` (the quarantined ops with their context) (the plan stage),
`state/*.parquet` (what the apply stage needs to advance the base), `summary.json` and `report.html`
(the report). Every writer goes through `atomic_write` / `atomic_text`: a temporary file beside the
target, then `os.replace`, so a reader (or a crash) never sees half a file. The one exception is the
token file (`systems/auth.py`), which also fsyncs before the rename.

Everything under the data dir holds customer data (or credentials), so it is its owner's alone: folders 0700,
files 0600, whatever the umask. What we create gets that mode explicitly (`private_dir`, `atomic_write`,
`open_private`); what libraries create for us (DuckDB's database and its write-ahead log, the great-expectations
project) is set to it afterwards (`make_private`, `private_tree`). Each process entry also sets the umask 077
(`contact_recon.stages.process`), so files that nothing here knows of are born private too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

RUNS_DIR = "runs"
PLAN_FILE = "plan.parquet"
CONFLICTS_FILE = "conflicts.csv"
IDENTITY_FILE = "identity.csv"
QUARANTINE_FILE = "quarantine.parquet"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
DOCS_DIR = "data_docs"  # a run's own GX Data Docs site (checks/data_docs.py)
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
PRIVATE_UMASK = 0o077


def run_dir(data_dir: str | Path, run_id: str) -> Path:
    """Where a run's files live: `<data_dir>/runs/<run_id>/`."""
    return Path(data_dir) / RUNS_DIR / run_id


def private_dir(path: str | Path) -> Path:
    """Make `path` a folder only its owner may enter: each missing folder is created 0700 (`mkdir(parents=True)`
    would give the parents it makes the umask's mode), and `path` itself, when it is ours, is set to 0700 if it
    was not (an older data dir, a checkout's `data/`)."""
    path = Path(path)
    for folder in [*reversed(path.parents), path]:
        if not folder.is_dir():
            try:
                folder.mkdir(mode=PRIVATE_DIR)
                folder.chmod(PRIVATE_DIR)  # mkdir's mode passes through the umask (one of 0o700 would leave 0)
            except FileExistsError:  # made meanwhile by another process (or a file: the next mkdir says so)
                pass
    info = path.stat()
    if stat.S_IMODE(info.st_mode) != PRIVATE_DIR and info.st_uid == os.getuid():
        path.chmod(PRIVATE_DIR)
    return path


def make_private(path: str | Path) -> None:
    """Set a file a library created (or an older version left) to 0600; a missing one is nothing to do."""
    try:
        os.chmod(path, PRIVATE_FILE)
    except FileNotFoundError:
        pass


def private_tree(root: str | Path) -> None:
    """Folders 0700 and files 0600 under `root` (a tree a library wrote, e.g. the great-expectations project)."""
    root = Path(root)
    if not root.exists():
        return
    root.chmod(PRIVATE_DIR)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), PRIVATE_DIR)
        for name in files:
            make_private(os.path.join(folder, name))


def open_private(path: Path, mode: str = "a", **options: Any) -> IO[Any]:
    """`open(path, mode)` for a file of ours that is kept and appended to (a log, a lock file): created 0600 in a
    0700 folder, and an existing file set to 0600. Modes "a", "a+", "ab", "r+" and the like (never truncating)."""
    private_dir(path.parent)
    flags = os.O_CREAT | os.O_CLOEXEC | (os.O_RDWR if "+" in mode or "r" in mode else os.O_WRONLY)
    flags |= os.O_APPEND if "a" in mode else 0
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, mode, **options)
    except BaseException:
        os.close(fd)
        raise


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then move it into place (same file system): a 0600
    file in a 0700 folder."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE))
        write(tmp)  # a writer that opens the file keeps its 0600; one that replaces it gets it set below
        os.chmod(tmp, PRIVATE_FILE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` whole or not at all."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
