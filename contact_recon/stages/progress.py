"""Progress of the long stages, for whoever shows it: `recon run` draws rich progress bars, a flow run keeps a
Prefect progress artifact (flows/ui.py, through `sink`); elsewhere nobody listens and the calls cost nothing.

Stages name their work and advance it: the snapshot's task searches and note reads per GHL location
(stages/snapshot.py), and the apply stage's ops as they are closed (store/journal.py `finish`). The calls may come
from any thread (Prefect's task runner) or the event loop; rich's Progress is thread-safe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Sink(Protocol):
    def begin(self, stage: str, total: int | None) -> None: ...
    def advance(self, stage: str, n: int) -> None: ...


_sink: Sink | None = None


def begin(stage: str, total: int | None = None) -> None:
    """A stage starts `total` units of work (None: unknown)."""
    if _sink is not None:
        _sink.begin(stage, total)


def advance(stage: str, n: int = 1) -> None:
    """`n` more units of a stage are done."""
    if _sink is not None and n:
        _sink.advance(stage, n)


class _Both:
    def __init__(self, first: Sink, second: Sink):
        self.first, self.second = first, second

    def begin(self, stage: str, total: int | None) -> None:
        self.first.begin(stage, total)
        self.second.begin(stage, total)

    def advance(self, stage: str, n: int) -> None:
        self.first.advance(stage, n)
        self.second.advance(stage, n)


@contextlib.contextmanager
def sink(extra: Sink) -> Iterator[None]:
    """Send the stages' progress to `extra` too while the block runs (a Prefect progress artifact, beside the
    terminal's bars when there are any)."""
    global _sink
    previous = _sink
    _sink = extra if previous is None else _Both(previous, extra)
    try:
        yield
    finally:
        _sink = previous


class RichSink:
    """One progress bar per stage."""

    def __init__(self, progress: Progress):
        self.progress, self.bars = progress, {}  # type: tuple[Progress, dict[str, object]]

    def begin(self, stage: str, total: int | None) -> None:
        if stage in self.bars:
            self.progress.update(self.bars[stage], total=total, completed=0)  # type: ignore[arg-type]
        else:
            self.bars[stage] = self.progress.add_task(stage, total=total)

    def advance(self, stage: str, n: int) -> None:
        if stage not in self.bars:
            self.begin(stage, None)
        self.progress.advance(self.bars[stage], n)  # type: ignore[arg-type]


@contextlib.contextmanager
def progress_bars(console: Console) -> Iterator[None]:
    """Show the stages' progress on `console` while the block runs (nothing when it is not a terminal)."""
    global _sink
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False, disable=not console.is_terminal)
    previous, _sink = _sink, RichSink(bars)
    try:
        with bars:
            yield
    finally:
        _sink = previous
