"""Advance the base after apply: the planning state on disk, and the one transaction that moves the store forward.

The plan stage saves what a later apply needs under `runs/<run_id>/state/` (`save_state`: the planning base,
both merge sides, the people, this run's re-keys and new id_map pairs; each file whole or not at all). After
the apply stage has sent the ops, `advance` reads that state back (`load_state`), lets the pure algorithm of
`contact_recon/engine/state.py` (`advanced`) work out the next base from the run's journal, and writes it in
one transaction: the base rows of gone keys deleted, the id_map pairs of re-created contacts forgotten, the
next base upserted, the new pairs saved. Only confirmed ops move anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from contact_recon.engine.state import Consent, advanced
from contact_recon.store.db import Store
from contact_recon.store.files import atomic_write, private_dir

STATE_DIR = "state"
STATE_FILES = ("base", "te_side", "ghl_side", "people", "rekeys", "id_map_new")


def save_state(directory: Path, frames: Mapping[str, pl.DataFrame]) -> None:
    """Write the planning state a later apply needs (each file whole or not at all)."""
    target = directory / STATE_DIR
    private_dir(target)
    for name in STATE_FILES:
        atomic_write(target / f"{name}.parquet", frames[name].write_parquet)


def load_state(directory: Path) -> dict[str, pl.DataFrame]:
    """The planning state `save_state` wrote under `directory` (a run's directory)."""
    return {name: pl.read_parquet(directory / STATE_DIR / f"{name}.parquet") for name in STATE_FILES}


def advance(store: Store, run_dir: Path, journal: pl.DataFrame, run_id: str, consent: Consent,
            list_prefix: str = "list:") -> dict[str, int]:
    """Move the base, the id_map and the re-keys forward for this run's confirmed ops (one transaction)."""
    step = advanced(load_state(run_dir), journal, consent, list_prefix)
    with store.transaction():
        store.delete_base(step.gone_keys)
        store.delete_id_map(step.recreated)
        store.save_base(step.base, run_id)
        if step.id_map.height:
            store.save_id_map(step.id_map, run_id)
    return {"base_rows": step.base.height, "created_contacts": step.created_contacts, "id_map": step.id_map.height}
