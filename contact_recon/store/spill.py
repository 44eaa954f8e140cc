"""Spill: the rows of one snapshot entity, built chunk by chunk, each chunk written at once as a Parquet file.

A snapshot writes everything in one transaction (store/db.py `write_snapshot`) once every fetch is done, so the
rows built meanwhile must wait somewhere. In memory, a first night of a million contacts holds every contact,
task and note (about 3 KB a contact as polars frames, and as much again while DuckDB takes them in). A `Spill`
keeps them on disk instead: `add` writes a chunk and lets it go, and the store inserts the files with DuckDB's
`read_parquet`, which streams them (its memory stays within the store's `memory_limit`).

The files live in a private directory of the data dir (`spill_root`, mode 0700: they hold the API payloads, as the
database does), removed once the snapshot is written or has failed; a killed process's directory is removed by the
next snapshot (`remove_stale`: its name carries the pid).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

PREFIX = ".snapshot-spill-"
FLUSH_ROWS = 5_000  # rows added before they are written as one file (a chunk of 100 rows a file would be 10,000 files)


class SpillError(Exception):
    """A chunk whose columns are not the spill's schema."""


@dataclass
class Spill:
    """The chunks of one entity's rows: Parquet files in `directory`, in the order they were added; rows added
    since the last file wait in memory until there are `flush_rows` of them (`files` writes them out)."""

    directory: Path
    schema: pl.Schema
    written: list[Path] = field(default_factory=list)
    height: int = 0
    flush_rows: int = FLUSH_ROWS
    pending: list[pl.DataFrame] = field(default_factory=list)

    @classmethod
    def under(cls, root: Path, name: str, schema: pl.Schema) -> Spill:
        """A new spill in its own directory under `root` (a `spill_root`)."""
        return cls(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root)), schema, flush_rows=FLUSH_ROWS)

    def add(self, frame: pl.DataFrame) -> None:
        """Add `frame`'s rows (written out with the next `flush_rows`); the caller lets it go."""
        if frame.schema != self.schema:
            raise SpillError(f"chunk schema {dict(frame.schema)} is not {dict(self.schema)}")
        if frame.height == 0:
            return
        self.pending.append(frame)
        self.height += frame.height
        if sum(f.height for f in self.pending) >= self.flush_rows:
            self._flush()

    def files(self) -> list[Path]:
        """Every file, the rows still pending written out first."""
        self._flush()
        return list(self.written)

    def _flush(self) -> None:
        if not self.pending:
            return
        path = self.directory / f"{len(self.written):06d}.parquet"
        pl.concat(self.pending, rechunk=True).write_parquet(path, compression="lz4", statistics=False)
        self.written.append(path)
        self.pending = []

    def column(self, name: str) -> pl.Series:
        """One column of every row, read back from the files."""
        files = self.files()
        if not files:
            return pl.Series(name, [], self.schema[name])
        return pl.scan_parquet(files, schema=self.schema).select(name).collect()[name]

    def frame(self) -> pl.DataFrame:
        """Every row, read back into memory (small spills and tests only: the store streams the files)."""
        files = self.files()
        if not files:
            return pl.DataFrame(schema=self.schema)
        return pl.scan_parquet(files, schema=self.schema).collect()

    @staticmethod
    def joined(spills: Sequence[Spill], schema: pl.Schema) -> Spill:
        """The chunks of several spills of one schema as one (the locations of a snapshot, for one write)."""
        if any(s.schema != schema for s in spills):
            raise SpillError("spills of different schemas cannot be joined")
        directory = spills[0].directory if spills else Path(tempfile.gettempdir())
        return Spill(directory, schema, [p for s in spills for p in s.files()], sum(s.height for s in spills))


@contextlib.contextmanager
def spill_root(data_dir: Path | None) -> Iterator[Path]:
    """A private directory for one snapshot's spills under `data_dir` (the system's temporary directory when the
    store is in memory), removed on the way out whatever happened; stale ones of dead processes go first."""
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(data_dir)
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=data_dir))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def remove_stale(data_dir: Path) -> list[Path]:
    """Remove the spill directories whose process is gone (a killed snapshot's); the ones removed."""
    removed = []
    for path in data_dir.glob(f"{PREFIX}*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
