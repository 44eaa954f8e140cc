"""Our own writes coming back as webhooks ("echoes"), told apart from a person's edits.

Every GHL write of the apply stage makes GHL send a webhook for that contact a moment later. Syncing that
contact again would find nothing to do, but after a night with thousands of writes it would also queue
thousands of `sync-contact` runs in front of the changes people actually make. So the apply stage appends,
before it writes a contact (and right after it creates one), a line `{"contact_id", "until"}` to
`<data_dir>/echo/ghl_writes.jsonl`; `recon webhooks serve` reads the file as it grows (it never opens
DuckDB) and acknowledges a contact webhook for such a contact until then without emitting an event.

TinyEmail sends no webhooks, but `recon watch tinyemail` sees our writes there as changed customers, with the
same flood to fear. So the apply stage notes, before its TinyEmail chain and again when it ends, every email
it writes to TinyEmail in `<data_dir>/echo/tinyemail_writes.jsonl` (`TE_ECHO_FILE`), and the watcher drops
those customers' changes inside the window: 900 s (`TE_WINDOW_S`), because one poll of a large audience
takes minutes (every list, 100 members a page, within half the key's budget). Only writes noted since the
previous poll began count: an older write is in that poll's hashes already, so a change seen now is not it.

Both files are compacted like the receiver's seen webhook ids (contact_recon/store/expiring.py): every
`COMPACT_SLACK` lines an `EchoLog` appends (and when it is made), it looks at the file under a lock of its own
(`<file>.lock`, shared by every writing process) and rewrites it with only the notes still inside their window
once it holds more than twice those plus `COMPACT_SLACK`; so the files stay the size of one window of writes
instead of growing with every run. `EchoFilter` notices the rewrite (a new inode) and reads the file again.

The price: a person's edit of that very contact inside the window (120 s after our write to GHL, 900 s
after our write to TinyEmail) waits for the nightly run, which reads everyone anyway. Deletions are never
suppressed. So only runs that write in bulk (reconcile, approve) note their writes; a `sync-contact` run
does not: its one or two writes come back as one or two syncs that find nothing to do, and the person's
next edit goes through at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from contact_recon.store.expiring import COMPACT_SLACK, compaction_due, live_rows, read_rows, rewrite_rows
from contact_recon.store.files import open_private

ECHO_FILE = Path("echo") / "ghl_writes.jsonl"
TE_ECHO_FILE = Path("echo") / "tinyemail_writes.jsonl"
WINDOW_S = 120.0
TE_WINDOW_S = 900.0


class EchoLog:
    """Append-only record of the contacts we are about to write (the apply stage's side), compacted as it grows."""

    def __init__(self, data_dir: str | Path, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.time,
                 file: Path = ECHO_FILE, compact_slack: int = COMPACT_SLACK):
        self.path, self.window_s, self.clock = Path(data_dir) / file, window_s, clock
        self.compact_slack = compact_slack
        self._appended = 0  # lines this log appended since it last looked at the file's size
        self.compacted = 0  # how many times this log rewrote the file
        if self.path.exists():
            with self._locked():
                self._compact()

    def wrote(self, contact_ids: Iterable[str] = (), emails: Iterable[str] = ()) -> None:
        """Note contacts about to be written (by id), or created (by email: the id is not known yet)."""
        now = self.clock()
        until, at = round(now + self.window_s, 3), round(now, 3)
        lines = [json.dumps({"contact_id": c, "until": until, "at": at}) for c in contact_ids if c]
        lines += [json.dumps({"email": e.strip().lower(), "until": until, "at": at}) for e in emails if e]
        if not lines:
            return
        with self._locked():
            with open_private(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
            self._appended += len(lines)
            if self._appended >= self.compact_slack:
                self._compact()

    def _compact(self) -> None:
        """Rewrite the file with its live notes when compaction is due (store/expiring.py); under the lock."""
        self._appended = 0
        rows = read_rows(self.path)
        live = live_rows(rows, self.clock())
        if compaction_due(len(rows), len(live), self.compact_slack):
            rewrite_rows(self.path, live)
            self.compacted += 1

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The file's own lock: several processes append (runs of several locations), one compacts at a time."""
        with open_private(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class EchoFilter:
    """The receiver's side: reads what was appended since the last call; `is_echo(contact_id)`."""

    def __init__(self, data_dir: str | Path, *, clock: Callable[[], float] = time.time, file: Path = ECHO_FILE):
        self.path, self.clock = Path(data_dir) / file, clock
        self.offset, self.until, self.at = 0, {}, {}  # type: tuple[int, dict[str, float], dict[str, float]]
        self.inode: int | None = None

    def is_echo(self, contact_id: str | None, email: str | None = None, since: float | None = None) -> bool:
        """Whether a webhook of this contact (or, for our creates, this email) is our own write coming back.
        `since`: only a write noted at or after that time counts (the watcher passes its previous poll's start:
        a write before it is in that poll's hashes already, so a change seen now is somebody else's)."""
        self._read()
        keys = [k for k in (contact_id, f"email:{email.strip().lower()}" if email else None) if k]
        return any(self.until.get(k, 0.0) >= self.clock() and (since is None or self.at.get(k, 0.0) >= since)
                   for k in keys)

    def _read(self) -> None:
        if not self.path.exists():
            return
        stat = self.path.stat()
        if stat.st_ino != self.inode or stat.st_size < self.offset:  # compacted, rotated or truncated: read again
            self.offset, self.until, self.at, self.inode = 0, {}, {}, stat.st_ino
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
                self.at[key] = max(self.at.get(key, 0.0), float(row.get("at", 0.0)))
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line: ignored, never fatal for the receiver


def tinyemail_log(data_dir: str | Path, clock: Callable[[], float] = time.time) -> EchoLog:
    """The apply stage's note of the TinyEmail customers it writes (by email)."""
    return EchoLog(data_dir, window_s=TE_WINDOW_S, clock=clock, file=TE_ECHO_FILE)


def tinyemail_filter(data_dir: str | Path, clock: Callable[[], float] = time.time) -> EchoFilter:
    """The watcher's side: `is_echo(None, email)` for a customer we wrote moments ago."""
    return EchoFilter(data_dir, clock=clock, file=TE_ECHO_FILE)
