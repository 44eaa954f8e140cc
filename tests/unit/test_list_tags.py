"""List tags a GHL user can read (contact_recon/model/list_tags.py): labels, the two edges, the respelling ops."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from contact_recon.model.list_tags import LIST_TAG_RESPELLED, ListNames, labels, respelling_ops, with_list_ids

A, B, C = "6f1c2b1e-0000-4000-8000-00000000000a", "77aa0000-0000-4000-8000-00000000000b", "88cc-unnamed"


def test_a_label_is_the_name_and_shared_or_missing_names_are_told_apart():
    assert labels({A: " Newsletter ", B: "VIP", C: ""}) == {A: "Newsletter", B: "VIP", C: C}
    assert labels({A: "News", B: "news"}) == {A: "News (6f1c2b1e)", B: "news (77aa0000)"}


def test_every_known_spelling_reads_as_the_list_id_and_the_label_is_what_ghl_gets():
    names = ListNames.build({A: "Newsletter (weekly)", B: "VIP"}, seen=[(A, "Newsletter")])
    for spelling in ("list:Newsletter (weekly)", "list:Newsletter", f"list:{A}"):
        assert names.to_id(spelling) == f"list:{A}"
    assert names.to_id("list:promo") == "list:promo" and names.to_id("vip") == "vip"  # not a known list
    assert names.spell(f"list:{A}") == "list:Newsletter (weekly)" and names.spell("list:promo") == "list:promo"
    assert names.spellings(f"list:{A}") == ["list:Newsletter (weekly)", f"list:{A}", "list:Newsletter"]
    assert names.spellings("plain") == ["plain"]


def test_an_old_label_that_another_list_now_bears_is_that_list():
    names = ListNames.build({A: "Old", B: "VIP"}, seen=[(B, "Old")])  # B was "Old" before A took the name
    assert names.to_id("list:Old") == f"list:{A}"


def _contacts(rows: dict[str, list[str]]) -> pl.DataFrame:
    return pl.DataFrame({"contact_id": list(rows), "tags": list(rows.values())},
                        schema={"contact_id": pl.String(), "tags": pl.List(pl.String())})


def test_ghl_tags_enter_the_merge_as_list_ids_once():
    names = ListNames.build({A: "Newsletter", B: "VIP"}, seen=[(A, "News")])
    out = with_list_ids(_contacts({"c1": ["list:News", "list:Newsletter", f"list:{A}", "list:VIP", "x"]}), names)
    assert out["tags"].to_list() == [[f"list:{A}", f"list:{B}", "x"]]


def test_old_spellings_are_respelled_once_and_a_list_the_merge_removes_is_left_to_it():
    names = ListNames.build({A: "Newsletter", B: "VIP"}, seen=[(A, "News")])
    contacts = _contacts({"c1": [f"list:{A}", "list:News", "keep"], "c2": ["list:Newsletter"], "c3": [f"list:{B}"],
                          "held": [f"list:{A}"]})
    touched = pl.DataFrame({"key": ["c3"], "tag": [f"list:{B}"]})
    ops = respelling_ops(contacts, names, ["c1", "c2", "c3"], touched)
    got = sorted(ops.select("key", "kind", "expected", "new").iter_rows())
    assert got == [("c1", "tag_add", None, "list:Newsletter"), ("c1", "tag_remove", f"list:{A}", None),
                   ("c1", "tag_remove", "list:News", None)]
    assert set(ops["reason"]) == {LIST_TAG_RESPELLED} and set(ops["target"]) == {"ghl"}


@given(st.lists(st.sampled_from([f"list:{A}", "list:News", "list:Newsletter", f"list:{B}", "list:VIP", "plain"]),
                max_size=6))
def test_after_the_respelling_nothing_is_left_to_respell_and_the_lists_are_the_same(tags):
    names = ListNames.build({A: "Newsletter", B: "VIP"}, seen=[(A, "News")])
    before = _contacts({"c": tags})
    ops = respelling_ops(before, names, ["c"], pl.DataFrame(schema={"key": pl.String(), "tag": pl.String()}))
    removed = {r for r in ops.filter(pl.col("kind") == "tag_remove")["expected"]}
    after = sorted((set(tags) - removed) | set(ops.filter(pl.col("kind") == "tag_add")["new"]))
    assert respelling_ops(_contacts({"c": after}), names, ["c"], pl.DataFrame(
        schema={"key": pl.String(), "tag": pl.String()})).height == 0
    assert with_list_ids(_contacts({"c": after}), names)["tags"].to_list() == \
        with_list_ids(before, names)["tags"].to_list()
