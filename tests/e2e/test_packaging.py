"""The wheel built from the repo installs one package, `contact_recon`, with the design card's folders
(flows/, tasks/, checks/) mapped into it, and it runs from the wheel alone (not from the repo)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("contact_recon", "flows", "tasks", "checks", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel offline from a copy of the sources (the repo itself is left untouched)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (REPO / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(out)], check=True, capture_output=True, text=True)
    (found,) = out.glob("contact_recon-*.whl")
    return found


def test_the_wheel_holds_only_contact_recon(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"contact_recon"}, tops
    for path in ("contact_recon/flows/reconcile.py", "contact_recon/flows/sync_contact.py",
                 "contact_recon/tasks/reconcile.py", "contact_recon/checks/suites.py",
                 "contact_recon/sandbox/specs/ghl/apps/contacts.json", "contact_recon/cli/__main__.py"):
        assert path in names, f"{path} is not in the wheel"


def test_the_installed_wheel_runs_without_the_repo(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    probe = ("import contact_recon.flows.reconcile as f, contact_recon.tasks.reconcile as t, "
             "contact_recon.checks as c; print(f.__file__); print(t.__file__); print(c.__file__)")
    shown = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True,
                           text=True).stdout.split()
    assert len(shown) == 3 and all(Path(p).is_relative_to(site) for p in shown), shown
    help_text = subprocess.run([sys.executable, "-m", "contact_recon.cli", "--help"], cwd=tmp_path, env=env,
                               check=True, capture_output=True, text=True).stdout
    assert "sandbox" in help_text and "run" in help_text
