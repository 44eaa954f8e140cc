"""The data team's decisions on conflicts: imported from a filled-in conflicts.csv, turned into ops next run.

A run writes `conflicts.csv` (`contact_recon/engine/conflicts.py` CSV_COLUMNS: key, who the person is, field,
base, tinyemail, ghl, reason, since when it is open, the GHL link, and empty decision/value/note columns) for
what it would not decide. A person fills in `decision` (and `value` when the decision is `value`) and runs
`recon conflicts import FILE`:

| decision  | means                                              | value column        |
|-----------|----------------------------------------------------|---------------------|
| ghl       | GHL's value (at the next run) wins on both sides   | must be empty       |
| tinyemail | TinyEmail's value (at the next run) wins           | must be empty       |
| value     | this value on both sides                           | required            |
| skip      | leave it as it is (recorded, writes nothing)       | must be empty       |
| (blank)   | no decision yet: the row is left alone             | ignored             |

Pure: rows in, a checked `DecisionFile` or ops out; the file and the table are the store's
(`contact_recon/store/decisions.py`: `read_decisions` reads the CSV, `Decisions` keeps the table).
`check_columns` and `check_decisions` check the header and every row before anything is stored and name
the CSV line of each problem (unknown key or field, a bad decision, a missing or malformed value, the same
key and field twice); one bad row rejects the whole file. Keys are the person keys known to the caller
(base, a GHL contact id, `te:<email>`); fields are the shared text fields and `consent` (email changes go through
identity review; a conflict with an empty field is a presence conflict: a deleted or missing record,
settled in the systems themselves, so only skip/blank are accepted there, stored with the field `PRESENCE`).

Values come back the way the snapshot reads them: text trimmed and NFC, a phone in E.164 read in the
person's own country (`countries`: key -> country, the GHL contact's, else the TinyEmail customer's), else
the default region, so `07700 900006`, `+44 7700 900006` and `00447700900006` are one value for a UK
contact; a birthday as YYYY-MM-DD. A value that would fail a blocking check on the side it is written to is
refused with the check named (`PHONE_CHECKS`: `ghl_contacts.phone_e164`, `te_customers.phone_e164`), and so
is a `ghl` or `tinyemail` decision whose chosen value, as the row shows it, would fail the other side's
check: never accepted and then quarantined out of sight. An unassigned range (`phone_assigned`) only warns.

A `skip` also returns the row's values (`DecisionFile.skips`, engine/conflicts.py SKIPS): the conflict is
acknowledged as it is, and not reported again until one of its values or its reason changes. The store
upserts the decisions by (key, field) into `conflict_decisions` with `used_by_run` null: pending for the
next run.

`decision_ops` (pure) turns pending decisions into ops against the current sides (records.MERGE_SIDE):
for each side that holds the person and whose current value differs from the decided one, one write with
`expected` = that side's current value. A custom field (`custom:<fieldKey>`, model/custom_fields.py) is decided
like a text field (its values read from the sides' `custom`); choosing a side that holds no single value for it
(several pattern tags) copies nothing, and a decided value written to TinyEmail replaces every pattern tag.
Consent only tightens: a decision for a tight value (TinyEmail
unsubscribed/bounced/spam, GHL dnd) tightens each loose side with its own tight value; a decision for
a loose value is ignored, since it would loosen a tight side or write nothing allowed.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from contact_recon.engine.conflicts import PRESENCE, SKIPS
from contact_recon.model.custom_fields import HELD, is_custom, loads, merge_text, name_of
from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.normalise import normalise_birthday, normalise_email, normalise_phone
from contact_recon.model.ops import CONFLICTS_SCHEMA, CONTENT_COLUMNS, Kind, sort_ops, with_ids
from contact_recon.model.policy import ConsentPolicy
from contact_recon.model.records import CONSENT_VALUES, SHARED_TEXT_FIELDS

CHOICES = ("ghl", "tinyemail", "value", "skip")
CONSENT = "consent"
DECIDABLE_FIELDS: tuple[str, ...] = (*(f for f in SHARED_TEXT_FIELDS if f != "email"), CONSENT)
DECISIONS = pl.Schema({"key": pl.String(), "field": pl.String(), "choice": pl.String(), "value": pl.String()})
REQUIRED_COLUMNS = (*CONFLICTS_SCHEMA, "decision")
PHONE_CHECKS = {"ghl": "ghl_contacts.phone_e164", "tinyemail": "te_customers.phone_e164"}  # checks/suites.py
NOT_A_PHONE = "not a phone number"  # normalise_phone's reason for a text phone_e164 fails on
MAX_PROBLEMS = 50  # problems listed before "... and N more"
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class DecisionFileError(Exception):
    """A decisions file that cannot be imported; `problems` name the CSV line of each bad row."""

    def __init__(self, path: Path, problems: list[str]):
        shown = problems[:MAX_PROBLEMS] + ([f"... and {len(problems) - MAX_PROBLEMS} more"]
                                            if len(problems) > MAX_PROBLEMS else [])
        super().__init__(f"{path}: nothing imported, {len(problems)} problem(s):\n" + "\n".join(shown))
        self.problems = problems


@dataclass(frozen=True)
class DecisionFile:
    decisions: pl.DataFrame  # DECISIONS, one row per decided (key, field)
    undecided: int  # rows with a blank decision, left alone
    rows: int  # data rows read
    # SKIPS: the conflicts acknowledged as they are (the rows answered skip)
    skips: pl.DataFrame = dataclasses.field(default_factory=lambda: pl.DataFrame(schema=SKIPS))


# ----------------------------------------------------------------------------------------- checking


def check_columns(path: Path, columns: Sequence[str] | None) -> None:
    """DecisionFileError unless the header of the file at `path` has every column a decisions file needs."""
    missing = [c for c in REQUIRED_COLUMNS if c not in (columns or [])]
    if missing:
        raise DecisionFileError(path, [f"line 1: missing column(s) {', '.join(missing)} (the columns of "
                                       f"conflicts.csv plus decision, and value)"])


def check_decisions(path: Path, rows: Iterable[tuple[int, dict[str, Any]]], known_keys: Iterable[str], *,
                    default_region: str = "US", countries: Mapping[str, str | None] | None = None) -> DecisionFile:
    """Check the rows of a filled-in conflicts.csv (`(line, row)` pairs as csv.DictReader reads them; `path`
    only names the file in messages; `countries`: each key's country, for phones); DecisionFileError (every
    bad line named) if any row is bad."""
    known, rows = set(known_keys), list(rows)
    problems: list[str] = []
    decided: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    skips: list[dict[str, Any]] = []
    for line, row in rows:
        region = (countries or {}).get(_text(row.get("key")) or "") or ""
        decision = _check_row(line, row, known, (region, default_region), problems)
        if decision is None:
            continue
        where = (decision["key"], decision["field"])
        if where in decided:
            problems.append(f"line {line}: {where[0]} {where[1]} was already decided on line {decided[where][0]}")
        decided[where] = (line, decision)
        if decision["choice"] == "skip":
            skips.append({**{c: _text(row.get(c)) for c in SKIPS}, "key": decision["key"], "field": decision["field"]})
    if problems:
        raise DecisionFileError(path, problems)
    frame = pl.DataFrame([d for _, d in decided.values()], schema=DECISIONS)
    return DecisionFile(frame, sum(1 for _, r in rows if not _text(r.get("decision"))), len(rows),
                        pl.DataFrame(skips, schema=SKIPS).unique(["key", "field"], keep="last"))


def person_key(key: str | None) -> str | None:
    """A key as the store knows it: `te:<email>` with the email in any case or spacing is the normalised one
    (`normalise_email`, as the snapshot keys a TinyEmail customer); a contact id is left as it is."""
    if key is None or not key.lower().startswith(TE_KEY_PREFIX):
        return key
    email = key[len(TE_KEY_PREFIX):].strip()
    return TE_KEY_PREFIX + (normalise_email(email)[0] or email.lower())


def _check_row(line: int, row: dict[str, Any], known: set[str], region: tuple[str, str],
               problems: list[str]) -> dict[str, Any] | None:
    """The row's decision (DECISIONS columns), None when it has none; problems are appended."""
    choice, key, field = (_text(row.get(c)) for c in ("decision", "key", "field"))
    key = person_key(key)
    value = _text(row.get("value"))
    if choice is None:
        return None  # no decision yet: left alone
    choice = choice.lower()
    before = len(problems)
    if choice not in CHOICES:
        problems.append(f"line {line}: decision {choice!r} is not one of {', '.join(CHOICES)}")
    if key is None or key not in known:
        problems.append(f"line {line}: unknown key {key!r} (not a person this store knows)")
    if field is None:
        if choice != "skip":  # a presence conflict: settled in the systems, not by a value
            problems.append(f"line {line}: a conflict with no field (a deleted or missing record) takes only "
                            f"'skip' or a blank decision")
            return None
        # a deletion (or a missing record) acknowledged: recorded, no longer reported while it is unchanged
        field = PRESENCE
    elif field not in DECIDABLE_FIELDS and not is_custom(field):
        problems.append(f"line {line}: unknown field {field!r}; decidable: {', '.join(DECIDABLE_FIELDS)}")
    elif choice in CHOICES:
        value = _check_value(line, choice, field, value, region, problems)
        _check_chosen(line, choice, field, row, region, problems)
    return {"key": key, "field": field, "choice": choice, "value": value} if len(problems) == before else None


def _check_value(line: int, choice: str, field: str, value: str | None, region: tuple[str, str],
                 problems: list[str]) -> str | None:
    """The value to store for a decision (normalised like the snapshot does), problems appended."""
    if choice != "value":
        if value is not None:
            problems.append(f"line {line}: a value is only read with decision 'value' (decision is {choice!r})")
        return None
    if value is None:
        problems.append(f"line {line}: decision 'value' needs a value")
        return None
    if field == "phone":
        e164, _, reason = normalise_phone(value, region[1], region[0])
        if reason == NOT_A_PHONE:
            # the check the write would meet on both sides: refused here, not quarantined later
            problems.append(f"line {line}: phone {value!r} is {NOT_A_PHONE}: it fails "
                            f"{', '.join(sorted(PHONE_CHECKS.values()))}")
        return e164
    if field == "birthday":
        day = normalise_birthday(value)
        if not (day and _ISO_DATE.match(day)):
            problems.append(f"line {line}: birthday {value!r} is not a date (YYYY-MM-DD)")
        return day
    if field == CONSENT and value.lower() not in CONSENT_VALUES:
        problems.append(f"line {line}: consent {value!r} is not one of {', '.join(CONSENT_VALUES)}")
    return value.lower() if field == CONSENT else value


def _check_chosen(line: int, choice: str, field: str, row: dict[str, Any], region: tuple[str, str],
                  problems: list[str]) -> None:
    """A `ghl` / `tinyemail` decision copies the chosen side's value (as the row shows it) to the other side:
    refused when that value would fail the other side's blocking check."""
    if field != "phone" or choice not in PHONE_CHECKS:
        return  # only phones have a value check on the way in (consent only tightens, names are free text)
    shown = _text(row.get(choice))
    if shown is None:
        return  # a blank clears the other side: nothing to check
    _, _, reason = normalise_phone(shown, region[1], region[0])
    other = "tinyemail" if choice == "ghl" else "ghl"
    if reason == NOT_A_PHONE:
        problems.append(f"line {line}: decision {choice!r} would write phone {shown!r} to {other}, which fails "
                        f"{PHONE_CHECKS[other]} ({NOT_A_PHONE}); decide 'value' with a phone number instead")


def _text(value: object) -> str | None:
    """Trimmed NFC text, None when absent or blank (csv gives None for a short row)."""
    if not isinstance(value, str):
        return None
    return unicodedata.normalize("NFC", value).strip() or None


# --------------------------------------------------------------------------------------------- ops


def decision_ops(decisions: pl.DataFrame, te_side: pl.DataFrame, ghl_side: pl.DataFrame, *,
                 consent: ConsentPolicy | None = None) -> pl.DataFrame:
    """The ops that carry out decisions (ops.OPS_SCHEMA, plan order); see the module docstring.

    Args:
        decisions: DECISIONS rows (key, field, choice, value).
        te_side, ghl_side: records.MERGE_SIDE frames keyed by `key` (the sides now).
        consent: which consent values are tight and what each side writes (default: ConsentPolicy()).
    """
    policy = consent or ConsentPolicy()
    keys = decisions["key"].unique().implode()
    te = {row["key"]: row for row in te_side.filter(pl.col("key").is_in(keys)).iter_rows(named=True)}
    ghl = {row["key"]: row for row in ghl_side.filter(pl.col("key").is_in(keys)).iter_rows(named=True)}
    ops: list[dict[str, str | None]] = []
    for d in decisions.iter_rows(named=True):
        sides = {"tinyemail": te.get(d["key"]), "ghl": ghl.get(d["key"])}
        ops += _consent_ops(d, sides, policy) if d["field"] == CONSENT else _field_ops(d, sides)
    frame = pl.DataFrame(ops, schema={c: pl.String() for c in CONTENT_COLUMNS})
    return sort_ops(with_ids(frame))


def _wanted(d: dict[str, Any], sides: dict[str, dict[str, Any] | None]) -> tuple[bool, str | None]:
    """(decided?, the decided value) of one decision, against the sides now."""
    if d["choice"] == "value":
        return True, _text(d["value"])
    if d["choice"] in ("ghl", "tinyemail"):
        chosen = sides[d["choice"]]
        if chosen is None:
            return False, None  # the chosen side no longer holds the person: nothing to copy from
        value = _side_value(chosen, d["field"])
        # a custom field value that has no single value there (several pattern tags, unresolved): nothing to copy
        return not (value or "").startswith(HELD), value
    return False, None  # skip (or anything else): nothing to write


def _side_value(row: dict[str, Any], field: str) -> str | None:
    """A side's current value of a field; a custom field's (`custom:<fieldKey>`) from its `custom` values, as the
    merge compares it (model/custom_fields.py)."""
    if is_custom(field):
        return _text(merge_text(loads(row.get("custom")).get(name_of(field))))
    return _text(row[field])


def _field_ops(d: dict[str, Any], sides: dict[str, dict[str, Any] | None]) -> list[dict[str, str | None]]:
    decided, wanted = _wanted(d, sides)
    if not decided or (d["field"] not in DECIDABLE_FIELDS and not is_custom(d["field"])):
        return []  # skipped, nothing to copy, or a field no decision may write (email: identity review)
    ops = []
    for target, row in sides.items():
        if row is None:
            continue  # the person is not on this side: there is nothing to update
        current = _side_value(row, d["field"])
        if current == wanted:
            continue  # this side already holds the decided value
        ops.append(_op(target, Kind.UPDATE, d, current, wanted))
    return ops


def _consent_ops(d: dict[str, Any], sides: dict[str, dict[str, Any] | None],
                 policy: ConsentPolicy) -> list[dict[str, str | None]]:
    decided, wanted = _wanted(d, sides)
    tight = {"tinyemail": policy.tinyemail_tight, "ghl": policy.ghl_tight}
    new = {"tinyemail": policy.tinyemail_tight_value, "ghl": policy.ghl_tight_value}
    if not decided or wanted not in (*policy.tinyemail_tight, *policy.ghl_tight):
        return []  # skipped, or a loose value: writing it would loosen consent, which never happens
    ops = []
    for target, row in sides.items():
        if row is None:
            continue  # the person is not on this side
        current = _text(row[CONSENT])
        if current in tight[target]:
            continue  # already tight on this side: nothing to tighten (and never loosened)
        ops.append(_op(target, Kind.CONSENT_TIGHTEN, d, current, new[target]))
    return ops


def _op(target: str, kind: Kind, d: dict[str, Any], expected: str | None, new: str | None) -> dict[str, str | None]:
    return {"target": target, "kind": kind.value, "key": d["key"], "field": d["field"], "expected": expected,
            "new": new, "reason": f"decided_{d['choice']}"}
