"""What every system's API models share: the pydantic base and the way back to the API's JSON payload.

Each system keeps its own models beside its client (`systems/ghl/models.py`, `systems/tinyemail/models.py`).
They check the fields the pipeline uses (types are checked, required ones must be present) and are
tolerant of everything else: unknown fields are kept (`extra="allow"`) so a record read and written back
loses nothing, and the APIs may add fields without breaking us. They also forgive what the real APIs are
seen to send: a null list is an empty one, a null flag is false, an empty date is no date, a number where
text belongs is that text, an unknown enum value is kept as its raw text.

A listing is validated per record (`split_records`): a record its model still refuses is an `Unreadable`
(its key when that much can be read, and the refused fields, never their values), so one odd record costs
that record, not the page. The snapshot carries an unreadable record's previous row and holds its person
(contact_recon/stages/snapshot.py); it is never taken for a deletion.

A contact takes four shapes between the listing and the write, each for a reason of its own:
1. the **API model** (here and in each system's `models.py`): what the client parsed, so a malformed
   answer fails at the edge with the endpoint named, never deep inside the merge;
2. the **canonical record** (`model/records.py`, one row of a polars frame; built by each system's
   `mapping.py` from `as_payload(model)`): one vocabulary for both systems, so the merge engine, the
   checks and the store never see an API's own field names;
3. the **op** (`model/ops.py`, journaled by `store/journal.py`): one write, in canonical terms, with the
   value expected now, so a plan can be shown, approved, journaled and resumed after a crash;
4. the **request body** (built by each system's `writer.py`): the API's names and quirks again (GHL's
   `dndSettings`, a TinyEmail member), made only at the moment of sending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict


class ApiModel(BaseModel):
    """The base of every API model: unknown fields kept, fields settable by name or alias."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


def as_payload(record: BaseModel) -> dict[str, Any]:
    """An API model as the API's JSON payload (ISO text for datetimes, unset fields left out): what every
    `*_record` mapping function takes, whether the record came from the nightly listing or from one read now."""
    return record.model_dump(mode="json", exclude_unset=True)


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Unreadable:
    """A record of a listing that its model refuses: `key` (a GHL id, a TinyEmail email) when it is text,
    `where` its place in the answer, `problem` the refused fields and why (no values: no customer data)."""

    key: str | None
    where: str
    problem: str


def split_records(model: type[M], items: Sequence[Any], key: str, what: str) -> tuple[list[M], list[Unreadable]]:
    """Each item validated on its own: (the records read, the records refused), both in answer order."""
    read: list[M] = []
    refused: list[Unreadable] = []
    for index, item in enumerate(items):
        try:
            read.append(model.model_validate(item))
        except pydantic.ValidationError as exc:
            value = item.get(key) if isinstance(item, dict) else None
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(record)'}: {e['msg']}" for e in exc.errors())
            refused.append(Unreadable(value if isinstance(value, str) and value else None, f"{what}[{index}]",
                                      problems))
    return read, refused
