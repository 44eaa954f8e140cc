"""What a run changed, in words a data lead reads: the applied-changes table, readable values, list names.

- `applied_changes(ops, context, list_names)`: the journal's `done` ops with who they are about (email,
  name, location, GHL link: `model.context.person_context` over the run's saved state, `run_context`),
  grouped by field and reason (sorted so, with a heading row per group in report.html), and `old` / `new`
  made readable (`readable`).
- `readable(value, list_names)`: a create's payload (canonical JSON of the record) or a task's JSON as
  `field: value · field: value`, a JSON list as `a, b`, and every TinyEmail list id (alone, in a list, or
  as the `list:<id>` tag mirrored into GHL) as its list name.
- `list_names_of(store)`: list id -> name from the store (`Store.list_names`, when the store has it), else `{}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from contact_recon.model.context import CONTEXT, person_context, with_context
from contact_recon.store.files import run_dir

DONE = "done"
STATE_DIR = "state"  # a run's saved state: stages/advance.py STATE_DIR (a layer above this one)
STATE_NEEDED = ("people", "ghl_side", "te_side")
APPLIED_COLUMNS = ("field", "reason", "name", "email", "target", "kind", "old", "new", "ghl_url")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def list_names_of(store: Any) -> dict[str, str]:
    """TinyEmail list id -> name, from `Store.list_names()` when the store has it (else none known)."""
    names = getattr(store, "list_names", None)
    return dict(names()) if callable(names) else {}


def run_context(data_dir: str | Path, run_id: str) -> pl.DataFrame:
    """CONTEXT rows for the people of a run's saved state (`stages/advance.py`), none when it kept no state."""
    state = run_dir(data_dir, run_id) / STATE_DIR
    if not all((state / f"{name}.parquet").exists() for name in STATE_NEEDED):
        return pl.DataFrame(schema=CONTEXT)
    frames = {name: pl.read_parquet(state / f"{name}.parquet") for name in STATE_NEEDED}
    return person_context(frames["people"], frames["ghl_side"], frames["te_side"])


def named(text: str, list_names: Mapping[str, str]) -> str:
    """`text` with every known list id replaced by the list's name."""
    if not list_names:
        return text
    return UUID.sub(lambda m: list_names.get(m.group(0), m.group(0)), text)


def readable(value: str | None, list_names: Mapping[str, str]) -> str | None:
    """A stored value as a person reads it (module docstring); plain text stays as it is."""
    if value is None:
        return None
    try:
        parsed = json.loads(value) if value[:1] in ("{", "[") else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        parts = [f"{k}: {_flat(v, list_names)}" for k, v in parsed.items() if v not in (None, "", [], {})]
        return " · ".join(parts)
    if isinstance(parsed, list):
        return _flat(parsed, list_names)
    return named(value, list_names)


def _flat(value: Any, list_names: Mapping[str, str]) -> str:
    if isinstance(value, list):
        return ", ".join(_flat(v, list_names) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={_flat(v, list_names)}" for k, v in value.items())
    return named(str(value), list_names)


def readable_values(frame: pl.DataFrame, columns: tuple[str, ...], list_names: Mapping[str, str]) -> pl.DataFrame:
    """`frame` with `columns` (those it has) made readable."""
    present = [c for c in columns if c in frame.columns]
    return frame.with_columns(pl.col(c).map_elements(lambda v: readable(v, list_names), return_dtype=pl.String)
                              for c in present) if frame.height else frame


def applied_changes(ops: pl.DataFrame, context: pl.DataFrame, list_names: Mapping[str, str]) -> pl.DataFrame:
    """The done ops (APPLIED_COLUMNS), grouped by field and reason, people named."""
    done = ops.filter(pl.col("status") == DONE).with_columns(
        field=pl.coalesce("field", pl.col("kind")))  # a create writes the whole record: grouped under its kind
    joined = with_context(done, context).rename({"expected": "old"})
    joined = readable_values(joined, ("old", "new"), list_names)
    return joined.select(APPLIED_COLUMNS).sort("field", "reason", "name", "email", nulls_last=True)
