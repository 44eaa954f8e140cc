"""Who a review row is about: email, name, location and the GHL link (contact_recon/model/context.py)."""

from __future__ import annotations

import polars as pl

from contact_recon.model.context import CONTEXT_COLUMNS, ghl_url, person_context, with_context


def _people() -> pl.DataFrame:
    return pl.DataFrame({"key": ["c1", "te:a@x.io", "c2"], "email": [None, "a@x.io", "b@x.io"],
                         "contact_id": ["c1", None, "c2"], "location_id": ["L1", None, "L2"]})


def test_context_names_each_person_and_links_the_ghl_contact():
    ghl = pl.DataFrame({"key": ["c1", "c2"], "first_name": ["Ann", None], "last_name": [None, None],
                        "email": ["ann@x.io", "b@x.io"]})
    te = pl.DataFrame({"key": ["te:a@x.io", "c2"], "first_name": ["Al", "Bo"], "last_name": ["Bee", "Cee"],
                       "email": ["a@x.io", "b@x.io"]})
    rows = {r["key"]: r for r in person_context(_people(), ghl, te).iter_rows(named=True)}
    assert rows["c1"] == {"key": "c1", "location_id": "L1", "email": "ann@x.io", "name": "Ann",
                          "ghl_url": "https://app.gohighlevel.com/v2/location/L1/contacts/detail/c1"}
    assert rows["te:a@x.io"]["name"] == "Al Bee" and rows["te:a@x.io"]["ghl_url"] is None
    assert rows["c2"]["name"] == "Bo Cee"  # GHL has no name: TinyEmail's
    assert ghl_url("L2", "c2") == rows["c2"]["ghl_url"] and ghl_url(None, "c2") is None


def test_with_context_puts_the_columns_after_the_key_and_keeps_unknown_keys():
    ctx = person_context(_people(), pl.DataFrame(schema={"key": pl.String(), "first_name": pl.String(),
                                                         "last_name": pl.String(), "email": pl.String()}),
                         pl.DataFrame(schema={"key": pl.String(), "first_name": pl.String(),
                                              "last_name": pl.String(), "email": pl.String()}))
    out = with_context(pl.DataFrame({"key": ["c2", "zz"], "field": ["city", "phone"]}), ctx)
    assert out.columns == ["key", *CONTEXT_COLUMNS, "field"]
    assert out.row(0) == ("c2", "L2", "b@x.io", None, "https://app.gohighlevel.com/v2/location/L2/contacts/detail/c2",
                          "city")
    assert out.row(1) == ("zz", None, None, None, None, "phone")
