"""Append-only JSON-lines files whose lines expire (`{"...", "until": epoch}`), kept the size of one window.

Two files live like this: the receiver's accepted webhook ids (`data_dir/webhooks/seen_ids.jsonl`,
service/webhooks.py `SeenIds`) and the apply stage's echo notes (`data_dir/echo/*.jsonl`, stages/echo.py).
Both are appended to line by line (cheap, and a crash tears at most the last line) and both are *compacted*
the same way: once a file holds more than twice its live lines plus `COMPACT_SLACK`, it is rewritten
atomically (a temporary file renamed over it, so a reader sees the old file or the new one, never half) with
only the lines whose `until` is still ahead. A reader that follows the file by offset notices the rename (a new
inode) and reads it again from the start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from contact_recon.store.files import atomic_text

COMPACT_SLACK = 1000


def compaction_due(lines: int, live: int, slack: int = COMPACT_SLACK) -> bool:
    """Whether a file of `lines` lines, `live` of them unexpired, should be rewritten."""
    return lines > 2 * live + slack


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every readable line of the file as a dict; a torn last line or a foreign one is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn line after a crash, never fatal
        if isinstance(row, dict):
            rows.append(row)
    return rows


def live_rows(rows: Iterable[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The rows whose `until` is still ahead of `now` (a row without a readable one is dropped)."""
    out = []
    for row in rows:
        try:
            if float(row["until"]) > now:
                out.append(row)
        except (KeyError, TypeError, ValueError):
            continue
    return out


def rewrite_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Replace the file, atomically, with these rows; how many were written."""
    lines = [json.dumps(row) + "\n" for row in rows]
    atomic_text(path, "".join(lines))
    return len(lines)
