"""Custom fields end to end (issue 18, item 4), against both sandboxes over HTTP and a real store.

The story: the policy maps the GHL custom field `contact.score` to TinyEmail's `currency` field and
`contact.plan` to the tag pattern `plan:{value}`. GHL holds a score and a plan; the first run writes them to
TinyEmail. A person changes both in GHL: TinyEmail follows (the old pattern tag goes, the new one comes). A
person changes both in TinyEmail: GHL follows, through `customFields` items by the location's field id. Two
pattern tags on one customer are a conflict, and nothing is written for that field. After each run, planning
again has nothing left to do for custom fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import SecretStr

from contact_recon.model.policy import load_policy
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.ghl_store import custom_field_definitions
from contact_recon.sandbox.server import RunningServer
from contact_recon.store.db import open_db
from tests.support.worlds import LOOSE, World, make_settings

SCORER, PLANNER = "scorer", "planner"  # the two people of the story
POLICY = LOOSE + """
[custom_fields."contact.score"]
te_field = "currency"
[custom_fields."contact.plan"]
tag_pattern = "plan:{value}"
tie_break = "tinyemail"
"""


@pytest.fixture
def world(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path) -> Iterator[World]:
    fixture = generate_fixture(20, seed=5, overlap=0.8)
    location = fixture["ghl"]["tokens"][0]["locationId"]
    tokens = fixture["ghl"]["tokens"]
    # the same location once more, by a token without the custom fields scope (the last test's)
    tokens.append({**tokens[0], "token": tokens[0]["token"] + "-no-custom", "scopes": list(tokens[0]["scopes"])})
    tokens[0]["scopes"] = [*tokens[0]["scopes"], "locations/customFields.readonly"]
    ids = {d["fieldKey"]: d["id"] for d in custom_field_definitions(location, None)}
    customers = {c["email"].strip().lower(): c for c in fixture["tinyemail"]["customers"]}
    contacts = fixture["ghl"]["locations"][location]["contacts"]
    both = [c for c in contacts if (c.get("email") or "").strip().lower() in customers]
    assert len(both) >= 2, "the fixture changed: too few people in both systems"
    scorer, planner = both[0], both[1]
    scorer["customFields"] = [{"id": ids["contact.score"], "value": 5}]  # NUMERICAL: a number in GHL's answer
    planner["customFields"] = [{"id": ids["contact.plan"], "value": "gold"}]
    for person in (scorer, planner):
        customer = customers[person["email"].strip().lower()]
        customer.pop("currency", None)
        customer["tags"] = [t for t in customer.get("tags") or [] if not t.lower().startswith("plan:")]
    ghl, te = sandboxes(fixture, rate_scale=50)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    (tmp_path / "policy.toml").write_text(POLICY)
    with open_db(settings.data_dir / "recon.duckdb") as store:
        world = World(fixture, ghl, te, settings, store, load_policy(tmp_path / "policy.toml"))
        world.edited = {SCORER: [scorer["email"].strip().lower(), scorer["id"]],
                        PLANNER: [planner["email"].strip().lower(), planner["id"]], "ids": [ids["contact.score"],
                                                                                          ids["contact.plan"]]}
        yield world


def _ghl_custom(world: World, contact_id: str) -> dict[str, Any]:
    """field id -> value of the contact's custom fields as the GHL sandbox holds them."""
    contacts = next(iter(world.state(world.ghl)["locations"].values()))["contacts"]
    contact = next(c for c in contacts if c["id"] == contact_id)
    return {item["id"]: item["value"] for item in contact.get("customFields") or []}


def _customer(world: World, email: str) -> dict[str, Any]:
    customers = world.state(world.te)["customers"]
    rows = customers.values() if isinstance(customers, dict) else customers
    return next(c for c in rows if (c.get("email") or "").strip().lower() == email)


def _plan_tags(world: World, email: str) -> list[str]:
    return sorted(t for t in _customer(world, email).get("tags") or [] if t.lower().startswith("plan:"))


def _reconciled(world: World) -> pl.DataFrame:
    """Reconcile; the run's custom field ops. Then plan again: nothing is left to do for custom fields."""
    outcome = world.reconcile()
    assert outcome.status == "completed", outcome.error
    assert outcome.plan is not None
    ops = outcome.plan.plan.filter(pl.col("field").str.starts_with("custom:"))
    assert set(ops["status"].to_list()) <= {"planned"}, ops.rows()
    again = world.plan(policy=world.policy)
    left = again.plan.filter(pl.col("field").str.starts_with("custom:"))
    assert left.height == 0, left.select("target", "key", "field", "expected", "new", "reason").rows()
    return ops


def _ghl_puts(world: World) -> list[str]:
    """The paths of the contact updates (PUT /contacts/{id}) the GHL sandbox answered with 200."""
    return [r["path"] for r in world.requests(world.ghl) if r["method"] == "PUT" and r["status"] == 200]


def test_a_custom_field_to_a_te_field_and_to_a_tag_pattern_both_ways(world: World) -> None:
    score_email, score_id = world.edited[SCORER]
    plan_email, plan_id = world.edited[PLANNER]
    score_field, plan_field = world.edited["ids"]

    # 1. the first run: GHL's values reach TinyEmail, as its field and as the pattern's tag
    first = _reconciled(world)
    assert sorted(first.select("target", "key", "field", "new").rows()) == sorted([
        ("tinyemail", score_id, "custom:contact.score", "5"), ("tinyemail", plan_id, "custom:contact.plan", "gold")])
    assert _customer(world, score_email).get("currency") == "5"
    assert _plan_tags(world, plan_email) == ["plan:gold"]

    # 2. changed in GHL: TinyEmail follows; the old pattern tag is removed, the new one added
    async def in_ghl() -> None:
        async with world.ghl_client(world.location) as client:
            await client.update_contact(score_id, {"customFields": [{"id": score_field, "field_value": "9"}]})
            await client.update_contact(plan_id, {"customFields": [{"id": plan_field, "field_value": "silver"}]})

    asyncio.run(in_ghl())
    second = _reconciled(world)
    assert sorted(second.select("target", "field", "expected", "new", "reason").rows()) == sorted([
        ("tinyemail", "custom:contact.score", "5", "9", "ghl_changed"),
        ("tinyemail", "custom:contact.plan", "gold", "silver", "ghl_changed")])
    assert _customer(world, score_email).get("currency") == "9"
    assert _plan_tags(world, plan_email) == ["plan:silver"]
    assert not [t for t in _customer(world, plan_email).get("tags") or [] if t == "plan:gold"]

    # 3. changed in TinyEmail: GHL follows, by the location's field ids
    customer = _customer(world, plan_email)
    tags = [t for t in customer.get("tags") or [] if t != "plan:silver"] + ["Plan:Bronze"]

    async def in_tinyemail() -> None:
        async with world.te_client() as client:
            await client.upsert_customers([{"email": score_email, "currency": "12"},
                                           {"email": customer["email"], "tags": tags}])

    asyncio.run(in_tinyemail())
    puts_before = len(_ghl_puts(world))
    third = _reconciled(world)
    assert sorted(third.select("target", "field", "expected", "new", "reason").rows()) == sorted([
        ("ghl", "custom:contact.score", "9", "12", "tinyemail_changed"),
        ("ghl", "custom:contact.plan", "silver", "Bronze", "tinyemail_changed")])
    assert _ghl_custom(world, score_id)[score_field] == "12"
    assert _ghl_custom(world, plan_id)[plan_field] == "Bronze"
    # one contact update each (the sandbox takes only items of the spec's shape naming its own field ids)
    assert sorted(_ghl_puts(world)[puts_before:]) == sorted([f"/contacts/{score_id}", f"/contacts/{plan_id}"])
    # the pattern tag stays a TinyEmail tag: never copied to GHL's tags
    contacts = next(iter(world.state(world.ghl)["locations"].values()))["contacts"]
    assert not [t for c in contacts for t in c.get("tags") or [] if t.lower().startswith("plan:")]

    # 4. two pattern tags on one customer: a conflict, nothing written for the field on either side
    async def second_plan_tag() -> None:
        async with world.te_client() as client:
            await client.upsert_customers([{"email": customer["email"], "tags": [*tags, "plan:platinum"]}])

    asyncio.run(second_plan_tag())
    outcome = world.reconcile()
    assert outcome.status == "completed", outcome.error
    assert outcome.plan is not None
    assert outcome.plan.plan.filter(pl.col("field") == "custom:contact.plan").height == 0
    conflicts = outcome.plan.conflicts.filter(pl.col("field") == "custom:contact.plan")
    assert conflicts.select("reason", "tinyemail", "ghl").rows() == [
        ("custom_tags_ambiguous", "several tags: Bronze, platinum", "Bronze")]
    assert _ghl_custom(world, plan_id)[plan_field] == "Bronze"
    assert _plan_tags(world, plan_email) == ["Plan:Bronze", "plan:platinum"]



def test_custom_fields_a_location_cannot_name_are_held_then_synced_once_it_can(world: World) -> None:
    """A token without `locations/customFields.readonly`: GHL's custom values are unknown, never blank, so nothing
    is written for them (a conflict row each); with the scope granted, the next run names the fields of the
    contacts (whose unchanged rows are normalised again) and syncs them."""
    score_email, score_id = world.edited[SCORER]
    plan_email = world.edited[PLANNER][0]
    full = world.settings
    world.settings = full.model_copy(update={"ghl_token": SecretStr(world.fixture["ghl"]["tokens"][-1]["token"])})
    held = world.reconcile()
    assert held.status == "completed", held.error
    assert held.plan is not None
    assert held.plan.plan.filter(pl.col("field").str.starts_with("custom:")).height == 0
    reasons = held.plan.conflicts.filter(pl.col("field").str.starts_with("custom:"))["reason"].unique().to_list()
    assert reasons == ["custom_field_unresolved"]
    assert _customer(world, score_email).get("currency") is None and _plan_tags(world, plan_email) == []
    refused = [r for r in world.requests(world.ghl) if r["path"].endswith("/customFields")]
    assert refused and {r["status"] for r in refused} == {401}

    world.settings = full
    synced = _reconciled(world)
    assert sorted(synced.select("target", "key", "field", "new").rows()) == sorted([
        ("tinyemail", score_id, "custom:contact.score", "5"),
        ("tinyemail", world.edited[PLANNER][1], "custom:contact.plan", "gold")])
    assert _customer(world, score_email).get("currency") == "5" and _plan_tags(world, plan_email) == ["plan:gold"]
