"""Heartbeats: each long-running service says, once a minute, that it is alive; `recon services` reads them.

The services are `recon webhooks serve` (`webhooks`), `recon watch tinyemail` (`watch-tinyemail`) and
`recon services serve` (`syncs`, service/syncer.py). Each runs a `Heartbeat` thread that emits
`recon.service.heartbeat` (resource `recon.service.<name>`) every `service_heartbeat_s` (60 s), with its pid, its
start time and a few counters in the payload. The receiver sends its beats through its durable spool like every
other event (so they are never lost, and arrive late rather than not at all while Prefect is down); the others
POST theirs to the server's `/events` (`emit_beat`).

Nothing else supervises them, so Prefect watches the beats: the `recon: service stopped` automation
(service/alerts.py) is a proactive trigger, one bucket per service, that fires when a service's heartbeat is not
followed by another within `service_stale_s` (180 s: three beats). `service_states` (pure) turns the last heartbeat of
each service into its state (`up` when younger than `service_stale_s`, `stale` when older, `never` when none was
ever seen in the window read), which `recon services` prints from the server's events API (`read_heartbeats`).
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from contact_recon.events import SERVICE_HEARTBEAT, SERVICE_RESOURCE, SERVICES, service_resource

log = logging.getLogger("contact_recon.service.heartbeat")
Beat = Callable[[str, dict[str, str], dict[str, Any]], Any]  # (event, resource, payload) -> sent
UP, STALE, NEVER = "up", "stale", "never"


def heartbeat_payload(name: str, started_at: float, details: dict[str, Any]) -> dict[str, Any]:
    """What a heartbeat carries: the service, its pid and host, when it started, and its counters."""
    return {"service": name, "pid": os.getpid(), "host": socket.gethostname(),
            "started_at": datetime.fromtimestamp(started_at, tz=UTC).isoformat(), **details}


def emit_beat(event: str, resource: dict[str, str], payload: dict[str, Any]) -> Any:
    """The default `Beat`: POSTed to the configured server's `/events` at once (Prefect's `emit_event` only queues
    for a background worker, which may sit on a beat long enough to make a live service look stale)."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.events import Event

    beat = Event.model_validate({"id": str(uuid.uuid4()), "event": event, "resource": resource, "payload": payload,
                                 "occurred": datetime.now(UTC)})
    with get_client(sync_client=True) as client:
        answer = client.request("POST", "/events", json=[beat.model_dump(mode="json")])
        answer.raise_for_status()
    return beat


class Heartbeat:
    """A thread that beats every `interval_s` (and once at start) until `stop`; `details()` adds counters."""

    def __init__(self, name: str, interval_s: float, beat: Beat = emit_beat,
                 details: Callable[[], dict[str, Any]] = dict):
        self.name, self.interval_s, self.beat, self.details = name, interval_s, beat, details
        self.started_at, self.beats = time.time(), 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        """Beat from a thread running in a copy of this thread's context (the Prefect API it was set up for)."""
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                        name=f"heartbeat-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat(SERVICE_HEARTBEAT, service_resource(self.name),
                          heartbeat_payload(self.name, self.started_at, self.details()))
                self.beats += 1
            except Exception as exc:  # noqa: BLE001 - a beat that cannot be sent is a missed beat, never fatal
                log.debug("heartbeat of %s not sent: %s", self.name, exc)
            self._stop.wait(self.interval_s)


# ------------------------------------------------------------------------------------ states


@dataclass(frozen=True)
class ServiceState:
    name: str
    state: str  # up | stale | never
    last: datetime | None  # the last heartbeat
    age_s: float | None
    payload: dict[str, Any]


def service_states(beats: Iterable[tuple[str, datetime, dict[str, Any]]], now: datetime, stale_s: float,
                   names: Sequence[str] = SERVICES) -> list[ServiceState]:
    """Each service's state from its heartbeats `(name, occurred, payload)`: the services of `names` first, in
    order, then any other that beat (module docstring)."""
    last: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for name, occurred, payload in beats:
        if name not in last or occurred > last[name][0]:
            last[name] = (occurred, payload)
    out = []
    for name in [*names, *sorted(set(last) - set(names))]:
        if name not in last:  # no beat in the window read: not running, or never started
            out.append(ServiceState(name, NEVER, None, None, {}))
            continue
        occurred, payload = last[name]
        age = (now - occurred).total_seconds()
        out.append(ServiceState(name, UP if age <= stale_s else STALE, occurred, age, payload))
    return out


def read_heartbeats(since: timedelta = timedelta(hours=24)) -> list[tuple[str, datetime, dict[str, Any]]]:
    """The services' heartbeats the configured Prefect server kept over `since`, newest first per page: the last
    one of each service is what counts, so one query per service, newest first, limit 1."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventOrder,
        EventResourceFilter,
    )

    now = datetime.now(UTC)
    occurred = EventOccurredFilter.model_validate({"since": now - since, "until": now + timedelta(hours=1)})
    found: list[tuple[str, datetime, dict[str, Any]]] = []
    with get_client(sync_client=True) as client:
        for name in SERVICES:
            flt = EventFilter(event=EventNameFilter(name=[SERVICE_HEARTBEAT]), occurred=occurred,
                              resource=EventResourceFilter(id=[f"{SERVICE_RESOURCE}{name}"]), order=EventOrder.DESC)
            page = client.read_events(filter=flt, limit=1)
            found += [(name, e.occurred, dict(e.payload)) for e in page.events]
    return found
