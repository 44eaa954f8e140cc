"""List tags a GHL user can read (contact_recon/model/list_tags.py) against both sandboxes: TinyEmail lists reach GHL
as `list:<list name>`, the `list:<uuid>` tags of earlier versions are respelled once, a list renamed in TinyEmail
renames its tag once, and then nothing churns."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from contact_recon.model.list_tags import LIST_TAG_RESPELLED
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.store.db import open_db
from tests.support.worlds import World, loose_policy, make_settings


@pytest.fixture
def world(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path) -> Iterator[World]:
    fixture = generate_fixture(40, seed=5, overlap=0.6)
    lists = fixture["tinyemail"]["lists"]
    assert len({lst["name"] for lst in lists}) == len(lists) >= 2, "the fixture changed: lists share a name"
    # an earlier version mirrored a list into GHL as `list:<uuid>`: two contacts carry such a tag
    first = lists[0]
    contacts = next(iter(fixture["ghl"]["locations"].values()))["contacts"]
    members = {m.strip().lower() for m in first["members"]}
    seeded = [c for c in contacts if (c.get("email") or "").lower() in members][:2]
    assert len(seeded) == 2, "the fixture changed: too few GHL contacts in the first list"
    for contact in seeded:
        contact["tags"] = [*contact.get("tags", []), f"list:{first['id']}"]
    ghl, te = sandboxes(fixture, rate_scale=50)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    with open_db(settings.data_dir / "recon.duckdb") as store:
        yield World(fixture, ghl, te, settings, store, loose_policy(tmp_path))


def _ghl_tags(world: World) -> dict[str, set[str]]:
    """email -> the list-namespace tags of its GHL contact."""
    location = next(iter(world.state(world.ghl)["locations"].values()))
    return {(c.get("email") or "").lower(): {t for t in c.get("tags") or [] if t.startswith("list:")}
            for c in location["contacts"] if c.get("email")}


def _members(world: World) -> dict[str, set[str]]:
    """list name -> its members' emails, as TinyEmail holds them now."""
    return {lst["name"]: {m.strip().lower() for m in lst["members"]} for lst in world.state(world.te)["lists"]}


def _respellings(outcome: Any) -> pl.DataFrame:
    return outcome.plan.plan.filter(pl.col("reason") == LIST_TAG_RESPELLED)


def test_lists_reach_ghl_by_name_old_tags_are_respelled_once_and_a_rename_renames_the_tag_once(world: World):
    ids = {lst["id"] for lst in world.fixture["tinyemail"]["lists"]}
    first = world.reconcile()
    assert first.status == "completed", first.error
    assert _respellings(first).height == 4  # two contacts: `list:<uuid>` removed, `list:<name>` added
    tags, members = _ghl_tags(world), _members(world)
    assert not {t for held in tags.values() for t in held if t.removeprefix("list:") in ids}  # no uuid is left
    for name, emails in members.items():
        if world.policy is not None and name == world.policy.create.tinyemail_list:
            continue  # our home list of created customers is never mirrored
        in_ghl = {e for e in emails if e in tags}
        assert in_ghl and all(f"list:{name}" in tags[e] for e in in_ghl), name

    # a person renames the first list in TinyEmail's app
    target = world.fixture["tinyemail"]["lists"][0]
    old, new = target["name"], "Weekly digest (renamed)"
    answer = httpx.patch(f"{world.te.base_url}/__sandbox/lists/{target['id']}", json={"name": new})
    assert answer.status_code == 200, answer.text
    holders = {e for e, held in _ghl_tags(world).items() if f"list:{old}" in held}
    second = world.reconcile()
    assert second.status == "completed", second.error
    respelled = _respellings(second)
    assert respelled.filter(pl.col("kind") == "tag_remove")["expected"].unique().to_list() == [f"list:{old}"]
    assert respelled.filter(pl.col("kind") == "tag_add")["new"].unique().to_list() == [f"list:{new}"]
    assert respelled.height == 2 * len(holders) and holders
    after = _ghl_tags(world)
    assert all(f"list:{new}" in after[e] and f"list:{old}" not in after[e] for e in holders)
    # only spellings moved: no list membership changed on either side because of the rename
    assert second.plan.plan.filter(pl.col("kind").is_in(["list_add", "list_remove"])).height == 0

    third = world.reconcile()
    assert third.status == "completed", third.error
    churn = third.plan.plan.filter(pl.col("field").is_in(["tags", "lists"]))
    assert churn.height == 0, churn.select("kind", "key", "expected", "new", "reason").rows()[:5]
