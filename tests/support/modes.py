"""File modes: what under a folder is not its owner's alone (`loose_modes`), for the owner-only checks."""

from __future__ import annotations

import stat
from pathlib import Path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def loose_modes(root: Path) -> list[str]:
    """Every folder under `root` (itself included) that is not 0700 and every file that is not 0600, as
    "path relative to root's parent: mode" (symbolic links have no mode of their own and are skipped)."""
    found = []
    for path in [root, *sorted(root.rglob("*"))]:
        if path.is_symlink():
            continue
        want = 0o700 if path.is_dir() else 0o600
        if mode(path) != want:
            found.append(f"{path.relative_to(root.parent)}: {oct(mode(path))}")
    return found
