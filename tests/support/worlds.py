"""Worlds for the stage tests: both sandboxes over HTTP, settings pointing at them, a real DuckDB store, and the
stages run against them (`plan`, `reconcile`, `apply`); both systems' state in comparable form (no ids, no
dates, no markers); and `recon` run as a real command (`run_cli`).

`World` is the one world of the planning, apply, report, decision and flow tests (formerly one copy each in
tests/apply_support.py and tests/test_pipeline.py); `planning_world` is the builder their fixtures share.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from contact_recon.model.policy import Policy, load_policy
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.mutate import mutate
from contact_recon.sandbox.server import RunningServer
from contact_recon.settings import Settings
from contact_recon.stages.plan import PlanRun, plan_run
from contact_recon.stages.run import RunOutcome, apply_run, reconcile
from contact_recon.store.db import Store, open_db
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.tinyemail.client import TinyEmailClient
from tests.support import REPO
from tests.support.servers import Sandboxes

RATE_SCALE = 50
LOOSE = "[guards]\ndeletes_or_inactivations = 1.0\nfield_updates = 1.0\ntag_removals = 1.0\n"
LOOSE_GUARDS = LOOSE
MARKER = re.compile(r"\s*\[recon:[0-9a-f]{16}\]")
NOT_A_PHONE = "call me maybe"


async def short_backoff(seconds: float) -> None:
    await asyncio.sleep(min(seconds, 0.01))


def loose_policy(tmp: Path) -> Policy:
    path = tmp / "policy.toml"
    path.write_text(LOOSE)
    return load_policy(path)


@dataclass
class World:
    """Both sandboxes, settings pointing at them, a store (None when the code under test opens its own), the
    policy `reconcile`/`apply` use, and which people a fixture builder edited (`awkward_fixture`)."""

    fixture: dict[str, Any]
    ghl: RunningServer
    te: RunningServer
    settings: Settings
    store: Store
    policy: Policy | None = None
    edited: dict[str, list[str]] = field(default_factory=dict)

    @property
    def location(self) -> str:
        return self.fixture["ghl"]["tokens"][0]["locationId"]

    def ghl_client(self, location_id: str) -> GHLClient:
        return GHLClient.from_settings(self.settings, location_id, sleep=short_backoff,
                                       budget=RateBudget(100 * RATE_SCALE, 10.0, 200_000))

    def te_client(self) -> TinyEmailClient:
        return TinyEmailClient.from_settings(self.settings, sleep=short_backoff,
                                             budget=RateBudget(60 * RATE_SCALE, 60.0, None))

    def plan(self, **kwargs: Any) -> PlanRun:
        """The planning pipeline (a dry run), with the policy given or plan_run's default."""
        kwargs.setdefault("docs", False)
        return plan_run(self.settings, self.store, locations=[self.location], ghl_client=self.ghl_client,
                        tinyemail_client=self.te_client, **kwargs)

    def reconcile(self, **kwargs: Any) -> RunOutcome:
        kwargs.setdefault("docs", False)
        kwargs.setdefault("policy", self.policy)
        return reconcile(self.settings, self.store, locations=[self.location], ghl_client=self.ghl_client,
                         tinyemail_client=self.te_client, **kwargs)

    def apply(self, run_id: str) -> RunOutcome:
        return apply_run(self.settings, self.store, run_id, policy=self.policy, ghl_client=self.ghl_client,
                         tinyemail_client=self.te_client)

    def state(self, server: RunningServer) -> dict[str, Any]:
        return httpx.get(server.base_url + "/__sandbox/state").json()

    def requests(self, server: RunningServer) -> list[dict[str, Any]]:
        return httpx.get(server.base_url + "/__sandbox/requests").json()["requests"]

    def drift(self, changes: int, seed: int) -> dict[str, Any]:
        return mutate(self.ghl.base_url, self.te.base_url + "/v1", changes, seed=seed,
                      ghl_token=self.fixture["ghl"]["tokens"][0]["token"], ghl_location=self.location,
                      tinyemail_key=self.fixture["tinyemail"]["apiKeys"][0], sleep=lambda s: None)

    def env(self) -> dict[str, str]:
        return {"RECON_GHL_BASE_URL": self.ghl.base_url, "RECON_GHL_TOKEN": self.fixture["ghl"]["tokens"][0]["token"],
                "RECON_GHL_LOCATION_IDS": self.location, "RECON_TINYEMAIL_BASE_URL": self.te.base_url + "/v1",
                "RECON_TINYEMAIL_API_KEY": self.fixture["tinyemail"]["apiKeys"][0],
                "RECON_TINYEMAIL_RATE_PER_MINUTE": str(60 * RATE_SCALE), "RECON_DATA_DIR": str(self.settings.data_dir)}

    def secrets(self) -> list[str]:
        return [self.fixture["ghl"]["tokens"][0]["token"], self.fixture["tinyemail"]["apiKeys"][0]]


def make_settings(ghl: RunningServer, te: RunningServer, fixture: dict[str, Any], data_dir: Path,
                  **extra: Any) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(_env_file=None, data_dir=data_dir, ghl_base_url=ghl.base_url,
                    ghl_token=fixture["ghl"]["tokens"][0]["token"], tinyemail_base_url=te.base_url + "/v1",
                    tinyemail_api_key=fixture["tinyemail"]["apiKeys"][0], tinyemail_rate_per_minute=60 * RATE_SCALE,
                    **extra)


def planning_world(sandboxes: Sandboxes, tmp_path: Path, fixture: dict[str, Any],
                   edited: dict[str, list[str]]) -> Iterator[World]:
    """For a fixture: both sandboxes (at RATE_SCALE), a data dir `tmp_path/data` and its store, open for the
    test (`yield from planning_world(...)` in a fixture)."""
    ghl, te = sandboxes(fixture, rate_scale=RATE_SCALE)
    settings = make_settings(ghl, te, fixture, tmp_path / "data")
    with open_db(settings.data_dir / "recon.duckdb") as store:
        yield World(fixture, ghl, te, settings, store, edited=edited)


def awkward_fixture() -> tuple[dict[str, Any], dict[str, list[str]]]:
    """A small fixture with the generator's awkward records plus known differences between the systems:
    GHL companies blanked (field updates beyond the guard), a TinyEmail first name changed (a conflict: names
    are settled by hand) and a GHL phone that is not a phone (quarantined)."""
    fixture = generate_fixture(40, seed=11, awkward=0.3)
    awkward = {e for emails in fixture["_meta"]["awkward"].values() for e in emails}
    customers = {c["email"]: c for c in fixture["tinyemail"]["customers"]}
    contacts = next(iter(fixture["ghl"]["locations"].values()))["contacts"]
    both = [c for c in contacts if c.get("email") in customers and c["email"] not in awkward and c["id"] not in awkward
            and c.get("phone", "").startswith("+1")]
    assert len(both) >= 16, "the fixture changed: too few clean people in both systems"
    for contact in both[:12]:
        contact["companyName"] = ""
        customers[contact["email"]]["company"] = f"Company of {contact['firstName']}"
    for contact in both[12:14]:
        customers[contact["email"]]["firstName"] = "Renamed"
    both[14]["phone"] = NOT_A_PHONE
    edited = {"blank_company": [c["id"] for c in both[:12]], "renamed": [c["id"] for c in both[12:14]],
              "bad_phone": [both[14]["id"]]}
    return validate_fixture(fixture), edited


# ------------------------------------------------------------------------------------ recon as a command


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`recon ARGS` as a real child process, with no RECON_* variable but those in `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECON_")}
    full = {**base, "PYTHONPATH": str(REPO), "COLUMNS": "220", **env}
    return subprocess.run([sys.executable, "-m", "contact_recon.cli.main", *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def table_rows(output: str) -> dict[str, list[str]]:
    """The rows of a rich table, by their first cell."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0]:
            rows[cells[0]] = cells
    return rows


# ------------------------------------------------------------------------------- comparable state


def ghl_people(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """GHL contacts by lower-cased email (contacts without email by name), with their tasks and notes."""
    location = next(iter(state["locations"].values()))
    tasks: dict[str, list[str]] = {}
    for task in location.get("tasks", []):
        tasks.setdefault(task["contactId"], []).append(task["title"])
    notes: dict[str, list[str]] = {}
    for note in location.get("notes", []):
        notes.setdefault(note["contactId"], []).append(MARKER.sub("", note.get("body") or ""))
    people = {}
    for contact in location["contacts"]:
        key = (contact.get("email") or "").strip().lower() or f"no-email:{contact.get('firstName')}"
        people[key] = {"first": contact.get("firstName"), "last": contact.get("lastName"),
                       "company": contact.get("companyName"), "tags": sorted(contact.get("tags") or []),
                       "dnd": (contact.get("dndSettings") or {}).get("Email", {}).get("status"),
                       "tasks": sorted(tasks.get(contact["id"], [])), "notes": sorted(notes.get(contact["id"], []))}
    return people


def te_people(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    customers = state["customers"]
    rows = customers.values() if isinstance(customers, dict) else customers
    return {c["email"].strip().lower(): {"first": c.get("firstName"), "last": c.get("lastName"),
                                         "company": c.get("company"), "tags": sorted(c.get("tags") or []),
                                         "status": c.get("status")} for c in rows}


def duplicates(state: dict[str, Any]) -> dict[str, int]:
    """Contacts sharing an email, and tasks/notes we created (they carry a marker) sharing (contact, text)."""
    location = next(iter(state["locations"].values()))
    emails = Counter((c.get("email") or "").strip().lower() for c in location["contacts"] if c.get("email"))
    ours = [t for t in location.get("tasks", []) if MARKER.search(t.get("body") or "")]
    tasks = Counter((t["contactId"], t["title"]) for t in ours)
    notes = Counter((n["contactId"], MARKER.sub("", n.get("body") or "")) for n in location.get("notes", [])
                    if MARKER.search(n.get("body") or ""))
    return {f"contact:{k}": n for k, n in emails.items() if n > 1} | \
        {f"task:{k}": n for k, n in tasks.items() if n > 1} | {f"note:{k}": n for k, n in notes.items() if n > 1}


def person_diff(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    """Per person, the values that differ: (got, want); a person on one side only is `missing` / `extra`."""
    out: dict[str, Any] = {}
    for key in sorted(set(got) | set(want)):
        a, b = got.get(key), want.get(key)
        if a != b:
            out[key] = {k: (a.get(k), b.get(k)) for k in (a or b or {}) if (a or {}).get(k) != (b or {}).get(k)} \
                if a and b else ("missing" if a is None else "extra")
    return out
