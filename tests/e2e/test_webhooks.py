"""The GHL webhook receiver over real HTTP on 127.0.0.1, forwarding to the session's real Prefect server,
and the GHL sandbox's signed webhooks delivered to a running `recon webhooks serve` process.

Every test uses contact ids of its own, so the events it reads back from the shared Prefect server are
its own. An absence ("nothing was emitted") is judged after a later marker event of the same contact
has arrived: the forwarder hands events over in spool order, so a wrongly emitted one would be there.
The chaos stories (Prefect unreachable, SIGKILL) are in test_webhook_chaos.py; what note and task webhooks
make the sync and the snapshot do is in test_webhook_syncs.py.
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
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
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
from contact_recon.sandbox.ghl_webhooks import SigningKey, ed25519_private_key, private_key, sign, signature_header
from contact_recon.sandbox.server import RunningServer, free_port
from contact_recon.service.signatures import WebhookKeyError, load_keys
from contact_recon.service.spool import spool_path
from contact_recon.service.webhooks import (
    EVENT_NAMESPACE,
    PATH,
    MalformedWebhook,
    create_app,
    parse_webhook,
    seen_ids_path,
)
from contact_recon.settings import Settings
from contact_recon.systems.ghl.contract import (
    ED25519_SIGNATURE_HEADER,
    RSA_SIGNATURE_HEADER,
    SANDBOX_ED25519_PUBLIC_KEY_PEM,
    SANDBOX_RSA_PUBLIC_KEY_PEM,
)
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


def post(server: RunningServer | str, body: dict[str, Any] | bytes, *, key: SigningKey | None = None,
         signature: str | None = None, header: str | None = None) -> httpx.Response:
    """POST a webhook signed like GHL: by `key` (default the sandbox's Ed25519 test key) in its header, or
    `signature` as given (empty: no signature header) in `header`."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    key = key or ed25519_private_key()
    headers = {"content-type": "application/json"}
    sig = signature if signature is not None else sign(raw, key)
    if sig:
        headers[header or signature_header(key)] = sig
    url = server if isinstance(server, str) else server.base_url + PATH
    return httpx.post(url, content=raw, headers=headers, timeout=10)


def settings_for(data_dir: Path, key: str | None = "sandbox", window: float = 300, dedupe: float | None = None,
                 **extra: Any) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, ghl_webhook_public_key=key, webhook_max_age_s=window,
                    webhook_dedupe_window_s=dedupe if dedupe is not None else max(window, 5400), **extra)


def spooled(server: RunningServer) -> list[Any]:
    """The events a receiver (started with forward=False) spooled, oldest first."""
    return server.app.state.receiver.spool.pending(10_000)


def wait_drained(server: RunningServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(server.app.state.receiver.spool):
        assert time.monotonic() < deadline, f"{len(server.app.state.receiver.spool)} events still spooled"
        time.sleep(0.2)


@pytest.fixture
def receiver(serve: Serve, tmp_path: Path, prefect_events: str) -> Iterator[RunningServer]:  # noqa: F811
    server = serve(create_app(settings_for(tmp_path)))
    yield server
    server.app.state.forwarder.stop()


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


# ------------------------------------------------------------------------------------ signatures


def test_ed25519_and_rsa_signatures_each_verify_under_their_own_key(receiver: RunningServer) -> None:
    """`sandbox` configures both test keys: an Ed25519 X-GHL-Signature and a legacy RSA x-wh-signature each pass."""
    contact = f"c-{uuid.uuid4().hex[:16]}"
    by_ed25519 = post(receiver, webhook("ContactUpdate", contact), key=ed25519_private_key())
    by_rsa = post(receiver, webhook("ContactTagUpdate", contact), key=private_key())
    assert (by_ed25519.status_code, by_rsa.status_code) == (200, 200), (by_ed25519.text, by_rsa.text)
    found = wait_for_events(f"ghl.contact.{contact}", {GHL_CONTACT_UPDATED, GHL_CONTACT_TAG_UPDATED})
    assert len(found) == 2
    wait_drained(receiver)


def test_tampered_missing_and_misplaced_signatures_are_refused_with_401(receiver: RunningServer) -> None:
    contact = f"c-{uuid.uuid4().hex[:16]}"
    raw = json.dumps(webhook("ContactUpdate", contact)).encode()
    tampered = raw.replace(b"someone@example.com", b"mallory@example.com")
    other_ed = ed25519.Ed25519PrivateKey.generate()
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed, legacy = ed25519_private_key(), private_key()
    cases = {
        "Ed25519 by another key": post(receiver, raw, key=other_ed),
        "RSA by another key": post(receiver, raw, key=other_rsa),
        "Ed25519, body changed after signing": post(receiver, tampered, signature=sign(raw, ed),
                                                    header=ED25519_SIGNATURE_HEADER),
        "RSA, body changed after signing": post(receiver, tampered, signature=sign(raw, legacy),
                                                header=RSA_SIGNATURE_HEADER),
        "no signature header": post(receiver, raw, signature=""),
        "not base64": post(receiver, raw, signature="not base64 !!", header=ED25519_SIGNATURE_HEADER),
        # the wrong type of signature in a header: each header is checked only with its own key type
        "RSA signature in X-GHL-Signature": post(receiver, raw, signature=sign(raw, legacy),
                                                 header=ED25519_SIGNATURE_HEADER),
        "Ed25519 signature in x-wh-signature": post(receiver, raw, signature=sign(raw, ed),
                                                    header=RSA_SIGNATURE_HEADER),
    }
    for case, answer in cases.items():
        assert answer.status_code == 401, (case, answer.text)
        assert ED25519_SIGNATURE_HEADER in answer.json()["error"] and RSA_SIGNATURE_HEADER in answer.json()["error"]
    marker = webhook("ContactTagUpdate", contact)
    assert post(receiver, marker).status_code == 200
    found = wait_for_events(f"ghl.contact.{contact}", {GHL_CONTACT_TAG_UPDATED})
    assert [e.event for e in found] == [GHL_CONTACT_TAG_UPDATED]


def test_a_signature_whose_key_type_is_not_configured_is_refused(serve: Serve, tmp_path: Path) -> None:
    """Only an RSA key configured (GHL's published one is the default): a valid Ed25519 signature proves nothing,
    and only an Ed25519 key: a valid RSA signature proves nothing."""
    (tmp_path / "ed.pem").write_text(SANDBOX_ED25519_PUBLIC_KEY_PEM)
    (tmp_path / "rsa.pem").write_text(SANDBOX_RSA_PUBLIC_KEY_PEM)
    rsa_only = serve(create_app(settings_for(tmp_path / "a", key=str(tmp_path / "rsa.pem")), forward=False))
    ed_only = serve(create_app(settings_for(tmp_path / "b", key=str(tmp_path / "ed.pem")), forward=False))
    default = serve(create_app(settings_for(tmp_path / "c", key=None), forward=False))
    assert post(rsa_only, webhook(), key=ed25519_private_key()).status_code == 401
    assert post(rsa_only, webhook(), key=private_key()).status_code == 200
    assert post(ed_only, webhook(), key=private_key()).status_code == 401
    refused = post(ed_only, webhook(), key=private_key()).json()["error"]
    assert ED25519_SIGNATURE_HEADER in refused and RSA_SIGNATURE_HEADER not in refused  # names what it needs
    assert post(ed_only, webhook(), key=ed25519_private_key()).status_code == 200
    assert post(default, webhook(), key=ed25519_private_key()).status_code == 401  # GHL's RSA key only
    assert post(default, webhook(), key=private_key()).status_code == 401  # the sandbox key is not GHL's


def test_several_pem_keys_inline_or_in_one_file(serve: Serve, tmp_path: Path) -> None:
    both = SANDBOX_RSA_PUBLIC_KEY_PEM + "\n" + SANDBOX_ED25519_PUBLIC_KEY_PEM
    (tmp_path / "keys.pem").write_text(both)
    assert load_keys(both).types == ["Ed25519", "RSA"] == load_keys(str(tmp_path / "keys.pem")).types
    assert load_keys("sandbox").types == ["Ed25519", "RSA"] and load_keys(None).types == ["RSA"]
    server = serve(create_app(settings_for(tmp_path / "d", key=str(tmp_path / "keys.pem")), forward=False))
    assert post(server, webhook(), key=ed25519_private_key()).status_code == 200
    assert post(server, webhook(), key=private_key()).status_code == 200


def test_a_key_of_another_type_is_refused_at_start(tmp_path: Path, prefect_server: str) -> None:  # noqa: F811
    from cryptography.hazmat.primitives import serialization

    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(WebhookKeyError, match="key 2 is an EC key: only Ed25519"):
        load_keys(SANDBOX_ED25519_PUBLIC_KEY_PEM + ec_pem)
    with pytest.raises(WebhookKeyError, match="no PEM public key"):
        load_keys("-----BEGIN nothing")
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "RECON_GHL_WEBHOOK_PUBLIC_KEY": ec_pem,
           "RECON_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    done = subprocess.run([*RECON, "webhooks", "serve", "--port", str(free_port())], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is an EC key: only Ed25519 (X-GHL-Signature) and RSA (x-wh-signature)" in " ".join(done.stderr.split())


def test_a_sustained_share_of_401s_raises_an_alert_event(serve: Serve, tmp_path: Path,
                                                          prefect_events: str) -> None:  # noqa: F811
    """A rotated key: every real webhook now fails. Past the minimum count and share within the window, the
    receiver emits `recon.webhooks.unauthorized` once (not per request); occasional 401s among good webhooks do not."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    from contact_recon.events import WEBHOOKS_UNAUTHORIZED

    now = [time.time()]
    settings = settings_for(tmp_path, webhook_401_alert_min=4, webhook_401_alert_share=0.5,
                            webhook_401_alert_window_s=600)
    server = serve(create_app(settings, clock=lambda: now[0]))
    stranger = ed25519.Ed25519PrivateKey.generate()
    for _ in range(3):  # 3 good, 3 bad: under the minimum of 4
        assert post(server, webhook(timestamp=iso())).status_code == 200
        assert post(server, webhook(), key=stranger).status_code == 401
    assert server.app.state.receiver.watch._alerted_at is None
    now[0] += 601  # a new window: 5 refused of 6
    assert post(server, webhook(timestamp=iso(601))).status_code == 200
    for _ in range(5):
        assert post(server, webhook(), key=stranger).status_code == 401
    alerted_at = server.app.state.receiver.watch._alerted_at
    assert alerted_at == now[0]
    wait_drained(server)
    from prefect.client.orchestration import get_client

    flt = EventFilter(event=EventNameFilter(name=[WEBHOOKS_UNAUTHORIZED]), occurred=EventOccurredFilter(
        since=datetime.fromtimestamp(now[0] - 5, tz=UTC), until=datetime.fromtimestamp(now[0] + 5, tz=UTC)))
    with get_client(sync_client=True) as client:
        events = list(client.read_events(filter=flt, limit=50).events)
    # one alert, at the 4th refusal of the window (4 of 5 requests); the 5th is inside the same window: no second
    assert [e.payload for e in events] == [{"refused": 4, "requests": 5, "share": 0.8, "window_s": 600.0,
                                            "key_types": ["Ed25519", "RSA"]}]
    assert events[0].resource.id == "recon.webhooks.receiver"
    server.app.state.forwarder.stop()


# --------------------------------------------------------------------------------------- refusing


def test_ghls_published_key_is_the_default_and_refuses_a_sandbox_signature(serve: Serve, tmp_path: Path) -> None:
    server = serve(create_app(settings_for(tmp_path, key=None), forward=False))
    assert post(server, webhook()).status_code == 401  # Ed25519: GHL's published key is RSA
    assert post(server, webhook(), key=private_key()).status_code == 401  # RSA, but the sandbox's key


def test_the_key_can_be_given_as_a_pem_file(serve: Serve, tmp_path: Path, prefect_events: str) -> None:  # noqa: F811
    from contact_recon.systems.ghl.contract import SANDBOX_PUBLIC_KEY_PEM

    pem = tmp_path / "ghl.pem"
    pem.write_text(SANDBOX_PUBLIC_KEY_PEM)
    server = serve(create_app(settings_for(tmp_path, key=str(pem))))
    assert post(server, webhook(), key=private_key()).status_code == 200
    server.app.state.forwarder.stop()


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
    contact = f"c-{uuid.uuid4().hex[:16]}"
    body = {"type": "OpportunityCreate", "locationId": "loc", "id": contact, "contactId": contact,
            "timestamp": iso(), "webhookId": str(uuid.uuid4())}
    answer = post(receiver, body)
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    # a synced webhook of the same contact after it: once its event is in Prefect, a wrongly emitted one would be
    # there too (the forwarder hands events over in spool order); neither its resource nor its id has any
    marker = webhook("ContactTagUpdate", contact)
    assert post(receiver, marker).json()["status"] == "accepted"
    found = wait_for_events(f"ghl.contact.{contact}", {GHL_CONTACT_TAG_UPDATED})
    assert [e.event for e in found] == [GHL_CONTACT_TAG_UPDATED]
    assert len(events_with_id(uuid.uuid5(EVENT_NAMESPACE, marker["webhookId"]))) == 1  # the lookup finds one
    assert events_with_id(uuid.uuid5(EVENT_NAMESPACE, body["webhookId"])) == []  # under any resource


def events_with_id(event_id: uuid.UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter, EventOccurredFilter

    flt = EventFilter(id=EventIDFilter(id=[event_id]), occurred=EventOccurredFilter(
        since=datetime.now(UTC) - timedelta(days=1), until=datetime.now(UTC) + timedelta(hours=2)))
    with get_client(sync_client=True) as client:
        return list(client.read_events(filter=flt, limit=10).events)


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
    settings = settings_for(tmp_path, window=60, dedupe=90)
    server = serve(create_app(settings, clock=lambda: now[0], forward=False))
    body = webhook(timestamp=iso())
    assert post(server, body).json()["status"] == "accepted"
    now[0] += 61  # past the age window: the same body is now stale, and the id is still remembered
    assert post(server, body).json()["error"].startswith("stale timestamp")
    assert len(server.app.state.receiver.seen) == 1
    now[0] += 30  # past the dedupe window: the id is dropped
    assert len(server.app.state.receiver.seen) == 0
    restarted = create_app(settings, clock=lambda: now[0], forward=False)
    assert len(restarted.state.receiver.seen) == 0 and seen_ids_path(settings).read_text() == ""


def test_the_dedupe_window_cannot_be_shorter_than_the_age_window(tmp_path: Path) -> None:
    assert Settings(_env_file=None).webhook_max_age_s >= 75 * 60  # GHL's retries of a 429 span about 70 minutes
    assert Settings(_env_file=None).webhook_dedupe_window_s >= Settings(_env_file=None).webhook_max_age_s
    with pytest.raises(ValueError, match="webhook_dedupe_window_s must be at least webhook_max_age_s"):
        Settings(_env_file=None, webhook_max_age_s=3600, webhook_dedupe_window_s=600)


def test_a_full_spool_answers_429_and_ghls_retry_20_minutes_later_is_accepted_once(
        serve: Serve, tmp_path: Path, prefect_events: str) -> None:  # noqa: F811
    """GHL retries only a 429, with the same body and its original timestamp, about every 10 minutes. The spool
    refuses (over its cap) -> 429 with Retry-After, nothing remembered; 20 minutes later the very same bytes are
    accepted (the timestamp is inside the 75 min age window) and their event reaches Prefect; a third delivery,
    10 minutes on, is a duplicate. Default windows, injected clock."""
    now = [time.time()]
    contact = f"c-{uuid.uuid4().hex[:16]}"
    body = json.dumps(webhook("NoteCreate", contact, id="note-retried", timestamp=iso())).encode()
    settings = Settings(_env_file=None, data_dir=tmp_path, ghl_webhook_public_key="sandbox",
                        webhook_spool_max_bytes=100)
    full = serve(create_app(settings, clock=lambda: now[0], forward=False))
    refused = post(full, body)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "600" and "deliver it again later" in refused.json()["error"]
    assert len(full.app.state.receiver.seen) == 0 and spooled(full) == []
    full.stop()

    now[0] += 20 * 60
    roomy = Settings(_env_file=None, data_dir=tmp_path, ghl_webhook_public_key="sandbox")
    server = serve(create_app(roomy, clock=lambda: now[0]))
    again = post(server, body)
    assert again.status_code == 200 and again.json()["status"] == "accepted", again.text
    now[0] += 10 * 60
    assert post(server, body).json()["status"] == "duplicate"
    wait_drained(server)
    found = wait_for_events(f"ghl.contact.{contact}", {GHL_NOTE_CREATED})
    assert len(found) == 1 and found[0].id == uuid.UUID(again.json()["eventId"])
    server.app.state.forwarder.stop()


def test_a_spool_write_that_fails_answers_429_never_5xx(serve: Serve, tmp_path: Path) -> None:
    """The disk refuses the append (here: a directory where the spool file was): 429, and the id is not remembered."""
    settings = settings_for(tmp_path)
    server = serve(create_app(settings, forward=False))
    spool_file = spool_path(tmp_path)
    spool_file.unlink()
    spool_file.mkdir()
    body = webhook()
    answer = post(server, body)
    assert answer.status_code == 429 and "cannot be written" in answer.json()["error"], answer.text
    assert body["webhookId"] not in server.app.state.receiver.seen
    spool_file.rmdir()
    assert post(server, body).json()["status"] == "accepted"  # GHL's retry once the disk takes it


def test_the_spool_keeps_unconfirmed_events_across_a_restart_and_stays_compact(tmp_path: Path) -> None:
    from contact_recon.service.spool import Spool, SpoolItem

    path = tmp_path / "spool.jsonl"
    spool = Spool(path, max_bytes=10_000_000)
    items = [SpoolItem(str(uuid.uuid4()), "ghl.contact.updated", {"prefect.resource.id": f"ghl.contact.c{i}"},
                       {"contact_id": f"c{i}"}, iso()) for i in range(3000)]
    for item in items:
        spool.append(item)
    spool.done(i.id for i in items[:1000])
    for item in items[1000:2990]:
        spool.done([item.id])  # one line each: past COMPACT_SLACK the file is rewritten with the pending only
    with path.open("a") as out:
        out.write('{"add": {"id": "torn')  # a crash mid-append, before the fsync (so before any 200)
    reloaded = Spool(path, max_bytes=10_000_000)
    assert [i.id for i in reloaded.pending(100)] == [i.id for i in items[2990:]]
    assert len(path.read_text().splitlines()) == 10  # rewritten at load: the pending events only
    reloaded.done(i.id for i in items[2990:])
    assert path.read_text() == "" and len(reloaded) == 0


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
    assert parsed.contact_id is not None or parsed.type not in GHL_WEBHOOK_EVENTS or parsed.location_tasks


def test_signed_random_bodies_never_get_a_500(serve: Serve, tmp_path: Path, prefect_events: str) -> None:  # noqa: F811
    server = serve(create_app(settings_for(tmp_path), forward=False))
    statuses: set[int] = set()
    with httpx.Client(base_url=server.base_url, timeout=10) as client:

        @hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(raw=st.one_of(st.binary(max_size=300), NEAR_WEBHOOK.map(_materialise)))
        def check(raw: bytes) -> None:
            signature = sign(raw, ed25519_private_key())
            answer = client.post(PATH, content=raw, headers={ED25519_SIGNATURE_HEADER: signature})
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
    server = serve(create_app(settings_for(tmp_path), clock=lambda: now[0], forward=False))
    EchoLog(tmp_path, window_s=120, clock=lambda: now[0]).wrote(["c-ours"])

    assert post(server, webhook("ContactUpdate", "c-ours")).json()["status"] == "echo"
    assert post(server, webhook("ContactUpdate", "c-theirs")).json()["status"] == "accepted"
    assert post(server, webhook("ContactDelete", "c-ours")).json()["status"] == "accepted"
    now[0] += 121
    assert post(server, webhook("ContactUpdate", "c-ours", timestamp=iso(121))).json()["status"] == "accepted"
    assert [item.event for item in spooled(server)] == [GHL_CONTACT_UPDATED, GHL_CONTACT_DELETED, GHL_CONTACT_UPDATED]


# ------------------------------------------------------------------------------------ agency installs


def test_install_and_uninstall_webhooks_add_and_retire_locations(serve: Serve, tmp_path: Path) -> None:
    from contact_recon.stages.run import reconcile, sync
    from contact_recon.store.installs import read_installs, retired_locations

    settings = settings_for(tmp_path)
    server = serve(create_app(settings, forward=False))

    def install(kind: str, **ids: str) -> httpx.Response:
        return post(server, {"type": kind, "appId": "app-1", "timestamp": iso(), "webhookId": str(uuid.uuid4()),
                             "installType": "Location", "userId": "u-1", **ids})

    for location in ("loc-a", "loc-b"):
        answer = install("INSTALL", locationId=location, companyId="company-1")
        assert (answer.status_code, answer.json()["status"]) == (200, "installed")
    assert {loc: e["state"] for loc, e in read_installs(tmp_path).items()} == {"loc-a": "installed",
                                                                              "loc-b": "installed"}
    assert install("UNINSTALL", locationId="loc-a").json() == {"status": "retired", "locations": ["loc-a"]}
    assert retired_locations(tmp_path) == {"loc-a"}
    assert spooled(server) == []  # no contact to sync: nothing emitted

    # retired: no more writes (a sync does nothing, a run covering only it is refused), its record kept
    assert sync(settings, contact_id="c-1", location_id="loc-a") == {"status": "retired", "location_id": "loc-a"}
    with pytest.raises(ValueError, match="retired"):
        reconcile(settings, locations=["loc-a"])
    assert read_installs(tmp_path)["loc-a"]["company_id"] == "company-1"

    # an agency uninstall names only its company: every location of it is retired; an INSTALL brings one back
    assert install("UNINSTALL", companyId="company-1").json()["locations"] == ["loc-a", "loc-b"]
    assert retired_locations(tmp_path) == {"loc-a", "loc-b"}
    install("INSTALL", locationId="loc-b", companyId="company-1")
    assert retired_locations(tmp_path) == {"loc-a"}
    assert install("UNINSTALL").status_code == 400  # neither a location nor a company


def test_a_webhook_for_a_location_no_tenant_owns_is_refused_and_counted(serve: Serve, tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.north]\nghl_location_ids = "loc-webhooks"\ndata_dir = "{tmp_path / "north"}"\n'
                       f'[tenants.south]\nghl_location_ids = "loc-south"\ndata_dir = "{tmp_path / "south"}"\n')
    server = serve(create_app(settings_for(tmp_path, tenants_file=tenants), forward=False))

    refused = post(server, webhook(locationId="loc-of-another-group"))
    assert refused.status_code == 403 and "no tenant owns location loc-of-another-group" in refused.json()["error"]
    assert spooled(server) == []
    assert httpx.get(server.base_url + "/healthz").json()["unowned"] == 1

    owned = post(server, webhook(locationId="loc-south"))
    assert owned.json()["status"] == "accepted"
    (item,) = spooled(server)
    assert item.payload["tenant"] == "south" and item.payload["location_id"] == "loc-south"
    assert httpx.get(server.base_url + "/healthz").json()["unowned"] == 1


def test_sync_refuses_a_location_that_is_not_configured(tmp_path: Path) -> None:
    from contact_recon.stages.run import sync

    settings = settings_for(tmp_path, ghl_location_ids="loc-mine")
    assert sync(settings, contact_id="c-1", location_id="loc-theirs") == {"status": "unowned",
                                                                          "location_id": "loc-theirs"}
