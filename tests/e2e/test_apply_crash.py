"""Crash-resume: `recon run` is killed with SIGKILL at several points of the apply stage (RECON_FAILPOINT,
contact_recon/stages/failpoints.py), then run again. The final states of both sandboxes equal those of an
uninterrupted run of the same fixture, with no duplicate contact, task or note, and nothing lost.

Each world is a pair of sandbox servers in this process and a data dir (tests/support/runs.py `RunWorld`). The
killed `recon run` is a real child process (the failpoint SIGKILLs it) against the session's Prefect server; every
other run (the reruns that must finish its work, and the uninterrupted reference) is the same command in this
process, which spares each a Python start-up of its own (Prefect, Great Expectations: seconds per run).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from contact_recon.sandbox.generate import generate_fixture
from tests.support.runs import RunWorld, Scale
from tests.support.servers import Sandboxes
from tests.support.worlds import duplicates, ghl_people, person_diff, te_people

# 30 people at --rate-scale 50; a run that takes longer than 240 s fails the test
SCALE = Scale("crash", people=30, rate_scale=50, drift=3, run_timeout_s=240)


def crash_fixture() -> dict[str, Any]:
    """People on one side only (creates both ways), and new subscribers (GHL tasks) once the base exists."""
    return generate_fixture(SCALE.people, seed=21, overlap=0.5, awkward=0.0)


class Env(RunWorld):
    """A crash world: `recon run` against both sandboxes and a data dir, and a fixed day of drift."""

    def drift(self) -> None:
        """A fixed day of changes, chosen by email (so two worlds drift alike whatever ids GHL gave): three new
        TinyEmail subscribers (GHL contacts and follow-up tasks), three TinyEmail cities, three GHL tags."""
        te_key = {"X-API-KEY": self.fixture["tinyemail"]["apiKeys"][0]}
        ghl_auth = {"Authorization": f"Bearer {self.fixture['ghl']['tokens'][0]['token']}", "Version": "2021-07-28"}
        # chosen from the fixture, not the live state, so a killed first run does not change the choice
        contacts = sorted((c for c in next(iter(self.fixture["ghl"]["locations"].values()))["contacts"]
                           if c.get("email")), key=lambda c: c["email"])
        emails = {x["email"].lower() for x in self.fixture["tinyemail"]["customers"]}
        both = [c for c in contacts if c["email"].lower() in emails]
        members = [{"email": f"new.subscriber{i}@example.org", "firstName": f"New{i}", "status": "Subscribed"}
                   for i in range(3)]
        members += [{"email": c["email"], "city": f"Drift City {i}"} for i, c in enumerate(both[:3])]
        answer = httpx.put(self.te_url + "/v1/account/customer", json={"updateMembers": members}, headers=te_key)
        assert answer.status_code == 200, answer.text
        # TinyEmail customers are seen through lists only: the new subscribers join the first list
        list_id = self.fixture["tinyemail"]["lists"][0]["id"]
        answer = httpx.put(f"{self.te_url}/v1/audiences/{list_id}", headers=te_key,
                           json={"assignMembers": [{"email": m["email"]} for m in members[:3]]})
        assert answer.status_code in (200, 204), answer.text
        for contact in both[3:6]:
            answer = httpx.post(f"{self.ghl_url}/contacts/{contact['id']}/tags", json={"tags": ["drift-tag"]},
                                headers=ghl_auth)
            assert answer.status_code in (200, 201), answer.text


@pytest.fixture
def env_of(sandboxes: Sandboxes, tmp_path: Path, prefect_server: str) -> Callable[[str], Env]:
    def make(name: str) -> Env:
        fixture = crash_fixture()
        ghl, te = sandboxes(fixture, rate_scale=SCALE.rate_scale)
        return Env(fixture, ghl.base_url, te.base_url, tmp_path / name, prefect_server, SCALE)
    return make


def final(env: Env) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    ghl, te = env.state()
    return ghl_people(ghl), te_people(te), duplicates(ghl)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return {}


def uninterrupted(env_of: Callable[[str], Env], reference: dict[str, Any]) -> tuple[Any, ...]:
    """Both systems after run, drift, run, run without interruption (computed once per module)."""
    if "final" not in reference:
        env = env_of("reference")
        for step in ("run", "drift", "run", "run"):
            if step == "drift":
                env.drift()
                continue
            done = env.run()  # in this process
            assert done.returncode == 0, done.stdout + done.stderr
        reference["final"] = final(env)
    return reference["final"]


@pytest.mark.parametrize(("killed_run", "failpoint"), [
    (1, "journaled"),              # the plan is journaled, nothing sent yet
    (1, "sending:3"),              # mid-way: the 3rd request is committed as sending but never leaves
    (1, "answered:create:2"),      # during a create: it landed, the journal does not know
    (2, "answered:task_create:1"),  # a follow-up task landed, its id never recorded
    (2, "answered:update:1"),      # a field update landed unrecorded
    (2, "sending:tag_add:1"),      # a tag add committed as sending, never sent
])
def test_a_killed_apply_is_finished_by_the_next_run(env_of: Callable[[str], Env], reference: dict[str, Any],
                                                    killed_run: int, failpoint: str) -> None:
    expected = uninterrupted(env_of, reference)
    env = env_of("crash")
    # the reference's steps (run, drift, run, run), with the killed run replaced by a kill and a rerun
    for step, is_killed in (("run", killed_run == 1), ("drift", False), ("run", killed_run == 2), ("run", False)):
        if step == "drift":
            env.drift()
            continue
        if is_killed:
            killed = env.child(RECON_FAILPOINT=failpoint)  # a real process, SIGKILLed at the failpoint
            assert killed.returncode == -signal.SIGKILL, (failpoint, killed.returncode, killed.stdout, killed.stderr)
        again = env.run()  # in this process
        assert again.returncode == 0, again.stdout + again.stderr

    ghl, te, dups = final(env)
    assert dups == {}
    assert person_diff(ghl, expected[0]) == {} and person_diff(te, expected[1]) == {}


def test_a_tinyemail_create_that_landed_before_a_kill_is_not_sent_again(env_of: Callable[[str], Env]) -> None:
    """Killed right after TinyEmail answered a create (the journal does not know it landed): the customer is
    already in the home list, so the next snapshot sees it and the next run creates nobody twice. (When the
    create and the home-list join were two calls, the kill fell between them: a customer in no list, which the
    snapshot, reading the lists' members, cannot see, so the next run sent the create again.)"""
    from contact_recon.store.db import db_path, open_db
    from contact_recon.store.journal import Journal

    env = env_of("te-create")
    killed = env.child(RECON_FAILPOINT="answered:tinyemail.create:1")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout, killed.stderr)
    again = env.run()
    assert again.returncode == 0, again.stdout + again.stderr
    with open_db(db_path(env.data)) as store:
        runs = store.runs().filter(store.runs()["kind"] == "reconcile").sort("started_at")["run_id"].to_list()
        first, second = (Journal(store).frame(run) for run in runs[:2])
    interrupted = first.filter((first["target"] == "tinyemail") & (first["kind"] == "create")
                               & (first["status"] == "failed"))
    assert interrupted.height, first.group_by("target", "kind", "status").len()
    resent = interrupted.join(second, on=["target", "key", "kind"])
    assert resent.height == 0, f"created again: {resent.select('key', 'status', 'status_right')}"
    _, te = env.state()
    home = next(lst for lst in te["lists"] if lst["name"] == "contact-recon")
    emails = {json.loads(new)["email"].lower() for new in interrupted["new"].to_list()}
    assert emails <= {e.lower() for e in home["members"]}, home
