"""Identity matching: which GHL contact and which TinyEmail customer are the same person.

Pure polars: frames in (GHL_CONTACTS, TINYEMAIL_CUSTOMERS, the stored id_map), an `IdentityResult`
out. Nothing is merged here; an ambiguous case is *held back* and put on the review list, so the merge
engine plans nothing for it until a person resolves it (`recon identity resolve`: `pair` adds a 'manual'
link to the id_map the matcher reads, `apart` names (contact, email) pairs it never makes; see
`with_decisions` and the `apart` argument; `contact_recon/engine/reviews.py` has the decisions' table).

Algorithm (`match_identities`):
1. TinyEmail first: several customers whose emails normalise to one key (`Bob@x.com`, `bob@x.com`)
   are a 'te_email_collision' review; that email is held back whatever matches it.
2. The existing id_map first. A mapped contact whose normalised email is still the mapped one stays
   paired (`matched_by` as stored). A mapped contact whose email changed (or was removed) is an
   'email_changed' review: the old pairing stays in id_map, it is not re-pointed, and the contact,
   the old and the new email are held back. A mapped contact that is gone from a location this run
   covers stays paired with `in_ghl=False`, so the merge engine sees the deletion under its key.
   Pairings of locations this run does not cover hold their emails back (out of scope).
3. Then the normalised email, for contacts without a pairing. Contacts are grouped by email (by
   location and email when `share_across_locations`): a group of one with a TinyEmail customer is a
   new 'email' pairing (and a re-key of `te:<email>` to the contact id); a group of several (or a
   contact whose email another contact's pairing already holds) is an 'email_shared_by_several'
   review, and none of its unpaired contacts is matched by email. By default one email in several
   locations is a review too: pairing both with one TinyEmail customer would sync the two GHL
   contacts into each other through TinyEmail.
   A contact the team kept apart from an email (`apart`: (contact_id, email) pairs) is taken out of that
   email's group before it is counted: it is never paired with it, never reviewed for it, and held back
   (syncing it alone would copy the TinyEmail customer of that email into a second contact).
4. Whatever is left: GHL contacts without email ('no_email') or without a TinyEmail customer
   ('not_in_tinyemail') are kept and reported as unmatched; TinyEmail customers nobody matched get
   the key `te:<email>`.

`hold_back` holds more people back after matching: the contacts and emails of records present but
unreadable tonight (contact_recon/stages/snapshot.py), whose rows are last night's; nothing is planned for them.

`localise_phones` reads the phone of a matched record without a country of its own again in its partner's
country (the person's country), so one number written nationally on one side and internationally on the
other is one value. `merge_sides` turns the result into the two MERGE_SIDE frames the merge engine compares, keyed by
person key; held-back contacts and emails appear in neither. `check_not_emptied` is the guard for
a side that came back empty while the base is not (`SideCameBackEmpty`, never "all deleted").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.normalise import normalise_phone
from contact_recon.model.records import MERGE_SIDE

ID_MAP = pl.Schema({"contact_id": pl.String(), "location_id": pl.String(), "email": pl.String(),
                    "matched_by": pl.String()})
REVIEW = pl.Schema({"kind": pl.String(), "contact_ids": pl.List(pl.String()), "email": pl.String(),
                    "old_email": pl.String(), "detail": pl.String()})
MATCHED = pl.Schema({"key": pl.String(), "contact_id": pl.String(), "location_id": pl.String(),
                     "email": pl.String(), "matched_by": pl.String(), "in_ghl": pl.Boolean(), "in_te": pl.Boolean()})
UNMATCHED_GHL = pl.Schema({"contact_id": pl.String(), "location_id": pl.String(), "email": pl.String(),
                           "reason": pl.String()})
UNMATCHED_TE = pl.Schema({"key": pl.String(), "email": pl.String()})
REKEYS = pl.Schema({"old_key": pl.String(), "new_key": pl.String()})


class SideCameBackEmpty(Exception):  # noqa: N818 - the name is the contract
    """A system answered with no records while the base holds some: never read as "everything was deleted"."""

    def __init__(self, system: str, base_count: int):
        super().__init__(f"{system} came back with 0 records while the base holds {base_count}; refusing to "
                         f"treat that as deleting everything (override: allow_empty=True)")
        self.system = system
        self.base_count = base_count


def check_not_emptied(system: str, now_count: int, base_count: int, *, allow_empty: bool = False) -> None:
    """Raise SideCameBackEmpty when `system` has 0 records now but the base has some, unless allowed."""
    if now_count == 0 and base_count > 0 and not allow_empty:
        raise SideCameBackEmpty(system, base_count)


@dataclass(frozen=True)
class IdentityResult:
    matched: pl.DataFrame  # MATCHED: one row per pairing, key = contact id
    unmatched_ghl: pl.DataFrame  # UNMATCHED_GHL: reason 'no_email' | 'not_in_tinyemail'
    unmatched_te: pl.DataFrame  # UNMATCHED_TE: key = te:<email>
    review: pl.DataFrame  # REVIEW: never merged automatically
    new_id_map: pl.DataFrame  # ID_MAP: pairings made by email in this run (to save)
    rekeys: pl.DataFrame  # REKEYS: te:<email> -> contact id, for the base
    held_contact_ids: frozenset[str]  # held back: in neither merge side
    held_emails: frozenset[str]

    @property
    def held_keys(self) -> frozenset[str]:
        """Person keys the merge engine must leave alone this run (base rows included)."""
        return self.held_contact_ids | {TE_KEY_PREFIX + e for e in self.held_emails}


def match_identities(ghl: pl.DataFrame, te: pl.DataFrame, id_map: pl.DataFrame, *,
                     locations: Iterable[str] | None = None, share_across_locations: bool = False,
                     apart: Iterable[tuple[str, str]] = ()) -> IdentityResult:
    """Pair GHL contacts with TinyEmail customers (see the module docstring for the algorithm).

    Args:
        ghl: GHL_CONTACTS rows of this run.
        te: TINYEMAIL_CUSTOMERS rows of this run.
        id_map: stored pairings (at least contact_id, location_id, email, matched_by).
        locations: the GHL locations this run covers (default: those present in `ghl`); pairings of
            other locations are out of scope and hold their emails back.
        share_across_locations: allow one email to pair with one contact in each of several locations.
        apart: (contact_id, email) pairs the team kept apart (`recon identity resolve --decision apart`).
    """
    covered = sorted(set(locations) if locations is not None else set(ghl["location_id"].drop_nulls().to_list()))
    g = ghl.select("contact_id", "location_id", "email")
    te_emails = te.select("email").drop_nulls()
    te_counts = te_emails.group_by("email").len()
    collided = te_counts.filter(pl.col("len") > 1)
    m = id_map.select("contact_id", "location_id", pl.col("email").alias("mapped_email"), "matched_by")
    in_scope = pl.col("location_id").is_in(covered)

    # Step 2: the id_map first.
    gm = g.join(m.filter(in_scope), on=["contact_id", "location_id"], how="left")
    kept = gm.filter(pl.col("mapped_email").is_not_null() & (pl.col("email") == pl.col("mapped_email")))
    changed = gm.filter(pl.col("mapped_email").is_not_null() & pl.col("email").ne_missing(pl.col("mapped_email")))
    gone = m.filter(in_scope).join(g, on=["contact_id", "location_id"], how="anti")
    claims = pl.concat([
        kept.select("contact_id", "location_id", "email", "matched_by", in_ghl=pl.lit(True)),
        gone.select("contact_id", "location_id", pl.col("mapped_email").alias("email"), "matched_by",
                    in_ghl=pl.lit(False)),
    ])
    out_of_scope = m.filter(~in_scope).select("contact_id", "location_id", pl.col("mapped_email").alias("email"))
    # A pairing under review still holds its old email: nobody else takes it by email meanwhile.
    held_by_review = changed.select("contact_id", "location_id", pl.col("mapped_email").alias("email"))
    standing = pl.concat([out_of_scope, held_by_review])

    # Step 3: the normalised email, for contacts without a pairing.
    candidates = gm.filter(pl.col("mapped_email").is_null() & pl.col("email").is_not_null())
    kept_apart = candidates.join(_apart_frame(apart), on=["contact_id", "email"], how="semi")
    candidates = candidates.join(kept_apart, on=["contact_id", "email"], how="anti")
    groups = _email_groups(claims, standing, candidates, share_across_locations)
    contested = groups.filter((pl.col("n") > 1) & (pl.col("n_candidates") > 0))
    single = groups.filter((pl.col("n") == 1) & pl.col("candidate")).drop("n", "n_candidates", "candidate")
    by_email = single.filter(pl.col("email").is_in(te_emails["email"].implode()))
    new_pairs = by_email.select("contact_id", "location_id", "email", matched_by=pl.lit("email"))

    matched = pl.concat([claims, new_pairs.with_columns(in_ghl=pl.lit(True))])
    held_ids = set(changed["contact_id"]) | set(contested.filter(pl.col("candidate"))["contact_id"])
    held_ids |= set(kept_apart["contact_id"])
    held_ids |= set(matched.filter(pl.col("email").is_in(collided["email"].implode()))["contact_id"])
    matched = matched.filter(~pl.col("contact_id").is_in(list(held_ids)))
    new_pairs = new_pairs.filter(~pl.col("contact_id").is_in(list(held_ids)))
    review = pl.concat([_collision_reviews(te, collided), _changed_reviews(changed), _shared_reviews(contested)])
    held_emails = _held_emails(review, out_of_scope, collided, matched)
    return IdentityResult(
        matched=_matched(matched, te_emails),
        unmatched_ghl=_unmatched_ghl(gm, single, by_email, held_ids),
        unmatched_te=_unmatched_te(te_counts, matched, held_emails),
        review=review,
        new_id_map=new_pairs.sort("contact_id").cast(ID_MAP),
        rekeys=new_pairs.select(old_key=TE_KEY_PREFIX + pl.col("email"), new_key=pl.col("contact_id")),
        held_contact_ids=frozenset(held_ids),
        held_emails=frozenset(held_emails),
    )


def hold_back(result: IdentityResult, contact_ids: Iterable[str], emails: Iterable[str]) -> IdentityResult:
    """`result` with these contacts and emails held back too, and the partners of their pairings: in neither
    merge side, their base rows left alone (`held_keys`), no pairing saved or re-key made for them."""
    ids, mails = set(contact_ids), set(emails)
    if not ids and not mails:
        return result
    involved = pl.col("contact_id").is_in(sorted(ids)) | pl.col("email").is_in(sorted(mails))
    caught = result.matched.filter(involved)
    ids |= set(caught["contact_id"].drop_nulls().to_list())
    mails |= set(caught["email"].drop_nulls().to_list())
    pairs = result.new_id_map.filter(~(pl.col("contact_id").is_in(sorted(ids)) | pl.col("email").is_in(sorted(mails))))
    return IdentityResult(
        matched=result.matched.filter(~involved),
        unmatched_ghl=result.unmatched_ghl.filter(~pl.col("contact_id").is_in(sorted(ids))),
        unmatched_te=result.unmatched_te.filter(~pl.col("email").is_in(sorted(mails))),
        review=result.review, new_id_map=pairs,
        rekeys=result.rekeys.filter(pl.col("new_key").is_in(pairs["contact_id"].implode())),
        held_contact_ids=result.held_contact_ids | ids, held_emails=result.held_emails | mails)


def _apart_frame(apart: Iterable[tuple[str, str]]) -> pl.DataFrame:
    rows = sorted(set(apart))
    return pl.DataFrame({"contact_id": [c for c, _ in rows], "email": [e for _, e in rows]},
                        schema={"contact_id": pl.String(), "email": pl.String()})


def with_decisions(id_map: pl.DataFrame, links: pl.DataFrame, broken: Iterable[str] = ()) -> pl.DataFrame:
    """The id_map as the matcher should read it after the team's decisions: the pairings of `broken` contacts
    (an email change kept apart) left out, and `links` (ID_MAP rows, matched_by 'manual': an email change or a
    shared email paired) in place of the stored pairing of their contacts."""
    gone = sorted(set(broken) | set(links["contact_id"].to_list()))
    kept = id_map.filter(~pl.col("contact_id").is_in(gone)).select(list(ID_MAP)).cast(ID_MAP)
    return pl.concat([kept, links.select(list(ID_MAP)).cast(ID_MAP)]).sort("location_id", "contact_id")


def _email_groups(claims: pl.DataFrame, standing: pl.DataFrame, candidates: pl.DataFrame,
                  share_across_locations: bool) -> pl.DataFrame:
    """Every contact holding or claiming an email, with the size of its group and how many are unpaired."""
    group = ["location_id", "email"] if share_across_locations else ["email"]
    pool = pl.concat([
        claims.select("contact_id", "location_id", "email", candidate=pl.lit(False)),
        standing.select("contact_id", "location_id", "email", candidate=pl.lit(False)),
        candidates.select("contact_id", "location_id", "email", candidate=pl.lit(True)),
    ])
    return pool.with_columns(n=pl.len().over(group), n_candidates=pl.col("candidate").sum().over(group))


def _matched(matched: pl.DataFrame, te_emails: pl.DataFrame) -> pl.DataFrame:
    return matched.select(
        key=pl.col("contact_id"), contact_id=pl.col("contact_id"), location_id=pl.col("location_id"),
        email=pl.col("email"), matched_by=pl.col("matched_by"), in_ghl=pl.col("in_ghl"),
        in_te=pl.col("email").is_in(te_emails["email"].implode()),
    ).sort("key").cast(MATCHED)


def _unmatched_ghl(gm: pl.DataFrame, single: pl.DataFrame, by_email: pl.DataFrame,
                   held_ids: set[str]) -> pl.DataFrame:
    no_email = gm.filter(pl.col("mapped_email").is_null() & pl.col("email").is_null())
    not_in_te = single.join(by_email, on=["contact_id", "location_id"], how="anti")
    return pl.concat([
        no_email.select("contact_id", "location_id", "email", reason=pl.lit("no_email")),
        not_in_te.select("contact_id", "location_id", "email", reason=pl.lit("not_in_tinyemail")),
    ]).filter(~pl.col("contact_id").is_in(list(held_ids))).sort("contact_id").cast(UNMATCHED_GHL)


def _unmatched_te(te_counts: pl.DataFrame, matched: pl.DataFrame, held_emails: set[str]) -> pl.DataFrame:
    taken = pl.concat([matched["email"], pl.Series(sorted(held_emails), dtype=pl.String())])
    return (te_counts.filter(~pl.col("email").is_in(taken.implode()))
            .select(key=TE_KEY_PREFIX + pl.col("email"), email=pl.col("email")).sort("key").cast(UNMATCHED_TE))


def _held_emails(review: pl.DataFrame, out_of_scope: pl.DataFrame, collided: pl.DataFrame,
                 matched: pl.DataFrame) -> set[str]:
    """Emails of reviews and out-of-scope pairings that no standing pairing takes; collisions always."""
    involved = set(review["email"].drop_nulls()) | set(review["old_email"].drop_nulls())
    involved |= set(out_of_scope["email"].drop_nulls())
    return (involved - set(matched["email"])) | set(collided["email"])


def _changed_reviews(changed: pl.DataFrame) -> pl.DataFrame:
    return changed.select(
        kind=pl.lit("email_changed"), contact_ids=pl.concat_list(pl.col("contact_id")), email=pl.col("email"),
        old_email=pl.col("mapped_email"),
        detail=pl.format("contact {} in location {} now has email {}; its pairing with {} is kept until resolved",
                         "contact_id", "location_id", pl.col("email").fill_null("(none)"), "mapped_email"),
    ).cast(REVIEW)


def _shared_reviews(contested: pl.DataFrame) -> pl.DataFrame:
    summary = contested.group_by("email").agg(
        contact_ids=pl.col("contact_id").sort(), locations=pl.col("location_id").n_unique(),
        paired=pl.col("contact_id").filter(~pl.col("candidate")).sort().str.join(", "),
    )
    return summary.select(
        kind=pl.lit("email_shared_by_several"), contact_ids=pl.col("contact_ids"), email=pl.col("email"),
        old_email=pl.lit(None, pl.String()),
        detail=pl.format("{} GHL contacts in {} location(s) share this email; already paired: {}",
                         pl.col("contact_ids").list.len(), "locations",
                         pl.when(pl.col("paired") == "").then(pl.lit("none")).otherwise("paired")),
    ).sort("email").cast(REVIEW)


def _collision_reviews(te: pl.DataFrame, collided: pl.DataFrame) -> pl.DataFrame:
    raws = te.filter(pl.col("email").is_in(collided["email"].implode())).group_by("email").agg(
        pl.col("email_raw").sort().str.join(" | "), n=pl.len())
    return raws.select(
        kind=pl.lit("te_email_collision"), contact_ids=pl.lit([], pl.List(pl.String())), email=pl.col("email"),
        old_email=pl.lit(None, pl.String()),
        detail=pl.format("{} TinyEmail customers normalise to this email: {}", "n", "email_raw"),
    ).sort("email").cast(REVIEW)


def merge_sides(result: IdentityResult, ghl: pl.DataFrame, te: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The GHL side and the TinyEmail side as MERGE_SIDE frames keyed by person key, held-back rows left out.

    The GHL side's `lists` is null (GHL has no lists). The TinyEmail side holds a matched customer under
    its contact's key (with that `contact_id`) and an unmatched one under `te:<email>` (contact_id null).
    """
    person = [name for name in MERGE_SIDE if name not in ("key", "contact_id", "lists")]
    ghl_side = (ghl.filter(~pl.col("contact_id").is_in(list(result.held_contact_ids)))
                .select(pl.col("contact_id").alias("key"), "contact_id", *person,
                        lists=pl.lit(None, pl.List(pl.String())))
                .select(*MERGE_SIDE).sort("key"))
    pairs = pl.concat([
        result.matched.filter(pl.col("in_te")).select("key", "contact_id", "email"),
        result.unmatched_te.select("key", pl.lit(None, pl.String()).alias("contact_id"), "email"),
    ])
    te_side = pairs.join(te.select(*person, "lists"), on="email", how="inner").select(*MERGE_SIDE).sort("key")
    return ghl_side.cast(MERGE_SIDE), te_side.cast(MERGE_SIDE)


def localise_phones(result: IdentityResult, ghl: pl.DataFrame, te: pl.DataFrame,
                    default_region: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """GHL_CONTACTS and TINYEMAIL_CUSTOMERS with the phones of matched records read in the person's country.

    The snapshot reads a national number (`07700 900003`) in the record's own country, else the default
    region; a TinyEmail customer often has no country while its GHL contact says GB, so its UK number was read
    as a US one and failed (one number in two formats looked like a conflict). Once identity has paired the
    two records, a record without a country of its own has its phone read again (from `phone_raw`) in the
    other record's country; records with a country, or unmatched, are left as the snapshot read them.
    """
    pairs = result.matched.filter(pl.col("in_te") & pl.col("in_ghl")).select("contact_id", "email")
    ghl_country = ghl.select("contact_id", other=pl.col("country"))
    te_country = te.select("email", other=pl.col("country"))
    te_other = pairs.join(ghl_country, on="contact_id").select("email", "other").unique("email", keep="first")
    ghl_other = pairs.join(te_country, on="email").select("contact_id", "other").unique("contact_id", keep="first")
    return _reread(ghl, ghl_other, "contact_id", default_region), _reread(te, te_other, "email", default_region)


def _reread(frame: pl.DataFrame, other: pl.DataFrame, on: str, region: str) -> pl.DataFrame:
    """`frame` with `phone`/`phone_valid` read again in `other`'s country where its own country is blank."""
    blank = pl.col("country").fill_null("").str.strip_chars() == ""
    todo = (frame.join(other, on=on, how="left", maintain_order="left")
            .select(blank & (pl.col("other").fill_null("").str.strip_chars() != "")
                    & pl.col("phone_raw").is_not_null(), "phone_raw", "other"))
    if not todo.get_column(todo.columns[0]).any():
        return frame
    phones, valid = frame["phone"].to_list(), frame["phone_valid"].to_list()
    for i, (use, raw, country) in enumerate(todo.iter_rows()):
        if use:
            # no country of its own, the matched record's country known: the person's country
            phones[i], valid[i], _ = normalise_phone(raw, region, country)
    return frame.with_columns(pl.Series("phone", phones, pl.String), pl.Series("phone_valid", valid, pl.Boolean))
