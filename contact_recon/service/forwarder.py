"""The forwarder: spooled webhook events handed to Prefect and confirmed there (contact_recon/service/spool.py).

One thread in the receiver's process, pipelined so that a webhook is handed over the moment it is spooled, not
after the previous ones were confirmed (the server stores events a few seconds after taking them: its
persister flushes every 5 s, so waiting for each round's confirmation before sending the next held every
change of a steady stream back by up to that long; the sync service follows the server's live stream, which
has the event as soon as the server took it). Each pass of the loop:

1. **Hand over** the pending events not in flight (in arrival order, up to `BATCH`): `Courier.post` POSTs them
   to the server's `/events` route (the answer 204 means the server took them); they are now *in flight*.
2. **Confirm** the events in flight: `Courier.stored` reads them back by id from the server's event store
   (`/events/filter`): an event is confirmed only once the server has stored it, which is also when its
   automations have seen it. Confirmed events leave the spool (`Spool.done`).
3. An event still unconfirmed `CONFIRM_S` after it was handed over is handed over again (the event ids being
   derived from webhookIds, one sent twice is one event on the server). `prefect.events.emit_event` is not
   used: it only hands an event to a background worker, which drops what it cannot deliver.

While the server is unreachable (or answers errors) a pass fails and the next one waits longer (`BACKOFF_S`,
doubling up to `MAX_BACKOFF_S`); the receiver keeps answering, the spool grows, and it drains when the server
is back. A change of state (unreachable, back) is logged once, never per pass. The thread runs in a copy of the
creating thread's context, so it talks to the Prefect API that thread was set up for.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from contact_recon.service.spool import Spool, SpoolItem

BATCH = 200
IDLE_S = 1.0  # how often an idle forwarder looks at the spool (an append wakes it at once)
BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0
CONFIRM_S = 30.0  # how long an event handed over may stay unconfirmed before it is handed over again
CONFIRM_POLL_S = 0.5  # how often the events in flight are read back
READ_PAGE = 50  # the most events `/events/filter` returns at once
log = logging.getLogger("contact_recon.service.webhooks")


class Courier(Protocol):
    """How events reach the server: `post` hands them over (raises when it cannot), `stored` answers which of
    them the server has stored (raises when it cannot be asked)."""

    def post(self, items: Sequence[SpoolItem]) -> None: ...

    def stored(self, items: Sequence[SpoolItem]) -> set[str]: ...

    def close(self) -> None: ...


class Forwarder:
    """The spool's drain (module docstring): `start`, `wake` after an append, `stop`."""

    def __init__(self, spool: Spool, courier: Courier | None = None, *, idle_s: float = IDLE_S,
                 confirm_s: float = CONFIRM_S, clock: Callable[[], float] = time.monotonic):
        self.spool, self.courier, self.idle_s = spool, courier or PrefectCourier(), idle_s
        self.confirm_s, self.clock = confirm_s, clock
        self.forwarded = 0
        self.failed_rounds = 0
        self.reachable = True
        self.in_flight: dict[str, tuple[SpoolItem, float]] = {}  # id -> (the event, when it was handed over)
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
        try:
            self._forward()
        finally:
            self.courier.close()

    def _forward(self) -> None:
        delay = BACKOFF_S
        while not self._stop.is_set():
            if self.step():
                delay = BACKOFF_S
                self._wake.wait(CONFIRM_POLL_S if self.in_flight else self.idle_s)
                self._wake.clear()
                continue
            self._stop.wait(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    def step(self) -> bool:
        """One pass (module docstring): hand over what is new, confirm what is in flight; False when the server
        could not be reached."""
        try:
            self._hand_over()
            self._confirm()
        except Exception as exc:  # noqa: BLE001 - any failure of the server or the network: try again later
            self._unreachable(f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _hand_over(self) -> None:
        items = [i for i in self.spool.pending(BATCH + len(self.in_flight)) if i.id not in self.in_flight][:BATCH]
        if not items:
            return
        self.courier.post(items)
        now = self.clock()
        self.in_flight.update((i.id, (i, now)) for i in items)

    def _confirm(self) -> None:
        if not self.in_flight:
            return
        confirmed = self.courier.stored([item for item, _ in self.in_flight.values()]) & set(self.in_flight)
        self.spool.done(confirmed)
        for item_id in confirmed:
            del self.in_flight[item_id]
        self.forwarded += len(confirmed)
        now = self.clock()
        expired = [i for i, (_, sent) in self.in_flight.items() if now - sent > self.confirm_s]
        for item_id in expired:  # handed over a window ago and still not stored: hand it over again
            del self.in_flight[item_id]
        if expired:
            raise RuntimeError(f"the server did not store {len(expired)} events within {self.confirm_s:g} s")
        if confirmed and not self.reachable:
            log.warning("Prefect reachable again: forwarding %d spooled webhook events", len(self.spool))
            self.reachable = True

    def _unreachable(self, why: str) -> None:
        self.failed_rounds += 1
        log.debug("forwarding pass failed: %s", why)
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


class PrefectCourier:
    """The configured Prefect server (`Courier`), through one Prefect synchronous client kept open (dropped after
    any failure, opened again on the next pass), its own retries off: a failed pass is retried by the forwarder,
    with its backoff."""

    def __init__(self) -> None:
        self._client: Any = None

    def post(self, items: Sequence[SpoolItem]) -> None:
        events = [prefect_event(item).model_dump(mode="json") for item in items]
        with self._session() as client:
            client.request("POST", "/events", json=events).raise_for_status()

    def stored(self, items: Sequence[SpoolItem]) -> set[str]:
        from prefect.events.filters import EventFilter, EventIDFilter, EventOccurredFilter

        events = [prefect_event(item) for item in items]
        occurred = EventOccurredFilter.model_validate({
            "since": min(e.occurred for e in events) - timedelta(minutes=1),
            "until": datetime.now(UTC) + timedelta(hours=1)})
        wanted = sorted({e.id for e in events}, key=str)
        found: set[uuid.UUID] = set()
        with self._session() as client:
            for start in range(0, len(wanted), READ_PAGE):  # the server answers at most READ_PAGE events a query
                flt = EventFilter(id=EventIDFilter(id=wanted[start:start + READ_PAGE]), occurred=occurred)
                found |= {e.id for e in client.read_events(filter=flt, limit=READ_PAGE).events}
        return {str(i) for i in found}

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.__exit__(None, None, None)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
            if self._client is None:
                self._client = get_client(sync_client=True).__enter__()
            try:
                yield self._client
            except BaseException:
                self.close()
                raise
