"""Crash-resume: `recon run` is killed with SIGKILL at several points of the apply stage (RECON_FAILPOINT,
contact_recon/stages/failpoints.py), then run again. The final states of both sandboxes equal those of an uninterrupted run
of the same fixture, with no duplicate contact, task or note, and nothing lost.

Each world is a pair of sandbox servers in this process and a data dir; `recon run` runs as a real child
process against the session's Prefect server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from tests.apply_support import LOOSE, duplicates, ghl_people, te_people

REPO = Path(__file__).resolve().parent.parent


def crash_fixture() -> dict[str, Any]:
    """People on one side only (creates both ways), and new subscribers (GHL tasks) once the base exists."""
    return generate_fixture(30, seed=21, overlap=0.5, awkward=0.0)


class Env:
    def __init__(self, fixture: dict[str, Any], ghl: RunningServer, te: RunningServer, data: Path, api: str):
        self.fixture, self.ghl, self.te, self.data = fixture, ghl, te, data
        data.mkdir(parents=True, exist_ok=True)
        (data / "policy.toml").write_text(LOOSE)
        self.vars = {**os.environ, "PREFECT_API_URL": api, "RECON_DATA_DIR": str(data),
                     "RECON_GHL_BASE_URL": ghl.base_url, "RECON_GHL_TOKEN": fixture["ghl"]["tokens"][0]["token"],
                     "RECON_GHL_LOCATION_IDS": fixture["ghl"]["tokens"][0]["locationId"],
                     "RECON_TINYEMAIL_BASE_URL": te.base_url + "/v1",
                     "RECON_TINYEMAIL_API_KEY": fixture["tinyemail"]["apiKeys"][0],
                     "RECON_TINYEMAIL_RATE_PER_MINUTE": "3000", "RECON_POLICY_FILE": str(data / "policy.toml"),
                     "PREFECT_LOGGING_LEVEL": "WARNING"}

    def run(self, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.vars)
        env.pop("RECON_FAILPOINT", None)
        if failpoint:
            env["RECON_FAILPOINT"] = failpoint
        return subprocess.run([sys.executable, "-m", "contact_recon.cli.main", "run"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240)

    def drift(self) -> None:
        """A fixed day of changes, chosen by email (so two worlds drift alike whatever ids GHL gave): three new
        TinyEmail subscribers (GHL contacts and follow-up tasks), three TinyEmail cities, three GHL tags."""
        import httpx

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
        answer = httpx.put(self.te.base_url + "/v1/account/customer", json={"updateMembers": members}, headers=te_key)
        assert answer.status_code == 200, answer.text
        # TinyEmail customers are seen through lists only: the new subscribers join the first list
        list_id = self.fixture["tinyemail"]["lists"][0]["id"]
        answer = httpx.put(f"{self.te.base_url}/v1/audiences/{list_id}", headers=te_key,
                           json={"assignMembers": [{"email": m["email"]} for m in members[:3]]})
        assert answer.status_code in (200, 204), answer.text
        for contact in both[3:6]:
            answer = httpx.post(f"{self.ghl.base_url}/contacts/{contact['id']}/tags", json={"tags": ["drift-tag"]},
                                headers=ghl_auth)
            assert answer.status_code in (200, 201), answer.text

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        import httpx

        return (httpx.get(self.ghl.base_url + "/__sandbox/state").json(),
                httpx.get(self.te.base_url + "/__sandbox/state").json())


@pytest.fixture
def env_of(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path,
           prefect_server: str) -> Callable[[str], Env]:  # noqa: F811
    def make(name: str) -> Env:
        fixture = crash_fixture()
        ghl, te = sandboxes(fixture, rate_scale=50)
        return Env(fixture, ghl, te, tmp_path / name, prefect_server)
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
            done = env.run()
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
            killed = env.run(failpoint)
            assert killed.returncode == -signal.SIGKILL, (failpoint, killed.returncode, killed.stdout, killed.stderr)
        again = env.run()
        assert again.returncode == 0, again.stdout + again.stderr

    ghl, te, dups = final(env)
    assert dups == {}
    assert diff(ghl, expected[0]) == {} and diff(te, expected[1]) == {}


def diff(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    """Per person, the values that differ: (got, want)."""
    out: dict[str, Any] = {}
    for key in sorted(set(got) | set(want)):
        a, b = got.get(key), want.get(key)
        if a != b:
            out[key] = {k: (a.get(k), b.get(k)) for k in (a or b or {}) if (a or {}).get(k) != (b or {}).get(k)} \
                if a and b else ("missing" if a is None else "extra")
    return out
