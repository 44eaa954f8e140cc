"""Custom fields: a GHL custom field (named by its `fieldKey`) synced with a TinyEmail field or a tag pattern.

Pure functions, no I/O. The policy (`model/policy.py`, `[custom_fields."contact.plan"]`) names each custom field
by its GHL `fieldKey` and gives it one TinyEmail target: a customer field (`te_field`, one of `TE_FIELDS`: the
TinyEmail contract has no custom-field object, so the customer fields no standard field maps are what it offers)
or a tag pattern (`tag_pattern`, e.g. `plan:{value}`: the value `gold` is the tag `plan:gold`).

Where the values live:
- a GHL snapshot row's `custom` (records.py) is the contact's custom fields as JSON text, keyed by `fieldKey`
  (GHL answers with field ids; the connector resolves them per location through
  `GET /locations/{locationId}/customFields`, `ghl_custom_values`); an id the location does not define is kept
  under `id:<id>`;
- a TinyEmail snapshot row's `custom` is the customer's unmapped fields (`TE_FIELDS`) as JSON text, keyed by
  TinyEmail's own names; tag-pattern values stay in its `tags`;
- `canonical_sides` (the plan stage, before the merge) turns both merge sides' `custom` into the policy's own
  form: JSON keyed by the policy's custom-field names, only the fields the policy maps. That is what the merge
  compares (as one text field per custom field, `column`) and what the base keeps.

Tag patterns: `tag_for(pattern, value)` spells a value's tag; `value_of(pattern, tag)` reads a tag back (by tag
key, `model/tags.py`: `Plan:Gold` reads as `Gold` under `plan:{value}`). A customer holding several tags that
match one pattern has no single value: `canonical_sides` records them as a list, which the merge reports as a
conflict (`custom_tags_ambiguous`) and never writes over, until a person leaves one tag. A GHL contact whose
custom field ids could not be named (the location's definitions unreadable: a missing scope, an outage; or an
id no definition names any more) has unknown values, never blank ones: the merge holds its custom fields
(`custom_field_unresolved`) instead of writing a blank to TinyEmail.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from contact_recon.model.tags import tag_key

PLACEHOLDER = "{value}"
PREFIX = "custom:"  # an op's `field` for a custom field: `custom:<fieldKey>`
TE_FIELDS = ("address2", "currency")  # TinyEmail customer fields that no standard field maps (CONTRACT.md)
UNDEFINED_PREFIX = "id:"  # a GHL custom field id the location's definitions do not name
HELD = "\u2063"  # starts a value the merge holds (never written anywhere): one of the two below (not
# whitespace to Python or polars, so no trim removes it; U+2063 INVISIBLE SEPARATOR)
AMBIGUOUS = HELD + "several tags: "  # a TinyEmail value read from several pattern tags
UNRESOLVED = HELD + "unresolved"  # a GHL value whose field ids could not be named (definitions unread)


def column(name: str) -> str:
    """The op field (and merge column) of a custom field: `custom:<fieldKey>`."""
    return PREFIX + name


def is_custom(field: str | None) -> bool:
    return bool(field) and str(field).startswith(PREFIX)


def name_of(field: str) -> str:
    """The custom field's name (its fieldKey) from its op field."""
    return field.removeprefix(PREFIX)


# ------------------------------------------------------------------------------------------ patterns


def check_pattern(pattern: str) -> str:
    """The pattern when usable: exactly one `{value}`, and a non-blank fixed part; else ValueError."""
    if pattern.count(PLACEHOLDER) != 1:
        raise ValueError(f"tag_pattern {pattern!r} must hold {PLACEHOLDER} exactly once")
    if not pattern.replace(PLACEHOLDER, "").strip():
        raise ValueError(f"tag_pattern {pattern!r} needs text around {PLACEHOLDER}, or every tag would match")
    return pattern


def tag_for(pattern: str, value: str) -> str:
    """The tag that spells `value` under `pattern` (`plan:{value}`, `gold` -> `plan:gold`)."""
    return pattern.replace(PLACEHOLDER, value.strip())


def value_of(pattern: str, tag: str) -> str | None:
    """The value a tag spells under `pattern`, None when it does not match (the fixed parts compared case-folded,
    as tag keys are: `Plan:Gold` reads as `Gold` under `plan:{value}`)."""
    head, _, tail = pattern.partition(PLACEHOLDER)
    text, folded = tag.strip(), tag.strip().casefold()
    if not folded.startswith(head.casefold()) or not folded.endswith(tail.casefold()):
        return None
    value = text[len(head):len(text) - len(tail)].strip() if len(text) > len(head) + len(tail) else ""
    return value or None


def pattern_values(pattern: str, tags: Iterable[str]) -> list[str]:
    """The distinct values (by tag key) that `tags` spell under `pattern`, in tag order."""
    seen: dict[str, str] = {}
    for tag in tags:
        value = value_of(pattern, tag)
        if value is not None:
            seen.setdefault(tag_key(value), value)
    return list(seen.values())


def matches(pattern: str, tag: str) -> bool:
    return value_of(pattern, tag) is not None


# -------------------------------------------------------------------------------------------- values


def text_value(value: Any) -> str | None:
    """A custom field value as text: trimmed, blank -> None, numbers as their text, lists as JSON."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(value)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else None
    text = str(value).strip()
    return text or None


def dumps(values: Mapping[str, Any]) -> str | None:
    """Custom values as the canonical JSON text of a `custom` column (blank values left out; None when empty)."""
    kept = {k: v for k, v in values.items() if v is not None and v != ""}
    return json.dumps(kept, sort_keys=True, ensure_ascii=False, separators=(",", ":")) if kept else None


def loads(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def ghl_custom_values(items: Iterable[Mapping[str, Any]], keys: Mapping[str, str] | None) -> str | None:
    """A GHL contact's `customFields` ({id, value}, CustomFieldSchema) as a row's `custom`: keyed by fieldKey
    through `keys` (id -> fieldKey, the location's definitions), `id:<id>` where the location names none."""
    out: dict[str, str] = {}
    for item in items:
        field_id = item.get("id") if isinstance(item, Mapping) else None
        value = text_value(item.get("value", item.get("field_value"))) if isinstance(item, Mapping) else None
        if isinstance(field_id, str) and value is not None:
            out[(keys or {}).get(field_id) or UNDEFINED_PREFIX + field_id] = value
    return dumps(out)


def te_custom_values(payload: Mapping[str, Any]) -> str | None:
    """A TinyEmail customer's unmapped fields (`TE_FIELDS`) as a row's `custom`."""
    return dumps({name: text_value(payload.get(name)) for name in TE_FIELDS})


def te_value(rule: Any, custom: Mapping[str, Any], tags: Iterable[str]) -> Any:
    """TinyEmail's value of one custom field rule (`policy.CustomFieldRule`): its field's text, or the value its
    pattern tag spells; several pattern tags give the list of their values (ambiguous)."""
    if rule.te_field:
        return text_value(custom.get(rule.te_field))
    values = pattern_values(rule.tag_pattern, tags)
    return values[0] if len(values) == 1 else (sorted(values) if values else None)


def canonical_sides(ghl_side: pl.DataFrame, te_side: pl.DataFrame,
                    rules: Mapping[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both merge sides (records.MERGE_SIDE) with `custom` in the policy's form: keyed by the custom-field names of
    `rules` (the policy's `custom_fields`), only those (module docstring)."""
    if not rules:
        return (ghl_side.with_columns(pl.lit(None, dtype=pl.String).alias("custom")),
                te_side.with_columns(pl.lit(None, dtype=pl.String).alias("custom")))
    names = list(rules)
    ghl = [dumps(_ghl_canonical(loads(text), names)) for text in ghl_side["custom"].to_list()]
    te = [dumps({n: te_value(rules[n], loads(text), tags or []) for n in names})
          for text, tags in zip(te_side["custom"].to_list(), te_side["tags"].to_list(), strict=True)]
    return (ghl_side.with_columns(pl.Series("custom", ghl, dtype=pl.String)),
            te_side.with_columns(pl.Series("custom", te, dtype=pl.String)))


def _ghl_canonical(custom: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A GHL row's custom values in the policy's names; with an unresolved id among them (`id:<id>`) the values
    are unknown, not blank: `{"unresolved": true}` for each, which the merge holds."""
    if any(key.startswith(UNDEFINED_PREFIX) for key in custom):
        return {n: {"unresolved": True} for n in names}
    return {n: custom.get(n) for n in names}


def merge_text(value: Any) -> str | None:
    """A canonical custom value as the merge compares it: text; several pattern tags `AMBIGUOUS` + their values;
    a GHL value that could not be resolved `UNRESOLVED`."""
    if isinstance(value, list):
        return AMBIGUOUS + ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return UNRESOLVED
    return text_value(value)


def value_column(custom: pl.Expr, name: str) -> pl.Expr:
    """One custom field's value out of a `custom` JSON column, as the merge compares it (`merge_text`)."""
    return custom.map_elements(lambda text: merge_text(loads(text).get(name)), return_dtype=pl.String,
                               skip_nulls=True)
