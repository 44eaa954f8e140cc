"""The webhook spool: accepted events kept on disk until Prefect has confirmed them.

`recon webhooks serve` appends each verified, new webhook's event here, and fsyncs it, *before* it answers
GHL 200 (contact_recon/service/webhooks.py); the forwarder (contact_recon/service/forwarder.py) hands the
pending events to Prefect, confirms each one on the server, and marks it done here. So an answered webhook
is on disk whatever happens next: Prefect unreachable for hours, the receiver killed with SIGKILL, the
machine losing power. At start the pending events are read back and forwarded again; an event's id is
derived from its webhookId, so one forwarded twice is one event on the server.

The file, `<data_dir>/webhooks/spool.jsonl` (0600), is a JSON-lines log of two kinds of line:
- `{"add": {"id", "event", "resource", "payload", "occurred", "spooled_at"}}`: an event to forward;
- `{"done": [id, ...]}`: events the server confirmed.
Reading it replays the lines in order; a torn last line (a crash mid-write, before the fsync returned and
so before any 200) is skipped. It stays compact: once every event is done it is emptied, and once it holds
more than `COMPACT_SLACK` done lines it is rewritten with the pending events only (whole or not at all,
fsynced before the rename).

`append` raises `SpoolFull` when the line would take the file over `max_bytes`, or when the write or the
fsync fails (disk full, read-only): the receiver then answers 429 so that GHL delivers again later.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contact_recon.store.files import atomic_write, open_private, private_dir

SPOOL_FILE = Path("webhooks") / "spool.jsonl"


class SpoolFull(Exception):  # noqa: N818 - the name says what the receiver answers 429 for
    """The spool cannot take an event (over its size cap, or the write or fsync failed)."""


@dataclass(frozen=True)
class SpoolItem:
    """One Prefect event to forward (`occurred` ISO 8601; `spooled_at` epoch seconds)."""

    id: str
    event: str
    resource: dict[str, str]
    payload: dict[str, Any]
    occurred: str
    spooled_at: float = 0.0
    related: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpoolItem:
        return cls(str(data["id"]), str(data["event"]), dict(data["resource"]), dict(data.get("payload") or {}),
                   str(data["occurred"]), float(data.get("spooled_at") or 0.0), list(data.get("related") or []))


class Spool:
    """The pending events, in memory (in arrival order) and in the append-only file (module docstring).

    Thread-safe: the receiver's event loop appends while the forwarder's thread reads and marks done.
    """

    COMPACT_SLACK = 1000

    def __init__(self, path: Path, *, max_bytes: int, clock: Callable[[], float] = time.time):
        self.path, self.max_bytes, self.clock = path, max_bytes, clock
        self._lock = threading.Lock()
        self._pending: dict[str, SpoolItem] = {}
        self._done_lines = 0
        self._size = 0
        self._load()

    def _load(self) -> None:
        private_dir(self.path.parent)
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    if "add" in entry:
                        item = SpoolItem.from_json(entry["add"])
                        self._pending[item.id] = item
                    else:
                        for done in entry["done"]:
                            self._pending.pop(str(done), None)
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: its event was never answered 200
        self._rewrite()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def size_bytes(self) -> int:
        return self._size

    def __contains__(self, item_id: str) -> bool:
        with self._lock:
            return item_id in self._pending

    def append(self, item: SpoolItem) -> None:
        """Keep `item` on disk (fsynced) before the caller answers; SpoolFull if it cannot."""
        line = json.dumps({"add": asdict(item)}, ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            if self._size + len(data) > self.max_bytes:
                raise SpoolFull(f"the webhook spool holds {self._size:,} bytes, its cap is {self.max_bytes:,}")
            try:
                self._write(data)
            except OSError as exc:
                raise SpoolFull(f"the webhook spool cannot be written: {exc.strerror or exc}") from None
            self._pending[item.id] = item

    def pending(self, limit: int) -> list[SpoolItem]:
        """The oldest `limit` pending events."""
        with self._lock:
            return list(self._pending.values())[:limit]

    def done(self, ids: Iterable[str]) -> None:
        """Mark events confirmed: they leave the spool (compacted as the module docstring says)."""
        with self._lock:
            gone = [i for i in ids if i in self._pending]
            if not gone:
                return
            for item_id in gone:
                del self._pending[item_id]
            if not self._pending or self._done_lines >= self.COMPACT_SLACK:
                self._rewrite()
                return
            self._write((json.dumps({"done": gone}) + "\n").encode())
            self._done_lines += 1

    def _write(self, data: bytes) -> None:
        with open_private(self.path, "ab") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        self._size += len(data)

    def _rewrite(self) -> None:
        text = "".join(json.dumps({"add": asdict(i)}, ensure_ascii=False, separators=(",", ":")) + "\n"
                       for i in self._pending.values())

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                out.write(text.encode("utf-8"))
                out.flush()
                os.fsync(out.fileno())

        atomic_write(self.path, write)
        _fsync_dir(self.path.parent)
        self._size, self._done_lines = len(text.encode("utf-8")), 0


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_path(data_dir: Path) -> Path:
    return data_dir / SPOOL_FILE
