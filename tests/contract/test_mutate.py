"""The mutator against both real sandbox servers: the reported operations happened, runs are
deterministic, rate limits are waited out, and credentials come from a fixture or the environment."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from contact_recon.sandbox import ghl, tinyemail
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.mutate import (
    CHANGE_WEIGHTS,
    MutateError,
    credentials_from_env,
    credentials_from_fixture,
    mutate,
    norm,
)
from contact_recon.sandbox.server import RunningServer

LENIENT = 100.0  # rate_scale that keeps these runs clear of the rate limits


@pytest.fixture(scope="module")
def fx() -> dict[str, Any]:
    return validate_fixture(json.loads(json.dumps(generate_fixture(150, seed=5))))


def start_pair(serve, fx: dict[str, Any], *, ghl_scale: float = LENIENT, te_scale: float = LENIENT,
               faults: str | None = None, clock=None) -> tuple[RunningServer, RunningServer]:
    extra = {"clock": clock} if clock is not None else {}
    ghl_part, te_part = json.loads(json.dumps(fx["ghl"])), json.loads(json.dumps(fx["tinyemail"]))
    g = serve(ghl.create_app(ghl_part, rate_scale=ghl_scale, faults=faults, search_lag_s=0, **extra))
    t = serve(tinyemail.create_app(te_part, rate_scale=te_scale, faults=faults, **extra))
    return g, t


def run(g: RunningServer, t: RunningServer, fx: dict[str, Any], changes: int, seed: int,
        **kw: Any) -> dict[str, Any]:
    return mutate(g.base_url, t.base_url + "/v1", changes, seed=seed, **credentials_from_fixture(fx), **kw)


def state(server: RunningServer) -> dict[str, Any]:
    return httpx.get(server.base_url + "/__sandbox/state").json()


def assert_applied(report: dict[str, Any], fx: dict[str, Any], g: RunningServer, t: RunningServer) -> None:
    """Every reported operation is visible in the servers' state, and nothing else changed the counts."""
    loc = credentials_from_fixture(fx)["ghl_location"]
    after_ghl, after_te = state(g)["locations"][loc], state(t)
    before = fx["ghl"]["locations"][loc]
    v = SimpleNamespace(
        contacts={c["id"]: c for c in after_ghl["contacts"]}, tasks={x["id"]: x for x in after_ghl["tasks"]},
        notes=after_ghl["notes"], customers={norm(c["email"]): c for c in after_te["customers"]},
        lists=after_te["lists"], contacts_before={c["id"]: c for c in before["contacts"]},
        customers_before={norm(c["email"]): c for c in fx["tinyemail"]["customers"]})
    for op in report["operations"]:
        CHECKS[(op["kind"], op["system"])](op, v)
    ops = Counter((op["kind"], op["system"]) for op in report["operations"])
    added, gone = ops["new_contact", "ghl"], ops["delete_contact", "ghl"]
    assert len(v.contacts) == len(before["contacts"]) + added - gone
    assert len(v.customers) == len(fx["tinyemail"]["customers"]) + ops["new_contact", "tinyemail"]
    deleted = {op["key"] for op in report["operations"] if op["kind"] == "delete_contact"}
    kept_tasks = [task for task in before["tasks"] if task["contactId"] not in deleted]  # deletes cascade
    kept_notes = [note for note in before["notes"] if note["contactId"] not in deleted]
    assert len(v.tasks) == len(kept_tasks) + ops["new_task", "ghl"]
    assert len(v.notes) == len(kept_notes) + ops["new_note", "ghl"]


def _record(op: dict[str, Any], v: SimpleNamespace, before: bool = False) -> dict[str, Any]:
    if op["system"] == "ghl":
        return (v.contacts_before if before else v.contacts)[op["key"]]
    return (v.customers_before if before else v.customers)[norm(op["key"])]


def _field(op: dict[str, Any], v: SimpleNamespace) -> None:
    assert _record(op, v, before=True).get(op["field"]) == op["old"] != op["new"], op
    assert _record(op, v)[op["field"]] == op["new"], op


def _tag(op: dict[str, Any], v: SimpleNamespace) -> None:
    tags_before, tags = _record(op, v, before=True).get("tags", []), _record(op, v).get("tags", [])
    if op["kind"] == "tag_add":
        assert op["new"] not in tags_before and op["new"] in tags, op
    else:
        assert op["old"] in tags_before and op["old"] not in tags, op


def _unsubscribed(op: dict[str, Any], v: SimpleNamespace) -> None:
    assert (op["old"], op["new"]) == ("Subscribed", "Unsubscribed")
    assert _record(op, v, before=True)["status"] == "Subscribed"
    assert _record(op, v)["status"] == "Unsubscribed"


def _new_ghl(op: dict[str, Any], v: SimpleNamespace) -> None:
    found = [c for c in v.contacts.values() if norm(c.get("email")) == op["key"]]
    assert len(found) == 1 and found[0]["firstName"] == op["new"]["firstName"], op
    assert found[0]["id"] not in v.contacts_before


def _new_te(op: dict[str, Any], v: SimpleNamespace) -> None:
    assert op["key"] not in v.customers_before
    assert v.customers[op["key"]]["lastName"] == op["new"]["lastName"]
    members = next(lst["members"] for lst in v.lists if lst["id"] == op["new"]["list"])
    assert op["key"] in {norm(m) for m in members}


def _deleted(op: dict[str, Any], v: SimpleNamespace) -> None:
    assert op["key"] in v.contacts_before and op["key"] not in v.contacts


def _new_task(op: dict[str, Any], v: SimpleNamespace) -> None:
    assert any(task["contactId"] == op["key"] and task["title"] == op["new"]["title"]
               and not task["completed"] for task in v.tasks.values()), op


def _new_note(op: dict[str, Any], v: SimpleNamespace) -> None:
    assert any(n["contactId"] == op["key"] and n["body"] == op["new"] for n in v.notes), op


def _completed(op: dict[str, Any], v: SimpleNamespace) -> None:
    assert v.tasks[op["taskId"]]["completed"] is True and v.tasks[op["taskId"]]["contactId"] == op["key"]


CHECKS = {
    ("edit", "ghl"): _field, ("edit", "tinyemail"): _field, ("conflict", "ghl"): _field,
    ("conflict", "tinyemail"): _field, ("tag_add", "ghl"): _tag, ("tag_add", "tinyemail"): _tag,
    ("tag_remove", "ghl"): _tag, ("tag_remove", "tinyemail"): _tag,
    ("unsubscribe", "tinyemail"): _unsubscribed, ("new_contact", "ghl"): _new_ghl,
    ("new_contact", "tinyemail"): _new_te, ("delete_contact", "ghl"): _deleted,
    ("new_task", "ghl"): _new_task, ("new_note", "ghl"): _new_note, ("complete_task", "ghl"): _completed,
}


def test_reported_operations_really_happened(serve, fx) -> None:
    g, t = start_pair(serve, fx)
    report = run(g, t, fx, 40, seed=1)
    assert report["changes"] == 40 == sum(report["by_kind"].values())
    assert set(report["by_kind"]) == set(CHANGE_WEIGHTS)
    assert sum(1 for n in report["by_kind"].values() if n) >= 7
    conflicts = [op for op in report["operations"] if op["kind"] == "conflict"]
    assert len(conflicts) == 2 * report["by_kind"]["conflict"]
    for a, b in zip(conflicts[::2], conflicts[1::2], strict=True):
        assert (a["system"], b["system"]) == ("ghl", "tinyemail")
        assert a["field"] == b["field"] and a["new"] != b["new"]
    assert_applied(report, fx, g, t)


def test_same_seed_gives_same_operations_on_a_fresh_pair(serve, fx) -> None:
    first = run(*start_pair(serve, fx), fx, 25, seed=4)
    second = run(*start_pair(serve, fx), fx, 25, seed=4)
    other = run(*start_pair(serve, fx), fx, 25, seed=5)
    assert first["operations"] == second["operations"]
    assert first["operations"] != other["operations"]


def test_rate_limits_are_waited_out(serve, fx, clock) -> None:
    """Tight budgets on conftest's fake clock: each 429's Retry-After is slept (by advancing the clock)
    and the run makes exactly the changes it makes without limits."""
    g, t = start_pair(serve, fx, ghl_scale=0.1, te_scale=0.2, clock=clock)  # 10 per 10 s; 12 a minute
    limited = run(g, t, fx, 30, seed=2, sleep=clock.advance)
    assert limited["rate_limited_waits_s"] > 0
    logs = [httpx.get(s.base_url + "/__sandbox/requests").json()["requests"] for s in (g, t)]
    statuses = [r["status"] for log in logs for r in log]
    assert statuses.count(429) > 0
    assert set(statuses) <= {200, 201, 204, 429}
    assert_applied(limited, fx, g, t)
    free = run(*start_pair(serve, fx), fx, 30, seed=2)
    assert limited["operations"] == free["operations"]


def test_injected_429s_are_retried(serve, fx) -> None:
    waits: list[float] = []
    g, t = start_pair(serve, fx, faults="429=0.2")
    report = run(g, t, fx, 20, seed=3, sleep=waits.append)
    assert report["changes"] == 20
    assert waits and all(w == 1.0 for w in waits)  # the middleware's Retry-After for a fault 429
    assert_applied(report, fx, g, t)


def test_a_spent_daily_allowance_stops_the_run_at_once(serve, fx) -> None:
    """A 429 with X-RateLimit-Daily-Remaining 0 would be waited out until midnight UTC: the run stops
    with an error that says so, after no wait at all, and changes only what it reported before."""
    g, t = start_pair(serve, fx)
    g.app.state.control.limiter.daily_limit = 8  # the listing of 150 contacts takes 1 request
    waits: list[float] = []
    with pytest.raises(MutateError, match="day's request allowance is used up") as caught:
        run(g, t, fx, 40, seed=7, sleep=waits.append)
    assert waits == []
    assert "Retry-After" in str(caught.value)
    log = httpx.get(g.base_url + "/__sandbox/requests").json()["requests"]
    assert [r["status"] for r in log].count(429) == 1
    assert sum(r["status"] != 429 for r in log) == 8


def test_credentials_from_fixture_and_env(fx) -> None:
    creds = credentials_from_fixture(fx)
    token = fx["ghl"]["tokens"][0]
    assert creds == {"ghl_token": token["token"], "ghl_location": token["locationId"],
                     "tinyemail_key": fx["tinyemail"]["apiKeys"][0]}
    env = {"RECON_GHL_TOKEN": "a", "RECON_GHL_LOCATION": "b", "RECON_TINYEMAIL_API_KEY": "c"}
    assert credentials_from_env(env) == {"ghl_token": "a", "ghl_location": "b", "tinyemail_key": "c"}
    with pytest.raises(ValueError, match="RECON_TINYEMAIL_API_KEY"):
        credentials_from_env({"RECON_GHL_TOKEN": "a", "RECON_GHL_LOCATION": "b"})
    with pytest.raises(ValueError):
        credentials_from_fixture({"ghl": {"tokens": []}, "tinyemail": {"apiKeys": ["k"]}})


def test_report_and_errors_never_hold_credentials(serve, fx) -> None:
    g, t = start_pair(serve, fx)
    creds = credentials_from_fixture(fx)
    report = json.dumps(run(g, t, fx, 10, seed=6))
    assert creds["ghl_token"] not in report and creds["tinyemail_key"] not in report
    with pytest.raises(Exception) as caught:
        mutate(g.base_url, t.base_url + "/v1", 5, seed=6, ghl_token="sbx-ghl-wrong", ghl_location="x",
               tinyemail_key=creds["tinyemail_key"])
    assert "401" in str(caught.value)
    assert creds["tinyemail_key"] not in str(caught.value) and "sbx-ghl-wrong" not in str(caught.value)
