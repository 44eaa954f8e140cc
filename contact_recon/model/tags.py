"""Tags that differ only in letter case or spacing are one tag: the normalised tag key, and folding duplicates.

Pure, no I/O. Both systems store tags as exact strings (`VIP` and `vip` are two tags to either API), but to a
data team they are one idea. So wherever tags are compared (the merge, the next base, tag triggers, the guards'
removal counts, `sync-contact`, list tags) they are compared by their *key* (`tag_key`): case-folded, surrounding
whitespace trimmed, inner runs of whitespace collapsed to one space. The key is for comparing only; a tag is
always written in a real spelling:

- a tag already on a side keeps that side's spelling (a change of case alone is not a change);
- a tag new to a side is written in the spelling of the side it came from;
- a record holding two spellings of one key (both `VIP` and `vip`, as runs before this rule left them) is
  *folded* once: the spelling that was there first (the earliest in the array the API returns, which both APIs
  keep in the order the tags were added) stays, every other one is removed by a `tag_remove` op with reason
  `TAG_FOLDED`. The planning pipeline (`contact_recon/stages/plan.py`) folds the snapshot frames before the
  merge (`fold_frame`), so the merge, the checks and the saved state see one spelling per key, and adds the fold
  ops to the plan (`fold_ops`). Like a list tag respelling they change no set in key space: the state's replay,
  the guards and the guard expectation leave them out.

`tag_key` is the one definition; `tag_keys` is its column form for polars (computed once per distinct tag, so
it is the same function, not a second implementation). The set helpers (`has_tag`, `add_tag`, `drop_tag`,
`union`) are what the state module uses on plain lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import polars as pl

from contact_recon.model.ops import CONTENT_COLUMNS, Kind

TAG_FOLDED = "tag_case_folded"  # the reason of a fold op, and of nothing else


def tag_key(tag: str) -> str:
    """The key two spellings of one tag share: case-folded, trimmed, inner whitespace runs as one space."""
    return " ".join(tag.split()).casefold()


def tag_keys(expr: pl.Expr) -> pl.Expr:
    """`tag_key` of a string column (null stays null), computed once per distinct value."""
    return expr.map_batches(_keys_of, return_dtype=pl.String)


def _keys_of(values: pl.Series) -> pl.Series:
    distinct = values.drop_nulls().unique()
    keys = pl.Series([tag_key(v) for v in distinct.to_list()], dtype=pl.String)
    return values.replace_strict(distinct, keys, default=None, return_dtype=pl.String)


def has_tag(tags: Iterable[str], tag: str) -> bool:
    """Whether `tags` holds `tag` in any spelling."""
    key = tag_key(tag)
    return any(tag_key(t) == key for t in tags)


def add_tag(tags: Iterable[str], tag: str) -> list[str]:
    """`tags` (sorted) with `tag` added, unless a spelling of it is there already (that spelling stays)."""
    held = list(tags)
    return sorted(held if has_tag(held, tag) else [*held, tag])


def drop_tag(tags: Iterable[str], tag: str) -> list[str]:
    """`tags` (sorted) without `tag` in any spelling."""
    key = tag_key(tag)
    return sorted(t for t in tags if tag_key(t) != key)


def union(*sides: Iterable[str]) -> list[str]:
    """The tags of every side, one spelling per key (the first met, side by side in the order given), sorted."""
    kept: dict[str, str] = {}
    for side in sides:
        for tag in side:
            kept.setdefault(tag_key(tag), tag)
    return sorted(kept.values())


def fold(tags: Sequence[str]) -> tuple[list[str], list[str]]:
    """(kept, dropped) of one record's tags in the order the system holds them: per key the first spelling
    stays; every later spelling of a key already met is dropped."""
    seen: set[str] = set()
    kept, dropped = [], []
    for tag in tags:
        key = tag_key(tag)
        if key in seen:
            dropped.append(tag)  # a second spelling of a tag already there: folded away
        else:
            seen.add(key)
            kept.append(tag)  # the first spelling of its key: it stays
    return kept, dropped


def duplicated(frame: pl.DataFrame) -> pl.Series:
    """Row flags: the record holds two spellings of one tag key (its tags are folded: `fold_frame`)."""
    if frame.height == 0:
        return pl.Series([], dtype=pl.Boolean)
    long = (frame.select(pl.int_range(pl.len()).alias("_row"), pl.col("tags")).explode("tags").drop_nulls("tags")
            .with_columns(tag_keys(pl.col("tags")).alias("_key")))
    rows = long.group_by("_row").agg(pl.col("_key").n_unique() < pl.len()).filter(pl.col("_key"))["_row"]
    return pl.int_range(frame.height, eager=True).is_in(rows.implode())


def _held_order(raw: str | None, tags: Sequence[str]) -> list[str]:
    """A record's tags in the order the system holds them: the order of the raw payload's `tags` (trimmed, as the
    snapshot keeps them), then any the payload lacks, sorted."""
    try:
        payload = json.loads(raw) if raw else {}
    except ValueError:
        payload = {}
    listed = payload.get("tags") if isinstance(payload, dict) else None
    order = [t.strip() for t in listed if isinstance(t, str)] if isinstance(listed, list) else []
    wanted = set(tags)
    ordered = list(dict.fromkeys(t for t in order if t in wanted))
    return ordered + sorted(wanted - set(ordered))


def fold_frame(frame: pl.DataFrame, id_column: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A snapshot frame (GHL_CONTACTS or TINYEMAIL_CUSTOMERS: `tags`, `raw`; `raw` is read for the `duplicated`
    rows only, null elsewhere will do) with every record's tags folded (module docstring), and the folds:
    (`id_column`, tag) rows, one per spelling dropped."""
    folds = pl.DataFrame(schema={id_column: pl.String, "tag": pl.String})
    dup = duplicated(frame)
    if not dup.any():
        return frame, folds
    raw = frame["raw"] if "raw" in frame.columns else pl.Series([None] * frame.height, dtype=pl.String)
    new_tags, rows = [], []
    for ident, tags, payload, is_dup in zip(frame[id_column], frame["tags"], raw, dup, strict=True):
        if not is_dup:
            new_tags.append(tags)
            continue
        kept, dropped = fold(_held_order(payload, tags.to_list()))
        new_tags.append(pl.Series(sorted(kept), dtype=pl.String))
        rows += [{id_column: ident, "tag": tag} for tag in dropped]
    folded = frame.with_columns(pl.Series("tags", new_tags, dtype=pl.List(pl.String)))
    return folded, pl.DataFrame(rows, schema=folds.schema)


def fold_ops(folds: pl.DataFrame, target: str) -> pl.DataFrame:
    """The fold ops (model/ops.CONTENT_COLUMNS) of `folds` (key, tag: a spelling to drop) on `target`."""
    return folds.select(
        pl.lit(target).alias("target"), pl.lit(Kind.TAG_REMOVE.value).alias("kind"), "key",
        pl.lit("tags").alias("field"), pl.col("tag").alias("expected"), pl.lit(None, pl.String).alias("new"),
        pl.lit(TAG_FOLDED).alias("reason")).select(CONTENT_COLUMNS).cast(dict.fromkeys(CONTENT_COLUMNS, pl.String))


__all__ = ["TAG_FOLDED", "add_tag", "drop_tag", "duplicated", "fold", "fold_frame", "fold_ops", "has_tag", "tag_key",
           "tag_keys", "union"]
