"""Seeded fixture generator: a realistic GHL account and TinyEmail audience in the FORMAT.md shape.

Algorithm (everything drawn from `random.Random` streams seeded from `seed`, so the same arguments give
byte-identical JSON; no wall clock is read):
1. Placement. `contacts` distinct people are split exactly: `round(contacts * overlap)` live in both
   systems, the rest alternate between GHL-only and TinyEmail-only; the order is shuffled.
2. Awkward kinds. `round(contacts * awkward)` people are given one awkward kind, spread evenly over
   AWKWARD_KINDS (each kind drawn only from people whose placement allows it, e.g. `no_email` only from
   GHL-only people, `unsubscribed` only from people in TinyEmail). `ghl_duplicate` is only generated
   when `allow_duplicates` is set (the location then allows duplicates).
3. People. Each person gets a name, a unique lower-case email, a unique phone (US numbers built from a
   bijective map of the person index, so no two people share one), a company, a city and tags; from it
   come a GHL contact and/or a TinyEmail customer, and its awkward kind then alters those records.
4. GHL contacts are spread over `locations` locations (one token each); tasks and notes are drawn per
   location from that location's contacts, dated around a base date derived from the seed.
5. TinyEmail lists: every customer belongs to at least one list (TinyEmail can only be read through
   its lists), some to more.
6. `_meta` records the generator arguments, the base date and, per awkward kind, the affected emails
   (lower-case) or GHL ids (for kinds that only make sense on a GHL record).
Credentials are derived from the seed and look fake on purpose ("sbx-ghl-...", "sbx-te-...").
"""

from __future__ import annotations

import json
import os
import random
import string
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contact_recon.sandbox.common import DAY_S
from contact_recon.systems.ghl.contract import REQUIRED_SCOPES

BASE_EPOCH = 1_767_268_800  # 2026-01-01T12:00:00Z; the base date is this plus (seed % 366) days
LONG_NOTE_SHARE = 0.01
LONG_NOTE_MAX = 5_000
TASK_COMPLETED_SHARE = 0.3
_ALNUM = string.ascii_letters + string.digits

# --- vocabularies ------------------------------------------------------------------------------------

FIRST_NAMES = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William", "Elizabeth",
    "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen",
    "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Betty", "Mark", "Sandra", "Steven", "Ashley",
    "Andrew", "Emily", "Joshua", "Michelle", "Kevin", "Amanda", "Brian", "Melissa", "George", "Laura",
    "Oliver", "Amelia", "Harry", "Isla", "Jack", "Ava", "Noah", "Mia", "Leo", "Grace", "Ethan", "Chloe",
    "Lucas", "Zoe", "Ryan", "Hannah", "Aaron", "Nora", "Caleb", "Ruby",
)
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson",
    "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis",
    "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores",
    "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts",
    "O'Brien", "Murphy", "Evans", "Turner", "Parker", "Collins", "Edwards", "Stewart", "Morris", "Cook",
)
# (first, last, first romanised, last romanised): Cyrillic, CJK, Hangul, Arabic, accented Latin.
NON_LATIN_NAMES = (
    ("Иван", "Петров", "ivan", "petrov"), ("Ольга", "Смирнова", "olga", "smirnova"),
    ("Дмитрий", "Кузнецов", "dmitry", "kuznetsov"), ("Анна", "Соколова", "anna", "sokolova"),
    ("太郎", "山田", "taro", "yamada"), ("美咲", "佐藤", "misaki", "sato"), ("伟", "王", "wei", "wang"),
    ("静", "李", "jing", "li"), ("秀英", "张", "xiuying", "zhang"), ("민준", "김", "minjun", "kim"),
    ("محمد", "العلي", "mohammed", "alali"), ("فاطمة", "حسن", "fatima", "hassan"),
    ("يوسف", "الخطيب", "yousef", "alkhatib"), ("José", "Muñoz", "jose", "munoz"),
    ("François", "Lefèvre", "francois", "lefevre"), ("Łukasz", "Wójcik", "lukasz", "wojcik"),
    ("Björn", "Öberg", "bjorn", "oberg"), ("Zoë", "Brontë", "zoe", "bronte"),
    ("Ángela", "Pérez", "angela", "perez"), ("Çağla", "Yılmaz", "cagla", "yilmaz"),
    ("Søren", "Kjærgaard", "soren", "kjaergaard"), ("Thị Hương", "Nguyễn", "thihuong", "nguyen"),
)
DOMAINS = (
    "example.com", "example.org", "example.net", "mail.example.com", "inbox.example.org",
    "post.example.net", "customers.example.com", "webmail.example.org",
)
_COMPANY_HEADS = ("Bright", "North", "Blue", "Summit", "Cedar", "Harbor", "Pioneer", "Silver", "Evergreen",
                  "Atlas", "Golden", "Maple", "River", "Stone", "Iron", "Oak", "Coastal", "Prairie")
_COMPANY_TAILS = ("Labs", "Dental", "Realty", "Fitness", "Consulting", "Logistics", "Bakery", "Studio",
                  "Partners", "Roofing", "Insurance", "Marketing", "Law Group", "Plumbing", "Auto Repair",
                  "Landscaping", "Yoga", "Coffee Co.")
COMPANIES = tuple(f"{h} {t}{s}" for h in _COMPANY_HEADS for t in _COMPANY_TAILS
                  for s in ("", " LLC", " Inc."))
# (city, country, US area code or None for a non-US city)
CITIES = (
    ("San Francisco", "US", "415"), ("Austin", "US", "512"), ("Denver", "US", "303"),
    ("Chicago", "US", "312"), ("Miami", "US", "305"), ("Seattle", "US", "206"), ("Boston", "US", "617"),
    ("Phoenix", "US", "602"), ("Atlanta", "US", "404"), ("New York", "US", "212"),
    ("Los Angeles", "US", "213"), ("Portland", "US", "503"), ("Nashville", "US", "615"),
    ("San Diego", "US", "619"), ("Dallas", "US", "214"), ("London", "GB", None),
    ("Manchester", "GB", None), ("Toronto", "CA", "416"), ("Vancouver", "CA", "604"),
    ("Sydney", "AU", None), ("Berlin", "DE", None), ("Dublin", "IE", None),
)
GHL_TAGS = (
    "lead", "customer", "vip", "hot-lead", "cold-lead", "newsletter", "webinar-attendee", "facebook-ad",
    "google-ads", "referral", "trial", "churned", "ghl:imported", "ghl:form-submitted",
    "ghl:appointment-booked", "ghl:pipeline-won", "wholesale", "partner", "event-2026", "nurture",
    "follow-up",
)
TINYEMAIL_TAGS = (
    "newsletter", "list:promo", "list:weekly-digest", "list:product-updates", "black-friday",
    "cart-abandoner", "vip", "welcome-series", "purchased", "engaged", "re-engage", "customer",
)
SOURCES = ("form", "facebook", "import", "api", "manual", "zapier", "landing page", "chat widget")
TINYEMAIL_SOURCES = ("signup form", "import", "popup", "shopify", "api")
LIST_NAMES = ("Newsletter", "Customers", "Webinar attendees", "Leads 2026", "VIP", "Product updates",
              "Black Friday", "Wholesale", "Re-engagement", "Events")
TASK_TITLES = ("Call back", "Send proposal", "Follow up on quote", "Schedule demo", "Check in after purchase",
               "Confirm appointment", "Send contract", "Review onboarding", "Collect testimonial",
               "Renewal reminder", "Send invoice", "Book site visit")
SENTENCES = (
    "Called and left a voicemail.", "Spoke on the phone for about ten minutes.",
    "Interested in the premium plan but wants to compare prices first.",
    "Asked for a quote for the whole team.", "Prefers email over phone calls.",
    "Best time to reach is after 3pm on weekdays.", "Mentioned a competitor offered a discount.",
    "Came in through the spring webinar.", "Wants a demo next week.",
    "Budget approval expected at the end of the quarter.",
    "Had an issue with the last invoice, now resolved.",
    "Referred by an existing customer.", "Opened the last three newsletters.",
    "Requested a callback about the renewal.", "Not ready to buy yet, follow up in a month.",
    "Signed the contract and paid the deposit.", "Asked to be added to the product updates list.",
    "Complained about delivery times.", "Very happy with the onboarding session.",
    "Needs sign-off from their business partner.", "Booked an appointment through the website.",
    "Shared feedback on the new pricing page.", "Moved to a new office, address to be updated.",
    "Will attend the open day.", "Asked about the wholesale terms.",
)


# --- credentials, ids and dates ----------------------------------------------------------------------

def new_id(rng: random.Random, n: int = 20) -> str:
    """A GHL-style alphanumeric id."""
    return "".join(rng.choices(_ALNUM, k=n))


def fake_secret(rng: random.Random, prefix: str) -> str:
    """A sandbox credential: an obviously fake prefix and 32 hex digits."""
    return f"{prefix}{rng.getrandbits(128):032x}"


def base_epoch(seed: int) -> int:
    """The fixed base date of a seed (dates of tasks and notes are relative to it)."""
    return BASE_EPOCH + (seed % 366) * DAY_S


def iso(t: float) -> str:
    """ISO 8601 UTC with milliseconds and `Z` (the format of contact_recon.sandbox.common.iso_from_epoch)."""
    ms = round(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


# --- people ------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Person:
    """One distinct person and the records it gives each system."""

    index: int
    placement: str  # "both" | "ghl" | "tinyemail"
    kind: str | None  # awkward kind
    email: str = ""  # canonical: lower-case, no whitespace
    ghl: dict[str, Any] | None = None
    tinyemail: dict[str, Any] | None = None
    extra_ghl: list[dict[str, Any]] = field(default_factory=list)  # duplicates


def placements(n: int, overlap: float, rng: random.Random) -> list[str]:
    """Exactly round(n*overlap) "both"; the rest alternate GHL-only / TinyEmail-only; shuffled."""
    both = round(n * max(0.0, min(1.0, overlap)))
    rest = n - both
    out = ["both"] * both + ["ghl"] * ((rest + 1) // 2) + ["tinyemail"] * (rest // 2)
    rng.shuffle(out)
    return out


def assign_awkward(places: list[str], share: float, allow_duplicates: bool,
                   rng: random.Random) -> list[str | None]:
    """The awkward kind of each person (None for most): quotas spread evenly over the active kinds."""
    kinds = [k for k in AWKWARD_KINDS if allow_duplicates or k != "ghl_duplicate"]
    total = round(len(places) * max(0.0, min(1.0, share)))
    pools: dict[str, list[int]] = {"both": [], "ghl": [], "tinyemail": []}
    for i, place in enumerate(places):
        pools[place].append(i)
    for pool in pools.values():
        rng.shuffle(pool)
    out: list[str | None] = [None] * len(places)
    for k, kind in enumerate(kinds):
        quota = total // len(kinds) + (1 if k < total % len(kinds) else 0)
        for i in _draw(pools, AWKWARD_KINDS[kind][0], quota, rng):
            out[i] = kind
    return out


def _draw(pools: dict[str, list[int]], eligible: tuple[str, ...], quota: int,
          rng: random.Random) -> list[int]:
    """Take up to `quota` people from the eligible pools, each pick weighted by pool size."""
    taken = []
    for _ in range(quota):
        sizes = [(p, len(pools[p])) for p in eligible if pools[p]]
        if not sizes:
            break
        pick = rng.randrange(sum(s for _, s in sizes))
        for place, size in sizes:
            if pick < size:
                taken.append(pools[place].pop())
                break
            pick -= size
    return taken


class _Builder:
    """Builds the people's records; holds the seeded streams and the uniqueness sets."""

    def __init__(self, seed: int, locations: list[str]):
        self.rng = random.Random(f"{seed}:people")
        self.ids = random.Random(f"{seed}:ids")
        self.base = base_epoch(seed)
        self.locations = locations
        self.emails: set[str] = set()
        self.uk_counter = 0

    def person(self, index: int, placement: str, kind: str | None) -> Person:
        rng = self.rng
        if kind == "non_latin":
            first, last, a_first, a_last = rng.choice(NON_LATIN_NAMES)
        else:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            a_first, a_last = first, last
        p = Person(index, placement, kind)
        p.email = self.unique_email(a_first, a_last)
        city, country, area = rng.choice(CITIES)
        phone = us_phone(index, area or rng.choice(("415", "312", "212")))
        company = rng.choice(COMPANIES) if rng.random() < 0.6 else None
        base = {"firstName": first, "lastName": last, "email": p.email, "phone": phone, "city": city,
                "country": country}
        if placement != "tinyemail":
            p.ghl = self.ghl_contact(base, company)
        if placement != "ghl":
            p.tinyemail = self.te_customer(base, company)
        return p

    def unique_email(self, first: str, last: str) -> str:
        rng = self.rng
        f = "".join(c for c in first.lower() if c.isalnum())
        la = "".join(c for c in last.lower() if c.isalnum())
        style = rng.randrange(5)
        styles = (f"{f}.{la}", f"{f}{la}", f"{f[0]}{la}", f"{f}_{la}", f"{f}.{la}{rng.randrange(10, 99)}")
        local = styles[style]
        email = f"{local}@{rng.choice(DOMAINS)}"
        while email in self.emails:
            email = f"{local}{rng.randrange(100, 9999)}@{rng.choice(DOMAINS)}"
        self.emails.add(email)
        return email

    def ghl_contact(self, base: dict[str, Any], company: str | None) -> dict[str, Any]:
        rng = self.rng
        added = self.base - rng.randrange(2 * 365 * DAY_S * 1000) / 1000
        updated = added + rng.randrange(1 + int((self.base - added) * 1000)) / 1000
        contact = {"id": new_id(self.ids), "locationId": rng.choice(self.locations), **base,
                   "tags": sample_tags(rng, GHL_TAGS, 4), "dnd": False, "source": rng.choice(SOURCES),
                   "dateAdded": iso(added), "dateUpdated": iso(updated)}
        if company:
            contact["companyName"] = company
        if rng.random() < 0.08:
            del contact["phone"]
        return contact

    def te_customer(self, base: dict[str, Any], company: str | None) -> dict[str, Any]:
        rng = self.rng
        customer = {**base, "status": "Subscribed", "tags": sample_tags(rng, TINYEMAIL_TAGS, 3),
                    "source": rng.choice(TINYEMAIL_SOURCES)}
        if company and rng.random() < 0.8:
            customer["company"] = company
        if rng.random() < 0.4:
            del customer["phone"]
        return customer


def sample_tags(rng: random.Random, vocabulary: tuple[str, ...], most: int) -> list[str]:
    return rng.sample(vocabulary, rng.randrange(most + 1))


def us_phone(index: int, area: str) -> str:
    """A unique E.164 US number: the subscriber part is a bijection of the index (for < 8M people)."""
    sub = 2_000_000 + (index * 7919) % 8_000_000
    return f"+1{area}{sub}"


# --- awkward kinds -----------------------------------------------------------------------------------

def _awk_email_case(b: _Builder, p: Person) -> str:
    """Same email, different case/whitespace: mostly on the GHL side, sometimes on TinyEmail's."""
    local, domain = p.email.split("@")
    head, _, tld = domain.rpartition(".")
    cap_local = ".".join(part.capitalize() for part in local.split("."))
    variants = (f" {cap_local}@{head.capitalize()}.{tld.upper()} ", f"{local.upper()}@{domain}",
                f"{cap_local}@{domain}  ", f"  {local}@{domain.upper()}")
    variant = b.rng.choice(variants)
    if p.tinyemail is not None and b.rng.random() < 0.25:
        p.tinyemail["email"] = variant.strip()
    else:
        p.ghl["email"] = variant  # type: ignore[index]
    return p.email


def _awk_phone_format(b: _Builder, p: Person) -> str:
    """One number in several formats (US national/international, or a UK number with 00/0 prefixes)."""
    rng = b.rng
    if rng.random() < 0.5:
        digits = (p.ghl or p.tinyemail or {}).get("phone") or us_phone(p.index, "415")
        area, exch, line = digits[2:5], digits[5:8], digits[8:]
        formats = [f"({area}) {exch}-{line}", f"+1 {area} {exch} {line}", f"{area}.{exch}.{line}",
                   f"1-{area}-{exch}-{line}"]
    else:
        b.uk_counter += 1
        n = f"9{b.uk_counter % 100_000:05d}"
        formats = [f"00447700{n}", f"07700 {n}", f"+44 7700 {n}", f"+447700{n}"]
    rng.shuffle(formats)
    for record, fmt in zip((p.ghl, p.tinyemail), formats, strict=False):
        if record is not None:
            record["phone"] = fmt
    return p.email


INVALID_EMAIL_FORMS = ("{l}@@example", "{l}.example.com", "{l}@localhost", "{l}@example", "{l}@example..com")


def _awk_invalid_email(b: _Builder, p: Person) -> str:
    """An email that is not a valid address, kept as given in every system that holds the person."""
    local = p.email.split("@")[0].replace("_", ".")
    bad = b.rng.choice(INVALID_EMAIL_FORMS).format(l=local)
    while bad.lower() in b.emails:
        bad = b.rng.choice(INVALID_EMAIL_FORMS).format(l=f"{local}{b.rng.randrange(100, 9999)}")
    b.emails.add(bad.lower())
    for record in (p.ghl, p.tinyemail):
        if record is not None:
            record["email"] = bad
    return bad


def _awk_no_email(b: _Builder, p: Person) -> str:
    """A GHL contact without an email (it can have no TinyEmail counterpart)."""
    assert p.ghl is not None  # only people in GHL are picked for this case
    del p.ghl["email"]
    return str(p.ghl["id"])


def _awk_ghl_duplicate(b: _Builder, p: Person) -> str:
    """A second GHL contact with the same email, added later, with a shorter name and no phone."""
    dup = dict(p.ghl)  # type: ignore[arg-type]
    dup.update({"id": new_id(b.ids), "firstName": dup["firstName"][:3], "source": "import",
                "tags": sample_tags(b.rng, GHL_TAGS, 2), "dateAdded": dup["dateUpdated"]})
    dup.pop("phone", None)
    p.extra_ghl.append(dup)
    return dup["id"]


def _status(status: str) -> Callable[[_Builder, Person], str]:
    def apply(b: _Builder, p: Person) -> str:
        p.tinyemail["status"] = status  # type: ignore[index]
        if status == "Unsubscribed":
            p.tinyemail["unsubscribedAt"] = iso(b.base - b.rng.randrange(300 * DAY_S))  # type: ignore[index]
        return p.email
    apply.__doc__ = f"A TinyEmail customer with status {status}."
    return apply


def _awk_dnd(b: _Builder, p: Person) -> str:
    """Do-not-disturb in GHL: everything (dnd true) or email only, active or permanent."""
    email_status = "permanent" if b.rng.random() < 0.2 else "active"
    p.ghl["dnd"] = b.rng.random() < 0.5  # type: ignore[index]
    p.ghl["dndSettings"] = {"Email": {"status": email_status}}  # type: ignore[index]
    return p.ghl["id"]  # type: ignore[index]


def _awk_non_latin(b: _Builder, p: Person) -> str:
    """The name itself was drawn from NON_LATIN_NAMES; nothing else changes."""
    return p.email


_ANY = ("both", "ghl", "tinyemail")
_IN_GHL = ("both", "ghl")
_IN_TE = ("both", "tinyemail")
# kind -> (placements it may be drawn from, how it alters the records; returns the email or id to record)
AWKWARD_KINDS: dict[str, tuple[tuple[str, ...], Callable[[_Builder, Person], str]]] = {
    "email_case_whitespace": (("both",), _awk_email_case),
    "phone_format": (_ANY, _awk_phone_format),
    "invalid_email": (_ANY, _awk_invalid_email),
    "no_email": (("ghl",), _awk_no_email),
    "ghl_duplicate": (_IN_GHL, _awk_ghl_duplicate),
    "unsubscribed": (_IN_TE, _status("Unsubscribed")),
    "bounced": (_IN_TE, _status("Bounced")),
    "spam": (_IN_TE, _status("Spam")),
    "dnd": (_IN_GHL, _awk_dnd),
    "non_latin": (_ANY, _awk_non_latin),
}


# --- tasks, notes, lists -----------------------------------------------------------------------------

def make_tasks(rng: random.Random, ids: random.Random, contacts: list[dict[str, Any]], count: int,
               users: list[str], base: int) -> list[dict[str, Any]]:
    tasks = []
    for _ in range(count if contacts else 0):
        contact = rng.choice(contacts)
        title = rng.choice(TASK_TITLES)
        name = contact.get("firstName") or "contact"
        tasks.append({"id": new_id(ids), "contactId": contact["id"], "title": f"{title}: {name}",
                      "body": " ".join(rng.sample(SENTENCES, rng.randrange(1, 3))),
                      "dueDate": iso(base + rng.randrange(-30 * 24, 60 * 24) * 3600),
                      "completed": rng.random() < TASK_COMPLETED_SHARE, "assignedTo": rng.choice(users)})
    return tasks


def make_notes(rng: random.Random, ids: random.Random, contacts: list[dict[str, Any]], count: int,
               users: list[str], base: int) -> list[dict[str, Any]]:
    notes = []
    for _ in range(count if contacts else 0):
        contact = rng.choice(contacts)
        notes.append({"id": new_id(ids), "contactId": contact["id"], "body": note_body(rng),
                      "userId": rng.choice(users), "dateAdded": iso(base - rng.randrange(365 * DAY_S))})
    return notes


def note_body(rng: random.Random) -> str:
    """Usually one to four sentences; about 1% are long call logs of up to LONG_NOTE_MAX characters."""
    if rng.random() < LONG_NOTE_SHARE:
        body = " ".join(rng.choices(SENTENCES, k=rng.randrange(20, 110)))
        return body[:LONG_NOTE_MAX]
    return " ".join(rng.sample(SENTENCES, rng.randrange(1, 5)))


def list_name(i: int) -> str:
    name = LIST_NAMES[i % len(LIST_NAMES)]
    return name if i < len(LIST_NAMES) else f"{name} {i // len(LIST_NAMES) + 1}"


def make_lists(rng: random.Random, customers: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` lists; each customer joins one list (skewed to the first) and each other one at 20%."""
    lists: list[dict[str, Any]] = [
        {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "name": list_name(i), "members": []}
        for i in range(count)]
    if not lists:
        return lists
    weights = [1.0 / (i + 1) for i in range(count)]
    for customer in customers:
        home = rng.choices(range(count), weights)[0]
        for i, lst in enumerate(lists):
            if i == home or rng.random() < 0.2:
                lst["members"].append(customer["email"])
    return lists


# --- assembly ----------------------------------------------------------------------------------------

def generate_fixture(contacts: int, *, seed: int = 0, overlap: float = 0.7, tasks_per_contact: float = 0.5,
                     notes_per_contact: float = 1.0, awkward: float = 0.05, locations: int = 1,
                     allow_duplicates: bool = False, lists: int = 3) -> dict[str, Any]:
    """Generate a fixture (FORMAT.md shape plus `_meta`) for `contacts` distinct people.

    Args:
        contacts: number of distinct people across both systems.
        seed: seeds every random stream and the base date; same arguments give identical output.
        overlap: share of people present in both systems; the rest split between GHL-only and
            TinyEmail-only.
        tasks_per_contact, notes_per_contact: average GHL tasks/notes per GHL contact.
        awkward: share of people given one awkward kind (see AWKWARD_KINDS).
        locations: number of GHL locations (one sandbox token each).
        allow_duplicates: the locations allow duplicate contacts; enables the `ghl_duplicate` kind.
        lists: number of TinyEmail lists.
    """
    cred = random.Random(f"{seed}:credentials")
    loc_ids = [new_id(cred) for _ in range(max(1, locations))]
    builder = _Builder(seed, loc_ids)
    places = placements(contacts, overlap, random.Random(f"{seed}:placement"))
    kinds = assign_awkward(places, awkward, allow_duplicates, random.Random(f"{seed}:awkward"))
    people = [builder.person(i, places[i], kinds[i]) for i in range(contacts)]
    meta_awkward: dict[str, list[str]] = {k: [] for k in AWKWARD_KINDS
                                          if allow_duplicates or k != "ghl_duplicate"}
    for p in people:
        if p.kind is not None:
            meta_awkward[p.kind].append(AWKWARD_KINDS[p.kind][1](builder, p))
    return {
        "ghl": _ghl_part(seed, cred, loc_ids, people, builder, tasks_per_contact, notes_per_contact,
                         allow_duplicates),
        "tinyemail": _tinyemail_part(seed, cred, people, lists),
        "_meta": {"generator": "contact_recon.sandbox.generate", "seed": seed, "baseDate": iso(builder.base),
                  "args": {"contacts": contacts, "overlap": overlap, "tasks_per_contact": tasks_per_contact,
                           "notes_per_contact": notes_per_contact, "awkward": awkward, "locations": locations,
                           "allow_duplicates": allow_duplicates, "lists": lists},
                  "awkward": meta_awkward},
    }


def _ghl_part(seed: int, cred: random.Random, loc_ids: list[str], people: list[Person], builder: _Builder,
              tasks_per_contact: float, notes_per_contact: float, allow_duplicates: bool) -> dict[str, Any]:
    by_loc: dict[str, list[dict[str, Any]]] = {loc: [] for loc in loc_ids}
    for p in people:
        for contact in ([p.ghl] if p.ghl else []) + p.extra_ghl:
            by_loc[contact["locationId"]].append(contact)
    rng, ids = random.Random(f"{seed}:activity"), random.Random(f"{seed}:activity-ids")
    out_locations = {}
    for loc in loc_ids:
        users = [new_id(cred) for _ in range(5)]
        contacts = by_loc[loc]
        out_locations[loc] = {
            "allowDuplicateContacts": allow_duplicates,
            "contacts": contacts,
            "tasks": make_tasks(rng, ids, contacts, round(len(contacts) * tasks_per_contact), users,
                                builder.base),
            "notes": make_notes(rng, ids, contacts, round(len(contacts) * notes_per_contact), users,
                                builder.base),
        }
    return {
        "oauthClients": [{"client_id": fake_secret(cred, "sbx-client-"),
                          "client_secret": fake_secret(cred, "sbx-secret-")}],
        "tokens": [{"token": fake_secret(cred, "sbx-ghl-"), "locationId": loc, "scopes": list(REQUIRED_SCOPES)}
                   for loc in loc_ids],
        "locations": out_locations,
    }


def _tinyemail_part(seed: int, cred: random.Random, people: list[Person], lists: int) -> dict[str, Any]:
    customers = [p.tinyemail for p in people if p.tinyemail is not None]
    return {
        "apiKeys": [fake_secret(cred, "sbx-te-")],
        "customers": customers,
        "lists": make_lists(random.Random(f"{seed}:lists"), customers, lists),
    }


def to_json(fixture: dict[str, Any]) -> str:
    """The canonical serialisation (compact, UTF-8 text kept as is)."""
    return json.dumps(fixture, ensure_ascii=False, separators=(",", ":"))


def write_fixture(fixture: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the fixture as UTF-8 JSON (atomically: a temporary file renamed over `path`)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(to_json(fixture) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target
