"""Tags that differ only in letter case are one tag (issue 21), against both sandboxes.

The story as a new user met it: a contact tagged `VIP` in GHL whose TinyEmail customer is tagged `vip`. Before,
the first run copied each spelling to the other side and both systems kept both for good. Now each side keeps
its own spelling and a second run plans nothing; a record an earlier run left with both spellings is folded
once (the spelling there first stays) and the report counts the folds. `sync-contact` follows the same rule
for one person between nights.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from contact_recon.model.tags import TAG_FOLDED
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.stages.plan import load_plan
from contact_recon.stages.run import sync
from contact_recon.store.db import open_db
from tests.support.worlds import World, loose_policy, make_settings

PAIR, FOLDED = "pair", "folded"  # the two people of the story


@pytest.fixture
def world(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path) -> Iterator[World]:
    fixture = generate_fixture(30, seed=7, overlap=0.7)
    customers = {c["email"].strip().lower(): c for c in fixture["tinyemail"]["customers"]}
    contacts = next(iter(fixture["ghl"]["locations"].values()))["contacts"]
    both = [c for c in contacts if (c.get("email") or "").strip().lower() in customers]
    assert len(both) >= 2, "the fixture changed: too few people in both systems"
    pair, folded = both[0], both[1]
    # the story: GHL `VIP`, TinyEmail `vip`
    pair["tags"] = [*_plain(pair.get("tags")), "VIP"]
    customers[pair["email"].strip().lower()]["tags"] = [*_plain(customers[pair["email"].strip().lower()].get("tags")),
                                                        "vip"]
    # what an earlier run left: both spellings on both sides, each side's own spelling first
    folded["tags"] = [*_plain(folded.get("tags")), "VIP", "vip"]
    customer = customers[folded["email"].strip().lower()]
    customer["tags"] = [*_plain(customer.get("tags")), "vip", "VIP"]
    ghl, te = sandboxes(fixture, rate_scale=50)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    with open_db(settings.data_dir / "recon.duckdb") as store:
        world = World(fixture, ghl, te, settings, store, loose_policy(tmp_path))
        world.edited = {PAIR: [pair["email"].strip().lower(), pair["id"]],
                        FOLDED: [folded["email"].strip().lower(), folded["id"]]}
        yield world


def _plain(tags: Any) -> list[str]:
    """The fixture's own tags without any spelling of `vip` (so the story's tags are the only ones)."""
    return [t for t in tags or [] if t.strip().casefold() != "vip"]


def _vip(world: World) -> dict[str, dict[str, list[str]]]:
    """email -> {"ghl": the spellings of `vip` its GHL contact holds, "te": its TinyEmail customer's}, in the
    order each sandbox holds them."""
    location = next(iter(world.state(world.ghl)["locations"].values()))
    customers = world.state(world.te)["customers"]
    rows = customers.values() if isinstance(customers, dict) else customers
    out: dict[str, dict[str, list[str]]] = {}
    for system, records in (("ghl", location["contacts"]), ("te", rows)):
        for record in records:
            email = (record.get("email") or "").strip().lower()
            out.setdefault(email, {})[system] = [t for t in record.get("tags") or [] if t.casefold() == "vip"]
    return out


def test_case_variants_are_one_tag_each_side_keeps_its_spelling_and_old_duplicates_fold_once(world: World):
    pair, folded = world.edited[PAIR][0], world.edited[FOLDED][0]
    before = _vip(world)
    # both sandboxes store tags case-sensitively, as the real APIs do: two spellings are two tags to them
    assert before[pair] == {"ghl": ["VIP"], "te": ["vip"]}
    assert before[folded] == {"ghl": ["VIP", "vip"], "te": ["vip", "VIP"]}

    first = world.reconcile()
    assert first.status == "completed", first.error
    assert first.plan is not None and first.summary is not None
    ops = first.plan.plan
    story = pl.col("key").is_in([world.edited[PAIR][1], world.edited[FOLDED][1]])
    # no spelling of `vip` is copied to the other side
    assert ops.filter(story & (pl.col("kind") == "tag_add") & (pl.col("new").str.to_lowercase() == "vip")).height == 0
    folds = ops.filter(pl.col("reason") == TAG_FOLDED)
    assert sorted(folds.select("target", "kind", "expected").rows()) == [
        ("ghl", "tag_remove", "vip"), ("tinyemail", "tag_remove", "VIP")]
    assert first.summary["tags_folded"] == {"planned": 2, "applied": 2}
    assert "<b>2</b><span>tag spellings folded</span>" in Path(first.summary["report"]).read_text()
    assert first.plan.stats["tags_folded"] == 2
    # the folds are no mass tag removal: the guard figure leaves them out
    assert first.plan.stats["guard_tag_removals"] == ops.filter(
        pl.col("kind").is_in(["tag_remove", "list_remove"]) & (pl.col("reason") != TAG_FOLDED))["key"].n_unique()
    after = _vip(world)
    assert after[pair] == {"ghl": ["VIP"], "te": ["vip"]}  # each side keeps its own spelling
    assert after[folded] == {"ghl": ["VIP"], "te": ["vip"]}  # the spelling there first stayed on each side

    second = world.reconcile()
    assert second.status == "completed", second.error
    assert second.plan is not None and second.summary is not None
    churn = second.plan.plan.filter(pl.col("field").is_in(["tags", "lists"]))
    assert churn.height == 0, churn.select("target", "kind", "key", "expected", "new", "reason").rows()[:5]
    assert second.summary["tags_folded"] == {"planned": 0, "applied": 0}
    assert _vip(world) == after


def test_sync_contact_compares_tags_by_key_and_folds_a_second_spelling(world: World):
    pair_email, pair_id = world.edited[PAIR]
    first = world.reconcile()
    assert first.status == "completed", first.error
    world.store.close()  # `sync` opens the store itself, as the flow does

    async def tag_in_ghl() -> None:
        client = world.ghl_client(world.location)
        try:
            # a person in GHL adds the tag again in another spelling, and a new tag
            await client.add_tags(pair_id, ["vip", "Gold  Member"])
        finally:
            await client.aclose()

    asyncio.run(tag_in_ghl())
    assert _vip(world)[pair_email] == {"ghl": ["VIP", "vip"], "te": ["vip"]}
    synced = sync(world.settings, contact_id=pair_id, location_id=world.location, ghl_client=world.ghl_client,
                  tinyemail_client=world.te_client)
    assert synced["status"] == "completed", synced
    with open_db(world.settings.data_dir / "recon.duckdb") as store:
        ops = load_plan(world.settings.data_dir, synced["run_id"]).filter(pl.col("field") == "tags")
        assert sorted(ops.select("target", "kind", "expected", "new", "reason").rows()) == [
            ("ghl", "tag_remove", "vip", None, TAG_FOLDED),  # `VIP` was there first
            ("tinyemail", "tag_add", None, "Gold  Member", "tag_added_on_ghl")]  # in the spelling it came from
        assert store.get_run(synced["run_id"])["kind"] == "sync"
    assert _vip(world)[pair_email] == {"ghl": ["VIP"], "te": ["vip"]}
    again = sync(world.settings, contact_id=pair_id, location_id=world.location, ghl_client=world.ghl_client,
                 tinyemail_client=world.te_client)
    assert again["ops"] == 0, again


def test_a_list_tag_ghl_spells_in_another_case_is_that_list_and_leaves_with_it(world: World):
    target = world.fixture["tinyemail"]["lists"][0]
    spelled = f"LIST:{target['name'].swapcase()}"  # GHL's own spelling of the list's tag
    assert spelled.casefold() != f"list:{target['name']}" and spelled.casefold() == f"list:{target['name']}".casefold()
    members = {m.strip().lower() for m in target["members"]}
    # in another list too: the snapshot reaches TinyEmail's customers through their lists
    elsewhere = {m.strip().lower() for lst in world.fixture["tinyemail"]["lists"][1:] for m in lst["members"]}
    location = next(iter(world.state(world.ghl)["locations"].values()))
    contact = next(c for c in location["contacts"] if (c.get("email") or "").strip().lower() in members & elsewhere)

    async def edit(add: bool) -> None:
        ghl, te = world.ghl_client(world.location), world.te_client()
        try:
            if add:
                await ghl.add_tags(contact["id"], [spelled])
            else:
                await te.remove_from_list(target["id"], [contact["email"]])
        finally:
            await ghl.aclose()
            await te.aclose()

    asyncio.run(edit(add=True))
    first = world.reconcile()
    assert first.status == "completed", first.error
    assert first.plan is not None
    mine = first.plan.plan.filter((pl.col("key") == contact["id"]) & pl.col("field").is_in(["tags", "lists"]))
    held = [t for t in _tags_of(world, contact["id"]) if t.casefold().startswith("list:")]
    assert spelled in held and f"list:{target['name']}" not in held, (held, mine.rows())  # kept, not respelled

    asyncio.run(edit(add=False))  # the person leaves the list in TinyEmail
    second = world.reconcile()
    assert second.status == "completed", second.error
    assert second.plan is not None
    removed = second.plan.plan.filter(pl.col("key") == contact["id"]).select("target", "kind", "expected", "reason")
    assert removed.rows() == [("ghl", "tag_remove", f"list:{target['id']}", "list_removed_on_tinyemail")]
    assert not [t for t in _tags_of(world, contact["id"]) if t.casefold() == spelled.casefold()]
    third = world.reconcile()
    assert third.status == "completed", third.error
    assert third.plan is not None
    churn = third.plan.plan.filter(pl.col("field").is_in(["tags", "lists"]))
    assert churn.height == 0, churn.select("target", "kind", "key", "expected", "new", "reason").rows()[:5]


def _tags_of(world: World, contact_id: str) -> list[str]:
    location = next(iter(world.state(world.ghl)["locations"].values()))
    return next(c.get("tags") or [] for c in location["contacts"] if c["id"] == contact_id)
