"""The figures a benchmark reports, in a form `bench/run_all.py` can collect.

A `Figure` is one measured number with its unit and, when it has one, its goal: an operator and a
target (`wall time < 30 s`, `share >= 0.90`, `429 answers == 0`). A figure without a goal is
information (file size, peak memory) and neither passes nor fails.

Every bench script takes `--json PATH` and, when given it, writes its figures there with
`write_figures` as a JSON list of `Figure.to_dict()`; its printed output stays as it was. The runner
reads the file back with `read_figures`.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
}


@dataclass(frozen=True)
class Figure:
    benchmark: str
    figure: str
    measured: float | None
    unit: str = ""
    op: str | None = None  # one of OPERATORS, or None: information only
    target: float | None = None

    def __post_init__(self) -> None:
        if (self.op is None) != (self.target is None) or (self.op is not None and self.op not in OPERATORS):
            raise ValueError(f"{self.benchmark}/{self.figure}: a goal needs both a known operator and a target")

    @property
    def goal(self) -> str:
        """The goal as text, e.g. `< 30 s`; empty for an information figure."""
        if self.op is None:
            return ""
        return f"{self.op} {_number(self.target)} {self.unit}".rstrip()

    @property
    def passed(self) -> bool | None:
        """True/False against the goal; None when there is no goal. A goal never measured fails."""
        if self.op is None:
            return None
        if self.measured is None:
            return False
        return OPERATORS[self.op](self.measured, self.target)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "goal": self.goal, "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        names = ("benchmark", "figure", "measured", "unit", "op", "target")
        return cls(**{name: data[name] for name in names if name in data})


def info(benchmark: str, figure: str, measured: float | None, unit: str = "") -> Figure:
    return Figure(benchmark, figure, _plain(measured), unit)


def goal(benchmark: str, figure: str, measured: float | None, op: str, target: float, unit: str = "") -> Figure:
    return Figure(benchmark, figure, _plain(measured), unit, op, target)


def write_figures(path: str | Path | None, figures: Iterable[Figure]) -> None:
    """Write the figures as a JSON list to `path` (atomically); nothing when `path` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([f.to_dict() for f in figures], indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_figures(path: str | Path) -> list[Figure]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of figures")
    return [Figure.from_dict(item) for item in data]


def peak_rss_mib() -> float:
    """ru_maxrss of this process in MiB (the figure is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plain(value: float | None) -> float | None:
    """A plain float (not numpy/bool), rounded to keep the JSON readable."""
    return None if value is None else round(float(value), 6)


def _number(value: float | None) -> str:
    return f"{value:g}" if value is not None else ""


def run_on_prefect(prefix: str, bench: Callable[[Path, str], list[Figure]], json_path: Path | None,
                   folders: Iterable[str] = ()) -> NoReturn:
    """Run `bench(tmp, api_url)` on a throwaway Prefect server (the test harness) in a temporary folder (with
    `folders` made in it, removed after), write its figures (`--json`) and exit 1 when a goal failed."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    for folder in folders:
        (tmp / folder).mkdir()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry writes racing the runs
    try:
        with prefect_test_harness(server_startup_timeout=120):
            figures = bench(tmp, str(PREFECT_API_URL.value()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_figures(json_path, figures)
    sys.exit(0 if all(f.passed is not False for f in figures) else 1)
