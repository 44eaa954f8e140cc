"""Quarantine: the ops of a record that failed a blocking expectation are not written this run.

Pure: a plan (ops.OPS_SCHEMA) and the quarantined records (`contact_recon.checks.run.QUARANTINE_SCHEMA`) in, the same
plan with a `status` ("planned" | "quarantined") and `quarantined_by` (the qualified names of the
expectations, sorted, comma-separated; null when planned) out. Nothing is dropped, so the journal and
the report show what was held back and why.

A person has up to two keys in a plan (the GHL contact id, or `te:<email>` while no contact matches),
and a record names one of them. An op is quarantined when its key is
1. the key of a quarantined record, or
2. `te:<email>` for the email of a quarantined record, or
3. the key `people` pairs with the email of a quarantined record (`people`: key and email per person,
   e.g. the identity matcher's `matched` frame),
so a bad record stops writes in both directions: the updates, tags and creates aimed at it and those
that would copy its values to the other system. A quarantined row with an `op_id` (and no key) holds
that op alone (plan-level expectations: a guard breach, one bad note).
"""

from __future__ import annotations

import polars as pl

from contact_recon.model.keys import TE_KEY_PREFIX

PLANNED, QUARANTINED = "planned", "quarantined"
_COLUMNS = ("suite", "expectation", "record_id", "key", "email", "op_id")  # contact_recon.checks.run.QUARANTINE_SCHEMA


def quarantined_keys(quarantined: pl.DataFrame, people: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (key, expectation): every plan key a quarantined record stands for."""
    named = quarantined.filter(pl.col("op_id").is_null()).select(
        "key", "email", expectation=pl.format("{}.{}", "suite", "expectation"))
    by_email = named.filter(pl.col("email").is_not_null())
    parts = [named.select("key", "expectation"),
             by_email.select(key=TE_KEY_PREFIX + pl.col("email"), expectation="expectation")]
    if people is not None:
        pairs = people.select("key", "email").drop_nulls()
        parts.append(by_email.select("email", "expectation").join(pairs, on="email").select("key", "expectation"))
    return pl.concat(parts).drop_nulls("key").unique()


def apply_quarantine(ops: pl.DataFrame, quarantined: pl.DataFrame, people: pl.DataFrame | None = None) -> pl.DataFrame:
    """The plan with `status` and `quarantined_by` (see the module docstring); op order is kept."""
    quarantined = quarantined.select(pl.col(c).cast(pl.String) for c in _COLUMNS)
    by_key = quarantined_keys(quarantined, people)
    by_op = quarantined.filter(pl.col("op_id").is_not_null()).select(
        "op_id", expectation=pl.format("{}.{}", "suite", "expectation"))
    hits = pl.concat([
        ops.select("op_id", "key").join(by_key, on="key").select("op_id", "expectation"),
        ops.select("op_id").join(by_op, on="op_id"),
    ])
    names = hits.group_by("op_id").agg(quarantined_by=pl.col("expectation").unique().sort().str.join(","))
    marked = ops.join(names, on="op_id", how="left", maintain_order="left")
    status = pl.when(pl.col("quarantined_by").is_null()).then(pl.lit(PLANNED)).otherwise(pl.lit(QUARANTINED))
    return marked.with_columns(status=status).select(*ops.columns, "status", "quarantined_by")


def split_plan(marked: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(ops to apply, quarantined ops) of a plan marked by `apply_quarantine`."""
    held = pl.col("status") == QUARANTINED
    return marked.filter(~held), marked.filter(held)
