"""Helpers for the merge tests: build MERGE_SIDE frames from short records, and an in-memory "storage"
that applies a plan to both sides (checking each op's expected value) and derives the next base.

Tags are one tag per key here too (case-folded, trimmed, inner spaces collapsed: issue 21), with this module's
own `tag_key`, written apart from `contact_recon/model/tags.py` so that the two can disagree: a tag add must not
find its key on the target already, a removal must name a spelling the target holds, and the next base holds
one spelling per key."""

from __future__ import annotations

import copy
import json
from typing import Any

import polars as pl

from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.ops import Op
from contact_recon.model.policy import Policy
from contact_recon.model.records import MERGE_SIDE

Row = dict[str, Any]
TEXT = [n for n, t in MERGE_SIDE.items() if t == pl.String and n not in ("key", "contact_id", "consent")]


def rec(key: str, **values: Any) -> Row:
    """A MERGE_SIDE row: email `<key>@x.com` (te:<email> keys keep theirs), no tags, subscribed."""
    row: Row = {name: None for name in MERGE_SIDE}
    email = key.removeprefix(TE_KEY_PREFIX) if key.startswith(TE_KEY_PREFIX) else f"{key}@x.com"
    row.update(key=key, contact_id=None if key.startswith(TE_KEY_PREFIX) else key, email=email, tags=[], lists=[],
               consent="subscribed")
    row.update(values)
    return row


def frame(rows: list[Row], *, base: bool = False) -> pl.DataFrame:
    schema = dict(MERGE_SIDE)
    if base and any("in_ghl" in r for r in rows):
        schema |= {"in_ghl": pl.Boolean, "in_tinyemail": pl.Boolean}
        rows = [{"in_ghl": True, "in_tinyemail": True, **r} for r in rows]
    return pl.DataFrame(rows, schema=schema)


def tag_key(tag: str) -> str:
    """Two spellings of one tag share this key (this oracle's own implementation of the rule)."""
    folded = tag.casefold()
    while "  " in folded or "\t" in folded or "\n" in folded:
        folded = folded.replace("\t", " ").replace("\n", " ").replace("  ", " ")
    return folded.strip()


def keys_of(tags: list[str]) -> list[str]:
    """The tag keys of a tag list, in its order, repeats kept (a side holding two spellings shows it)."""
    return [tag_key(t) for t in tags]


def union_by_key(*sides: list[str]) -> list[str]:
    """One spelling per key, the first side's where several have it; sorted."""
    out: dict[str, str] = {}
    for side in sides:
        for tag in side:
            out.setdefault(tag_key(tag), tag)
    return sorted(out.values())


def norm(value: str | None) -> str | None:
    value = value.strip() if isinstance(value, str) else value
    return value or None


def apply_plan(te: dict[str, Row], ghl: dict[str, Row], ops: list[Op]) -> tuple[dict[str, Row], dict[str, Row]]:
    """Both sides after the plan; every op's premise (`expected`) is asserted first."""
    te, ghl = copy.deepcopy(te), copy.deepcopy(ghl)
    for op in ops:
        side = te if op.target == "tinyemail" else ghl
        if op.kind == "create":
            assert op.key not in side, op
            side[op.key] = _created(op)
            continue
        row = side.get(op.key)
        if op.kind in ("task_create", "note_create", "identity_review"):
            continue
        assert row is not None, op
        if op.kind in ("update", "consent_tighten"):
            assert norm(row[op.field]) == op.expected, (op, row[op.field])
            row[op.field] = op.new
        elif op.kind in ("tag_add", "list_add"):
            assert tag_key(op.new) not in keys_of(row[op.field] or []), op  # never a second spelling
            row[op.field] = sorted({*(row[op.field] or []), op.new})
        elif op.kind in ("tag_remove", "list_remove"):
            assert op.expected in (row[op.field] or []), op  # the target's own spelling
            row[op.field] = sorted(set(row[op.field]) - {op.expected})
        else:
            raise AssertionError(f"unknown kind {op.kind}")
    return te, ghl


def _created(op: Op) -> Row:
    record = json.loads(op.new)
    row = rec(op.key)
    row.update({k: v for k, v in record.items() if k in MERGE_SIDE})
    row["consent"] = record.get("consent", "subscribed")
    row["lists"] = record.get("lists", []) if op.target == "tinyemail" else []
    return row


def next_base(base: dict[str, Row], te: dict[str, Row], ghl: dict[str, Row], policy: Policy) -> list[Row]:
    """What the state module stores after an applied plan: agreed values, and the old base value of a field
    the sides still disagree on (a conflict)."""
    c = policy.consent
    rows = []
    for key in sorted(set(te) | set(ghl)):
        t, g, b = te.get(key), ghl.get(key), base.get(key, {})
        if t and g:
            valid = b.get("in_ghl") and b.get("in_tinyemail")
            row = {n: (norm(t[n]) if norm(t[n]) == norm(g[n]) else norm(b.get(n)) if valid else None) for n in TEXT}
            row.update(key=key, contact_id=g["contact_id"], email=norm(g["email"]),
                       tags=union_by_key(t["tags"], g["tags"]), lists=sorted(t["lists"]),
                       consent=t["consent"] if t["consent"] in c.tinyemail_tight else
                       g["consent"] if g["consent"] in c.ghl_tight else t["consent"],
                       in_ghl=True, in_tinyemail=True)
        else:
            one = t or g
            row = {**{n: norm(one[n]) if n in TEXT else one[n] for n in MERGE_SIDE},
                   "in_ghl": bool(g) or b.get("in_ghl", False), "in_tinyemail": bool(t) or b.get("in_tinyemail", False)}
        rows.append(row)
    return rows


def by_key(rows: list[Row]) -> dict[str, Row]:
    return {r["key"]: r for r in rows}
