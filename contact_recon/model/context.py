"""Who a row is about, for the person who decides: email, name, location and a link to the contact in GHL.

Every table a data team reviews (conflicts, identity reviews, quarantined ops, applied changes) names people by
their key (a GHL contact id or `te:<email>`), which means nothing to a person. `person_context` makes one row
per key with what identifies them: the email, the name ("first last", GHL's spelling first, else TinyEmail's),
the GHL location and `ghl_url`, the contact's page in the GHL app (`GHL_CONTACT_URL`). `with_context` joins
those columns onto any frame with a `key` column. Pure: frames in, frames out.
"""

from __future__ import annotations

import polars as pl

GHL_CONTACT_URL = "https://app.gohighlevel.com/v2/location/{location_id}/contacts/detail/{contact_id}"
CONTEXT_COLUMNS = ("location_id", "email", "name", "ghl_url")
CONTEXT = pl.Schema({"key": pl.String(), **{c: pl.String() for c in CONTEXT_COLUMNS}})
PEOPLE = pl.Schema({"key": pl.String(), "email": pl.String(), "contact_id": pl.String(), "location_id": pl.String()})


def ghl_url(location_id: str | None, contact_id: str | None) -> str | None:
    """The contact's page in the GHL app, None unless both ids are known."""
    if not location_id or not contact_id:
        return None
    return GHL_CONTACT_URL.format(location_id=location_id, contact_id=contact_id)


def _name(side: pl.DataFrame) -> pl.DataFrame:
    """key, name ("first last", None when both are blank) of a MERGE_SIDE frame."""
    if side.height == 0:
        return pl.DataFrame(schema={"key": pl.String(), "name": pl.String(), "side_email": pl.String()})
    full = pl.concat_str([pl.col("first_name").fill_null(""), pl.col("last_name").fill_null("")], separator=" ")
    return side.select("key", name=full.str.strip_chars().replace("", None), side_email="email")


def person_context(people: pl.DataFrame, ghl_side: pl.DataFrame, te_side: pl.DataFrame) -> pl.DataFrame:
    """One CONTEXT row per key of `people` (PEOPLE: key, email, contact_id, location_id, as the plan's
    `people` state gives them), names and missing emails taken from the sides (records.MERGE_SIDE)."""
    ghl, te = _name(ghl_side), _name(te_side)
    frame = (people.select(list(PEOPLE)).cast(PEOPLE)
             .join(ghl, on="key", how="left")
             .join(te, on="key", how="left", suffix="_te"))
    known = (pl.col("location_id").fill_null("") != "") & (pl.col("contact_id").fill_null("") != "")
    base, rest = GHL_CONTACT_URL.split("{location_id}")
    middle, tail = rest.split("{contact_id}")
    url = pl.when(known).then(pl.concat_str([pl.lit(base), "location_id", pl.lit(middle), "contact_id", pl.lit(tail)]))
    return frame.select(
        "key", "location_id",
        # the email the person is known by: the matched one, else what either side holds
        email=pl.coalesce("email", "side_email", "side_email_te"),
        # GHL's spelling of the name first (the CRM is where a person looks them up), else TinyEmail's
        name=pl.coalesce("name", "name_te"),
        ghl_url=url,
    ).cast(CONTEXT)


def with_context(frame: pl.DataFrame, context: pl.DataFrame) -> pl.DataFrame:
    """`frame` with the CONTEXT columns after `key` (nulls for a key `context` does not know)."""
    rest = [c for c in frame.columns if c != "key" and c not in CONTEXT_COLUMNS]
    joined = frame.drop([c for c in CONTEXT_COLUMNS if c in frame.columns]).join(
        context.select(list(CONTEXT)), on="key", how="left")
    return joined.select("key", *CONTEXT_COLUMNS, *rest)
