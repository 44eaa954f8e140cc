"""The GHL webhook receiver over real HTTP on 127.0.0.1, emitting to the session's real Prefect server,
and the GHL sandbox's signed webhooks delivered to a running `recon webhooks serve` process.

Every test uses contact ids of its own, so the events it reads back from the shared Prefect server are
its own. An absence ("nothing was emitted") is judged after a later marker event of the same contact
has arrived: the receiver hands events to one ordered worker, so a wrongly emitted one would be there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contact_recon.events import (
    GHL_CONTACT_DELETED,
    GHL_CONTACT_TAG_UPDATED,
    GHL_CONTACT_UPDATED,
    GHL_NOTE_CREATED,
    GHL_WEBHOOK_EVENTS,
)
from contact_recon.sandbox import ghl
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.ghl_webhooks import private_key, sign
from contact_recon.sandbox.server import RunningServer, free_port
from contact_recon.service.webhooks import (
    EVENT_NAMESPACE,
    PATH,
    SIGNATURE_HEADER,
    MalformedWebhook,
    create_app,
    parse_webhook,
    seen_ids_path,
)
from contact_recon.settings import Settings
from tests.support import specs_dir
from tests.support.prefect import events_of, prefect_events, wait_for_events  # noqa: F401

RECON = [sys.executable, "-m", "contact_recon.cli.main"]
Serve = Callable[[Starlette], RunningServer]


# ------------------------------------------------------------------------------------------ helpers


def iso(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat().replace("+00:00", "Z")


def webhook(kind: str = "ContactUpdate", contact_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": kind, "locationId": "loc-webhooks", "timestamp": iso(),
                            "webhookId": str(uuid.uuid4()), "email": "someone@example.com"}
    body["id" if kind.startswith("Contact") else "contactId"] = contact_id or f"c-{uuid.uuid4().hex[:16]}"
    return body | extra


def post(server: RunningServer, body: dict[str, Any] | bytes, *, key: rsa.RSAPrivateKey | None = None,
         signature: str | None = None) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    sig = signature if signature is not None else sign(raw, key or private_key())
    if sig:
        headers[SIGNATURE_HEADER] = sig
    return httpx.post(server.base_url + PATH, content=raw, headers=headers, timeout=10)


def settings_for(data_dir: Path, key: str | None = "sandbox", window: float = 300) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, ghl_webhook_public_key=key, webhook_max_age_s=window)


@pytest.fixture
def receiver(serve: Serve, tmp_path: Path, prefect_events: str) -> RunningServer:  # noqa: F811
    return serve(create_app(settings_for(tmp_path)))


# --------------------------------------------------------------------------------------- accepting


def test_a_valid_webhook_is_accepted_and_its_event_reaches_prefect(receiver: RunningServer) -> None:
    body = webhook("ContactUpdate")
    answer = post(receiver, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "accepted" and answer.json()["event"] == GHL_CONTACT_UPDATED

    resource = f"ghl.contact.{body['id']}"
    [event] = wait_for_events(resource, {GHL_CONTACT_UPDATED})
    assert event.id == uuid.uuid5(EVENT_NAMESPACE, body["webhookId"])
    assert event.resource["ghl.contact.id"] == body["id"]
    assert event.resource["ghl.location.id"] == "loc-webhooks"
    assert event.payload == {"contact_id": body["id"], "location_id": "loc-webhooks", "webhook_type": "ContactUpdate",
                             "webhook_id": body["webhookId"]}
    assert "email" not in json.dumps(event.payload)  # ids only, no PII from the payload


def test_note_and_task_webhooks_name_their_contact(receiver: RunningServer) -> None:
    contact = f"c-{uuid.uuid4().hex[:16]}"
    note = webhook("NoteCreate", contact, id="note-1", body="private text")
    assert post(receiver, note).json()["event"] == GHL_NOTE_CREATED
    assert post(receiver, webhook("TaskCreate", contact, id="task-1", title="call")).status_code == 200
    found = wait_for_events(f"ghl.contact.{contact}", {GHL_NOTE_CREATED, "ghl.task.created"})
    by_name = {e.event: e for e in found}
    assert by_name[GHL_NOTE_CREATED].payload["object_id"] == "note-1"
    assert "private text" not in json.dumps(by_name[GHL_NOTE_CREATED].payload)


def test_every_documented_webhook_type_is_mapped() -> None:
    docs = sorted((specs_dir() / "ghl" / "docs" / "webhook events").glob("*.md"))
    documented = {re.search(r'"type": "([A-Z]\w+)"', doc.read_text()).group(1) for doc in docs}  # type: ignore[union-attr]
    assert len(docs) >= 11 and documented == set(GHL_WEBHOOK_EVENTS)


# --------------------------------------------------------------------------------------- refusing


def test_a_bad_signature_is_refused_with_401_and_not_emitted(receiver: RunningServer) -> None:
    contact = f"c-{uuid.uuid4().hex[:16]}"
    body = webhook("ContactUpdate", contact)
    raw = json.dumps(body).encode()
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tampered = raw.replace(b"someone@example.com", b"mallory@example.com")
    for answer in (post(receiver, raw, key=other_key),  # signed by someone else
                   post(receiver, tampered, signature=sign(raw, private_key())),  # body changed after signing
                   post(receiver, raw, signature=""),  # no signature header
                   post(receiver, raw, signature="not base64 !!")):
        assert answer.status_code == 401, answer.text
        assert SIGNATURE_HEADER in answer.json()["error"]
    marker = webhook("ContactTagUpdate", contact)
    assert post(receiver, marker).status_code == 200
    found = wait_for_events(f"ghl.contact.{contact}", {GHL_CONTACT_TAG_UPDATED})
    assert [e.event for e in found] == [GHL_CONTACT_TAG_UPDATED]


def test_ghls_published_key_is_the_default_and_refuses_a_sandbox_signature(serve: Serve, tmp_path: Path) -> None:
    server = serve(create_app(settings_for(tmp_path, key=None)))
    answer = post(server, webhook())
    assert answer.status_code == 401


def test_the_key_can_be_given_as_a_pem_file(serve: Serve, tmp_path: Path, prefect_events: str) -> None:  # noqa: F811
    from contact_recon.systems.ghl.contract import SANDBOX_PUBLIC_KEY_PEM

    pem = tmp_path / "ghl.pem"
    pem.write_text(SANDBOX_PUBLIC_KEY_PEM)
    server = serve(create_app(settings_for(tmp_path, key=str(pem))))
    assert post(server, webhook()).status_code == 200


def test_stale_and_future_timestamps_are_refused_with_400(receiver: RunningServer) -> None:
    for offset in (-301, -3600, 400):
        answer = post(receiver, webhook(timestamp=iso(offset)))
        assert answer.status_code == 400, (offset, answer.text)
        assert "stale timestamp" in answer.json()["error"]
    assert post(receiver, webhook(timestamp=iso(-200))).status_code == 200  # inside the window
    epoch_ms = int(time.time() * 1000)
    assert post(receiver, webhook(timestamp=epoch_ms)).status_code == 200  # epoch milliseconds are read too


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({"type": "ContactUpdate", "locationId": "l", "id": "c", "timestamp": "x"}).encode(), "webhookId"),
    (json.dumps({"type": "ContactUpdate", "locationId": "l", "webhookId": "w", "timestamp": iso()}).encode(),
     "id is missing"),
    (json.dumps({"type": "NoteCreate", "locationId": "l", "webhookId": "w", "id": "n", "timestamp": iso()}).encode(),
     "contactId"),
    (json.dumps({"type": "ContactUpdate", "locationId": "l", "webhookId": "w", "id": "c",
                 "timestamp": "yesterday"}).encode(), "timestamp"),
    (json.dumps({"type": "ContactUpdate", "locationId": "l", "webhookId": "w", "id": "has space",
                 "timestamp": iso()}).encode(), "id is missing or not an id"),
])
def test_malformed_payloads_are_refused_with_400(receiver: RunningServer, raw: bytes, reason: str) -> None:
    answer = post(receiver, raw)
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"]


def test_an_oversized_body_is_refused_with_413(receiver: RunningServer) -> None:
    assert post(receiver, b"x" * 1_000_001, signature="AAAA").status_code == 413


def test_an_unsynced_type_is_acknowledged_and_not_emitted(receiver: RunningServer) -> None:
    body = {"type": "OpportunityCreate", "locationId": "loc", "id": "opp-1", "timestamp": iso(),
            "webhookId": str(uuid.uuid4())}
    answer = post(receiver, body)
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"


# ------------------------------------------------------------------------------------------ replays


def test_a_repeated_webhook_id_is_acknowledged_once_even_after_a_restart(serve: Serve, tmp_path: Path,
                                                                           prefect_events: str) -> None:  # noqa: F811
    settings = settings_for(tmp_path)
    first = serve(create_app(settings))
    contact = f"c-{uuid.uuid4().hex[:16]}"
    body = webhook("ContactUpdate", contact)
    assert post(first, body).json()["status"] == "accepted"
    assert post(first, body).json() == {"status": "duplicate", "webhookId": body["webhookId"]}
    first.stop()
    assert body["webhookId"] in seen_ids_path(settings).read_text()

    restarted = serve(create_app(settings))  # a new process would load the same file
    again = post(restarted, body)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    marker = webhook("ContactTagUpdate", contact)
    assert post(restarted, marker).json()["status"] == "accepted"
    found = wait_for_events(f"ghl.contact.{contact}", {GHL_CONTACT_UPDATED, GHL_CONTACT_TAG_UPDATED})
    assert sorted(e.event for e in found) == [GHL_CONTACT_TAG_UPDATED, GHL_CONTACT_UPDATED]


def test_ids_are_forgotten_once_their_window_has_passed(serve: Serve, tmp_path: Path) -> None:
    now = [time.time()]
    settings = settings_for(tmp_path, window=60)
    events: list[str] = []

    def emit(name: str, **kwargs: Any) -> object:
        events.append(name)
        return object()

    server = serve(create_app(settings, emit=emit, clock=lambda: now[0]))
    body = webhook(timestamp=iso())
    assert post(server, body).json()["status"] == "accepted"
    now[0] += 61  # the window passed: the id is dropped, and the same body is now stale
    assert post(server, body).json()["error"].startswith("stale timestamp")
    assert len(server.app.state.receiver.seen) == 0
    restarted = create_app(settings, emit=emit, clock=lambda: now[0])
    assert len(restarted.state.receiver.seen) == 0 and seen_ids_path(settings).read_text() == ""


def test_an_event_prefect_did_not_take_gets_503_and_is_not_remembered(serve: Serve, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    body = webhook()
    down = serve(create_app(settings, emit=lambda *a, **k: None))
    answer = post(down, body)
    assert answer.status_code == 503
    down.stop()
    up = serve(create_app(settings, emit=lambda *a, **k: object()))
    assert post(up, body).json()["status"] == "accepted"  # GHL's redelivery goes through


# ------------------------------------------------------------------------------------------ fuzzing

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FIELD = st.one_of(JSON, st.text(max_size=30), st.sampled_from(["ContactUpdate", "NoteCreate", "c1", ""]))
NEAR_WEBHOOK = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from([*GHL_WEBHOOK_EVENTS, "Other"]), FIELD),
    "locationId": FIELD, "id": FIELD, "contactId": FIELD, "webhookId": st.one_of(st.uuids().map(str), FIELD),
    "timestamp": st.one_of(st.just("now"), st.integers(), st.floats(), FIELD),
})


def _materialise(body: dict[str, Any]) -> bytes:
    if body.get("timestamp") == "now":
        body["timestamp"] = iso()
    return json.dumps(body).encode()


@hsettings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                     NEAR_WEBHOOK.map(_materialise)))
def test_parsing_any_body_gives_a_webhook_or_malformed(raw: bytes) -> None:
    try:
        parsed = parse_webhook(raw)
    except MalformedWebhook:
        return
    assert parsed.webhook_id and parsed.location_id and parsed.timestamp.tzinfo is not None
    assert parsed.contact_id is not None or parsed.type not in GHL_WEBHOOK_EVENTS


def test_signed_random_bodies_never_get_a_500(serve: Serve, tmp_path: Path, prefect_events: str) -> None:  # noqa: F811
    server = serve(create_app(settings_for(tmp_path)))
    statuses: set[int] = set()
    with httpx.Client(base_url=server.base_url, timeout=10) as client:

        @hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(raw=st.one_of(st.binary(max_size=300), NEAR_WEBHOOK.map(_materialise)))
        def check(raw: bytes) -> None:
            answer = client.post(PATH, content=raw, headers={SIGNATURE_HEADER: sign(raw, private_key())})
            statuses.add(answer.status_code)
            assert answer.status_code in (200, 400), answer.text

        check()
    assert 400 in statuses


# ---------------------------------------------------------------------------- sandbox -> receiver


class ReceiverProcess:
    def __init__(self, proc: subprocess.Popen[str], url: str):
        self.proc, self.url = proc, url

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=20)
        return out


@pytest.fixture
def receiver_process(tmp_path: Path, prefect_events: str) -> Iterator[ReceiverProcess]:  # noqa: F811
    port = free_port()
    env = {**os.environ, "PREFECT_API_URL": prefect_events, "RECON_GHL_WEBHOOK_PUBLIC_KEY": "sandbox",
           "RECON_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    proc = subprocess.Popen([*RECON, "webhooks", "serve", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("GHL webhook receiver:"), first + (proc.stdout.read() if proc.poll() is not None else "")
    url = first.split()[-1]
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url.replace(PATH, "/healthz"), timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "the receiver did not start"
        time.sleep(0.1)
    running = ReceiverProcess(proc, url)
    yield running
    if proc.poll() is None:
        running.stop()


@pytest.fixture(scope="module")
def ghl_fixture() -> dict[str, Any]:
    return validate_fixture(json.loads(json.dumps(generate_fixture(20, seed=11, overlap=1.0))))["ghl"]


def _api(server: RunningServer, fixture: dict[str, Any]) -> tuple[httpx.Client, str, list[dict[str, Any]]]:
    token = next(t for t in fixture["tokens"] if "contacts.write" in t["scopes"])
    client = httpx.Client(base_url=server.base_url, timeout=10,
                          headers={"Authorization": f"Bearer {token['token']}", "Version": "2021-07-28"})
    return client, token["locationId"], fixture["locations"][token["locationId"]]["contacts"]


def test_sandbox_changes_reach_prefect_through_the_receiver(serve: Serve, ghl_fixture: dict[str, Any],
                                                            receiver_process: ReceiverProcess) -> None:
    app = ghl.create_app(json.loads(json.dumps(ghl_fixture)), rate_scale=10, webhook_url=receiver_process.url)
    server = serve(app)
    client, location, contacts = _api(server, ghl_fixture)
    updated, tagged, gone = contacts[0]["id"], contacts[1]["id"], contacts[2]["id"]
    started = time.monotonic()
    with client:
        assert client.put(f"/contacts/{updated}", json={"firstName": "Webhooked"}).status_code == 200
        assert client.put(f"/contacts/{updated}", json={"firstName": "Webhooked"}).status_code == 200  # no change
        assert client.post(f"/contacts/{tagged}/tags", json={"tags": ["vip-webhook"]}).status_code == 201
        assert client.post(f"/contacts/{tagged}/notes", json={"body": "called back"}).status_code == 201
        assert client.delete(f"/contacts/{gone}").status_code == 200
    emitter = app.state.webhooks
    assert emitter.wait_idle(20)
    assert (emitter.delivered, emitter.failed) == (4, 0)  # the unchanged second PUT sent nothing

    [update] = wait_for_events(f"ghl.contact.{updated}", {GHL_CONTACT_UPDATED})
    took = time.monotonic() - started
    assert update.resource["ghl.location.id"] == location
    found = wait_for_events(f"ghl.contact.{tagged}", {GHL_CONTACT_TAG_UPDATED, GHL_NOTE_CREATED})
    assert sorted(e.event for e in found) == [GHL_CONTACT_TAG_UPDATED, GHL_NOTE_CREATED]
    wait_for_events(f"ghl.contact.{gone}", {GHL_CONTACT_DELETED})
    print(f"sandbox write -> Prefect event: {took:.2f} s")
    out = receiver_process.stop()
    assert "called back" not in out and "Webhooked" not in out  # the receiver logs ids, not payloads


def test_a_slow_receiver_never_holds_the_api_answer(serve: Serve, ghl_fixture: dict[str, Any]) -> None:
    release, arrived = threading.Event(), threading.Event()

    async def hanging(request: Request) -> JSONResponse:
        arrived.set()
        while not release.is_set():  # noqa: ASYNC110  # a receiver stuck until the test lets it go
            import asyncio

            await asyncio.sleep(0.01)
        return JSONResponse({"ok": True})

    sink = serve(Starlette(routes=[Route("/hook", hanging, methods=["POST"])]))
    app = ghl.create_app(json.loads(json.dumps(ghl_fixture)), webhook_url=sink.base_url + "/hook")
    server = serve(app)
    client, _, contacts = _api(server, ghl_fixture)
    with client:
        answer = client.put(f"/contacts/{contacts[3]['id']}", json={"lastName": "Stuck"}, timeout=5)
    assert answer.status_code == 200  # answered while the webhook is still undelivered
    assert arrived.wait(10) and app.state.webhooks.delivered == 0
    release.set()
    assert app.state.webhooks.wait_idle(10) and app.state.webhooks.delivered == 1


def test_the_seen_ids_file_stays_one_window_long(tmp_path: Path) -> None:
    from contact_recon.service.webhooks import SeenIds

    now = [1_000.0]
    seen = SeenIds(tmp_path / "seen.jsonl", clock=lambda: now[0])
    for i in range(5000):
        seen.add(f"id-{i}", now[0] + 10)
        now[0] += 0.1  # 100 ids live in any 10 s window
    lines = len((tmp_path / "seen.jsonl").read_text().splitlines())
    assert len(seen) <= 101 and lines <= 2 * 101 + SeenIds.COMPACT_SLACK + 1
    assert "id-4999" in seen and "id-0" not in seen
    reloaded = SeenIds(tmp_path / "seen.jsonl", clock=lambda: now[0])
    assert "id-4999" in reloaded and len(reloaded) == len(seen)


def test_our_own_write_coming_back_is_acknowledged_as_an_echo_not_emitted(serve: Serve, tmp_path: Path) -> None:
    """The apply stage notes the contacts it writes (contact_recon/stages/echo.py); their update webhooks inside the
    window are acknowledged without an event, a deletion still goes through, and after the window an edit does."""
    from contact_recon.stages.echo import EchoLog

    now = [time.time()]
    emitted: list[str] = []

    def emit(name: str, **_: Any) -> object:
        emitted.append(name)
        return object()

    server = serve(create_app(settings_for(tmp_path), emit=emit, clock=lambda: now[0]))
    EchoLog(tmp_path, window_s=120, clock=lambda: now[0]).wrote(["c-ours"])

    assert post(server, webhook("ContactUpdate", "c-ours")).json()["status"] == "echo"
    assert post(server, webhook("ContactUpdate", "c-theirs")).json()["status"] == "accepted"
    assert post(server, webhook("ContactDelete", "c-ours")).json()["status"] == "accepted"
    now[0] += 121
    assert post(server, webhook("ContactUpdate", "c-ours", timestamp=iso(121))).json()["status"] == "accepted"
    assert emitted == [GHL_CONTACT_UPDATED, GHL_CONTACT_DELETED, GHL_CONTACT_UPDATED]
