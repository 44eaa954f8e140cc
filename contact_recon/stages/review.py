"""The review files of a plan run: `identity.csv` (the open identity reviews) and `quarantine.parquet`.

`identity_input(store, id_map)` is what the matcher reads once the team has answered: the id_map with the manual
links and broken pairings of the standing decisions, and the (contact, email) pairs kept apart
(`contact_recon/engine/reviews.py` has the decision table). After the merge and the quarantine,
`write_review_files` records the run's identity reviews and quarantined ops in `review_ages` (since when each
has been open), and writes beside conflicts.csv:

- `identity.csv`: one row per identity review without a standing decision (IDENTITY_CSV), through
  `model/cells.guarded` (a person opens it in a spreadsheet), to fill in and hand to `recon identity resolve`;
- `quarantine.parquet`: every quarantined op with its context, values, age and dismissal (QUARANTINE_VIEW),
  which `recon quarantine list` and the report read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from contact_recon.engine.identity import IdentityResult, with_decisions
from contact_recon.engine.reviews import (
    IDENTITY_ITEM,
    QUARANTINE_ITEM,
    decided_effects,
    identity_rows,
    quarantine_rows,
    with_review_ids,
)
from contact_recon.model.cells import guarded
from contact_recon.model.context import person_context
from contact_recon.store.db import Store
from contact_recon.store.files import IDENTITY_FILE, QUARANTINE_FILE, atomic_write
from contact_recon.store.reviews import Reviews


@dataclass(frozen=True)
class IdentityInput:
    id_map: pl.DataFrame  # identity.ID_MAP as the matcher reads it
    apart: frozenset[tuple[str, str]]  # (contact_id, email) kept apart


def identity_input(store: Store, id_map: pl.DataFrame) -> IdentityInput:
    """The stored id_map with the team's standing identity decisions applied, for `match_identities`."""
    effects = decided_effects(Reviews(store).standing_decisions())
    return IdentityInput(with_decisions(id_map, effects.links, effects.broken), effects.apart)


def write_review_files(store: Store, directory: Path, run_id: str, frames: dict[str, pl.DataFrame],
                       identity: IdentityResult, marked: pl.DataFrame, people: pl.DataFrame,
                       sides: tuple[pl.DataFrame, pl.DataFrame]) -> tuple[Path, Path]:
    """Record the run's open items' ages and write identity.csv and quarantine.parquet under `directory`."""
    reviews = Reviews(store)
    now = store.clock()
    ids = with_review_ids(identity.review)
    reviews.seen(IDENTITY_ITEM, ids["review_id"].to_list(), run_id)
    held = marked.filter(pl.col("status") == "quarantined")
    reviews.seen(QUARANTINE_ITEM, held["op_id"].to_list(), run_id)
    decided = reviews.standing_decisions()["review_id"].to_list()
    rows = identity_rows(identity.review, frames["ghl_contacts"], frames["te_customers"],
                         reviews.ages(IDENTITY_ITEM), now).filter(~pl.col("review_id").is_in(decided))
    ghl_side, te_side = sides
    context = person_context(people, ghl_side, te_side)
    quarantine = quarantine_rows(held, context, people, frames["ghl_contacts"], frames["te_customers"],
                                 reviews.ages(QUARANTINE_ITEM), reviews.dismissed(), now)
    identity_path, quarantine_path = directory / IDENTITY_FILE, directory / QUARANTINE_FILE
    atomic_write(identity_path, guarded(rows).write_csv)  # a person opens it: formula-like text made inert
    atomic_write(quarantine_path, quarantine.write_parquet)
    return identity_path, quarantine_path
