"""Spill (store/spill.py): a snapshot's rows wait on disk as Parquet files, and the store writes them as it would
the frames themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from contact_recon.model.normalise import to_frame
from contact_recon.model.records import GHL_CONTACTS, GHL_NOTES, TINYEMAIL_CUSTOMERS
from contact_recon.store import spill as spill_module
from contact_recon.store.db import open_db
from contact_recon.store.spill import PREFIX, Spill, SpillError, remove_stale, spill_root
from contact_recon.systems.ghl.mapping import ghl_contact_record, ghl_note_record
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record


def contacts(start: int, n: int, location: str = "L1") -> pl.DataFrame:
    rows = [ghl_contact_record({"id": f"c{i:04d}", "email": f"p{i}@example.com", "tags": ["vip", f"t{i % 3}"],
                                "firstName": "=HYPERLINK(\"x\")", "dateUpdated": "2026-03-01T12:00:00Z",
                                "customFields": [{"id": "f1", "value": "é\u200b"}]}, location)
            for i in range(start, start + n)]
    return to_frame(rows, GHL_CONTACTS)


def test_rows_come_back_as_they_were_added_in_files_of_flush_rows(tmp_path: Path) -> None:
    spill = Spill(tmp_path, GHL_CONTACTS, flush_rows=10)
    parts = [contacts(0, 4), contacts(4, 0), contacts(4, 7), contacts(11, 12), contacts(23, 1)]
    for part in parts:
        spill.add(part)
    assert spill.height == 24
    assert len(spill.written) == 2 and len(spill.pending) == 1  # 4 + 7 rows made a file, then 12; 1 waits
    files = spill.files()
    assert len(files) == 3 and all(f.parent == tmp_path for f in files) and not spill.pending
    expected = pl.concat(parts)
    assert spill.frame().equals(expected)  # every type round-trips: lists, datetimes, unicode, formula-like text
    assert spill.column("contact_id").to_list() == expected["contact_id"].to_list()


def test_an_empty_spill_reads_as_empty_frames_of_its_schema(tmp_path: Path) -> None:
    spill = Spill(tmp_path, GHL_NOTES)
    assert spill.files() == [] and spill.height == 0
    assert spill.frame().schema == GHL_NOTES and spill.frame().height == 0
    assert spill.column("note_id").dtype == GHL_NOTES["note_id"] and spill.column("note_id").len() == 0


def test_a_chunk_of_another_schema_is_refused(tmp_path: Path) -> None:
    spill = Spill(tmp_path, GHL_CONTACTS)
    with pytest.raises(SpillError, match="chunk schema"):
        spill.add(contacts(0, 2).drop("raw"))
    with pytest.raises(SpillError, match="different schemas"):
        Spill.joined([spill, Spill(tmp_path, GHL_NOTES)], GHL_CONTACTS)


def test_the_store_writes_a_spill_as_it_writes_the_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spill_module, "FLUSH_ROWS", 5)
    with spill_root(tmp_path) as root:
        one, two = Spill.under(root, "a", GHL_CONTACTS), Spill.under(root, "b", GHL_CONTACTS)
        for start in range(0, 12, 4):
            one.add(contacts(start, 4, "L1"))
        two.add(contacts(100, 3, "L2"))
        notes = Spill.under(root, "n", GHL_NOTES)
        notes.add(to_frame([ghl_note_record({"id": "n1", "contactId": "c0001", "body": "x" * 70_000}, "L1")],
                           GHL_NOTES))
        te = to_frame([tinyemail_customer_record({"email": "p1@example.com", "status": "Subscribed"}, ["l1"])],
                      TINYEMAIL_CUSTOMERS)
        frames = {"ghl_contacts": pl.concat([one.frame(), two.frame()]), "ghl_notes": notes.frame(),
                  "te_customers": te}
        spilled: dict[str, pl.DataFrame | Spill] = {"ghl_contacts": Spill.joined([one, two], GHL_CONTACTS),
                                                    "ghl_notes": notes, "te_customers": te}
        with open_db(tmp_path / "a.duckdb") as a, open_db(tmp_path / "b.duckdb") as b:
            counts_a = a.write_snapshot("r1", frames, location_ids=["L1", "L2"])
            counts_b = b.write_snapshot("r1", spilled, location_ids=["L1", "L2"])
            assert counts_a == counts_b == {"ghl_contacts": 15, "ghl_notes": 1, "te_customers": 1}
            for entity in frames:
                assert a.latest_snapshot(entity).equals(b.latest_snapshot(entity)), entity
            assert b.snapshot_parts().filter(pl.col("entity") == "ghl_contacts")["row_count"].sort().to_list() \
                == [3, 12]
    assert not list(tmp_path.glob(f"{PREFIX}*"))  # the root went with the block


def test_the_root_goes_on_an_error_and_a_dead_process_root_goes_next_time(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), spill_root(tmp_path) as root:
        Spill.under(root, "a", GHL_CONTACTS).add(contacts(0, 3))
        raise RuntimeError("a fetch failed")
    assert not root.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / f"{PREFIX}{dead.stdout.strip()}-abc"
    (stale / "contacts-L1-x").mkdir(parents=True)
    alive = tmp_path / f"{PREFIX}{os.getpid()}-def"
    alive.mkdir()
    assert remove_stale(tmp_path) == [stale]
    assert alive.exists() and not stale.exists()
    with spill_root(tmp_path) as root:
        assert root.parent == tmp_path and (root.stat().st_mode & 0o777) == 0o700


def test_a_first_night_lets_each_payload_go_once_its_row_is_made(tmp_path: Path) -> None:
    """`_chunks(release=True)` (the snapshot's contact texts): every text is dropped from the listing's list as its
    chunk is built, and the rows all reach the spill."""
    import asyncio
    import json

    from contact_recon.stages.snapshot import NORMALISE_CHUNK, _chunks, _spilled

    texts: list[str | None] = [json.dumps({"id": f"c{i:04d}", "email": f"p{i}@example.com"})
                               for i in range(NORMALISE_CHUNK * 2 + 5)]
    seen: list[int] = []

    def build(text: str) -> dict:
        seen.append(sum(t is not None for t in texts))  # texts still held while this chunk is built
        return ghl_contact_record(json.loads(text), "L1")

    spill = Spill(tmp_path, GHL_CONTACTS)
    asyncio.run(_spilled(_chunks(texts, build, GHL_CONTACTS, release=True), spill))
    assert texts == [None] * len(texts)
    assert spill.column("contact_id").to_list() == [f"c{i:04d}" for i in range(len(texts))]
    assert max(seen[NORMALISE_CHUNK:]) <= len(texts) - NORMALISE_CHUNK  # the first chunk's texts were gone
