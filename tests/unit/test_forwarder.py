"""The forwarder's pipelining (service/forwarder.py): a new event is handed over at once, while earlier ones wait
for the server to store them; unconfirmed events are handed over again after the confirmation window; nothing
leaves the spool before the server stored it. A scripted courier stands in for the Prefect server (the real one
is exercised by tests/e2e/test_webhooks.py and test_webhook_chaos.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from contact_recon.service.forwarder import Forwarder
from contact_recon.service.spool import Spool, SpoolItem


class Courier:
    """Takes what is posted; stores it only when the test says (the server's persister flush)."""

    def __init__(self) -> None:
        self.posts: list[list[str]] = []
        self.stored_ids: set[str] = set()
        self.down = False

    def post(self, items: Sequence[SpoolItem]) -> None:
        if self.down:
            raise ConnectionError("refused")
        self.posts.append([i.id for i in items])

    def stored(self, items: Sequence[SpoolItem]) -> set[str]:
        if self.down:
            raise ConnectionError("refused")
        return {i.id for i in items} & self.stored_ids

    def close(self) -> None:
        self.closed = True

    def flush(self) -> None:
        self.stored_ids |= {i for post in self.posts for i in post}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def item(n: int) -> SpoolItem:
    return SpoolItem(f"id-{n}", "ghl.contact.updated", {"prefect.resource.id": f"ghl.contact.{n}"}, {},
                     "2026-12-02T00:00:00+00:00")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Spool, Courier, Clock, Forwarder]:
    spool, courier, clock = Spool(tmp_path / "spool.jsonl", max_bytes=10**7), Courier(), Clock()
    return spool, courier, clock, Forwarder(spool, courier, confirm_s=30.0, clock=clock)


def test_a_new_event_is_handed_over_while_earlier_ones_await_confirmation(setup) -> None:
    spool, courier, clock, fwd = setup
    spool.append(item(1))
    assert fwd.step() and courier.posts == [["id-1"]]
    spool.append(item(2))
    clock.now = 1.0
    assert fwd.step()  # id-1 not stored yet: id-2 goes anyway, id-1 is not sent again
    assert courier.posts == [["id-1"], ["id-2"]]
    assert len(spool) == 2 and set(fwd.in_flight) == {"id-1", "id-2"}
    courier.flush()
    assert fwd.step() and len(spool) == 0 and fwd.forwarded == 2 and not fwd.in_flight
    assert courier.posts == [["id-1"], ["id-2"]]  # nothing handed over twice


def test_an_event_never_stored_is_handed_over_again_after_the_window(setup) -> None:
    spool, courier, clock, fwd = setup
    spool.append(item(1))
    fwd.step()
    clock.now = 29.0
    assert fwd.step() and courier.posts == [["id-1"]]
    clock.now = 31.0
    assert not fwd.step()  # nothing stored for the whole window: the server is taken as not storing
    assert fwd.reachable is False and len(spool) == 1
    assert fwd.step() and courier.posts == [["id-1"], ["id-1"]]  # handed over again
    courier.flush()
    assert fwd.step() and len(spool) == 0 and fwd.reachable is True


def test_an_unreachable_server_keeps_every_event_in_the_spool(setup) -> None:
    spool, courier, clock, fwd = setup
    courier.down = True
    for n in range(3):
        spool.append(item(n))
    assert not fwd.step() and not fwd.step()
    assert len(spool) == 3 and fwd.failed_rounds == 2 and not fwd.in_flight
    courier.down = False
    assert fwd.step() and courier.posts == [["id-0", "id-1", "id-2"]]
    courier.flush()
    assert fwd.step() and len(spool) == 0
