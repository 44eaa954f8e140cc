"""What a run leaves as the next base: the last reconciled state advances only for confirmed writes.

Pure: frames and journal rows in, an `Advance` out; no store, no files. The apply stage's last step
(`contact_recon/stages/advance.py`) reads the state frames the planning run saved under
`runs/<run_id>/state/` (the planning base with presence flags, both merge sides as the identity matcher
keyed them, this run's re-keys and new id_map pairs), hands them with the run's journal to `advanced`, and
writes the `Advance` to the store in one transaction. The algorithm (`advanced`; step 2 is `next_base`):

1. Replay the journal's `done` ops on both sides (a create adds the record; a GHL create's record gets
   the contact id the API returned). Tags by key (`model/tags.py`): an add of a tag held in another spelling
   changes nothing, a removal removes every spelling; a list tag respelling and a fold change nothing (the
   sides the planning run saved were folded already).
2. Per person on either side, per dimension (each text field, consent, tags, lists):
   - a dimension with an op that was not confirmed (failed, stale, quarantined, held, never sent) gets as
     its base the value the op's target had before it (the op's `expected`): the next run sees the target
     unchanged and the source changed, and plans the same write again. (Keeping the old base would do the
     same for a person met before, but not for one met tonight for the first time: a blank base next to
     two different values reads as a change on both sides, a conflict, and the write would be lost.)
     For tags and lists only the member the op named is held back (`Blocked.members`): the base has it
     exactly when the target had it (a remove) and lacks it when the target lacked it (an add). A list is
     one member in two forms, `L` in TinyEmail's lists and `list:L` among GHL's tags, and both forms are
     set alike (else the next run would read a list sync that landed on one side only as a removal on the
     other side, and undo the side that did land). `tests/unit/test_merge_properties.py` (law 6) checks that
     every op that did not land is planned again;
   - otherwise, on both sides: the agreed value, or for a field the sides still disagree on (a conflict)
     the old base value when the base was valid, else blank; tags: the union of both sides (the merge
     engine's namespaces make each side hold its own kinds), one spelling per tag key (`model/tags.py`:
     TinyEmail's where both have the tag, since the key is all the merge compares); lists: TinyEmail's;
     consent: the tight value if either side is tight (never loosened by the state either);
   - custom fields (`custom`, the policy's names, model/custom_fields.py) one by one, as text fields are;
   - on one side only: that side's values, with its presence.
3. A person created in GHL by this run is re-keyed from `te:<email>` to the new contact id, and the pair
   goes to the id_map (`matched_by = created`), like every pair the identity matcher made this run.

`tests/support/merge.py::next_base` is the reference for a fully applied plan; with every op confirmed
the two agree, which the tests check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from contact_recon.model.custom_fields import dumps, is_custom, loads, name_of
from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.list_tags import LIST_TAG_RESPELLED
from contact_recon.model.records import MERGE_SIDE
from contact_recon.model.tags import TAG_FOLDED, add_tag, drop_tag, tag_key, union

TEXT = tuple(n for n, t in MERGE_SIDE.items() if t == pl.String and n not in ("key", "contact_id", "consent", "custom"))
UNCHANGING = (LIST_TAG_RESPELLED, TAG_FOLDED)  # reasons of tag ops that change no set in key space
DIMENSION = {"consent_tighten": "consent", "tag_add": "tags", "tag_remove": "tags", "list_add": "lists",
             "list_remove": "lists"}
BASE_SCHEMA = pl.Schema({**MERGE_SIDE, "in_ghl": pl.Boolean(), "in_tinyemail": pl.Boolean()})
Row = dict[str, Any]


@dataclass(frozen=True)
class Consent:
    tinyemail_tight: tuple[str, ...]
    ghl_tight: tuple[str, ...]


def _norm(value: Any) -> Any:
    text = value.strip() if isinstance(value, str) else value
    return text or None


def replay(te: dict[str, Row], ghl: dict[str, Row], done: Iterable[Row]) -> None:
    """Apply confirmed ops (journal rows) to the two sides in place."""
    for op in done:
        if op.get("reason") == LIST_TAG_RESPELLED:
            continue  # a list tag spelled anew in GHL: the same list, nothing changes (model/list_tags.py)
        if op.get("reason") == TAG_FOLDED:
            continue  # a second spelling folded away: the sides were folded before the merge (model/tags.py)
        side = te if op["target"] == "tinyemail" else ghl
        key, kind = op["key"], op["kind"]
        if kind == "create":
            side[key] = _created(op, side is ghl)
            continue
        row = side.get(key)
        if row is None or kind in ("task_create", "note_create", "identity_review"):
            continue
        name = str(op["field"] if kind == "update" else DIMENSION.get(kind, ""))
        if kind == "update" and is_custom(name):
            _set_custom(row, name, op["new"])
        elif kind == "update" or kind == "consent_tighten":
            row[name] = op["new"]
        elif kind in ("tag_add", "list_add"):
            row[name] = add_tag(row[name] or [], op["new"])  # by key: a spelling already there stays
        elif kind in ("tag_remove", "list_remove"):
            row[name] = drop_tag(row[name] or [], op["expected"])  # by key: every spelling goes


def _set_custom(row: Row, field: str, value: Any) -> None:
    """One custom field (`custom:<fieldKey>`) of a row's `custom` JSON set to `value` (blank: left out)."""
    row["custom"] = dumps({**loads(row.get("custom")), name_of(field): _norm(value)})


def _custom_both(t: Row, g: Row, b: Row, valid: bool) -> str | None:
    """Per custom field: the agreed value, else the old base value when the base was valid, else blank."""
    tc, gc, bc = loads(t.get("custom")), loads(g.get("custom")), loads(b.get("custom"))
    return dumps({n: (tc.get(n) if tc.get(n) == gc.get(n) else bc.get(n) if valid else None)
                  for n in sorted({*tc, *gc, *bc})})


def _created(op: Row, in_ghl: bool) -> Row:
    record = json.loads(op["new"] or "{}")
    row: Row = {name: None for name in MERGE_SIDE}
    row.update({k: v for k, v in record.items() if k in MERGE_SIDE and k not in ("lists",)})
    row["key"] = op["key"]
    row["tags"] = sorted(record.get("tags") or [])
    row["lists"] = [] if in_ghl else sorted(record.get("lists") or [])
    row["consent"] = record.get("consent") or "subscribed"
    row["contact_id"] = op["result_id"] if in_ghl else (None if op["key"].startswith(TE_KEY_PREFIX) else op["key"])
    return row


@dataclass(frozen=True)
class Blocked:
    """What the unconfirmed ops of a run hold back: whole dimensions (text fields, consent) as (key, name) -> the
    target's value before the op, and single tag or list members as (key, "tags" | "lists", value, whether the
    target had it before the op)."""

    dimensions: Mapping[tuple[str, str], Any] = field(default_factory=dict)
    members: frozenset[tuple[str, str, str, bool]] = frozenset()


def next_base(base: dict[str, Row], te: dict[str, Row], ghl: dict[str, Row], blocked: Blocked,
              consent: Consent, list_prefix: str = "list:") -> list[Row]:
    """The next base rows of every person on either side (module docstring, step 2)."""
    rows = []
    custom_blocked: dict[str, list[tuple[str, Any]]] = {}
    for (k, name), value in blocked.dimensions.items():
        if is_custom(name):
            custom_blocked.setdefault(k, []).append((name, value))
    for key in sorted(set(te) | set(ghl)):
        t, g, b = te.get(key), ghl.get(key), base.get(key) or {}
        if t and g:
            row = _both(key, t, g, b, consent)
        else:
            one = t or g or {}
            row = {**{n: _norm(one.get(n)) if n in TEXT else one.get(n) for n in MERGE_SIDE},
                   "in_ghl": bool(g) or bool(b.get("in_ghl")), "in_tinyemail": bool(t) or bool(b.get("in_tinyemail"))}
        for name in (n for n in (*TEXT, "consent") if (key, n) in blocked.dimensions):
            # an unconfirmed op on this dimension: the target's value before it, so it is planned again
            row[name] = _norm(blocked.dimensions[(key, name)])
        for name, value in custom_blocked.get(key, ()):
            # an unconfirmed custom field op: likewise, inside the row's custom values
            _set_custom(row, name, value)
        rows.append(row)
    by_key = {row["key"]: row for row in rows}
    for key, name, value, had in sorted(blocked.members):
        if key in by_key:
            _set_membership(by_key[key], name=name, value=value, member=had, prefix=list_prefix)
    return rows


def _set_membership(row: Row, *, name: str, value: str, member: bool, prefix: str) -> None:
    """Make one tag or list a member of `row`'s tags or lists, or not."""
    tags, lists = list(row.get("tags") or []), list(row.get("lists") or [])
    if name == "tags" and not tag_key(value).startswith(tag_key(prefix)):
        # a plain tag, by key (a spelling already there stands for it)
        tags = add_tag(tags, value) if member else drop_tag(tags, value)
    else:
        # a list, named as `list:L` (a GHL tag op) or `L` (a TinyEmail list op): the merge reads the base's
        # membership from either form, so both are set alike
        list_id = value[len(prefix):] if name == "tags" else value
        if member:
            lists = add_tag(lists, list_id)
        else:
            lists = drop_tag(lists, list_id)
            tags = drop_tag(tags, prefix + list_id)
    row["tags"], row["lists"] = sorted(tags), sorted(lists)


def _both(key: str, t: Row, g: Row, b: Row, consent: Consent) -> Row:
    valid = bool(b.get("in_ghl")) and bool(b.get("in_tinyemail"))
    row: Row = {n: (_norm(t.get(n)) if _norm(t.get(n)) == _norm(g.get(n)) else _norm(b.get(n)) if valid else None)
                for n in TEXT}
    tight = t.get("consent") if t.get("consent") in consent.tinyemail_tight else \
        g.get("consent") if g.get("consent") in consent.ghl_tight else t.get("consent")
    row.update(key=key, contact_id=g.get("contact_id"), email=_norm(g.get("email")),
               custom=_custom_both(t, g, b, valid),
               tags=union(t.get("tags") or [], g.get("tags") or []), lists=sorted(t.get("lists") or []),
               consent=tight, in_ghl=True, in_tinyemail=True)
    return row


def blocked(journal: pl.DataFrame) -> Blocked:
    """What every op that was not confirmed holds back (`Blocked`)."""
    open_ops = journal.filter((pl.col("status") != "done") & ~pl.col("kind").is_in(
        ["create", "task_create", "note_create", "identity_review"]))
    if "reason" in open_ops.columns:
        # a respelling or a fold that did not land holds nothing back: the tag is the same in key space
        # (model/list_tags.py, model/tags.py); the next snapshot still shows it, so it is planned again
        open_ops = open_ops.filter(~pl.col("reason").fill_null("").is_in(UNCHANGING))
    dimensions: dict[tuple[str, str], Any] = {}
    members = set()
    for r in open_ops.iter_rows(named=True):
        if r["kind"] in ("tag_add", "tag_remove", "list_add", "list_remove"):
            # one member of a set: an add's target lacked it (new), a remove's target had it (expected)
            adding = r["kind"].endswith("_add")
            members.add((r["key"], DIMENSION[r["kind"]], r["new"] if adding else r["expected"], not adding))
        else:
            # a text field (update) or consent: the whole dimension, at the target's value before the op
            dimensions[(r["key"], r["field"] if r["kind"] == "update" else DIMENSION[r["kind"]])] = r["expected"]
    return Blocked(dimensions, frozenset(members))


@dataclass(frozen=True)
class Advance:
    """What one applied run moves forward in the store (`advanced`); the apply stage writes it in one transaction
    (`contact_recon/stages/advance.py`)."""

    base: pl.DataFrame  # BASE_SCHEMA: the next base row of every person on either side (upserted)
    id_map: pl.DataFrame  # identity.ID_MAP pairs this run made (the matcher's and the creates')
    gone_keys: tuple[str, ...]  # base keys no person has any more: this run's re-keys' old keys, the created keys
    recreated: tuple[str, ...]  # contacts deleted in GHL and created again: their old id_map pairs are forgotten
    created_contacts: int  # persons this run created in GHL


CHUNK = 5_000  # people a pass of `advanced`: only one pass's rows are Python dicts at a time, never everyone's


def advanced(state: Mapping[str, pl.DataFrame], journal: pl.DataFrame, consent: Consent,
             list_prefix: str = "list:", *, chunk: int = CHUNK) -> Advance:
    """The base, the id_map pairs and the keys to drop after this run's confirmed ops (module docstring).

    People are taken `chunk` at a time in key order (each person's next base depends on its own rows and ops
    only), so the rows held as dicts stay bounded whatever the location's size.

    Args:
        state: the planning run's state frames (base, te_side, ghl_side, people, rekeys, id_map_new).
        journal: the run's journal rows (status and result_id of every op).
        consent: the tight consent values of each side.
        list_prefix: the GHL tag prefix of a TinyEmail list (`policy.tags.list_prefix`).
        chunk: people a pass (tests: any size gives the same `Advance`).
    """
    done = journal.filter(pl.col("status") == "done").to_dicts()
    held = blocked(journal)
    ops_of: dict[str, list[Row]] = {}
    for op in done:
        ops_of.setdefault(op["key"], []).append(op)
    created = {op["key"]: op["result_id"] for op in done
               if op["kind"] == "create" and op["target"] == "ghl" and op["result_id"]}
    # every person on either side, and whoever a confirmed create put on one
    keys = sorted({*state["te_side"]["key"].to_list(), *state["ghl_side"]["key"].to_list(),
                   *(op["key"] for op in done if op["kind"] == "create")})
    frames = [pl.DataFrame(schema=BASE_SCHEMA)]
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        base, te, ghl = (_rows(state[name], part) for name in ("base", "te_side", "ghl_side"))
        replay(te, ghl, [op for key in part for op in ops_of.get(key, ())])
        rows = next_base(base, te, ghl, held, consent, list_prefix)
        for row in rows:
            if row["key"] in created:
                # created in GHL by this run: now its contact (after a confirmed create, unlike planning_base's
                # re-keys)
                row["key"] = row["contact_id"] = created[row["key"]]
        if rows:
            frames.append(pl.DataFrame(rows, schema=BASE_SCHEMA, orient="row"))
    # a contact deleted in GHL and created again (an edit beat the delete): the old id is gone for good
    recreated = tuple(key for key in created if not key.startswith(TE_KEY_PREFIX))
    return Advance(base=pl.concat(frames), id_map=_id_pairs(state, done),
                   gone_keys=(*state["rekeys"]["old_key"].to_list(), *created), recreated=recreated,
                   created_contacts=len(created))


def _rows(frame: pl.DataFrame, keys: list[str]) -> dict[str, Row]:
    """The rows of `frame` whose key is one of `keys`, as dicts by key."""
    return {r["key"]: r for r in frame.filter(pl.col("key").is_in(keys)).iter_rows(named=True)}


def _id_pairs(state: Mapping[str, pl.DataFrame], done: list[Row]) -> pl.DataFrame:
    created_here = [op["key"] for op in done if op["kind"] == "create" and op["target"] == "tinyemail"]
    people = _rows(state["people"], created_here)
    extra = []
    for op in done:
        if op["kind"] != "create":
            continue
        record = json.loads(op["new"] or "{}")
        email = _norm(record.get("email"))
        if op["target"] == "ghl" and op["result_id"] and email:
            extra.append({"contact_id": op["result_id"], "location_id": op["location_id"], "email": email,
                          "matched_by": "created"})
        elif op["target"] == "tinyemail" and email and op["key"] in people:
            person = people[op["key"]]
            extra.append({"contact_id": person["contact_id"], "location_id": person["location_id"], "email": email,
                          "matched_by": "created"})
    schema = state["id_map_new"].schema
    frame = pl.concat([state["id_map_new"], pl.DataFrame(extra, schema=schema)]) if extra else state["id_map_new"]
    return frame.drop_nulls(["contact_id", "location_id", "email"]).unique(["location_id", "contact_id"], keep="last")
