"""Our own writes coming back as webhooks ("echoes"), told apart from a person's edits.

Every GHL write of the apply stage makes GHL send a webhook for that contact a moment later. Syncing that
contact again would find nothing to do, but after a night with thousands of writes it would also queue
thousands of `sync-contact` runs in front of the changes people actually make. So the apply stage appends,
before it writes a contact (and right after it creates one), a line `{"contact_id", "until"}` to
`<data_dir>/echo/ghl_writes.jsonl`; `recon webhooks serve` reads the file as it grows (it never opens
DuckDB) and acknowledges a contact webhook for such a contact until then without emitting an event.

The price: a person's edit of that very contact inside the window (default 120 s after our write) waits
for the nightly run, which reads every contact anyway. Deletions are never suppressed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ECHO_FILE = Path("echo") / "ghl_writes.jsonl"
WINDOW_S = 120.0


class EchoLog:
    """Append-only record of the contacts we are about to write (the apply stage's side)."""

    def __init__(self, data_dir: str | Path, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.time):
        self.path, self.window_s, self.clock = Path(data_dir) / ECHO_FILE, window_s, clock

    def wrote(self, contact_ids: Iterable[str] = (), emails: Iterable[str] = ()) -> None:
        """Note contacts about to be written (by id), or created (by email: the id is not known yet)."""
        until = round(self.clock() + self.window_s, 3)
        lines = [json.dumps({"contact_id": c, "until": until}) for c in contact_ids if c]
        lines += [json.dumps({"email": e.strip().lower(), "until": until}) for e in emails if e]
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


class EchoFilter:
    """The receiver's side: reads what was appended since the last call; `is_echo(contact_id)`."""

    def __init__(self, data_dir: str | Path, *, clock: Callable[[], float] = time.time):
        self.path, self.clock = Path(data_dir) / ECHO_FILE, clock
        self.offset, self.until = 0, {}  # type: tuple[int, dict[str, float]]

    def is_echo(self, contact_id: str | None, email: str | None = None) -> bool:
        """Whether a webhook of this contact (or, for our creates, this email) is our own write coming back."""
        self._read()
        keys = [k for k in (contact_id, f"email:{email.strip().lower()}" if email else None) if k]
        return any(self.until.get(k, 0.0) >= self.clock() for k in keys)

    def _read(self) -> None:
        if not self.path.exists():
            return
        if self.path.stat().st_size < self.offset:  # rotated or truncated: read it again
            self.offset, self.until = 0, {}
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
                key = str(row["contact_id"]) if "contact_id" in row else f"email:{row['email']}"
                self.until[key] = max(self.until.get(key, 0.0), float(row["until"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line: ignored, never fatal for the receiver
