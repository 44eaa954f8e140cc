"""No accepted webhook is ever lost: `recon webhooks serve` as a real process under a stream of signed webhooks,
with the Prefect API cut for a minute (a loopback relay, tests/support/relay.py, between the receiver and the
session's Prefect server) and with the receiver killed by SIGKILL mid-stream. Every webhook answered 200 must end
as its event in the Prefect server's event store (read back by id), exactly once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from contact_recon.sandbox.ghl_webhooks import ed25519_private_key, sign
from contact_recon.service.spool import spool_path
from contact_recon.service.webhooks import EVENT_NAMESPACE
from contact_recon.systems.ghl.contract import ED25519_SIGNATURE_HEADER
from tests.support.prefect import prefect_events  # noqa: F401
from tests.support.receiver import ReceiverProcess, start_receiver
from tests.support.relay import Relay

KINDS = ("ContactUpdate", "NoteCreate", "TaskCreate", "ContactTagUpdate", "TaskComplete")


def signed(kind: str) -> tuple[str, bytes]:
    contact = f"c-{uuid.uuid4().hex[:16]}"
    body: dict[str, Any] = {"type": kind, "locationId": "loc-chaos", "webhookId": str(uuid.uuid4()),
                            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
    body["id" if kind.startswith("Contact") else "contactId"] = contact
    if not kind.startswith("Contact"):
        body["id"] = f"obj-{uuid.uuid4().hex[:8]}"
    return body["webhookId"], json.dumps(body).encode()


class Stream:
    """Signed webhooks POSTed one after another from a thread; the webhookIds answered 200 `accepted`."""

    def __init__(self, url: str, interval_s: float = 0.25):
        self.url, self.interval_s = url, interval_s
        self.accepted: list[str] = []
        self.failed = 0  # connection refused or reset (the receiver being killed or restarting), or not 200
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        key = ed25519_private_key()
        n = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                webhook_id, raw = signed(KINDS[n % len(KINDS)])
                n += 1
                try:
                    answer = client.post(self.url, content=raw, headers={ED25519_SIGNATURE_HEADER: sign(raw, key)})
                except httpx.HTTPError:
                    self.failed += 1
                else:
                    if answer.status_code == 200 and answer.json().get("status") == "accepted":
                        self.accepted.append(webhook_id)
                    else:
                        self.failed += 1
                self._stop.wait(self.interval_s)


def stored_events(webhook_ids: list[str]) -> dict[uuid.UUID, int]:
    """How many times each webhook's event is in the server's event store (by its derived id)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter, EventOccurredFilter

    ids = [uuid.uuid5(EVENT_NAMESPACE, w) for w in webhook_ids]
    counts = dict.fromkeys(ids, 0)
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        for start in range(0, len(ids), 25):  # the server answers at most 50 a query: room for a duplicate
            occurred = EventOccurredFilter(since=now - timedelta(hours=1), until=now + timedelta(hours=1))
            flt = EventFilter(id=EventIDFilter(id=ids[start:start + 25]), occurred=occurred)
            for event in client.read_events(filter=flt, limit=50).events:
                counts[event.id] += 1
    return counts


def spooled_ids(path: Path) -> set[str]:
    """The pending event ids of a spool file, read as it is (without opening a Spool, which would compact it)."""
    pending: set[str] = set()
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if "add" in entry:
            pending.add(entry["add"]["id"])
        else:
            pending -= set(entry["done"])
    return pending


def wait_drained(receiver: ReceiverProcess, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while (health := receiver.health())["spooled"]:
        assert time.monotonic() < deadline, f"still spooled after {timeout} s: {health}"
        time.sleep(0.5)


@pytest.fixture
def relay(prefect_events: str) -> Iterator[Relay]:  # noqa: F811
    r = Relay(prefect_events)
    yield r
    r.close()


def test_prefect_unreachable_for_a_minute_under_a_stream_loses_nothing(tmp_path: Path, relay: Relay) -> None:
    relay.cut()  # down before the receiver even starts: it must start and accept anyway
    receiver = start_receiver(tmp_path / "data", relay.url)
    try:
        stream = Stream(receiver.url).start()
        cut_at = time.monotonic()
        while time.monotonic() - cut_at < 60:
            time.sleep(1)
        during = list(stream.accepted)
        health = receiver.health()
        # nothing got through while cut: every accepted webhook is still in the spool, and the forwarder did try
        assert len(during) >= 100 and stream.failed == 0, (len(during), stream.failed)
        assert health["spooled"] >= len(during) and health["prefect_reachable"] is False, health
        assert relay.refused > 0
        relay.restore()
        time.sleep(5)  # the stream goes on while the spool drains
        stream.stop()
        wait_drained(receiver)
        counts = stored_events(stream.accepted)
        missing = [i for i, n in counts.items() if n != 1]
        assert not missing, f"{len(missing)} of {len(counts)} accepted webhooks are not in Prefect exactly once"
        assert receiver.health()["prefect_reachable"] is True
    finally:
        out = receiver.stop()
        print("\n".join(line for line in out.splitlines() if " INFO " not in line))  # on failure: what it said
    assert "Prefect not reachable" in out and "Prefect reachable again" in out
    assert out.count("Prefect not reachable") == 1  # logged once for the outage, not per round
    print(f"accepted {len(stream.accepted)} webhooks, {len(during)} during the 60 s outage; all in Prefect once")


def test_the_receiver_killed_with_sigkill_mid_stream_loses_no_accepted_webhook(tmp_path: Path, relay: Relay) -> None:
    """The relay is cut while the stream runs, so webhooks are accepted and not yet confirmed when SIGKILL lands; the
    receiver restarted on the same port (Prefect reachable again) forwards them, and the stream goes on."""
    data = tmp_path / "data"
    relay.cut()
    receiver = start_receiver(data, relay.url)
    stream = Stream(receiver.url, interval_s=0.1).start()
    try:
        while len(stream.accepted) < 40:
            time.sleep(0.1)
        receiver.kill()  # mid-stream: the stream keeps posting into a dead port
        accepted_before = list(stream.accepted)
        # answered 200 => on disk: every webhook accepted before the kill is in the spool the process left
        kept = spooled_ids(spool_path(data))
        assert {str(uuid.uuid5(EVENT_NAMESPACE, w)) for w in accepted_before} <= kept
        time.sleep(1)
        failed_while_dead = stream.failed
        relay.restore()
        receiver = start_receiver(data, relay.url, port=receiver.port)
        while len(stream.accepted) < len(accepted_before) + 30:
            time.sleep(0.1)
        stream.stop()
        wait_drained(receiver)
        counts = stored_events(stream.accepted)
        missing = [i for i, n in counts.items() if n != 1]
        assert not missing, f"{len(missing)} of {len(counts)} accepted webhooks are not in Prefect exactly once"
        assert failed_while_dead > 0  # the stream really hit the dead receiver
    finally:
        stream.stop()
        receiver.stop()
    print(f"{len(accepted_before)} accepted before SIGKILL (all unconfirmed), {len(stream.accepted)} in all; "
          "all in Prefect once")
