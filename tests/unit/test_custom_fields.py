"""Custom fields, pure: the policy's `[custom_fields."<fieldKey>"]` tables (parsed, refused), `recon mapping`'s rows,
the tag-pattern functions, the rows' `custom` values, the canonical sides and the merge's decisions on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contact_recon.engine.merge import plan
from contact_recon.engine.state import Blocked, Consent, next_base, replay
from contact_recon.model.custom_fields import (
    canonical_sides,
    check_pattern,
    ghl_custom_values,
    matches,
    pattern_values,
    tag_for,
    te_custom_values,
    value_of,
)
from contact_recon.model.policy import CustomFieldRule, Policy, describe_mapping, load_policy
from contact_recon.model.records import MERGE_SIDE

POLICY_TOML = """
[custom_fields."contact.plan"]
tag_pattern = "plan:{value}"
owner = "tinyemail"
[custom_fields."contact.score"]
te_field = "currency"
tie_break = "manual"
"""


def test_a_policy_file_maps_custom_fields_and_recon_mapping_shows_them(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_TOML)
    policy = load_policy(path)
    assert policy.custom_fields == {
        "contact.plan": CustomFieldRule(tag_pattern="plan:{value}", owner="tinyemail"),
        "contact.score": CustomFieldRule(te_field="currency", tie_break="manual")}
    rows = {r["field"]: r for r in describe_mapping(policy)}
    assert rows["custom:contact.plan"] == {
        "field": "custom:contact.plan", "ghl": "customFields contact.plan", "tinyemail": "tags plan:{value}",
        "rule": "tinyemail", "tie_break": "-", "first_run": "TinyEmail value",
        "flow": "TinyEmail -> GHL (owner always wins)"}
    assert rows["custom:contact.score"]["tinyemail"] == "currency"
    assert rows["custom:contact.score"]["tie_break"] == "manual"
    assert rows["custom:contact.score"]["flow"] == "both ways; changed on both: conflict table"
    assert not [r for r in describe_mapping(Policy()) if r["field"].startswith("custom:")]  # none by default


@pytest.mark.parametrize(("rule", "message"), [
    ({}, "exactly one of te_field and tag_pattern"),
    ({"te_field": "currency", "tag_pattern": "plan:{value}"}, "exactly one of te_field and tag_pattern"),
    ({"tag_pattern": "plan:"}, "must hold {value} exactly once"),
    ({"tag_pattern": "{value}:{value}"}, "must hold {value} exactly once"),
    ({"tag_pattern": " {value} "}, "needs text around {value}"),
    ({"te_field": "firstName"}, "is not a free TinyEmail customer field"),
    ({"te_field": "currency", "colour": "red"}, "Extra inputs are not permitted"),
    ({"te_field": "currency", "owner": "nobody"}, "owner"),
])
def test_a_custom_field_rule_that_cannot_be_used_is_refused(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Policy.model_validate({"custom_fields": {"contact.plan": rule}})


def test_two_custom_fields_never_share_a_target() -> None:
    with pytest.raises(ValidationError, match="both map to currency"):
        Policy.model_validate({"custom_fields": {"contact.a": {"te_field": "currency"},
                                                 "contact.b": {"te_field": "currency"}}})


def test_pattern_functions() -> None:
    assert check_pattern("plan:{value}") == "plan:{value}"
    assert tag_for("plan:{value}", " gold ") == "plan:gold"
    assert tag_for("[{value}] tier", "A") == "[A] tier"
    assert value_of("plan:{value}", "plan:gold") == "gold"
    assert value_of("plan:{value}", " Plan:Gold ") == "Gold"  # the fixed part compared case-folded
    assert value_of("[{value}] tier", "[A] TIER") == "A"
    assert value_of("plan:{value}", "plan:") is None  # no value
    assert value_of("plan:{value}", "planet") is None
    assert value_of("plan:{value}", "vip") is None
    assert matches("plan:{value}", "PLAN:x") and not matches("plan:{value}", "xplan:x")
    assert pattern_values("plan:{value}", ["vip", "plan:gold", "Plan:GOLD", "plan:silver"]) == ["gold", "silver"]


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1))
def test_a_value_reads_back_from_its_tag(value: str) -> None:
    for pattern in ("plan:{value}", "{value}-tier", "a {value} b"):
        assert value_of(pattern, tag_for(pattern, value)) == value.strip()


def test_row_values() -> None:
    items = [{"id": "F1", "value": "gold"}, {"id": "F2", "value": 7}, {"id": "F3", "value": " "},
             {"id": "F9", "value": "x"}]
    assert json.loads(ghl_custom_values(items, {"F1": "contact.plan", "F2": "contact.score", "F3": "contact.c"})
                      or "") == {"contact.plan": "gold", "contact.score": "7", "id:F9": "x"}
    assert ghl_custom_values([], {}) is None
    assert json.loads(te_custom_values({"email": "a@x", "currency": "EUR", "address2": ""}) or "") == {
        "currency": "EUR"}


def _side(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame([{**{n: None for n in MERGE_SIDE}, "tags": [], "lists": [], "consent": "subscribed", **r}
                         for r in rows], schema=MERGE_SIDE)


PLAN_POLICY = Policy.model_validate({"custom_fields": {"contact.plan": {"tag_pattern": "plan:{value}"},
                                                       "contact.score": {"te_field": "currency"}}})


def _sides(ghl: dict[str, Any], te: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    g = _side([{"key": "c1", "contact_id": "c1", "email": "a@x.com", **ghl}])
    t = _side([{"key": "c1", "email": "a@x.com", **te}])
    return canonical_sides(g, t, PLAN_POLICY.active_custom())


def test_canonical_sides_name_both_sides_values_by_the_policy() -> None:
    g, t = _sides({"custom": '{"contact.plan":"gold","contact.other":"x"}'},
                  {"custom": '{"currency":"USD"}', "tags": ["vip", "Plan:Silver"]})
    assert json.loads(g["custom"][0]) == {"contact.plan": "gold"}  # only what the policy maps
    assert json.loads(t["custom"][0]) == {"contact.plan": "Silver", "contact.score": "USD"}
    _, t = _sides({}, {"tags": ["plan:gold", "plan:silver"]})
    assert json.loads(t["custom"][0]) == {"contact.plan": ["gold", "silver"]}  # ambiguous: both kept
    g, _ = _sides({"custom": '{"id:F1":"gold"}'}, {})
    assert json.loads(g["custom"][0]) == {"contact.plan": {"unresolved": True}, "contact.score": {"unresolved": True}}


def _base(custom: str | None, tags: list[str]) -> pl.DataFrame:
    return _side([{"key": "c1", "contact_id": "c1", "email": "a@x.com", "custom": custom, "tags": tags}]).with_columns(
        pl.lit(True).alias("in_ghl"), pl.lit(True).alias("in_tinyemail"))


def _ops(base: pl.DataFrame, ghl: dict[str, Any], te: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    g, t = _sides(ghl, te)
    result = plan(base, t, g, PLAN_POLICY)
    ops = result.ops.select("target", "kind", "field", "expected", "new", "reason").rows()
    return ops, result.conflicts.select("field", "tinyemail", "ghl", "reason").rows()


def test_the_merge_plans_custom_fields_like_text_fields_and_leaves_pattern_tags_to_them() -> None:
    base = _base('{"contact.plan":"gold"}', ["plan:gold"])
    # changed in GHL: TinyEmail's value follows; the pattern tags are no tag ops
    ops, conflicts = _ops(base, {"custom": '{"contact.plan":"silver"}'}, {"tags": ["plan:gold"]})
    assert ops == [("tinyemail", "update", "custom:contact.plan", "gold", "silver", "ghl_changed")]
    assert conflicts == []
    # a tag plan:silver added in TinyEmail beside the old one: two values, a conflict, nothing written
    ops, conflicts = _ops(base, {"custom": '{"contact.plan":"gold"}'}, {"tags": ["plan:gold", "plan:silver"]})
    assert ops == []
    assert conflicts == [("custom:contact.plan", "several tags: gold, silver", "gold", "custom_tags_ambiguous")]
    # GHL's ids unresolved: held, never read as a blank
    ops, conflicts = _ops(base, {"custom": '{"id:F1":"gold"}'}, {"tags": ["plan:gold"]})
    assert ops == [] and {c[3] for c in conflicts} == {"custom_field_unresolved"}
    # the TinyEmail field, changed there: GHL follows
    ops, _ = _ops(_base('{"contact.plan":"gold","contact.score":"1"}', ["plan:gold"]),
                  {"custom": '{"contact.plan":"gold","contact.score":"1"}'},
                  {"custom": '{"currency":"2"}', "tags": ["plan:gold"]})
    assert ops == [("ghl", "update", "custom:contact.score", "1", "2", "tinyemail_changed")]


def test_the_state_keeps_custom_fields_one_by_one() -> None:
    t = {"key": "c1", "custom": '{"contact.plan":"gold","contact.score":"1"}'}
    g = {"key": "c1", "contact_id": "c1", "custom": '{"contact.plan":"silver","contact.score":"1"}'}
    b = {"key": "c1", "in_ghl": True, "in_tinyemail": True, "custom": '{"contact.plan":"bronze"}'}
    te, ghl = {"c1": dict(t)}, {"c1": dict(g)}
    replay(te, ghl, [{"target": "tinyemail", "kind": "update", "key": "c1", "field": "custom:contact.score",
                      "new": "3", "expected": "1"}])
    assert json.loads(te["c1"]["custom"]) == {"contact.plan": "gold", "contact.score": "3"}
    consent = Consent(("unsubscribed",), ("dnd",))
    row = next_base({"c1": b}, te, ghl, Blocked(), consent)[0]
    # plan disagrees: the old base value; score disagrees after the replay too (3 vs 1): its base had none
    assert json.loads(row["custom"]) == {"contact.plan": "bronze"}
    row = next_base({"c1": b}, {"c1": dict(t)}, {"c1": dict(g)},
                    Blocked(dimensions={("c1", "custom:contact.score"): "0"}), consent)[0]
    assert json.loads(row["custom"]) == {"contact.plan": "bronze", "contact.score": "0"}  # held back: its expected


def test_a_fixture_location_may_define_its_custom_fields() -> None:
    from contact_recon.sandbox.fixture import FixtureError, validate_fixture

    given = [{"id": "F1", "fieldKey": "contact.plan", "dataType": "TEXT"}]
    loaded = validate_fixture({"ghl": {"locations": {"L": {"customFields": given}}}})
    assert loaded["ghl"]["locations"]["L"]["customFields"] == given
    with pytest.raises(FixtureError, match=r"ghl\.locations\.L\.customFields\[0\]\.fieldKey"):
        validate_fixture({"ghl": {"locations": {"L": {"customFields": [{"id": "F1"}]}}}})


def test_a_decision_on_a_custom_field_writes_the_decided_value() -> None:
    from contact_recon.engine.decisions import DECISIONS, decision_ops

    g, t = _sides({"custom": '{"contact.plan":"gold"}'}, {"tags": ["plan:gold", "plan:silver"]})

    def ops(choice: str, value: str | None = None) -> list[tuple]:
        decisions = pl.DataFrame([{"key": "c1", "field": "custom:contact.plan", "choice": choice, "value": value}],
                                 schema=DECISIONS)
        return decision_ops(decisions, t, g).select("target", "field", "expected", "new").rows()

    # GHL's value wins: TinyEmail's two pattern tags give way to it
    assert ops("ghl") == [("tinyemail", "custom:contact.plan", "\u2063several tags: gold, silver", "gold")]
    assert ops("tinyemail") == []  # no single value there to copy
    assert sorted(ops("value", "bronze")) == [("ghl", "custom:contact.plan", "gold", "bronze"),
                                              ("tinyemail", "custom:contact.plan", "\u2063several tags: gold, silver",
                                               "bronze")]


VALUES = st.sampled_from([None, "gold", "silver"])


@settings(deadline=None, max_examples=80)
@given(ghl_plan=VALUES, ghl_score=VALUES, te_plans=st.lists(st.sampled_from(["gold", "silver"]), unique=True),
       te_score=VALUES, base_plan=VALUES, base_score=VALUES, with_base=st.booleans(),
       tie=st.sampled_from(["ghl", "tinyemail", "manual"]))
def test_law_after_every_custom_op_lands_planning_again_plans_none(
        ghl_plan: str | None, ghl_score: str | None, te_plans: list[str], te_score: str | None,
        base_plan: str | None, base_score: str | None, with_base: bool, tie: str) -> None:
    """Whatever both sides and the base hold, once the plan's custom field ops are applied to both systems (as
    the writers write them) and the state advanced (engine/state.py), planning again has no custom op left."""
    policy = Policy.model_validate({"custom_fields": {
        "contact.plan": {"tag_pattern": "plan:{value}", "tie_break": tie},
        "contact.score": {"te_field": "currency", "tie_break": tie}}})
    ghl = {"contact.plan": ghl_plan, "contact.score": ghl_score}
    te_tags, te_custom = ["vip", *(f"plan:{v}" for v in te_plans)], {"currency": te_score}

    def sides() -> tuple[pl.DataFrame, pl.DataFrame]:
        g = _side([{"key": "c1", "contact_id": "c1", "email": "a@x.com",
                    "custom": json.dumps({k: v for k, v in ghl.items() if v})}])
        t = _side([{"key": "c1", "email": "a@x.com", "tags": te_tags,
                    "custom": json.dumps({k: v for k, v in te_custom.items() if v})}])
        return canonical_sides(g, t, policy.active_custom())

    base = (_base(json.dumps({"contact.plan": base_plan, "contact.score": base_score}), ["vip"]) if with_base
            else _side([]).with_columns(pl.lit(True).alias("in_ghl"), pl.lit(True).alias("in_tinyemail")))
    g, t = sides()
    planned = plan(base, t, g, policy)
    first = planned.ops.filter(pl.col("field").str.starts_with("custom:"))
    for op in first.iter_rows(named=True):
        name = op["field"].removeprefix("custom:")
        if op["target"] == "ghl":
            ghl[name] = op["new"]
        elif name == "contact.plan":  # the pattern's tag replaces every tag it matches (the TinyEmail writer)
            te_tags = [tag for tag in te_tags if not matches("plan:{value}", tag)] + (
                [tag_for("plan:{value}", op["new"])] if op["new"] else [])
        else:
            te_custom["currency"] = op["new"]
    g, t = sides()
    rows = {r["key"]: r for r in base.iter_rows(named=True)}
    advanced = next_base(rows, {r["key"]: r for r in t.iter_rows(named=True)},
                         {r["key"]: r for r in g.iter_rows(named=True)}, Blocked(),
                         Consent(("unsubscribed",), ("dnd",)))
    replanned = plan(pl.DataFrame(advanced, schema=base.schema), t, g, policy)
    again = replanned.ops.filter(pl.col("field").str.starts_with("custom:"))
    assert again.height == 0, (first.rows(), again.rows())
    # and what landed made no new conflict: only those the first plan left open (no op wrote over them)
    assert set(replanned.conflicts["field"].to_list()) <= set(planned.conflicts["field"].to_list())
