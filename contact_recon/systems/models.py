"""What every system's API models share: the pydantic base and the way back to the API's JSON payload.

Each system keeps its own models beside its client (`systems/ghl/models.py`, `systems/tinyemail/models.py`).
They are strict on the fields the pipeline uses (types are checked, required ones must be present) and
tolerant of everything else: unknown fields are kept (`extra="allow"`) so a record read and written back
loses nothing, and the APIs may add fields without breaking us.

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

from typing import Any

from pydantic import BaseModel, ConfigDict


class ApiModel(BaseModel):
    """The base of every API model: unknown fields kept, fields settable by name or alias."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


def as_payload(record: BaseModel) -> dict[str, Any]:
    """An API model as the API's JSON payload (ISO text for datetimes, unset fields left out): what every
    `*_record` mapping function takes, whether the record came from the nightly listing or from one read now."""
    return record.model_dump(mode="json", exclude_unset=True)
