"""Tags that differ only in case or spacing are one tag (contact_recon/model/tags.py), and where the rule reaches
beyond the merge: folding a snapshot in the order the system holds the tags, list tags, the next base."""

from __future__ import annotations

import json

import polars as pl

from contact_recon.engine.state import Blocked, Consent, blocked, next_base, replay
from contact_recon.model.list_tags import ListNames, respelling_ops, with_list_ids
from contact_recon.model.tags import TAG_FOLDED, add_tag, drop_tag, fold, fold_frame, fold_ops, tag_key, union
from contact_recon.stages.plan import TagFolds, folded_frames, with_folds


def test_the_key_folds_case_and_spacing_only():
    assert tag_key("  VIP \t Gold ") == tag_key("vip gold") == "vip gold"
    assert tag_key("Straße") == tag_key("STRASSE")
    assert tag_key("vip-gold") != tag_key("vip gold")


def test_fold_keeps_the_first_spelling_of_each_key():
    assert fold(["vip", "news", "VIP", " Vip", "NEWS"]) == (["vip", "news"], ["VIP", " Vip", "NEWS"])
    assert fold(["a", "b"]) == (["a", "b"], [])


def test_set_helpers_by_key():
    assert add_tag(["VIP"], "vip") == ["VIP"]
    assert add_tag(["VIP"], "gold") == ["VIP", "gold"]
    assert drop_tag(["VIP", "vip", "x"], "Vip") == ["x"]
    assert union(["vip", "a"], ["VIP", "b"]) == ["a", "b", "vip"]


def _contacts(rows: list[tuple[str, list[str], list[str] | None]]) -> pl.DataFrame:
    """(contact_id, tags as the snapshot sorts them, tags in the API's order or None for no raw)"""
    return pl.DataFrame([{"contact_id": c, "tags": sorted(t), "raw": json.dumps({"tags": r}) if r is not None else None}
                         for c, t, r in rows], schema={"contact_id": pl.String, "tags": pl.List(pl.String),
                                                       "raw": pl.String})


def test_a_snapshot_is_folded_in_the_order_the_system_holds_the_tags():
    frame = _contacts([("c1", ["VIP", "vip", "x"], ["vip", "x", "VIP"]),  # `vip` was there first
                       ("c2", ["VIP", "vip"], ["VIP", "vip"]),  # `VIP` was
                       ("c3", ["VIP", "vip"], None),  # no payload: the sorted order decides
                       ("c4", ["a", "b"], ["b", "a"])])  # nothing to fold
    folded, folds = fold_frame(frame, "contact_id")
    assert folded["tags"].to_list() == [["vip", "x"], ["VIP"], ["VIP"], ["a", "b"]]
    assert sorted(folds.rows()) == [("c1", "VIP"), ("c2", "vip"), ("c3", "vip")]
    ops = fold_ops(folds.rename({"contact_id": "key"}), "ghl")
    assert set(ops["kind"]) == {"tag_remove"} and set(ops["reason"]) == {TAG_FOLDED} and ops["new"].is_null().all()


def test_list_tags_compare_by_key_and_a_case_variant_is_not_respelled():
    names = ListNames.build({"id1": "Newsletter"})
    assert names.list_id("list:newsletter") == names.list_id("LIST: Newsletter ") == "id1"
    contacts = _contacts([("c1", ["list:newsletter"], ["list:newsletter"])]).with_columns(
        location_id=pl.lit("L"))
    assert with_list_ids(contacts, names)["tags"].to_list() == [["list:id1"]]
    touched = pl.DataFrame(schema={"key": pl.String, "tag": pl.String})
    assert respelling_ops(contacts, names, ["c1"], touched).height == 0  # GHL's own spelling stays


def _row(key: str, tags: list[str]) -> dict:
    return {"key": key, "contact_id": key, "email": f"{key}@x.com", "tags": tags, "lists": [],
            "consent": "subscribed"}


def test_the_next_base_holds_one_spelling_per_key_and_a_fold_changes_nothing():
    te, ghl = {"c1": _row("c1", ["vip"])}, {"c1": _row("c1", ["VIP", "gold"])}
    replay(te, ghl, [{"target": "tinyemail", "kind": "tag_add", "key": "c1", "field": "tags", "expected": None,
                      "new": "Gold", "reason": "tag_added_on_ghl"},
                     {"target": "ghl", "kind": "tag_remove", "key": "c1", "field": "tags", "expected": "vip",
                      "new": None, "reason": TAG_FOLDED}])
    assert te["c1"]["tags"] == ["Gold", "vip"] and ghl["c1"]["tags"] == ["VIP", "gold"]
    rows = next_base({}, te, ghl, Blocked(), Consent(("unsubscribed",), ("dnd",)))
    assert rows[0]["tags"] == ["Gold", "vip"]  # TinyEmail's spelling where both have the tag


def test_a_fold_that_did_not_land_holds_nothing_back():
    journal = pl.DataFrame([{"target": "ghl", "kind": "tag_remove", "key": "c1", "field": "tags", "expected": "vip",
                             "new": None, "status": "failed", "reason": TAG_FOLDED}])
    assert blocked(journal) == Blocked()


def test_the_plan_stage_folds_both_sides_and_counts_the_folds():
    from contact_recon.engine.merge import MergeResult
    from contact_recon.model.ops import OPS_SCHEMA

    ghl = _contacts([("c1", ["VIP", "vip"], ["VIP", "vip"]), ("held", ["A", "a"], ["A", "a"])])
    te = pl.DataFrame([{"email": "c1@x.com", "tags": ["VIP", "vip"], "raw": json.dumps({"tags": ["vip", "VIP"]})}])
    frames, folds = folded_frames({"ghl_contacts": ghl, "te_customers": te})
    assert frames["ghl_contacts"]["tags"].to_list() == [["VIP"], ["A"]]
    assert frames["te_customers"]["tags"].to_list() == [["vip"]]
    assert isinstance(folds, TagFolds)
    merged = MergeResult(pl.DataFrame(schema=OPS_SCHEMA), pl.DataFrame(), {"people": 1})
    ghl_side = pl.DataFrame({"key": ["c1"], "contact_id": ["c1"]})  # `held` is held back by identity review
    te_side = pl.DataFrame({"key": ["c1"], "email": ["c1@x.com"]})
    result = with_folds(merged, folds, ghl_side, te_side)
    assert sorted(result.ops.select("target", "key", "expected").rows()) == [("ghl", "c1", "vip"),
                                                                            ("tinyemail", "c1", "VIP")]
    assert result.stats["tags_folded"] == 2 and result.ops["op_id"].is_not_null().all()
