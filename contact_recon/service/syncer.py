"""The sync service (`recon services serve`): every change between nights synced in seconds, in one process.

Before it, each `ghl.*` / `tinyemail.*` event started a `sync-contact` flow run through a deployment trigger, and a
process worker started a fresh Python process for every run (9-15 s of the 14-20 s a change took), one per
webhook, with no coalescing. Now one long-running process does the whole path:

1. **Events in.** A thread subscribes to the Prefect server's event stream (`get_events_subscriber`, a websocket
   that first replays the recent past) for the events the receiver and the watcher emit (`SYNCED_EVENTS`):
   contact changes, notes and tasks of a contact, contact-less task webhooks (`ghl.location.*`) and TinyEmail
   customers. `change_of` (pure) reads each into a `Change` (contact, location, email, webhook type, the tenant the
   payload names). Event ids already seen are skipped (a reconnect replays the last minute). On start the replay
   reaches back to the last event the previous process took (`data_dir/services/syncs_cursor.json`), at most the
   server's backfill window (15 min), so a restart loses nothing recent; older changes wait for the nightly.
   The stream alone can miss an event taken by the server just as the subscriber (re)connects (`sweep`): a
   second thread reads the recent events again through the events API every `SWEEP_S` (5 s), and the ids already
   taken are skipped, so each event is offered once.
2. **Coalescing** (service/coalesce.py): the events of one person within `sync_coalesce_s` (1 s) of each other are one
   sync, so a storm of 1,000 webhooks for 100 people makes about 100 syncs.
3. **Syncing.** Due syncs run one after another on the dispatching thread, each as the Prefect task `sync-contact`
   (tasks/sync_contact.py) called in this process: a task run in the UI with its logs, no flow run and no process
   start. It routes the change to its tenant and runs `stages/run.py sync`, the nightly's identity, merge, checks,
   apply and state code under the same per-location lock. One at a time, because DuckDB takes one writer
   process and this keeps the service's writes in order; each sync is a few requests within each location's rate
   budget, which the whole process shares (systems/budget.py `budget_for`).
4. **Living with the nightly.** A sync that meets the nightly's lock (its own location) or its DuckDB file (another
   location) waits for it (`sync_lock_wait_s`, 6 h) and runs after it; the changes that arrive meanwhile coalesce
   behind it. Past the wait it ends `deferred` (the night read everyone), never failed, so no `flow run failed`
   alert: a task run is no flow run, and its state is Completed.
5. **Supervised.** A heartbeat (service/heartbeat.py, `recon.service.heartbeat` of `recon.service.syncs`) every
   `service_heartbeat_s` carries the counters below; `data_dir/services/syncs.json` holds them too (events,
   syncs started and by status, unowned, the last sync), rewritten after each sync.

The `sync-contact` deployment of prefect.yaml stays, without triggers, for a sync started by hand; the receiver and
the watcher only emit events, so the service may be down a while: its replay, or the nightly, catches up.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from contact_recon.events import (
    GHL_CONTACT_CREATED,
    GHL_CONTACT_DND_UPDATED,
    GHL_CONTACT_ID_LABEL,
    GHL_CONTACT_TAG_UPDATED,
    GHL_CONTACT_UPDATED,
    GHL_LOCATION_ID_LABEL,
    GHL_NOTE_CREATED,
    GHL_NOTE_DELETED,
    GHL_NOTE_UPDATED,
    GHL_TASK_COMPLETED,
    GHL_TASK_CREATED,
    GHL_TASK_DELETED,
    SERVICE_SYNCS,
    TINYEMAIL_CUSTOMER_CREATED,
    TINYEMAIL_CUSTOMER_UPDATED,
    TINYEMAIL_EMAIL_LABEL,
)
from contact_recon.service.coalesce import Change, Coalescer, PendingSync
from contact_recon.service.heartbeat import Beat, Heartbeat, emit_beat
from contact_recon.settings import Settings
from contact_recon.store.files import atomic_text

# the events a sync follows (a contact's deletion is left to the nightly, as the deployment triggers did)
SYNCED_EVENTS = frozenset({GHL_CONTACT_CREATED, GHL_CONTACT_UPDATED, GHL_CONTACT_TAG_UPDATED, GHL_CONTACT_DND_UPDATED,
                           GHL_NOTE_CREATED, GHL_NOTE_UPDATED, GHL_NOTE_DELETED, GHL_TASK_CREATED, GHL_TASK_COMPLETED,
                           GHL_TASK_DELETED, TINYEMAIL_CUSTOMER_CREATED, TINYEMAIL_CUSTOMER_UPDATED})
SEEN_EVENTS = 20_000  # event ids remembered against a replay
HISTORY = 2_000  # the last syncs kept in memory (`history`)
MAX_REPLAY = timedelta(minutes=15)  # the server's own cap (PREFECT_SERVER_EVENTS_MAXIMUM_WEBSOCKET_BACKFILL)
RECONNECT_S = 5.0
SWEEP_S = 5.0  # how often the events API is read again for what the stream missed (`sweep`)
SWEEP_BACK = timedelta(minutes=2)  # how far back each sweep reads, before the previous sweep began
log = logging.getLogger("contact_recon.service.syncer")
RunSync = Callable[[Settings, PendingSync], dict[str, Any]]


def change_of(name: str, resource: dict[str, str], payload: dict[str, Any], occurred: datetime) -> Change | None:
    """The change an event names, or None for an event the service does not sync."""
    if name not in SYNCED_EVENTS:
        return None
    tenant = payload.get("tenant") or None
    if name.startswith("tinyemail."):  # the watcher: a customer by email
        email = resource.get(TINYEMAIL_EMAIL_LABEL) or payload.get("email")
        return Change(tenant, None, None, email, None, occurred.timestamp()) if email else None
    location = resource.get(GHL_LOCATION_ID_LABEL) or payload.get("location_id")
    contact = resource.get(GHL_CONTACT_ID_LABEL) or payload.get("contact_id")
    return Change(tenant, location, contact or None, None, payload.get("webhook_type"), occurred.timestamp())


def warm_up() -> None:
    """Import what a sync runs before the first change arrives (seconds on a cold process, not the first change's)."""
    import prefect.task_engine  # noqa: F401

    import contact_recon.tasks.sync_contact  # noqa: F401 - the task, the stages, polars, DuckDB, Prefect's engine


def run_task(settings: Settings, pending: PendingSync) -> dict[str, Any]:
    """The default `RunSync`: the `sync-contact` Prefect task, called in this process (a task run, no flow run)."""
    from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings

    from contact_recon.tasks.sync_contact import sync_contact_task

    change = pending.change
    # a task run with no flow run: Prefect 3.9 sends no log of it to the API (its state and result it does), so its
    # log lines go to this process's stderr only, without the warning Prefect gives for each
    with temporary_settings(updates={PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        return sync_contact_task(settings, contact_id=change.contact_id, location_id=change.location_id,
                                 email=change.email, webhook_type=pending.webhook_type, tenant=change.tenant,
                                 events=pending.events)


class SyncService:
    """The service of the module docstring: `offer` changes (the subscriber does), `serve` dispatches them."""

    def __init__(self, settings: Settings, *, run: RunSync = run_task, clock: Callable[[], float] = time.time,
                 beat: Beat = emit_beat):
        self.settings, self.run, self.clock = settings, run, clock
        self.coalescer = Coalescer(settings.sync_coalesce_s)
        self.counts: Counter[str] = Counter()
        self.last: dict[str, Any] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)  # the last syncs, as `last`
        self.current: PendingSync | None = None  # the sync running now (or waiting for a busy location)
        self.cursor = load_cursor(cursor_path(settings))
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.heartbeat = Heartbeat(SERVICE_SYNCS, settings.service_heartbeat_s, beat, self.details)

    # ---------------------------------------------------------------------------------- in

    def offer(self, change: Change, event_id: str | None = None) -> bool:
        """Take one event's change (False: an event id already taken, a replay)."""
        with self._cond:
            if event_id is not None:
                if event_id in self._seen:
                    return False
                self._seen[event_id] = None
                if len(self._seen) > SEEN_EVENTS:
                    self._seen.popitem(last=False)
            self.coalescer.add(change, self.clock())
            self.counts["events"] += 1
            self.cursor = max(self.cursor or 0.0, change.occurred)
            self._cond.notify()
        return True

    # ------------------------------------------------------------------------------ dispatch

    def start(self, *, follow_events: bool = True) -> SyncService:
        """Start the dispatcher, the heartbeat and (unless `follow_events` is False: a caller `offer`s) the event
        subscriber, each a thread in a copy of this thread's context (the Prefect API it was set up for)."""
        warm_up()
        targets = [(self.serve, "sync-dispatch")] + (
            [(self._follow, "sync-events"), (self._sweep, "sync-sweep")] if follow_events else [])
        for target, name in targets:
            thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.heartbeat.start()
        return self

    def serve(self) -> None:
        """Dispatch due syncs until `stop` (the subscriber and the heartbeat run beside it)."""
        while not self._stop.is_set():
            for pending in self._take_due():
                self._sync(pending)

    def wait(self) -> None:
        """Block until `stop` (the CLI's main thread)."""
        while not self._stop.wait(1.0):
            pass

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.heartbeat.stop()
        for thread in self._threads:  # the dispatcher ends within a sync; the subscriber, a daemon, at its next event
            if thread.name == "sync-dispatch":
                thread.join(timeout)

    def _follow(self) -> None:
        subscribe(self, self._stop)

    def _sweep(self) -> None:
        sweep(self, self._stop)

    def _take_due(self) -> list[PendingSync]:
        with self._cond:
            while not self._stop.is_set():
                now = self.clock()
                due = self.coalescer.due(now)
                if due:
                    return due
                nxt = self.coalescer.next_due()
                self._cond.wait(timeout=1.0 if nxt is None else min(max(nxt - now, 0.01), 1.0))
        return []

    def _sync(self, pending: PendingSync) -> None:
        self.counts["syncs"] += 1
        started, self.current = self.clock(), pending
        try:
            result = self.run(self.settings, pending)
        except Exception as exc:  # noqa: BLE001 - one person's failure (a bad record, an API down) stops no other sync
            log.exception("sync of %s failed", pending.change.key)
            result = {"status": "failed", "error": type(exc).__name__}
        finally:
            self.current = None
        status = str(result.get("status"))
        self.counts[f"status:{status}"] += 1
        if status == "unowned":
            self.counts["unowned"] += 1
        self.last = {"key": list(pending.change.key), "events": pending.events, "status": status,
                     "seconds": round(self.clock() - started, 3), "pid": result.get("pid"),
                     "tenant": result.get("tenant"), "run_id": result.get("run_id"),
                     "first_occurred": pending.first_occurred, "finished": self.clock()}
        self.history.append(self.last)
        log.info("sync of %s (%d events): %s in %.2f s", pending.change.key, pending.events, status,
                 self.last["seconds"])
        self.save()

    # ------------------------------------------------------------------------------- state

    def details(self) -> dict[str, Any]:
        """The counters (heartbeats and `syncs.json`)."""
        with self._cond:
            counts = dict(self.counts)
            pending = len(self.coalescer.pending)
        return {"events": counts.get("events", 0), "syncs": counts.get("syncs", 0), "pending": pending,
                "unowned": counts.get("unowned", 0),
                "by_status": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("status:")},
                "last": self.last}

    def save(self) -> None:
        atomic_text(status_path(self.settings), json.dumps(self.details(), sort_keys=True))
        if self.cursor is not None:
            atomic_text(cursor_path(self.settings), json.dumps({"occurred": self.cursor}))


def status_path(settings: Settings) -> Path:
    return settings.data_dir / "services" / "syncs.json"


def cursor_path(settings: Settings) -> Path:
    return settings.data_dir / "services" / "syncs_cursor.json"


def load_cursor(path: Path) -> float | None:
    try:
        return float(json.loads(path.read_text())["occurred"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------ the event stream


def replay_since(service: SyncService) -> datetime:
    """Where a replay starts: the last minute, or from where the previous connection (or process) stopped, within
    the server's cap."""
    since = datetime.now(UTC) - timedelta(minutes=1)
    if service.cursor is not None:
        since = max(datetime.fromtimestamp(service.cursor, tz=UTC) - timedelta(seconds=1),
                    datetime.now(UTC) - MAX_REPLAY)
    return since


def sweep(service: SyncService, stop: threading.Event) -> None:
    """Read the recent events again through the events API every `SWEEP_S`, and offer them (ids already taken are
    skipped): the stream can miss one. The server sends an event live to the subscribers that exist when it comes
    in, and replays from its database on connect; it writes events to the database a moment after taking them, so
    an event taken just before a (re)connect and written just after its replay query reaches neither (seen in
    tests/e2e/test_webhook_syncs.py: a note webhook forwarded as the service started was never synced). The sweep
    reads from the replay's start at first, then the last `SWEEP_BACK`."""
    since = replay_since(service)
    while not stop.wait(SWEEP_S):
        started = datetime.now(UTC)
        try:
            for name, resource, payload, occurred, event_id in recent_events(since):
                change = change_of(name, resource, payload, occurred)
                if change is not None:
                    service.offer(change, event_id)
        except Exception as exc:  # noqa: BLE001 - the server went away: the next sweep reads the same window
            log.warning("event sweep failed (%s); again in %.0f s", type(exc).__name__, SWEEP_S)
            continue
        since = started - SWEEP_BACK


def recent_events(since: datetime) -> list[tuple[str, dict[str, str], dict[str, Any], datetime, str]]:
    """The synced events that occurred since `since` (every page), oldest first, as (name, resource, payload,
    occurred, id)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventOrder

    flt = EventFilter(event=EventNameFilter(name=sorted(SYNCED_EVENTS)), order=EventOrder.ASC,
                      occurred=EventOccurredFilter.model_validate(
                          {"since": since, "until": datetime.now(UTC) + timedelta(days=1)}))
    out: list[tuple[str, dict[str, str], dict[str, Any], datetime, str]] = []
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=flt, limit=50)  # the server's largest page
        while True:
            out += [(e.event, dict(e.resource.root), dict(e.payload), e.occurred, str(e.id)) for e in page.events]
            if not page.next_page:
                return out
            page = client.read_events_page(str(page.next_page))


def subscribe(service: SyncService, stop: threading.Event) -> None:
    """Feed the service from the Prefect event stream until `stop`; reconnects after any failure."""
    while not stop.is_set():
        try:
            asyncio.run(_subscribe(service, stop))
        except Exception as exc:  # noqa: BLE001 - the server went away: connect again, the replay fills the gap
            log.warning("event stream lost (%s); reconnecting in %.0f s", type(exc).__name__, RECONNECT_S)
        stop.wait(RECONNECT_S)


async def _subscribe(service: SyncService, stop: threading.Event) -> None:
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    flt = EventFilter(event=EventNameFilter(name=sorted(SYNCED_EVENTS)))
    since = replay_since(service)
    subscriber = get_events_subscriber(filter=flt, reconnection_attempts=1_000_000)
    subscriber._backfill_since = since  # type: ignore[assignment]  # noqa: SLF001 - sets where the replay starts
    async with subscriber:
        log.info("following %d event kinds from %s", len(SYNCED_EVENTS), since.isoformat())
        async for event in subscriber:
            change = change_of(event.event, dict(event.resource.root), dict(event.payload), event.occurred)
            if change is not None:
                service.offer(change, str(event.id))
            if stop.is_set():
                return


def serve_syncs(settings: Settings, *, run: RunSync = run_task) -> SyncService:
    """The service, started (`recon services serve`): the caller `wait`s, then `stop`s it."""
    return SyncService(settings, run=run).start()
