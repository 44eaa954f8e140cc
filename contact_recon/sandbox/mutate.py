"""A realistic day of changes made through the public HTTP APIs of both sandbox servers.

Algorithm:
1. Read the current state through the APIs: every GHL contact of the location (`POST /contacts/search`,
   500 a page, `searchAfter` paging), every TinyEmail list (`GET /contacts`) and its members (1-indexed
   pages of 100). TinyEmail customers can only be seen through lists. Both are sorted (GHL by id,
   TinyEmail by lower-case email), so the choices below depend on the seed and the data only.
2. Draw `changes` changes with `random.Random(seed)` over CHANGE_WEIGHTS. Each change picks a target
   that no earlier change of this run touched (per system), so every reported operation is still true
   when the run ends; a kind with no possible target is redrawn.
3. Make each change with the requests a real client would send (TinyEmail tags: read-modify-write of
   the whole array; GHL tags: `POST`/`DELETE /contacts/{id}/tags`, never a `tags` replace).
   A conflict is one field of one person changed to a different value on each side (two operations).
4. Every request that answers 429 is sent again after `Retry-After` seconds (the limiter rejects
   before applying, so that is safe for writes too), unless `X-RateLimit-Daily-Remaining` is 0: the
   day's allowance is spent and waiting means waiting for midnight UTC, so the run stops with a
   `MutateError` saying so. Reads are also retried on 5xx and dropped connections. Any other error
   stops the run with a `MutateError` naming the request, never a token.
The report lists operations as `{kind, system, key, field?, old?, new?}` where `key` is a GHL contact id
or a TinyEmail email; server-made ids (new contacts, tasks, notes) are left out so that the same seed
against the same fixture gives the same report.
GHL `companyName` is not in UpdateContactDto (a PUT with it answers 422), so company edits are made on
the TinyEmail side only.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from contact_recon.sandbox.common import DAY_S
from contact_recon.sandbox.generate import (
    CITIES,
    COMPANIES,
    FIRST_NAMES,
    GHL_TAGS,
    LAST_NAMES,
    SENTENCES,
    TASK_TITLES,
    TINYEMAIL_TAGS,
    base_epoch,
    iso,
)

GHL_VERSION = "2021-07-28"
GHL_PAGE_LIMIT = 500
TE_PAGE_SIZE = 100
MAX_429_RETRIES = 50
MAX_READ_RETRIES = 4
MAX_RETRY_AFTER_S = 120.0
TIMEOUT_S = 30.0
PICK_TRIES = 200
CHANGE_WEIGHTS: dict[str, int] = {
    "edit": 20, "tag_add": 14, "tag_remove": 8, "unsubscribe": 6, "new_contact": 10, "delete_contact": 4,
    "new_task": 10, "new_note": 12, "complete_task": 6, "conflict": 6,
}
GHL_EDIT_FIELDS = ("firstName", "lastName", "phone", "city")
TE_EDIT_FIELDS = ("firstName", "lastName", "phone", "company", "city")
CONFLICT_FIELDS = ("firstName", "lastName", "phone", "city")
NEW_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
ENV_VARS = {"ghl_token": "RECON_GHL_TOKEN", "ghl_location": "RECON_GHL_LOCATION",
            "tinyemail_key": "RECON_TINYEMAIL_API_KEY"}
_VALID_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")

Op = dict[str, Any]


class MutateError(RuntimeError):
    """A request that failed for a reason other than a rate limit (the message holds no credential)."""


# --- credentials -------------------------------------------------------------------------------------

def credentials_from_fixture(fixture: Mapping[str, Any]) -> dict[str, str]:
    """mutate()'s credential arguments from a fixture: the first GHL token allowed to write contacts,
    its location, and the first TinyEmail API key."""
    tokens = fixture.get("ghl", {}).get("tokens", [])
    token = next((t for t in tokens if "contacts.write" in t.get("scopes", [])), None)
    keys = fixture.get("tinyemail", {}).get("apiKeys", [])
    if token is None or not keys:
        raise ValueError("the fixture needs a GHL token with the contacts.write scope and a TinyEmail "
                         "API key")
    return {"ghl_token": token["token"], "ghl_location": token["locationId"], "tinyemail_key": keys[0]}


def credentials_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """mutate()'s credential arguments from RECON_GHL_TOKEN, RECON_GHL_LOCATION, RECON_TINYEMAIL_API_KEY."""
    env = os.environ if env is None else env
    missing = [name for name in ENV_VARS.values() if not env.get(name)]
    if missing:
        raise ValueError(f"missing environment variables: {', '.join(missing)} (or pass a fixture)")
    return {arg: env[name] for arg, name in ENV_VARS.items()}


# --- HTTP --------------------------------------------------------------------------------------------

class Api:
    """One server: sends requests, waits out 429s, retries reads on server errors."""

    def __init__(self, client: httpx.Client, sleep: Callable[[float], None]):
        self.client, self.sleep = client, sleep
        self.waits: list[float] = []

    def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
             read: bool = False) -> httpx.Response:
        limited = failed = 0
        while True:
            try:
                response = self.client.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:
                failed += 1
                if not read or failed > MAX_READ_RETRIES:
                    raise MutateError(f"{method} {path}: {type(exc).__name__}") from None
                self.sleep(0.2 * 2**failed)
                continue
            if response.status_code == 429 and response.headers.get("X-RateLimit-Daily-Remaining") == "0":
                raise MutateError(f"{method} {path} answered 429: the day's request allowance is used up "
                                  f"(X-RateLimit-Daily-Remaining 0, Retry-After "
                                  f"{response.headers.get('Retry-After', '?')} s): try again after midnight UTC")
            if response.status_code == 429 and limited < MAX_429_RETRIES:
                limited += 1
                self._wait(response)
                continue
            if response.status_code >= 500 and read and failed < MAX_READ_RETRIES:
                failed += 1
                self.sleep(0.2 * 2**failed)
                continue
            if response.is_success:
                return response
            raise MutateError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")

    def _wait(self, response: httpx.Response) -> None:
        try:
            wait = float(response.headers.get("Retry-After", "1"))
        except ValueError:
            wait = 1.0
        wait = min(max(wait, 0.0), MAX_RETRY_AFTER_S)
        self.waits.append(wait)
        self.sleep(wait)


def _clients(ghl_url: str, tinyemail_url: str, ghl_token: str, tinyemail_key: str,
             transport: httpx.BaseTransport | None) -> tuple[httpx.Client, httpx.Client]:
    ghl = httpx.Client(base_url=ghl_url.rstrip("/"), timeout=TIMEOUT_S, transport=transport,
                       headers={"Authorization": f"Bearer {ghl_token}", "Version": GHL_VERSION,
                                "Accept": "application/json"})
    te = httpx.Client(base_url=tinyemail_url.rstrip("/"), timeout=TIMEOUT_S, transport=transport,
                      headers={"X-API-KEY": tinyemail_key, "Accept": "application/json"})
    return ghl, te


# --- reading the state -------------------------------------------------------------------------------

def read_ghl_contacts(api: Api, location: str) -> list[dict[str, Any]]:
    """Every contact of the location, by `searchAfter` paging (page numbers if a page lacks it)."""
    found: dict[str, dict[str, Any]] = {}
    body: dict[str, Any] = {"locationId": location, "pageLimit": GHL_PAGE_LIMIT}
    page = 1
    while True:
        contacts = api.call("POST", "/contacts/search", json=body, read=True).json().get("contacts", [])
        fresh = [c for c in contacts if c["id"] not in found]
        found.update((c["id"], c) for c in contacts)
        if len(contacts) < GHL_PAGE_LIMIT or not fresh:
            break
        page += 1
        after = contacts[-1].get("searchAfter")
        body = {"locationId": location, "pageLimit": GHL_PAGE_LIMIT,
                **({"searchAfter": after} if after else {"page": page})}
    return [found[i] for i in sorted(found)]


def read_tinyemail(api: Api) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(customers seen in any list, sorted by lower-case email; lists sorted by id)."""
    lists = sorted(api.call("GET", "/contacts", read=True).json().get("contacts", []), key=lambda x: x["id"])
    customers: dict[str, dict[str, Any]] = {}
    for item in lists:
        page = 1
        while True:
            answer = api.call("GET", f"/contacts/{quote(item['id'], safe='')}/members",
                              params={"page": page, "size": TE_PAGE_SIZE}, read=True).json()["members"]
            for customer in answer.get("content", []):
                customers.setdefault(norm(customer.get("email", "")), customer)
            if answer.get("last", True) or not answer.get("content"):
                break
            page += 1
    return [customers[k] for k in sorted(customers)], lists


def norm(email: str | None) -> str:
    return (email or "").strip().lower()


def valid_email(email: str | None) -> bool:
    e = (email or "").strip()
    return bool(_VALID_EMAIL.match(e)) and ".." not in e


def _digits(phone: str | None) -> str:
    return re.sub(r"\D", "", phone or "")


# --- the run -----------------------------------------------------------------------------------------

@dataclass
class Run:
    """What one mutation run knows: APIs, state read at the start, what it has touched, what it did."""

    rng: random.Random
    ghl: Api
    te: Api
    location: str
    contacts: list[dict[str, Any]]
    customers: list[dict[str, Any]]
    lists: list[dict[str, Any]]
    base: int
    used_ghl: set[str] = field(default_factory=set)
    used_te: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    probed: set[str] = field(default_factory=set)  # contacts whose tasks were read
    ops: list[Op] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.emails = {norm(c.get("email")) for c in self.contacts + self.customers}
        self.phones = {_digits(c.get("phone")) for c in self.contacts + self.customers}
        self.te_by_email = {norm(c["email"]): c for c in self.customers}

    # targets

    def pick(self, items: list[dict[str, Any]],
             ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """A random item for which `ok` holds: random probes first, then a scan of the rest."""
        if not items:
            return None
        for _ in range(PICK_TRIES):
            item = self.rng.choice(items)
            if ok(item):
                return item
        rest = [i for i in items if ok(i)]
        return self.rng.choice(rest) if rest else None

    def ghl_target(self, ok: Callable[[dict[str, Any]], bool] = lambda c: True) -> dict[str, Any] | None:
        found = self.pick(self.contacts, lambda c: c["id"] not in self.used_ghl and ok(c))
        if found is not None:
            self.used_ghl.add(found["id"])
        return found

    def te_target(self, ok: Callable[[dict[str, Any]], bool] = lambda c: True) -> dict[str, Any] | None:
        found = self.pick(self.customers, lambda c: valid_email(c["email"]) and norm(c["email"]) not in
                          self.used_te and ok(c))
        if found is not None:
            self.used_te.add(norm(found["email"]))
        return found

    # new values

    def new_value(self, name: str, old: Any) -> str:
        """A realistic new value for a contact field, different from `old` (phones are unique)."""
        for _ in range(50):
            value = self._draw_value(name)
            if value and value != old:
                if name == "phone":
                    self.phones.add(_digits(value))
                return value
        raise MutateError(f"could not find a new {name}")

    def _draw_value(self, name: str) -> str:
        rng = self.rng
        if name == "firstName":
            return rng.choice(FIRST_NAMES)
        if name == "lastName":
            return rng.choice(LAST_NAMES)
        if name == "city":
            return rng.choice(CITIES)[0]
        if name == "company":
            return rng.choice(COMPANIES)
        if name == "phone":
            phone = f"+1{rng.choice(CITIES[:15])[2]}555{rng.randrange(10_000):04d}"
            return phone if _digits(phone) not in self.phones else ""
        raise ValueError(name)

    def new_person(self) -> dict[str, str]:
        first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
        email = ""
        while not email or email in self.emails:
            local = f"{first}.{last}".lower().replace("'", "")
            email = f"{local}.{self.rng.randrange(1000, 10_000)}@{self.rng.choice(NEW_EMAIL_DOMAINS)}"
        self.emails.add(email)
        return {"firstName": first, "lastName": last, "email": email, "phone": self.new_value("phone", None),
                "city": self.rng.choice(CITIES)[0]}

    def record(self, kind: str, system: str, key: str, **extra: Any) -> None:
        self.ops.append({"kind": kind, "system": system, "key": key, **extra})


# --- the changes (each returns False when it found no target) -----------------------------------------

def do_edit(run: Run) -> bool:
    if run.rng.random() < 0.5:
        return _edit_ghl(run, run.rng.choice(GHL_EDIT_FIELDS), "edit")
    return _edit_te(run, run.rng.choice(TE_EDIT_FIELDS), "edit")


def _edit_ghl(run: Run, name: str, kind: str, contact: dict[str, Any] | None = None) -> bool:
    contact = contact or run.ghl_target()
    if contact is None:
        return False
    old, new = contact.get(name), run.new_value(name, contact.get(name))
    run.ghl.call("PUT", f"/contacts/{contact['id']}", json={name: new})
    run.record(kind, "ghl", contact["id"], field=name, old=old, new=new)
    return True


def _edit_te(run: Run, name: str, kind: str, customer: dict[str, Any] | None = None,
             new: str | None = None) -> bool:
    customer = customer or run.te_target()
    if customer is None:
        return False
    old = customer.get(name)
    new = new if new is not None else run.new_value(name, old)
    run.te.call("PUT", "/account/customer", json={"updateMembers": [{"email": customer["email"], name: new}]})
    run.record(kind, "tinyemail", customer["email"], field=name, old=old, new=new)
    return True


def do_tag_add(run: Run) -> bool:
    if run.rng.random() < 0.5:
        contact = run.ghl_target(lambda c: len(set(GHL_TAGS) - set(c.get("tags") or [])) > 0)
        if contact is None:
            return False
        tag = run.rng.choice(sorted(set(GHL_TAGS) - set(contact.get("tags") or [])))
        run.ghl.call("POST", f"/contacts/{contact['id']}/tags", json={"tags": [tag]})
        run.record("tag_add", "ghl", contact["id"], field="tags", new=tag)
        return True
    return _te_tags(run, "tag_add")


def do_tag_remove(run: Run) -> bool:
    if run.rng.random() < 0.5:
        contact = run.ghl_target(lambda c: bool(c.get("tags")))
        if contact is None:
            return False
        tag = run.rng.choice(sorted(contact["tags"]))
        run.ghl.call("DELETE", f"/contacts/{contact['id']}/tags", json={"tags": [tag]})
        run.record("tag_remove", "ghl", contact["id"], field="tags", old=tag)
        return True
    return _te_tags(run, "tag_remove")


def _te_tags(run: Run, kind: str) -> bool:
    """TinyEmail has no tag endpoint: read the customer, change the array, write the whole array back."""
    adding = kind == "tag_add"
    customer = run.te_target(lambda c: bool(c.get("tags")) or adding)
    if customer is None:
        return False
    email = customer["email"]
    current = run.te.call("GET", f"/account/customer/{quote(email, safe='@')}", read=True).json()
    tags = list(current.get("tags") or [])
    choices = sorted(set(TINYEMAIL_TAGS) - set(tags)) if adding else sorted(set(tags))
    if not choices:
        return False
    tag = run.rng.choice(choices)
    tags = [*tags, tag] if adding else [t for t in tags if t != tag]
    run.te.call("PUT", "/account/customer", json={"updateMembers": [{"email": email, "tags": tags}]})
    run.record(kind, "tinyemail", email, field="tags", **({"new": tag} if adding else {"old": tag}))
    return True


def do_unsubscribe(run: Run) -> bool:
    customer = run.te_target(lambda c: c.get("status", "Subscribed") == "Subscribed")
    if customer is None:
        return False
    body = {"updateMembers": [{"email": customer["email"], "status": "Unsubscribed"}]}
    run.te.call("PUT", "/account/customer", json=body)
    run.record("unsubscribe", "tinyemail", customer["email"], field="status", old="Subscribed",
               new="Unsubscribed")
    return True


def do_new_contact(run: Run) -> bool:
    person = run.new_person()
    if run.rng.random() < 0.5 or not run.lists:
        tags = run.rng.sample(GHL_TAGS, 2)
        body = {"locationId": run.location, **person, "tags": tags, "source": "form"}
        run.ghl.call("POST", "/contacts/", json=body)
        run.record("new_contact", "ghl", person["email"], new={**person, "tags": tags})
    else:
        customer = {**person, "tags": run.rng.sample(TINYEMAIL_TAGS, 2), "status": "Subscribed"}
        target = run.rng.choice(run.lists)
        run.te.call("PUT", "/account/customer", json={"updateMembers": [customer]})
        assign = {"assignMembers": [{"email": person["email"]}]}
        run.te.call("PUT", f"/audiences/{quote(target['id'], safe='')}", json=assign)
        run.record("new_contact", "tinyemail", person["email"], new={**customer, "list": target["id"]})
    return True


def do_delete_contact(run: Run) -> bool:
    contact = run.ghl_target()
    if contact is None:
        return False
    run.ghl.call("DELETE", f"/contacts/{contact['id']}")
    run.record("delete_contact", "ghl", contact["id"], old=contact.get("email"))
    return True


def do_new_task(run: Run) -> bool:
    contact = run.ghl_target()
    if contact is None:
        return False
    title = f"{run.rng.choice(TASK_TITLES)}: {contact.get('firstName') or 'contact'}"
    task = {"title": title, "body": " ".join(run.rng.sample(SENTENCES, 2)),
            "dueDate": iso(run.base + run.rng.randrange(1, 15) * DAY_S), "completed": False}
    run.ghl.call("POST", f"/contacts/{contact['id']}/tasks", json=task)
    run.record("new_task", "ghl", contact["id"], field="task", new=task)
    return True


def do_new_note(run: Run) -> bool:
    contact = run.ghl_target()
    if contact is None:
        return False
    body = " ".join(run.rng.sample(SENTENCES, run.rng.randrange(1, 4)))
    run.ghl.call("POST", f"/contacts/{contact['id']}/notes", json={"body": body})
    run.record("new_note", "ghl", contact["id"], field="note", new=body)
    return True


def do_complete_task(run: Run) -> bool:
    """Probe a few untouched contacts for an open task (one GET each) and complete the first found."""
    for _ in range(30):
        contact = run.ghl_target(lambda c: c["id"] not in run.probed)
        if contact is None:
            return False
        run.probed.add(contact["id"])
        tasks = run.ghl.call("GET", f"/contacts/{contact['id']}/tasks", read=True).json().get("tasks", [])
        open_tasks = sorted((t for t in tasks if not t.get("completed")), key=lambda t: t["id"])
        if open_tasks:
            task = run.rng.choice(open_tasks)
            path = f"/contacts/{contact['id']}/tasks/{task['id']}/completed"
            run.ghl.call("PUT", path, json={"completed": True})
            run.record("complete_task", "ghl", contact["id"], field="completed", old=False, new=True,
                       taskId=task["id"])
            return True
        run.used_ghl.discard(contact["id"])  # only read: still free for other changes
    return False


def do_conflict(run: Run) -> bool:
    """One field of one person, changed on both sides to different values."""
    contact = run.ghl_target(lambda c: valid_email(c.get("email")) and norm(c["email"]) in run.te_by_email
                             and norm(c["email"]) not in run.used_te)
    if contact is None:
        return False
    customer = run.te_by_email[norm(contact["email"])]
    run.used_te.add(norm(customer["email"]))
    name = run.rng.choice(CONFLICT_FIELDS)
    _edit_ghl(run, name, "conflict", contact)
    ghl_value = run.ops[-1]["new"]
    te_value = run.new_value(name, ghl_value)
    return _edit_te(run, name, "conflict", customer, te_value)


CHANGES: dict[str, Callable[[Run], bool]] = {
    "edit": do_edit, "tag_add": do_tag_add, "tag_remove": do_tag_remove, "unsubscribe": do_unsubscribe,
    "new_contact": do_new_contact, "delete_contact": do_delete_contact, "new_task": do_new_task,
    "new_note": do_new_note, "complete_task": do_complete_task, "conflict": do_conflict,
}


def mutate(ghl_url: str, tinyemail_url: str, changes: int, *, seed: int = 0, ghl_token: str,
           ghl_location: str, tinyemail_key: str, transport: httpx.BaseTransport | None = None,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Make `changes` changes through both APIs and report them (see the module docstring).

    Args:
        ghl_url: GHL base URL without a path (e.g. http://127.0.0.1:8701).
        tinyemail_url: TinyEmail base URL with /v1 (e.g. http://127.0.0.1:8702/v1).
        changes: number of changes; a conflict is one change reported as two operations.
        seed: seeds the choice of changes.
        ghl_token, ghl_location, tinyemail_key: sandbox credentials (see credentials_from_fixture/env).
        transport: an httpx transport for both clients (tests); sleep: how Retry-After waits are made.
    Returns:
        {"seed", "changes", "by_kind": {kind: count}, "operations": [...],
         "rate_limited_waits_s": seconds spent waiting out 429s}.
    """
    ghl_client, te_client = _clients(ghl_url, tinyemail_url, ghl_token, tinyemail_key, transport)
    with ghl_client, te_client:
        ghl, te = Api(ghl_client, sleep), Api(te_client, sleep)
        customers, lists = read_tinyemail(te)
        contacts = read_ghl_contacts(ghl, ghl_location)
        run = Run(random.Random(f"mutate:{seed}"), ghl, te, ghl_location, contacts, customers, lists,
                  base_epoch(seed))
        by_kind = _make_changes(run, changes)
    return {"seed": seed, "changes": sum(by_kind.values()), "by_kind": by_kind, "operations": run.ops,
            "rate_limited_waits_s": round(sum(ghl.waits) + sum(te.waits), 3)}


def _make_changes(run: Run, changes: int) -> dict[str, int]:
    """Draw kinds by weight; a kind without a target is dropped from the draw for the rest of the run."""
    weights = dict(CHANGE_WEIGHTS)
    done: Counter[str] = Counter()
    while sum(done.values()) < changes and weights:
        kind = run.rng.choices(list(weights), list(weights.values()))[0]
        if CHANGES[kind](run):
            done[kind] += 1
        else:
            del weights[kind]
    return {kind: done[kind] for kind in CHANGE_WEIGHTS}
