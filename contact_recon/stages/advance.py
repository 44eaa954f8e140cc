"""Advance the base after apply: the planning state on disk, and the one transaction that moves the store forward.

The plan stage saves what a later apply needs under `runs/<run_id>/state/` (`save_state`: the planning base,
both merge sides, the people, this run's re-keys and new id_map pairs; each file whole or not at all). After
the apply stage has sent the ops, `advance` reads that state back (`load_state`), lets the pure algorithm of
`contact_recon/engine/state.py` (`advanced`) work out the next base from the run's journal, and writes it in
one transaction: the base rows of gone keys deleted, the id_map pairs of re-created contacts forgotten, the
next base upserted, the new pairs saved, and the people the plan had nothing for settled (`store/settled.py`:
`in_play` are the keys the plan read, `settle` those of them it found nothing to do for, with their digests; the
next plan leaves a settled person out while every digest holds). Only confirmed ops move anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from contact_recon.engine.state import Consent, advanced
from contact_recon.store.db import Store
from contact_recon.store.files import atomic_write, private_dir
from contact_recon.store.settled import SETTLE, Settled

STATE_DIR = "state"
STATE_FILES = ("base", "te_side", "ghl_side", "people", "rekeys", "id_map_new", "in_play", "settle")
_SETTLE_FILES = {"in_play": pl.Schema({"key": pl.String()}),  # a plan saved before settling existed: none
                 "settle": pl.Schema({**SETTLE, "generation": pl.String()})}


def save_state(directory: Path, frames: Mapping[str, pl.DataFrame]) -> None:
    """Write the planning state a later apply needs (each file whole or not at all)."""
    target = directory / STATE_DIR
    private_dir(target)
    for name in STATE_FILES:
        atomic_write(target / f"{name}.parquet", frames[name].write_parquet)


def load_state(directory: Path) -> dict[str, pl.DataFrame]:
    """The planning state `save_state` wrote under `directory` (a run's directory)."""
    files = {name: directory / STATE_DIR / f"{name}.parquet" for name in STATE_FILES}
    return {name: pl.read_parquet(path) if path.exists() or name not in _SETTLE_FILES
            else pl.DataFrame(schema=_SETTLE_FILES[name]) for name, path in files.items()}


def advance(store: Store, run_dir: Path, journal: pl.DataFrame, run_id: str, consent: Consent,
            list_prefix: str = "list:") -> dict[str, int]:
    """Move the base, the id_map and the re-keys forward for this run's confirmed ops (one transaction)."""
    state = load_state(run_dir)
    step = advanced(state, journal, consent, list_prefix)
    settle = state["settle"]
    generation = settle["generation"][0] if settle.height else ""
    # the transaction's own rows' key index stays in memory: the limit grows with a first night's million people;
    # and so do the key indexes of the tables it deletes from and upserts into, loaded whole as it touches them: with
    # the size of those tables (night 2 of a million people: a few thousand rows written, 197 MB of index loaded)
    indexed = ["base", "settled"] + (["id_map"] if step.recreated or step.id_map.height else [])
    with store.memory_for_rows(step.base.height + settle.height, indexed), store.transaction():
        store.delete_base(step.gone_keys)
        store.delete_id_map(step.recreated)
        store.save_base(step.base, run_id)
        if step.id_map.height:
            store.save_id_map(step.id_map, run_id)
        settled = Settled(store).replace(state["in_play"]["key"].to_list(), settle, generation, run_id)
    return {"base_rows": step.base.height, "created_contacts": step.created_contacts, "id_map": step.id_map.height,
            "settled": settled}
