"""Normalisation: the pure value normalisers and row helpers behind the canonical rows of model/records.py.

Pure functions, no I/O. Every value that fails normalisation is kept (trimmed) and flagged, never
dropped; only an absent value becomes None.

Emails (`normalise_email`) are a *matching key*, not a display value:
1. trim surrounding whitespace (Unicode whitespace included) and NFC-normalise;
2. validate with email-validator, `check_deliverability=False` (syntax only, never the network);
3. the domain in its Unicode (U-label) form, lower-cased: `user@xn--bcher-kva.example` and
   `user@Bücher.example` both become `user@bücher.example`. The Unicode form is chosen because an
   internationalised local part (`ünï@…`) has no ASCII form at all, so only it covers every address;
4. the local part lower-cased too. RFC 5321 allows case-sensitive local parts, but neither system
   treats `Bob@x.com` and `bob@x.com` as different people; the raw value stays in `email_raw`.
An invalid address gives the trimmed, lower-cased text as its key with `valid=False`, so the same
bad address held by both systems still pairs up, and the reason is kept for the hygiene report.

Phones (`normalise_phone`): parsed with `phonenumbers` in the record's own country when it is a
known region, then in the configured default region; a number written with the `00` international
prefix is retried as `+…`. A parseable number of a possible length is given in E.164, and
`valid` says whether phonenumbers also considers it assigned (`is_valid_number`); text that is not
a phone number at all is kept trimmed with `valid=False`.

Every normaliser returns `(value | None, valid, reason | None)`; a missing value is
`(None, False, "missing")`.

Rows: each system's `mapping.py` (`systems/ghl/mapping.py`, `systems/tinyemail/mapping.py`) maps one API
payload to one canonical row (GHL_CONTACTS / TINYEMAIL_CUSTOMERS / GHL_TASKS / GHL_NOTES) with the helpers
here, which know a system only by the name map it hands in (`model/records.py` GHL_FIELD_NAMES /
TINYEMAIL_FIELD_NAMES): `person_columns` gives the shared person columns (text fields trimmed, empty ->
None; tags sorted unique trimmed strings; birthdays `YYYY-MM-DD` when readable, GHL search answers give
epoch ms), `finish_row` adds `raw`, the payload as JSON with sorted keys, and `content_hash`, the sha256 of
the row's canonical columns (everything except `raw`, `content_hash`, the `*_raw`/`*_valid` columns and
the API's own timestamps), so a hash changes exactly when something the sync compares changes. Keeping
them here, below `systems/`, is what lets a third system's mapping build the same rows.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import phonenumbers
import polars as pl
from email_validator import EmailNotValidError, validate_email

from contact_recon.model.records import SHARED_TEXT_FIELDS

Normalised = tuple[str | None, bool, str | None]

MISSING = "missing"
_CACHE_SIZE = 1 << 18
_NOT_HASHED = ("raw", "content_hash", "email_raw", "email_valid", "phone_raw", "phone_valid", "date_added",
               "date_updated")
_DATE_FORMS = (  # GHL's documented dateOfBirth forms, year first or month first, any of - / . _
    re.compile(r"^(?P<y>\d{4})[-/._](?P<m>\d{1,2})[-/._](?P<d>\d{1,2})$"),
    re.compile(r"^(?P<m>\d{1,2})[-/._](?P<d>\d{1,2})[-/._](?P<y>\d{4})$"),
)
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T")


# ------------------------------------------------------------------------------------ single values


def normalise_email(raw: object) -> Normalised:
    """The matching key of an email address: `(key | None, valid, reason | None)`; never raises."""
    text = clean_text(raw)
    if text is None:
        return None, False, MISSING if raw is None or isinstance(raw, str) else "not a string"
    return _email_key(text)


@lru_cache(maxsize=_CACHE_SIZE)
def _email_key(text: str) -> Normalised:
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as error:
        return _lower(text), False, str(error)
    return _lower(f"{result.local_part}@{result.domain}"), True, None


def normalise_phone(raw: object, default_region: str = "US", country: object = None) -> Normalised:
    """A phone number in E.164: `(e164 | trimmed text | None, valid, reason | None)`; never raises.

    A national number is read in the record's `country` first (when phonenumbers knows it as a
    region), then in `default_region`.
    """
    text = clean_text(raw)
    if text is None:
        return None, False, MISSING if raw is None or isinstance(raw, str) else "not a string"
    code = country.strip().upper() if isinstance(country, str) else ""
    first = code if code in phonenumbers.SUPPORTED_REGIONS else default_region
    return _phone_key(text, first, default_region)


def phone_region(e164: object) -> str | None:
    """The country (region code) of a number in E.164, None when it is not one."""
    if not isinstance(e164, str) or not e164.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    # the number's own region, else the main region of its country code (an unassigned range has no region)
    region = phonenumbers.region_code_for_number(number) or phonenumbers.region_code_for_country_code(
        number.country_code or 0)
    return region if region in phonenumbers.SUPPORTED_REGIONS else None


@lru_cache(maxsize=_CACHE_SIZE)
def _phone_key(text: str, region: str, default_region: str) -> Normalised:
    number = _parse_phone(text, region) or (_parse_phone(text, default_region) if region != default_region else None)
    if number is None:
        return text, False, "not a phone number"
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(number):
        return e164, False, "not an assigned number"
    return e164, True, None


def _parse_phone(text: str, region: str) -> phonenumbers.PhoneNumber | None:
    """The parsed number if it has a possible length; `00…` is retried as `+…` (the common intl prefix)."""
    candidates = [text] + ([f"+{text[2:]}"] if text.startswith("00") else [])
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(number):
            return number
    return None


def normalise_birthday(raw: object) -> str | None:
    """`YYYY-MM-DD` from epoch ms, an ISO date-time or a documented GHL date form; else the trimmed text."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            return datetime.fromtimestamp(raw / 1000, UTC).strftime("%Y-%m-%d")
        except (OverflowError, OSError, ValueError):  # NaN, infinity, beyond datetime's years: kept as text
            return clean_text(raw)
    text = clean_text(raw)
    if text is None:
        return None
    if _ISO_DATETIME.match(text):
        return text[:10]
    for form in _DATE_FORMS:
        if (m := form.match(text)) and _is_date(int(m["y"]), int(m["m"]), int(m["d"])):
            return f"{int(m['y']):04d}-{int(m['m']):02d}-{int(m['d']):02d}"
    return text


def _is_date(y: int, m: int, d: int) -> bool:
    try:
        datetime(y, m, d)
    except ValueError:
        return False
    return True


def normalise_tags(raw: object) -> list[str]:
    """Sorted unique trimmed tag strings; anything that is not a list of strings gives []."""
    if not isinstance(raw, list | tuple):
        return []
    return sorted({t.strip() for t in raw if isinstance(t, str) and t.strip()})


def _lower(text: str) -> str:
    """Lower-cased and NFC again (lower-casing can decompose, e.g. "İ")."""
    return unicodedata.normalize("NFC", text.lower())


def clean_text(raw: object) -> str | None:
    """Trimmed NFC text, None when absent or blank; numbers are taken as their text."""
    if type(raw) is str and raw.isascii():  # the common case, already NFC
        return raw.strip() or None
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int | float):
        raw = str(raw)
    if not isinstance(raw, str):
        return None
    text = unicodedata.normalize("NFC", raw).strip()
    return text or None


# --------------------------------------------------------------------------------------------- rows


def person_columns(payload: Mapping[str, Any], names: Mapping[str, str], region: str) -> dict[str, Any]:
    """The shared person columns (records.py vocabulary) of one payload, with raw values and flags; `names` maps
    each canonical field to the payload's own name (records.py GHL_FIELD_NAMES, TINYEMAIL_FIELD_NAMES)."""
    row: dict[str, Any] = {f: clean_text(payload.get(names[f])) for f in SHARED_TEXT_FIELDS}
    row["email_raw"], row["phone_raw"] = _raw_text(payload.get(names["email"])), _raw_text(payload.get(names["phone"]))
    row["email"], row["email_valid"], _ = normalise_email(row["email_raw"])
    row["phone"], row["phone_valid"], _ = normalise_phone(row["phone_raw"], region, row["country"])
    row["birthday"] = normalise_birthday(payload.get(names["birthday"]))
    row["tags"] = normalise_tags(payload.get(names["tags"]))
    return row


def _raw_text(value: object) -> str | None:
    """The value as the API gave it (untrimmed); numbers as text, other types as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict | bool) else str(value)


def finish_row(row: dict[str, Any], payload: Mapping[str, Any], schema: pl.Schema) -> dict[str, Any]:
    """The row with `raw` and `content_hash` added, its columns in the schema's order."""
    row["raw"] = raw_json(payload)
    row["content_hash"] = content_hash(row, schema)
    return {name: row.get(name) for name in _columns(schema)}


def raw_json(payload: Mapping[str, Any]) -> str:
    """The payload as compact JSON text with sorted keys (non-JSON values as their text)."""
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def content_hash(row: Mapping[str, Any], schema: pl.Schema) -> str:
    """sha256 (hex) of the row's canonical columns in schema order; stable across runs and processes."""
    values = [row.get(name) for name in _hashed_columns(schema)]
    text = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


_LAYOUTS: dict[int, tuple[pl.Schema, tuple[str, ...], tuple[str, ...]]] = {}


def _layout(schema: pl.Schema) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(all columns, hashed columns) of a schema, computed once per schema object (Schema is unhashable)."""
    entry = _LAYOUTS.get(id(schema))
    if entry is None or entry[0] is not schema:
        entry = (schema, tuple(schema), tuple(n for n in schema if n not in _NOT_HASHED))
        _LAYOUTS[id(schema)] = entry
    return entry[1], entry[2]


def _columns(schema: pl.Schema) -> tuple[str, ...]:
    return _layout(schema)[0]


def _hashed_columns(schema: pl.Schema) -> tuple[str, ...]:
    return _layout(schema)[1]


# ------------------------------------------------------------------------------------------- frames


def to_frame(rows: Iterable[Mapping[str, Any]], schema: pl.Schema) -> pl.DataFrame:
    """Rows (dicts, e.g. from the record builders) as a frame of exactly `schema`'s columns and types."""
    rows = rows if isinstance(rows, list) else list(rows)
    columns = {name: [row.get(name) for row in rows] for name in _columns(schema)}
    return pl.DataFrame(columns, schema=schema)
