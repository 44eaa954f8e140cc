"""Reads that survive what the real APIs send (issue 17, items 4-5), against both sandboxes over HTTP.

- A GHL location whose search would not end (the sandbox's paging faults: the cursor does not move, a page
  repeats) fails alone within a few requests, with a clear message, while the other location and TinyEmail are
  snapshotted, planned and applied; once the search behaves, the location is back in the next run.
- A corpus of odd records costs one record, not the run: GHL contacts with `tags`, `customFields` or `dnd`
  null, a numeric `phone`, `dateAdded: ""`, TinyEmail customers with status `subscribed` (lower case) and an
  unknown status are read and planned normally; a contact and a customer that still cannot be read keep their
  previous snapshot rows, get no op (no deletion), and the plan, the run row and summary.json name them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from contact_recon.sandbox import ghl as ghl_sandbox
from contact_recon.sandbox import tinyemail as te_sandbox
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.stages.plan import load_plan
from contact_recon.stages.run import reconcile
from contact_recon.store.db import Store, open_db
from contact_recon.systems.auth import StaticToken
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.tinyemail.client import TinyEmailClient
from tests.support.servers import Sandboxes, Serve
from tests.support.worlds import RATE_SCALE, World, loose_policy, make_settings, short_backoff


def searches(server: RunningServer, offset: int = 0) -> int:
    log = httpx.get(server.base_url + "/__sandbox/requests", params={"offset": offset}).json()["requests"]
    return sum(1 for r in log if r["method"] == "POST" and r["path"] == "/contacts/search")


def log_total(server: RunningServer) -> int:
    return int(httpx.get(server.base_url + "/__sandbox/requests").json()["total"])


def state(server: RunningServer) -> dict[str, Any]:
    return httpx.get(server.base_url + "/__sandbox/state").json()


# ------------------------------------------------------------------------------------ a stalled location


@pytest.mark.parametrize("mode, says", [("stall", "cursor did not move"), ("repeat", "brought no contact")])
def test_a_location_whose_search_would_not_end_fails_alone_and_the_other_goes_on(
        sandboxes: Sandboxes, tmp_path: Path, mode: str, says: str) -> None:
    fixture = validate_fixture(generate_fixture(1_400, seed=4, locations=2, notes_per_contact=0.1,
                                                tasks_per_contact=0.1))
    ghl, te = sandboxes(fixture, rate_scale=RATE_SCALE)
    tokens = {t["locationId"]: t["token"] for t in fixture["ghl"]["tokens"]}
    ok, stalled = sorted(tokens, key=lambda loc: len(fixture["ghl"]["locations"][loc]["contacts"]))
    assert len(fixture["ghl"]["locations"][stalled]["contacts"]) > 500  # more than one page: the cursor matters
    settings = make_settings(ghl, te, fixture, tmp_path / "data")

    def client(location_id: str) -> GHLClient:
        return GHLClient.from_settings(settings, location_id, credentials=StaticToken(tokens[location_id]),
                                       budget=RateBudget(100 * RATE_SCALE, 10.0, 200_000), sleep=short_backoff)

    def te_client() -> TinyEmailClient:
        return TinyEmailClient.from_settings(settings, budget=RateBudget(60 * RATE_SCALE, 60.0, None),
                                             sleep=short_backoff)

    httpx.post(ghl.base_url + "/__sandbox/search", json={"paging": {stalled: mode}}).raise_for_status()
    before = state(ghl)["locations"][stalled]
    with open_db(settings.data_dir / "recon.duckdb") as store:
        outcome = reconcile(settings, store, locations=[ok, stalled], approve=True, docs=False,
                            policy=loose_policy(tmp_path), ghl_client=client, tinyemail_client=te_client)

        # the stalled location failed with a clear message, after two searches, not the day's budget
        assert outcome.status == "completed" and outcome.plan is not None
        why = outcome.plan.failed_locations[f"ghl:{stalled}"]
        assert set(outcome.plan.failed_locations) == {f"ghl:{stalled}"}
        assert why.startswith("PagingStalled: ") and says in why and "stopped after 2 requests" in why
        snapshot_run = store.get_run(outcome.plan.snapshot_run_id or "")
        assert snapshot_run["status"] == "succeeded" and f"ghl:{stalled}" in snapshot_run["error"]
        assert json.loads(snapshot_run["requests_used_json"])[f"ghl:{stalled}"]["total"] == 2
        assert searches(ghl) == -(-len(fixture["ghl"]["locations"][ok]["contacts"]) // 500) + 2  # its pages, and two
        # ... and nothing of it was written, planned or changed
        assert store.latest_snapshot("ghl_contacts", stalled).height == 0
        assert store.latest_snapshot("ghl_contacts", ok).height == len(fixture["ghl"]["locations"][ok]["contacts"])
        assert state(ghl)["locations"][stalled] == before
        plan = load_plan(settings.data_dir, outcome.run_id)
        stalled_ids = {c["id"] for c in before["contacts"]}
        assert not plan.filter(pl.col("key").is_in(sorted(stalled_ids))).height
        # no TinyEmail-only customer became a contact while a location is unread (it may be one of its own)
        assert not plan.filter((pl.col("kind") == "create") & (pl.col("target") == "ghl")).height
        # the other location went on: planned and applied
        assert outcome.journal.get("done", 0) > 0 and plan.filter(pl.col("target") == "tinyemail").height
        summary = outcome.summary or {}
        assert summary["failed_locations"] == {f"ghl:{stalled}": why}

        if mode != "stall":
            return  # once is enough for what follows
        # the search behaves again: the next run reads the location and plans it
        httpx.post(ghl.base_url + "/__sandbox/search", json={"paging": {stalled: "normal"}}).raise_for_status()
        again = reconcile(settings, store, locations=[ok, stalled], approve=True, docs=False,
                          policy=loose_policy(tmp_path), ghl_client=client, tinyemail_client=te_client)
        assert again.status == "completed" and again.plan is not None and again.plan.failed_locations == {}
        assert store.latest_snapshot("ghl_contacts", stalled).height == len(before["contacts"])


# ------------------------------------------------------------------------------------ the odd records


def odd_world(tmp_path: Path, serve: Serve, fixture: dict[str, Any], store: Store,
              data_dir: Path) -> tuple[World, Callable[[], Any]]:
    """A World on sandboxes serving `fixture` as given (odd values included: no fixture validation)."""
    ghl = serve(ghl_sandbox.create_app(copy.deepcopy(fixture["ghl"]), rate_scale=RATE_SCALE, search_lag_s=0))
    te = serve(te_sandbox.create_app(copy.deepcopy(fixture["tinyemail"]), rate_scale=RATE_SCALE))
    settings = make_settings(ghl, te, fixture, data_dir)
    world = World(fixture, ghl, te, settings, store, policy=loose_policy(tmp_path))
    return world, lambda: world.reconcile(approve=True)


def test_odd_records_cost_one_record_not_the_run(serve: Serve, tmp_path: Path) -> None:
    fixture = validate_fixture(generate_fixture(60, seed=8, awkward=0.0))
    data_dir = tmp_path / "data"
    with open_db(_mkdir(data_dir) / "recon.duckdb") as store:
        first, run_first = odd_world(tmp_path, serve, fixture, store, data_dir)
        assert run_first().status == "completed"  # night 0: everyone reconciled, the base and id_map filled

        # the next day each system sends what the real APIs do: GHL and TinyEmail as they are now, made odd
        ghl_now, te_now = state(first.ghl), state(first.te)
        location = first.location
        pairs = store.load_id_map()
        contacts = {c["id"]: c for c in ghl_now["locations"][location]["contacts"]}
        customers = {c["email"].strip().lower(): c for c in te_now["customers"]}
        both = [cid for cid, email in zip(pairs["contact_id"], pairs["email"], strict=True)
                if cid in contacts and email in customers and contacts[cid].get("phone")]
        assert len(both) >= 10
        odd_ghl = {"tags": both[0], "customFields": both[1], "dnd": both[2], "phone": both[3], "dateAdded": both[4]}
        unreadable_contact = both[5]
        email_of = dict(zip(pairs["contact_id"], pairs["email"], strict=True))
        odd_te = {"subscribed": email_of[both[6]], "unknown": email_of[both[7]]}
        unreadable_customer = email_of[both[8]]
        for field, cid in odd_ghl.items():
            contact = contacts[cid]
            contact["companyName"] = f"Odd {field} Co"  # a real change, to be planned normally
            if field == "phone":
                contact["phone"] = int("".join(ch for ch in contact["phone"] if ch.isdigit()))
            else:
                contact[field] = "" if field == "dateAdded" else None
        contacts[unreadable_contact]["tags"] = "vip"  # a string where a list belongs: cannot be read
        contacts[unreadable_contact]["companyName"] = "Never planned Co"
        for kind, email in odd_te.items():
            customers[email]["status"] = "subscribed" if kind == "subscribed" else "Paused"
            customers[email]["company"] = f"Odd {kind} Co"
        customers[unreadable_customer]["tags"] = {"not": "a list"}
        customers[unreadable_customer]["company"] = "Never planned either"
        odd_fixture = {"ghl": ghl_now, "tinyemail": te_now}

        second, run_second = odd_world(tmp_path, serve, odd_fixture, store, data_dir)
        previous = {e: store.latest_snapshot(e) for e in ("ghl_contacts", "te_customers")}
        outcome = run_second()

        assert outcome.status == "completed" and outcome.plan is not None  # one odd record never fails the night
        plan = outcome.plan.plan
        snap = store.latest_snapshot("ghl_contacts").filter(pl.col("contact_id").is_in(list(odd_ghl.values())))
        rows = {r["contact_id"]: r for r in snap.iter_rows(named=True)}
        assert rows[odd_ghl["tags"]]["tags"] == [] and rows[odd_ghl["customFields"]]["company"] == "Odd customFields Co"
        assert rows[odd_ghl["dnd"]]["consent"] == "subscribed" and rows[odd_ghl["dateAdded"]]["date_added"] is None
        assert rows[odd_ghl["phone"]]["phone"] == previous["ghl_contacts"].filter(
            pl.col("contact_id") == odd_ghl["phone"])["phone"][0]  # the same number, read from digits
        # each readable odd record is planned like any other: its company goes to TinyEmail
        updates = plan.filter((pl.col("field") == "company") & (pl.col("target") == "tinyemail"))
        assert set(odd_ghl.values()) <= set(updates["key"])
        te_rows = store.latest_snapshot("te_customers")
        status = dict(zip(te_rows["email"], te_rows["status"], strict=True))
        assert status[odd_te["subscribed"]] == "Subscribed" and status[odd_te["unknown"]] == "Paused"
        to_ghl = plan.filter((pl.col("field") == "company") & (pl.col("target") == "ghl"))
        assert {both[6], both[7]} <= set(to_ghl["key"])
        # an unknown status never loosens consent: no consent op for that person, GHL's DND untouched
        assert not plan.filter((pl.col("key") == both[7]) & (pl.col("field") == "consent")).height

        # the two unreadable records: last night's rows, no op at all (so no deletion), reported
        for entity, column, key in (("ghl_contacts", "contact_id", unreadable_contact),
                                    ("te_customers", "email", unreadable_customer)):
            now_row = store.latest_snapshot(entity).filter(pl.col(column) == key)
            then_row = previous[entity].filter(pl.col(column) == key)
            assert now_row.height == 1 and now_row.equals(then_row)
        held = {unreadable_contact, both[8]}
        assert not plan.filter(pl.col("key").is_in(sorted(held))).height
        ghl_after, te_after = state(second.ghl), state(second.te)
        assert unreadable_contact in {c["id"] for c in ghl_after["locations"][location]["contacts"]}
        assert unreadable_customer in {c["email"].strip().lower() for c in te_after["customers"]}
        assert next(c for c in te_after["customers"] if c["email"].strip().lower() == email_of[unreadable_contact]
                    )["company"] != "Never planned Co"
        reported = {(u["system"], u["key"]) for u in outcome.plan.unreadable}
        assert reported == {("ghl", unreadable_contact), ("tinyemail", unreadable_customer)}
        summary = outcome.summary or {}
        assert {(u["system"], u["key"]) for u in summary["unreadable"]} == reported
        assert all("tags" in u["problem"] and "vip" not in u["problem"] for u in summary["unreadable"])
        report = (data_dir / "runs" / outcome.run_id / "report.html").read_text()
        assert "Read problems" in report and unreadable_contact in report


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
