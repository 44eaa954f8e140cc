"""A world for the apply tests: both sandboxes over HTTP, a real DuckDB store, settings, and helpers to reconcile
and to read both systems' state in comparable form (no ids, no dates, no markers)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from contact_recon.model.policy import Policy, load_policy
from contact_recon.sandbox.mutate import mutate
from contact_recon.sandbox.server import RunningServer
from contact_recon.settings import Settings
from contact_recon.stages.run import RunOutcome, apply_run, reconcile
from contact_recon.store.db import Store
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.tinyemail.client import TinyEmailClient

RATE_SCALE = 50
LOOSE = "[guards]\ndeletes_or_inactivations = 1.0\nfield_updates = 1.0\ntag_removals = 1.0\n"
MARKER = re.compile(r"\s*\[recon:[0-9a-f]{16}\]")


async def short_backoff(seconds: float) -> None:
    await asyncio.sleep(min(seconds, 0.01))


def loose_policy(tmp: Path) -> Policy:
    path = tmp / "policy.toml"
    path.write_text(LOOSE)
    return load_policy(path)


@dataclass
class World:
    fixture: dict[str, Any]
    ghl: RunningServer
    te: RunningServer
    settings: Settings
    store: Store
    policy: Policy

    @property
    def location(self) -> str:
        return self.fixture["ghl"]["tokens"][0]["locationId"]

    def ghl_client(self, location_id: str) -> GHLClient:
        return GHLClient.from_settings(self.settings, location_id, sleep=short_backoff,
                                       budget=RateBudget(100 * RATE_SCALE, 10.0, 200_000))

    def te_client(self) -> TinyEmailClient:
        return TinyEmailClient.from_settings(self.settings, sleep=short_backoff,
                                             budget=RateBudget(60 * RATE_SCALE, 60.0, None))

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


def make_settings(ghl: RunningServer, te: RunningServer, fixture: dict[str, Any], data_dir: Path,
                  **extra: Any) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(_env_file=None, data_dir=data_dir, ghl_base_url=ghl.base_url,
                    ghl_token=fixture["ghl"]["tokens"][0]["token"], tinyemail_base_url=te.base_url + "/v1",
                    tinyemail_api_key=fixture["tinyemail"]["apiKeys"][0], tinyemail_rate_per_minute=60 * RATE_SCALE,
                    **extra)


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
