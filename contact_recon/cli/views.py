"""Rich renderings shared by the CLI and the reports: the field map, plans and their counts."""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl
from rich.table import Table

from contact_recon.model.policy import Policy, describe_mapping

MAPPING_COLUMNS = ("field", "ghl", "tinyemail", "rule", "tie_break", "first_run", "flow")


def mapping_table(policy: Policy) -> Table:
    """The active field map and rules: how data moves between the systems."""
    table = Table(title="Field map and rules", show_lines=False)
    for column in MAPPING_COLUMNS:
        table.add_column(column.replace("_", " "), overflow="fold")
    for row in describe_mapping(policy):
        table.add_row(*(row[c] for c in MAPPING_COLUMNS))
    return table


def plan_counts_table(ops: pl.DataFrame, title: str = "Plan") -> Table:
    """Operations per target system and kind (and status, when the plan has one)."""
    table = Table(title=title)
    for column in ("target", "kind", "ops"):
        table.add_column(column, justify="right" if column == "ops" else "left")
    counts: Counter[tuple[Any, Any]] = Counter(zip(ops["target"].to_list(), ops["kind"].to_list(), strict=True))
    for (target, kind), n in sorted(counts.items()):
        table.add_row(str(target), str(kind), f"{n:,}")
    return table
