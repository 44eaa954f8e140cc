"""Identity reviews and quarantined ops as a data team reviews them: who, since when, and what they decided.

Pure: frames in, frames out; the files and tables are the store's (`contact_recon/store/reviews.py`).

Identity reviews (`identity.REVIEW` rows of a run) get a stable `review_id`, a hash of what the review is
about (kind, the contact ids, the email and the old email), so the same situation has the same id every
night and a changed one (a third contact with the email) is a new review. `identity_rows` turns them into
the rows of `identity.csv` (IDENTITY_CSV): the contacts' names, location, GHL link and values as GHL holds
them, the TinyEmail customers of the emails involved, since when the review is open, and empty `decision`,
`contact` and `note` columns. The decisions (`check_identity_rows` checks a filled-in file row by row):

| kind                    | decision | means                                                         | contact   |
|-------------------------|----------|---------------------------------------------------------------|-----------|
| email_shared_by_several | pair     | this contact is the TinyEmail customer of the email: a manual | required  |
|                         |          | id_map link; the other contacts stay held (one customer       |           |
|                         |          | cannot be two contacts) and the review is closed              |           |
| email_shared_by_several | apart    | none of these contacts is that customer: never paired with    | empty     |
|                         |          | the email, never reviewed for it again (held: nothing synced) |           |
| email_changed           | pair     | the contact is paired with its new email (a manual link in    | optional  |
|                         |          | place of the old pairing)                                     | (its own) |
| email_changed           | apart    | the old pairing is dropped: the contact is matched by its new | empty     |
|                         |          | email like any other, the old email's customer stands alone   |           |
| any kind                | ignore   | no longer reported; the people stay held as they are          | empty     |
| any kind                | reopen   | the decision is undone (recorded): reviewed again next run    | empty     |

A TinyEmail collision (several customers, one email) is fixed in TinyEmail itself: only `ignore`.
`decided_effects` turns the standing decisions into what the matcher reads (`identity.with_decisions`: the
manual links and the broken pairings; `match_identities(apart=...)`: the pairs kept apart).

Quarantined ops (`quarantine_rows`): each op a blocking check held, with the person's context, the values of
the op's field on both sides as the systems hold them (the raw spelling of an email or a phone), since when
the op (its id hashes its content: the same op has the same id every night) has been held, and whether the
team dismissed it (`recon quarantine dismiss`: accepted as is, never written, no longer open).

Ages: `first_seen` is the first run that had the item (the store's `review_ages`), `nights_open` the whole
days from then to the time asked about (the store's clock).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from contact_recon.engine.identity import ID_MAP
from contact_recon.model.context import ghl_url

SHARED, CHANGED, COLLISION = "email_shared_by_several", "email_changed", "te_email_collision"
PAIR, APART, IGNORE, REOPEN = "pair", "apart", "ignore", "reopen"
CHOICES_BY_KIND: dict[str, tuple[str, ...]] = {SHARED: (PAIR, APART, IGNORE), CHANGED: (PAIR, APART, IGNORE),
                                              COLLISION: (IGNORE,)}
IDENTITY_ITEM, QUARANTINE_ITEM = "identity", "quarantine"  # review_ages.item_kind
MANUAL = "manual"  # id_map.matched_by of a link the team made
IDENTITY_CSV = pl.Schema({c: pl.String() for c in (
    "review_id", "kind", "contact_ids", "email", "old_email", "name", "location_id", "ghl_url")}
    | {"first_seen": pl.String(), "nights_open": pl.Int64()}
    | {c: pl.String() for c in ("detail", "ghl", "tinyemail", "decision", "contact", "note")})
IDENTITY_REQUIRED = ("review_id", "decision")
DECIDED = pl.Schema({"review_id": pl.String(), "kind": pl.String(), "contact_ids": pl.List(pl.String()),
                     "email": pl.String(), "old_email": pl.String(), "decision": pl.String(),
                     "contact_id": pl.String(), "location_id": pl.String(), "note": pl.String()})
QUARANTINE_VIEW = pl.Schema({c: pl.String() for c in (
    "op_id", "key", "location_id", "email", "name", "ghl_url", "target", "kind", "field", "expected", "new",
    "reason", "quarantined_by", "ghl", "tinyemail", "first_seen")} | {"nights_open": pl.Int64(),
                                                                       "dismissed": pl.Boolean(),
                                                                       "note": pl.String()})
AGES = pl.Schema({"item_id": pl.String(), "first_seen": pl.Datetime("us", "UTC")})
MAX_PROBLEMS = 50
RAW = {"email": "email_raw", "phone": "phone_raw"}  # the spelling a system holds, for these fields


class IdentityFileError(Exception):
    """A filled-in identity.csv that cannot be imported; `problems` name the CSV line of each bad row."""

    def __init__(self, path: Path, problems: list[str]):
        shown = problems[:MAX_PROBLEMS] + ([f"... and {len(problems) - MAX_PROBLEMS} more"]
                                            if len(problems) > MAX_PROBLEMS else [])
        super().__init__(f"{path}: nothing imported, {len(problems)} problem(s):\n" + "\n".join(shown))
        self.problems = problems


# ------------------------------------------------------------------------------------------ review ids


def review_id(kind: str, contact_ids: Sequence[str] | None, email: str | None, old_email: str | None) -> str:
    """The stable id of an identity review: the same situation, the same id, every night."""
    text = "\x1f".join([kind, ",".join(sorted(contact_ids or [])), email or "", old_email or ""])
    return "idr-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def with_review_ids(review: pl.DataFrame) -> pl.DataFrame:
    """identity.REVIEW rows with `review_id` first."""
    ids = [review_id(r["kind"], r["contact_ids"], r["email"], r["old_email"]) for r in review.iter_rows(named=True)]
    return review.select(pl.Series("review_id", ids, pl.String()), *review.columns)


# ------------------------------------------------------------------------------------------ identity.csv


def identity_rows(review: pl.DataFrame, ghl_contacts: pl.DataFrame, te_customers: pl.DataFrame,
                  ages: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """The rows of identity.csv (IDENTITY_CSV) for a run's REVIEW rows, with the snapshot's GHL contacts and
    TinyEmail customers (records.GHL_CONTACTS / TINYEMAIL_CUSTOMERS) and the review ages (AGES)."""
    ids_involved = review["contact_ids"].explode().drop_nulls().implode()
    emails_involved = pl.concat([review["email"], review["old_email"]]).drop_nulls().implode()
    involved = ghl_contacts.filter(pl.col("contact_id").is_in(ids_involved))  # only those: a snapshot is big
    contacts = {r["contact_id"]: r for r in involved.iter_rows(named=True)}
    customers: dict[str, list[dict[str, Any]]] = {}
    for r in te_customers.filter(pl.col("email").is_in(emails_involved)).iter_rows(named=True):
        customers.setdefault(r["email"], []).append(r)
    first = dict(ages.iter_rows())
    rows = []
    for r in with_review_ids(review).iter_rows(named=True):
        ids = list(r["contact_ids"] or [])
        lead = contacts.get(ids[0], {}) if ids else {}
        seen = first.get(r["review_id"], now)
        rows.append({
            "review_id": r["review_id"], "kind": r["kind"], "contact_ids": " ".join(ids), "email": r["email"],
            "old_email": r["old_email"], "name": _name(lead), "location_id": lead.get("location_id"),
            "ghl_url": ghl_url(lead.get("location_id"), lead.get("contact_id")),
            "first_seen": _iso(seen), "nights_open": nights(seen, now), "detail": r["detail"],
            "ghl": " | ".join(_ghl_value(contacts.get(c), c) for c in ids) or None,
            "tinyemail": " | ".join(_te_value(c) for e in (r["email"], r["old_email"]) if e
                                    for c in customers.get(e, [])) or None,
            "decision": None, "contact": None, "note": None})
    return pl.DataFrame(rows, schema=IDENTITY_CSV) if rows else pl.DataFrame(schema=IDENTITY_CSV)


def _name(record: Mapping[str, Any]) -> str | None:
    full = " ".join(p for p in (record.get("first_name"), record.get("last_name")) if p and p.strip())
    return full or None


def _ghl_value(contact: Mapping[str, Any] | None, contact_id: str) -> str:
    """One contact as GHL holds it: id, name, email and phone as written there."""
    if contact is None:
        return f"{contact_id} (not in this snapshot)"
    parts = [_name(contact), contact.get("email_raw") or contact.get("email"), contact.get("phone_raw")]
    return f"{contact_id}: " + ", ".join(p for p in parts if p)


def _te_value(customer: Mapping[str, Any]) -> str:
    """One TinyEmail customer as TinyEmail holds it: email as written, name, status."""
    parts = [customer.get("email_raw") or customer.get("email"), _name(customer), customer.get("status")]
    return ", ".join(p for p in parts if p)


def nights(first_seen: datetime, now: datetime) -> int:
    """Whole days from `first_seen` to `now` (0 on the night an item first appears)."""
    return max(0, (now - first_seen).days)


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------- the decisions


@dataclass(frozen=True)
class IdentityDecisionFile:
    decisions: pl.DataFrame  # DECIDED, one row per decided review (decision may be `reopen`)
    undecided: int  # rows with a blank decision, left alone
    rows: int


def check_identity_rows(path: Path, columns: Sequence[str] | None, rows: Iterable[tuple[int, Mapping[str, Any]]],
                        known: pl.DataFrame) -> IdentityDecisionFile:
    """Check a filled-in identity.csv: every line's problem named, IdentityFileError if any (nothing imported).

    `rows`: (CSV line, cells) pairs; `known`: the reviews the store knows (review_id, kind, contact_ids, email,
    old_email, location_ids: the location of each contact id), open or decided.
    """
    missing = [c for c in IDENTITY_REQUIRED if c not in (columns or [])]
    if missing:
        raise IdentityFileError(path, [f"line 1: missing column(s) {', '.join(missing)}"])
    reviews = {r["review_id"]: r for r in known.iter_rows(named=True)}
    problems: list[str] = []
    decided: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    undecided = total = 0
    for line, row in rows:
        total += 1
        choice = (row.get("decision") or "").strip().lower()
        if not choice:
            undecided += 1
            continue
        found = check_decision(str(row.get("review_id") or "").strip(), choice, row.get("contact"),
                               row.get("note"), reviews)
        rid = str(row.get("review_id") or "").strip()
        if isinstance(found, str):
            problems.append(f"line {line}: {found}")
        elif rid in seen:
            problems.append(f"line {line}: review {rid} was already decided on line {seen[rid]}")
        else:
            seen[rid] = line
            decided.append(found)
    if problems:
        raise IdentityFileError(path, problems)
    frame = pl.DataFrame(decided, schema=DECIDED) if decided else pl.DataFrame(schema=DECIDED)
    return IdentityDecisionFile(frame, undecided, total)


def check_decision(rid: str, choice: str, contact: Any, note: Any,
                   reviews: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | str:
    """One decision checked against the known reviews: a DECIDED row, or the problem as a sentence."""
    contact = (str(contact).strip() or None) if contact is not None else None
    review = reviews.get(rid)
    if review is None:
        return f"unknown review {rid!r}" if rid else "a decision with no review_id"
    allowed = (*CHOICES_BY_KIND.get(review["kind"], (IGNORE,)), REOPEN)
    if choice not in allowed:
        return f"decision {choice!r} is not one of {', '.join(allowed)} for a {review['kind']} review"
    ids = list(review["contact_ids"] or [])
    locations = dict(zip(ids, review["location_ids"] or [None] * len(ids), strict=False))
    if choice == PAIR and review["kind"] == SHARED and contact is None:
        return f"decision 'pair' needs the contact to pair (one of {', '.join(ids)})"
    if choice == PAIR and review["kind"] == CHANGED:
        contact = contact or (ids[0] if ids else None)
    if contact is not None and choice != PAIR:
        return "a contact is only read with decision 'pair'"
    if contact is not None and contact not in ids:
        return f"contact {contact!r} is not one of this review's contacts ({', '.join(ids)})"
    return {"review_id": rid, "kind": review["kind"], "contact_ids": ids, "email": review["email"],
            "old_email": review["old_email"], "decision": choice, "contact_id": contact,
            "location_id": locations.get(contact) if contact else None,
            "note": (str(note).strip() or None) if note is not None else None}


@dataclass(frozen=True)
class DecidedEffects:
    """What the matcher reads from the standing identity decisions."""

    links: pl.DataFrame  # identity.ID_MAP rows, matched_by 'manual'
    broken: frozenset[str]  # contacts whose stored pairing is dropped (an email change kept apart)
    apart: frozenset[tuple[str, str]]  # (contact_id, email) never paired


def decided_effects(decisions: pl.DataFrame) -> DecidedEffects:
    """The manual links, broken pairings and kept-apart pairs of the standing decisions (DECIDED rows)."""
    links: list[dict[str, str]] = []
    broken: set[str] = set()
    apart: set[tuple[str, str]] = set()
    for d in decisions.iter_rows(named=True):
        if d["decision"] == PAIR and d["contact_id"] and d["location_id"]:
            # a shared email: the chosen contact takes it; an email change: the contact takes its new email
            email = d["email"]
            if email:
                links.append({"contact_id": d["contact_id"], "location_id": d["location_id"], "email": email,
                              "matched_by": MANUAL})
        elif d["decision"] == APART and d["kind"] == CHANGED:
            # the old pairing goes; the contact is matched by its new email like anyone else
            broken.update(d["contact_ids"] or [])
        elif d["decision"] == APART and d["email"]:
            # a shared email: none of these contacts is ever paired with it again
            apart.update((c, d["email"]) for c in d["contact_ids"] or [])
        # ignore: nothing changes for the matcher; the review is only no longer reported
    frame = pl.DataFrame(links, schema=ID_MAP) if links else pl.DataFrame(schema=ID_MAP)
    return DecidedEffects(frame, frozenset(broken), frozenset(apart))


# ------------------------------------------------------------------------------------------ quarantine


def quarantine_rows(quarantined: pl.DataFrame, context: pl.DataFrame, people: pl.DataFrame,
                    ghl_contacts: pl.DataFrame, te_customers: pl.DataFrame, ages: pl.DataFrame,
                    dismissed: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """QUARANTINE_VIEW rows for a run's quarantined ops (ops.OPS_SCHEMA + quarantined_by).

    Args:
        context: context.CONTEXT rows (key, location_id, email, name, ghl_url).
        people: the plan's people (key, email, contact_id, location_id): where each side holds the person.
        ghl_contacts, te_customers: the snapshot frames the values are read from, as the systems hold them.
        ages: AGES of the op ids; dismissed: (op_id, note) of the standing dismissals.
    """
    keys = quarantined["key"].unique().implode()
    who = {r["key"]: r for r in people.filter(pl.col("key").is_in(keys)).iter_rows(named=True)}
    ctx = {r["key"]: r for r in context.filter(pl.col("key").is_in(keys)).iter_rows(named=True)}
    ids = [*quarantined["key"].unique().to_list(), *(p["contact_id"] for p in who.values() if p["contact_id"])]
    emails = [e for e in [*(p["email"] for p in who.values()), *(c["email"] for c in ctx.values())] if e]
    contacts = {r["contact_id"]: r for r in ghl_contacts.filter(pl.col("contact_id").is_in(ids)).iter_rows(named=True)}
    customers = {r["email"]: r for r in te_customers.filter(pl.col("email").is_in(emails)).iter_rows(named=True)}
    first, notes = dict(ages.iter_rows()), dict(dismissed.select("op_id", "note").iter_rows())
    rows = []
    for op in quarantined.iter_rows(named=True):
        person, c = who.get(op["key"], {}), ctx.get(op["key"], {})
        seen = first.get(op["op_id"], now)
        rows.append({
            "op_id": op["op_id"], "key": op["key"], "location_id": c.get("location_id"), "email": c.get("email"),
            "name": c.get("name"), "ghl_url": c.get("ghl_url"), "target": op["target"], "kind": op["kind"],
            "field": op["field"], "expected": op["expected"], "new": op["new"], "reason": op["reason"],
            "quarantined_by": op["quarantined_by"],
            "ghl": _field_value(contacts.get(person.get("contact_id") or op["key"]), op["field"]),
            "tinyemail": _field_value(customers.get(person.get("email") or c.get("email") or ""), op["field"]),
            "first_seen": _iso(seen), "nights_open": nights(seen, now), "dismissed": op["op_id"] in notes,
            "note": notes.get(op["op_id"])})
    return pl.DataFrame(rows, schema=QUARANTINE_VIEW) if rows else pl.DataFrame(schema=QUARANTINE_VIEW)


def _field_value(record: Mapping[str, Any] | None, field: str | None) -> str | None:
    """The op's field as the system holds it (the raw spelling of an email or phone); lists joined."""
    if record is None or not field:
        return None
    value = record.get(RAW.get(field, field), record.get(field))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return None if value is None else str(value)
