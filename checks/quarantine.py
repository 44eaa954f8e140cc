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

A fix is never held by the defect it fixes: an update of the field a record-level expectation flagged
(`FIXES`: phone_e164 flags the phone), written to the system of the flagged record, whose new value passes
that expectation, is not quarantined by it (e.g. a decision `ghl` that replaces TinyEmail's unparseable phone
with GHL's E.164 one). The person's other ops stay held, and so does any op that copies the bad value.
"""

from __future__ import annotations

import polars as pl
from contact_recon.checks.suites import E164

from contact_recon.model.keys import TE_KEY_PREFIX

PLANNED, QUARANTINED = "planned", "quarantined"
# qualified expectation -> (the system its records are in, the field it flags, what a passing value matches)
FIXES: dict[str, tuple[str, str, str]] = {
    "ghl_contacts.phone_e164": ("ghl", "phone", E164),
    "te_customers.phone_e164": ("tinyemail", "phone", E164),
}
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
        _without_fixes(ops.select("op_id", "key", "target", "kind", "field", "new").join(by_key, on="key")),
        ops.select("op_id").join(by_op, on="op_id"),
    ])
    names = hits.group_by("op_id").agg(quarantined_by=pl.col("expectation").unique().sort().str.join(","))
    marked = ops.join(names, on="op_id", how="left", maintain_order="left")
    status = pl.when(pl.col("quarantined_by").is_null()).then(pl.lit(PLANNED)).otherwise(pl.lit(QUARANTINED))
    return marked.with_columns(status=status).select(*ops.columns, "status", "quarantined_by")


def _without_fixes(hits: pl.DataFrame) -> pl.DataFrame:
    """(op_id, expectation) hits, less those where the op fixes what the expectation flagged (module docstring)."""
    fixes = pl.DataFrame([(name, *fix) for name, fix in FIXES.items()], orient="row",
                         schema={"expectation": pl.String, "fix_target": pl.String, "fix_field": pl.String,
                                 "fix_pattern": pl.String})
    joined = hits.join(fixes, on="expectation", how="left", maintain_order="left")
    # an update of the flagged field on the flagged system, to a value that passes: the fix goes through
    fixing = ((pl.col("kind") == "update") & (pl.col("target") == pl.col("fix_target"))
              & (pl.col("field") == pl.col("fix_field"))
              & pl.col("new").str.contains(pl.col("fix_pattern")).fill_null(False)).fill_null(False)
    return joined.filter(~fixing).select("op_id", "expectation")


def split_plan(marked: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(ops to apply, quarantined ops) of a plan marked by `apply_quarantine`."""
    held = pl.col("status") == QUARANTINED
    return marked.filter(~held), marked.filter(held)
