"""`recon watch tinyemail`: the pure diff, and polls of the real TinyEmail sandbox whose changed customers
arrive as events on the session's real Prefect server (and only those)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contact_recon.events import TINYEMAIL_CUSTOMER_CREATED, TINYEMAIL_CUSTOMER_UPDATED
from contact_recon.sandbox import tinyemail
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.service.watch import (
    CustomerChange,
    customer_hashes,
    diff_hashes,
    poll_once,
    share_budget,
    state_path,
)
from contact_recon.settings import Settings
from contact_recon.systems.tinyemail.client import AudienceSnapshot, TinyEmailClient
from contact_recon.systems.tinyemail.models import Customer
from tests.support.prefect import events_of, prefect_events, wait_for_events  # noqa: F401

RECON = [sys.executable, "-m", "contact_recon.cli.main"]

# ------------------------------------------------------------------------------------------- pure


def test_diff_names_new_and_changed_emails_only() -> None:
    previous = {"a@x.io": "1", "b@x.io": "2", "gone@x.io": "3"}
    current = {"a@x.io": "1", "b@x.io": "changed", "new@x.io": "4"}
    assert diff_hashes(previous, current) == [CustomerChange("b@x.io", "updated"),
                                              CustomerChange("new@x.io", "created")]


@given(st.dictionaries(st.emails(), st.text(max_size=4)), st.dictionaries(st.emails(), st.text(max_size=4)))
def test_diff_laws(previous: dict[str, str], current: dict[str, str]) -> None:
    assert diff_hashes(current, current) == []  # polling twice without changes announces nothing
    changes = diff_hashes(previous, current)
    assert {c.email for c in changes} == {e for e in current if previous.get(e) != current[e]}
    assert all((c.kind == "created") == (c.email not in previous) for c in changes)


def test_hashes_follow_fields_and_lists_not_order() -> None:
    def snapshot(first_name: str, lists: list[str]) -> AudienceSnapshot:
        snap = AudienceSnapshot()
        for list_id in lists:
            snap.add(list_id, Customer(email="A@x.io", firstName=first_name, tags=["t"]))
        return snap

    base = customer_hashes(snapshot("Ann", ["l1", "l2"]))
    assert list(base) == ["a@x.io"]
    assert customer_hashes(snapshot("Ann", ["l2", "l1"])) == base
    assert customer_hashes(snapshot("Anne", ["l1", "l2"])) != base
    assert customer_hashes(snapshot("Ann", ["l1"])) != base


def test_the_budget_is_the_share_of_the_key_allowance() -> None:
    settings = Settings(_env_file=None, tinyemail_rate_per_minute=60)
    assert share_budget(settings, 0.5).limit == 30 and share_budget(settings, 0.5).window_s == 60
    assert share_budget(settings, 0.001).limit == 1


# ----------------------------------------------------------------------------------- against sandbox


@pytest.fixture
def world(serve: Any, tmp_path: Path) -> tuple[RunningServer, Settings, dict[str, Any]]:
    fixture = validate_fixture(json.loads(json.dumps(generate_fixture(60, seed=23, lists=2))))["tinyemail"]
    server = serve(tinyemail.create_app(json.loads(json.dumps(fixture)), rate_scale=100))
    settings = Settings(_env_file=None, data_dir=tmp_path, tinyemail_base_url=server.base_url + "/v1",
                        tinyemail_api_key=fixture["apiKeys"][0], tinyemail_rate_per_minute=6000)
    return server, settings, fixture


def _write(settings: Settings, customers: list[Customer]) -> None:
    async def run() -> None:
        async with TinyEmailClient.from_settings(settings, budget=share_budget(settings, 1.0)) as client:
            await client.upsert_customers(customers)
            lists = await client.lists()
            await client.add_to_list(lists[0].id, [c.email for c in customers])

    asyncio.run(run())


def test_a_poll_emits_events_for_changed_customers_only(world: tuple[RunningServer, Settings, dict[str, Any]],
                                                        prefect_events: str) -> None:  # noqa: F811
    from prefect.events import emit_event

    server, settings, fixture = world
    first = asyncio.run(poll_once(settings, share_budget(settings, 0.5), emit_event))
    assert first.baseline and first.changes == [] and first.customers > 0 and first.requests >= 2
    assert state_path(settings).exists()

    emails = sorted(json.loads(state_path(settings).read_text())["hashes"])
    changed, untouched = emails[0], emails[1]
    new = f"watch-{time.time_ns()}@example.com"
    _write(settings, [Customer(email=changed, firstName="Changed-by-test"), Customer(email=new, firstName="New")])

    second = asyncio.run(poll_once(settings, share_budget(settings, 0.5), emit_event))
    assert not second.baseline
    assert second.changes == sorted([CustomerChange(changed, "updated"), CustomerChange(new, "created")],
                                    key=lambda c: c.email)
    assert second.emitted == 2 and (second.created, second.updated) == (1, 1)

    [updated] = wait_for_events(f"tinyemail.customer.{changed}", {TINYEMAIL_CUSTOMER_UPDATED})
    [created] = wait_for_events(f"tinyemail.customer.{new}", {TINYEMAIL_CUSTOMER_CREATED})
    assert updated.event == TINYEMAIL_CUSTOMER_UPDATED and created.event == TINYEMAIL_CUSTOMER_CREATED
    assert updated.payload == {"email": changed, "change": "updated"}
    assert updated.resource["tinyemail.customer.email"] == changed
    assert events_of(f"tinyemail.customer.{untouched}") == []  # emitted in the same batch as the two above

    third = asyncio.run(poll_once(settings, share_budget(settings, 0.5), emit_event))
    assert third.changes == [] and third.emitted == 0


def test_recon_watch_tinyemail_once_records_a_baseline(world: tuple[RunningServer, Settings, dict[str, Any]],
                                                       prefect_events: str) -> None:  # noqa: F811
    _, settings, _ = world
    env = {**os.environ, "PREFECT_API_URL": prefect_events, "RECON_DATA_DIR": str(settings.data_dir),
           "RECON_TINYEMAIL_BASE_URL": settings.tinyemail_base_url, "COLUMNS": "200",
           "RECON_TINYEMAIL_API_KEY": settings.tinyemail_api_key.get_secret_value(),  # type: ignore[union-attr]
           "RECON_TINYEMAIL_RATE_PER_MINUTE": "6000"}
    done = subprocess.run([*RECON, "watch", "tinyemail", "--once", "--budget-share", "0.25"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1500 requests a minute (25% of 6000)" in done.stdout
    assert "baseline:" in done.stdout and "customers recorded" in done.stdout
    assert env["RECON_TINYEMAIL_API_KEY"] not in done.stdout + done.stderr
    no_prefect = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {"PREFECT_API_URL": ""}
    refused = subprocess.run([*RECON, "watch", "tinyemail", "--once"], env=no_prefect, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "PREFECT_API_URL" in refused.stderr




def test_our_own_writes_are_not_emitted_a_persons_change_is(world: tuple[RunningServer, Settings, dict[str, Any]]
                                                             ) -> None:
    """The apply stage notes the customers it writes (contact_recon/stages/echo.py `tinyemail_log`); the watcher
    drops their changes inside the window, so a night's writes never queue a sync run each."""
    from contact_recon.stages.echo import tinyemail_filter, tinyemail_log

    server, settings, fixture = world
    sent: list[str] = []

    def emit(event: str, **kwargs: Any) -> object:
        sent.append(kwargs["payload"]["email"])
        return object()

    echo = tinyemail_filter(settings.data_dir)
    emails = sorted(c["email"].lower() for c in fixture["customers"])
    ours, persons, earlier = emails[0], emails[1], emails[2]
    tinyemail_log(settings.data_dir).wrote(emails=[earlier])  # a write the baseline poll already saw
    time.sleep(0.01)
    assert asyncio.run(poll_once(settings, share_budget(settings, 0.5), emit, echo=echo)).baseline
    tinyemail_log(settings.data_dir).wrote(emails=[ours.upper()])  # noted before the write; case does not matter
    _write(settings, [Customer(email=e, firstName="Changed") for e in (ours, persons, earlier)])

    result = asyncio.run(poll_once(settings, share_budget(settings, 0.5), emit, echo=echo))

    assert [c.email for c in result.changes] == sorted([ours, persons, earlier])
    assert (result.echoes, result.emitted, sorted(sent)) == (1, 2, sorted([persons, earlier]))
