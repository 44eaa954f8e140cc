"""Coalescing: the events of one person within a short window become one sync (pure: the clock is passed in).

A webhook storm names the same people again and again (a bulk edit in GHL sends ContactUpdate, ContactTagUpdate
and a NoteCreate for each contact within a second; GHL re-sends a 429'd webhook). Syncing a person reads them
*now* from both systems, so one sync after the last of their events covers every earlier one. `Coalescer` keeps
one `PendingSync` per person (`Change.key`: the tenant, the location and the GHL contact; or the tenant and the
TinyEmail email; or a location's contact-less task webhook) and makes it due `window_s` after the person's
latest event (a debounce), but never later than `max_wait_s` after their first, so a person edited without pause
is still synced. A due sync carries everything its events said: how many there were, when the first occurred
(for the latency figures) and the note or task webhook type if any of them had one (the sync then marks the
contact dirty, stages/run.py `sync`). Events arriving while the person's sync runs start a new pending sync,
which runs after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contact_recon.events import GHL_NOTE_TASK_TYPES


@dataclass(frozen=True)
class Change:
    """One event's person, as the sync takes it."""

    tenant: str | None
    location_id: str | None
    contact_id: str | None
    email: str | None
    webhook_type: str | None
    occurred: float  # epoch seconds: when the change happened (the event's `occurred`)

    @property
    def key(self) -> tuple[str, str, str]:
        """Who the change is about: a GHL contact, a TinyEmail email, or a location's tasks."""
        if self.contact_id:  # a GHL webhook of a contact (a contact change, or its note or task)
            return (self.tenant or "", self.location_id or "", self.contact_id)
        if self.email:  # a TinyEmail customer (the watcher)
            return (self.tenant or "", "", "te:" + self.email)
        return (self.tenant or "", self.location_id or "", "tasks")  # a task webhook naming no contact


@dataclass
class PendingSync:
    """One person's coming sync: the change to sync and what its events added up to."""

    change: Change
    events: int
    first_occurred: float
    first_seen: float
    due: float
    webhook_types: set[str] = field(default_factory=set)

    @property
    def webhook_type(self) -> str | None:
        """A note or task type when any event had one (the sync marks the contact dirty), else the latest type."""
        marking = sorted(t for t in self.webhook_types if t in GHL_NOTE_TASK_TYPES)
        return marking[0] if marking else self.change.webhook_type


class Coalescer:
    """Pending syncs by person (module docstring): `add` each event, take the `due` ones."""

    def __init__(self, window_s: float, max_wait_s: float | None = None):
        self.window_s = window_s
        self.max_wait_s = max_wait_s if max_wait_s is not None else max(10 * window_s, 10.0)
        self.pending: dict[tuple[str, str, str], PendingSync] = {}
        self.events = 0

    def add(self, change: Change, now: float) -> None:
        self.events += 1
        found = self.pending.get(change.key)
        if found is None:  # the person's first event since their last sync
            self.pending[change.key] = PendingSync(change, 1, change.occurred, now, now + self.window_s,
                                                   {change.webhook_type} if change.webhook_type else set())
            return
        # another event of the same person: one sync later, capped so a busy person is still synced
        found.events += 1
        found.change = change
        found.first_occurred = min(found.first_occurred, change.occurred)
        found.due = min(now + self.window_s, found.first_seen + self.max_wait_s)
        if change.webhook_type:
            found.webhook_types.add(change.webhook_type)

    def due(self, now: float) -> list[PendingSync]:
        """The syncs due by `now`, oldest due first, taken out of the pending ones."""
        ready = sorted((p for p in self.pending.values() if p.due <= now), key=lambda p: p.due)
        for item in ready:
            del self.pending[item.change.key]
        return ready

    def next_due(self) -> float | None:
        return min((p.due for p in self.pending.values()), default=None)
