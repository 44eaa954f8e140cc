"""Where the app is installed: the GHL INSTALL / UNINSTALL webhooks of an agency install, kept in one small file.

`<data_dir>/agency/installs.json` maps each location to `{"company_id", "state", "at"}`: `state` is "installed"
after an INSTALL and "retired" after an UNINSTALL (of that location, or of its whole company when the
UNINSTALL names only `companyId`). The webhook receiver writes it (it never opens DuckDB); runs read it. A
retired location gets no more writes (a run leaves it out, `sync-contact` skips it), and its data is kept: its
rows in DuckDB, its run files, its token file are never deleted. A later INSTALL brings it back. A read-modify-
write runs under an exclusive `flock` on `installs.json.lock`, and the file is replaced whole (`atomic_text`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contact_recon.store.files import atomic_text, private_dir

INSTALLED, RETIRED = "installed", "retired"


def covered_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "agency" / "covered.json"


def record_covered(data_dir: str | Path, locations: list[str]) -> None:
    """The locations an agency install's last run covered (its installedLocations list): what routes a webhook of
    such a location to this data dir's tenant when the tenant names no explicit ids (`known_locations`)."""
    path = covered_path(data_dir)
    with _locked(path):
        atomic_text(path, json.dumps(sorted(set(locations))))


def known_locations(data_dir: str | Path) -> set[str]:
    """An agency install's locations as this data dir knows them, without a request: those its last run covered,
    plus every INSTALL since, less the retired ones."""
    try:
        covered = json.loads(covered_path(data_dir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        covered = []
    entries = read_installs(data_dir)
    installed = {loc for loc, entry in entries.items() if entry.get("state") == INSTALLED}
    return ({str(loc) for loc in covered if isinstance(loc, str)} | installed) - retired_locations(data_dir)


def installs_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "agency" / "installs.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    private_dir(path.parent)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a few ms by a short read-modify-write
        yield
    finally:
        os.close(fd)


def read_installs(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Location -> {"company_id", "state", "at"}; empty when no install webhook ever came."""
    try:
        data = json.loads(installs_path(data_dir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def retired_locations(data_dir: str | Path) -> set[str]:
    return {loc for loc, entry in read_installs(data_dir).items() if entry.get("state") == RETIRED}


def record_install(data_dir: str | Path, *, installed: bool, location_id: str | None, company_id: str | None,
                   at: str) -> list[str]:
    """Record one INSTALL (installed) or UNINSTALL; the locations it changed."""
    path = installs_path(data_dir)
    with _locked(path):
        entries = read_installs(data_dir)
        if location_id:  # a location install or uninstall
            changed = [location_id]
        else:  # an agency uninstall names only its company: every location of that company
            changed = [loc for loc, entry in entries.items() if entry.get("company_id") == company_id]
        for loc in changed:
            previous = entries.get(loc, {})
            entries[loc] = {"company_id": company_id or previous.get("company_id"),
                            "state": INSTALLED if installed else RETIRED, "at": at}
        atomic_text(path, json.dumps(entries, indent=1, sort_keys=True))
    return changed
