"""The operations of a plan: small typed objects, one write each, identified by a hash of their content.

An operation says which system to write (`target`), what kind of write it is, on which person (`key`)
and field, the value we expect to find there now (`expected`, so the apply stage can refuse a write
whose premise changed) and the value to write (`new`), plus the named `reason` the merge engine chose
it for. The merge engine produces them as a polars frame (`OPS_SCHEMA`, one row per op) for speed;
`Op` is the same row as a frozen dataclass for code that handles a few at a time.

`op_id` is the SHA-256 of the canonical JSON of the content columns (never a timestamp or a run id),
so planning the same snapshots again after a crash yields the same ids and the journal can tell what
was already applied.

Conventions per kind (all values are strings or null):

| kind            | target    | field        | expected           | new                          |
|-----------------|-----------|--------------|--------------------|------------------------------|
| create          | either    | null         | null               | canonical JSON of the record |
| update          | either    | canonical    | current value      | value to write (null: clear) |
| tag_add         | either    | "tags"       | null               | the tag                      |
| tag_remove      | either    | "tags"       | the tag            | null                         |
| list_add        | tinyemail | "lists"      | null               | the list                     |
| list_remove     | tinyemail | "lists"      | the list           | null                         |
| consent_tighten | either    | "consent"    | current consent    | "dnd" / "unsubscribed"       |
| task_create     | ghl       | the rule id  | null               | JSON {"title","body","due_date"} |
| note_create     | ghl       | the rule id  | null               | the note body                |
| identity_review | tinyemail | "email"      | the base email     | the new GHL email (or null)  |

No kind deletes: TinyEmail has no delete, and a GHL contact is only ever deleted by a person.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import polars as pl


class Kind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    CONSENT_TIGHTEN = "consent_tighten"
    TAG_ADD = "tag_add"
    TAG_REMOVE = "tag_remove"
    LIST_ADD = "list_add"
    LIST_REMOVE = "list_remove"
    TASK_CREATE = "task_create"
    NOTE_CREATE = "note_create"
    IDENTITY_REVIEW = "identity_review"


# Apply order: a contact exists before it is updated, tagged or given a task.
KIND_ORDER: dict[str, int] = {kind.value: rank for rank, kind in enumerate(Kind)}
TARGETS = ("ghl", "tinyemail")
CONTENT_COLUMNS = ("target", "kind", "key", "field", "expected", "new", "reason")
OPS_SCHEMA = pl.Schema({"op_id": pl.String(), **{name: pl.String() for name in CONTENT_COLUMNS}})
CONFLICTS_SCHEMA = pl.Schema({name: pl.String() for name in ("key", "field", "base", "tinyemail", "ghl", "reason")})


def op_id(target: str, kind: str, key: str, field: str | None, expected: str | None, new: str | None,
          reason: str) -> str:
    """SHA-256 (hex) of the canonical JSON of an operation's content."""
    content = json.dumps([target, kind, key, field, expected, new, reason], ensure_ascii=False,
                         separators=(",", ":"))
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Op:
    target: str
    kind: str
    key: str
    field: str | None
    expected: str | None
    new: str | None
    reason: str

    @property
    def id(self) -> str:
        return op_id(self.target, self.kind, self.key, self.field, self.expected, self.new, self.reason)


def canonical_json(value: Any) -> str:
    """The one JSON spelling used inside operations (sorted keys, no spaces, UTF-8)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def create_payload(fields: dict[str, str | None], tags: list[str], lists: list[str], consent: str | None) -> str:
    """The record a create op writes: non-blank canonical fields, sorted tags and lists, consent if tight."""
    record: dict[str, Any] = {name: value for name, value in fields.items() if value is not None}
    record["tags"] = sorted(set(tags))
    if lists:
        record["lists"] = sorted(set(lists))
    if consent is not None:
        record["consent"] = consent
    return canonical_json(record)


def with_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """Add `op_id` to a frame of op content, in `OPS_SCHEMA` column order."""
    frame = frame.select([pl.col(name).cast(pl.String) for name in CONTENT_COLUMNS])
    ids = [op_id(*row) for row in frame.iter_rows()]
    return frame.with_columns(pl.Series("op_id", ids, dtype=pl.String)).select(list(OPS_SCHEMA))


def sort_ops(frame: pl.DataFrame) -> pl.DataFrame:
    """The deterministic plan order: by kind (apply order), then target, key, field, values."""
    rank = pl.col("kind").replace_strict(KIND_ORDER, return_dtype=pl.Int8)
    return frame.sort([rank, "target", "key", "field", "expected", "new", "reason"], nulls_last=False,
                      maintain_order=True)


def ops_from_frame(frame: pl.DataFrame) -> list[Op]:
    return [Op(*row) for row in frame.select(list(CONTENT_COLUMNS)).iter_rows()]


def ops_to_frame(ops: list[Op]) -> pl.DataFrame:
    rows = {name: [getattr(op, name) for op in ops] for name in CONTENT_COLUMNS}
    return sort_ops(with_ids(pl.DataFrame(rows, schema={name: pl.String for name in CONTENT_COLUMNS})))


def empty_ops() -> pl.DataFrame:
    return pl.DataFrame(schema=OPS_SCHEMA)


def empty_conflicts() -> pl.DataFrame:
    return pl.DataFrame(schema=CONFLICTS_SCHEMA)
