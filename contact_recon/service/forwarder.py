"""The forwarder: spooled webhook events handed to Prefect and confirmed there (contact_recon/service/spool.py).

One thread in the receiver's process. Each round takes up to `BATCH` pending events, in arrival order, and
`send`s them; `send` returns the ids the server confirmed, which leave the spool. The rest stay and go
again in a later round, so nothing is lost and, the event ids being derived from webhookIds, nothing is
doubled on the server.

`prefect_send`, the default `send`, does not trust a queue: `prefect.events.emit_event` only hands an event to
a background worker, which drops what it cannot deliver. It POSTs the batch to the server's `/events` route
(the answer 204 means the server took it), then reads the events back by id from the server's event store
(`/events/filter`) until every one is there or `CONFIRM_S` has passed: an event is confirmed only once the
server has stored it, which is also when its automations and deployment triggers have seen it.

While the server is unreachable (or answers errors) a round fails as a whole and the next one waits longer
(`BACKOFF_S`, doubling up to `MAX_BACKOFF_S`); the receiver keeps answering, the spool grows, and it drains
when the server is back. A change of state (unreachable, back) is logged once, never per round. The thread
runs in a copy of the creating thread's context, so it talks to the Prefect API that thread was set up for.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from contact_recon.service.spool import Spool, SpoolItem

BATCH = 200
IDLE_S = 1.0  # how often an idle forwarder looks at the spool (an append wakes it at once)
BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0
CONFIRM_S = 30.0  # how long a round waits for the server to store what it took
CONFIRM_POLL_S = 0.5
READ_PAGE = 50  # the most events `/events/filter` returns at once
log = logging.getLogger("contact_recon.service.webhooks")

Send = Callable[[Sequence[SpoolItem]], set[str]]  # the events to hand over -> the ids the server confirmed


class Forwarder:
    """The spool's drain (module docstring): `start`, `wake` after an append, `stop`."""

    def __init__(self, spool: Spool, send: Send | None = None, *, idle_s: float = IDLE_S):
        self.spool, self.send, self.idle_s = spool, send or prefect_send, idle_s
        self.forwarded = 0
        self.failed_rounds = 0
        self.reachable = True
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._context = contextvars.copy_context()
        self._thread = threading.Thread(target=self._context.run, args=(self._run,), name="webhook-forwarder",
                                        daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = BACKOFF_S
        while not self._stop.is_set():
            items = self.spool.pending(BATCH)
            if not items:
                self._wake.wait(self.idle_s)
                self._wake.clear()
                continue
            if self._round(items):
                delay = BACKOFF_S
                continue
            self._stop.wait(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    def _round(self, items: Sequence[SpoolItem]) -> bool:
        """One hand-over; False when the server could not be reached (or confirmed nothing)."""
        try:
            confirmed = self.send(items)
        except Exception as exc:  # noqa: BLE001 - any failure of the server or the network: try again later
            self._unreachable(f"{type(exc).__name__}: {exc}")
            return False
        self.spool.done(confirmed)
        self.forwarded += len(confirmed)
        if not confirmed:
            self._unreachable("the server stored none of the events it was sent")
            return False
        if not self.reachable:
            log.warning("Prefect reachable again: forwarding %d spooled webhook events", len(self.spool))
        self.reachable = True
        return True

    def _unreachable(self, why: str) -> None:
        self.failed_rounds += 1
        log.debug("forwarding round failed: %s", why)
        if self.reachable:
            log.warning("Prefect not reachable (%s): webhooks are kept in the spool (%d pending) and forwarded "
                        "when it is back", why, len(self.spool))
        self.reachable = False


# ---------------------------------------------------------------------------------- Prefect


def prefect_event(item: SpoolItem) -> Any:
    """The Prefect `Event` of a spooled item."""
    from prefect.events import Event

    return Event.model_validate({"id": item.id, "event": item.event, "resource": item.resource,
                                 "related": item.related, "payload": item.payload, "occurred": item.occurred})


def prefect_send(items: Sequence[SpoolItem]) -> set[str]:
    """POST the events to the configured Prefect server, then read them back by id (module docstring). The Prefect
    client's own retries are off: a failed round is retried by the forwarder, with its backoff."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
        return asyncio.run(_send(items))


async def _send(items: Sequence[SpoolItem]) -> set[str]:
    from prefect.client.orchestration import get_client

    events = [prefect_event(item) for item in items]
    async with get_client() as client:
        answer = await client.request("POST", "/events", json=[e.model_dump(mode="json") for e in events])
        answer.raise_for_status()
        return await _confirmed(client, events)


async def _confirmed(client: Any, events: Sequence[Any]) -> set[str]:
    from prefect.events.filters import EventFilter, EventIDFilter, EventOccurredFilter

    wanted = {e.id for e in events}
    occurred = EventOccurredFilter.model_validate({"since": min(e.occurred for e in events) - timedelta(minutes=1),
                                                   "until": datetime.now(UTC) + timedelta(hours=1)})
    found: set[uuid.UUID] = set()
    deadline = time.monotonic() + CONFIRM_S
    while True:
        missing = sorted(wanted - found, key=str)
        for start in range(0, len(missing), READ_PAGE):  # the server answers at most READ_PAGE events a query
            flt = EventFilter(id=EventIDFilter(id=missing[start:start + READ_PAGE]), occurred=occurred)
            page = await client.read_events(filter=flt, limit=READ_PAGE)
            found |= {e.id for e in page.events} & wanted
        if found == wanted or time.monotonic() > deadline:
            return {str(i) for i in found}
        await asyncio.sleep(CONFIRM_POLL_S)
