"""What a flow run shows in the Prefect UI beyond its tasks: the project's logs and a progress artifact.

- `forwarded_logs()`: while a flow run runs, every `contact_recon.*` logger's records at INFO and above go to
  that flow run's logs through Prefect's own `APILogHandler` (stamped with the flow run id, so records from the
  snapshot's worker threads land too), already redacted (`prepare_process` masks every record as it is made):
  the connectors' and stages' lines (counts, requests and budget left, durations, what was held and why) sit
  beside Prefect's.
- `progress_artifact(...)`: one Prefect progress artifact per flow run, fed by the stages' progress calls
  (contact_recon/stages/progress.py: the snapshot's reads per location, the apply stage's ops), updated at most
  every `UPDATE_EVERY_S` seconds or every whole percent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from contact_recon.stages import progress

PROJECT_LOGGER = "contact_recon"
UPDATE_EVERY_S = 2.0


class _StampFlowRun(logging.Filter):
    """Gives a record without a run context (a worker thread's) the flow run id, so Prefect can place it."""

    def __init__(self, flow_run_id: Any):
        super().__init__()
        self.flow_run_id = flow_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "flow_run_id", None):
            record.flow_run_id = self.flow_run_id
        return True


@contextlib.contextmanager
def forwarded_logs(flow_run_id: Any) -> Iterator[None]:
    """Forward the project's loggers to flow run `flow_run_id`'s logs while the block runs."""
    from prefect.logging.handlers import APILogHandler

    handler = APILogHandler(level=logging.INFO)
    handler.addFilter(_StampFlowRun(flow_run_id))
    logger = logging.getLogger(PROJECT_LOGGER)
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.flush()


class PrefectProgress:
    """A `progress.Sink` that keeps one Prefect progress artifact up to date: done / total over the stages
    begun so far (never going back), its description naming the stage at work."""

    def __init__(self, description: str):
        from prefect.artifacts import create_progress_artifact

        self.lock, self.stages = threading.Lock(), {}  # type: tuple[threading.Lock, dict[str, list[int]]]
        self.shown, self.at, self.description = 0.0, 0.0, description
        self.artifact_id: Any = create_progress_artifact(progress=0.0, description=description, _sync=True)  # type: ignore[call-arg]

    def begin(self, stage: str, total: int | None) -> None:
        with self.lock:
            self.stages[stage] = [0, total or 0]
        self._update(stage)

    def advance(self, stage: str, n: int) -> None:
        with self.lock:
            done_total = self.stages.setdefault(stage, [0, 0])
            done_total[0] += n
        self._update(stage)

    def finish(self) -> None:
        self._send(100.0, f"{self.description}: done")

    def _update(self, stage: str) -> None:
        with self.lock:
            done = sum(min(d, t) for d, t in self.stages.values())
            total = sum(t for _, t in self.stages.values())
            percent = max(self.shown, 100.0 * done / total if total else 0.0)
            d, t = self.stages[stage]
            due = percent - self.shown >= 1.0 or time.monotonic() - self.at >= UPDATE_EVERY_S
        if due:
            self._send(percent, f"{self.description}: {stage} {d:,} of {t:,}" if t else f"{self.description}: {stage}")

    def _send(self, percent: float, description: str) -> None:
        from prefect.artifacts import update_progress_artifact

        with self.lock:
            self.shown, self.at = percent, time.monotonic()
        update_progress_artifact(artifact_id=self.artifact_id, progress=round(percent, 1),  # type: ignore[call-arg]
                                 description=description, _sync=True)


@contextlib.contextmanager
def progress_artifact(description: str) -> Iterator[PrefectProgress]:
    """Show the stages' progress as a Prefect progress artifact while the block runs (inside a flow run)."""
    sink = PrefectProgress(description)
    with progress.sink(sink):
        yield sink
    sink.finish()
