"""The request budget planner of the snapshot stage: how many GHL requests tonight's snapshot of one
location needs, and how much of the notes sweep fits in what is left of the day's allowance.

Pure arithmetic, no I/O: figures in, a `RequestPlan` out. The snapshot stage records the plan in
`runs.plan_json` beside the requests actually used.

What one location costs (GHL: 500 contacts per search page, tasks searched in batches of `tasks_batch`
contact ids answered in pages of `tasks_page`, notes one `GET /contacts/{id}/notes` per contact):

    contact_pages(N) = floor(N / 500) + 1          every contact, every night: the listing ends on a
                                                   short page, so an exact multiple of 500 costs one more
    task_requests(n) = ceil(n / B) * (1 + floor(B * t / P))
                                                   n contacts' tasks, B ids a batch, t tasks per contact
                                                   (from the previous snapshot), P tasks a page; a batch
                                                   ends on a short page, hence the 1 +
    note_requests(n) = n
    cost(n)          = contact_pages(N) + task_requests(max(n, T)) + note_requests(n)

T is the number of contacts whose tasks are searched even when their notes are not: the changed and
dirty ones when `contact_pages(N) + task_requests(changed + dirty)` fits the allowance, else 0. Tasks
make the fact tags (`ghl:open-task`, `ghl:overdue`); a contact deferred for want of note requests must
not read as having no task (a first night larger than the day's allowance defers most contacts, and a
task search answers for 100 contacts at once, a note request for one).

`n` is the number of contacts whose tasks and notes are fetched: the `changed` ones (new, or whose
`dateUpdated` moved past the watermark minus the safety lag), the `dirty` ones (marked by webhooks) and
the `sweep` (tonight's 1/K slice of the others). Contacts outside these keep their tasks and notes
from the previous snapshot.

The allowance is `available = daily_remaining - write_reserve` (the reserve is kept for tonight's
writes). In priority order:
1. the contact listing must fit (`cost(0) <= available`), else the plan is `insufficient`: a listing
   cut short would read as deletions, so the stage refuses to start;
2. changed, then dirty contacts: what does not fit is `deferred` (the stage marks those contacts dirty,
   so they come first tomorrow); a deferred contact's tasks are still searched when T covers it
   (`deferred_tasks_read`), only its notes wait;
3. the sweep gets the largest s with `cost(changed + dirty + s) <= available`; when s is below the
   wanted slice the plan says so in `reason`.
`daily_remaining=None` means no daily limit: nothing is shrunk.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

CONTACTS_PAGE = 500
TASKS_BATCH = 100
TASKS_PAGE = 100
DEFAULT_TASKS_PER_CONTACT = 1.0


@dataclass(frozen=True)
class RequestPlan:
    """Tonight's requests for one location, per kind, and what was cut to fit."""

    contact_pages: int
    task_requests: int
    note_requests: int
    changed: int  # contacts fetched because they changed (or are new)
    dirty: int  # fetched because a webhook marked them
    sweep: int  # fetched as part of the rolling sweep (after shrinking)
    sweep_wanted: int  # the sweep slice before shrinking
    deferred: int  # changed or dirty contacts left for tomorrow (marked dirty)
    daily_remaining: int | None
    write_reserve: int
    status: str  # "ok" | "shrunk" | "insufficient"
    reason: str | None = None
    deferred_tasks_read: bool = False  # the deferred contacts' tasks are searched tonight (only notes wait)

    @property
    def total(self) -> int:
        return self.contact_pages + self.task_requests + self.note_requests

    @property
    def fetched(self) -> int:
        return self.changed + self.dirty + self.sweep

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def contact_pages(contacts_total: int, page: int = CONTACTS_PAGE) -> int:
    return contacts_total // page + 1


def task_requests(n: int, tasks_batch: int = TASKS_BATCH, tasks_per_contact: float = DEFAULT_TASKS_PER_CONTACT,
                  tasks_page: int = TASKS_PAGE) -> int:
    if n <= 0:
        return 0
    pages_per_batch = 1 + math.floor(tasks_batch * tasks_per_contact / tasks_page)
    return math.ceil(n / tasks_batch) * pages_per_batch


def plan_requests(contacts_total: int, changed: int, dirty: int, sweep_k: int, tasks_batch: int = TASKS_BATCH,
                  daily_remaining: int | None = None, write_reserve: int = 0, *, sweep_candidates: int | None = None,
                  tasks_per_contact: float = DEFAULT_TASKS_PER_CONTACT, tasks_page: int = TASKS_PAGE) -> RequestPlan:
    """Plan one location's requests within the day's allowance (formula in the module docstring).

    Args:
        contacts_total: contacts in the location (this night's listing, or the previous snapshot's count).
        changed: contacts whose tasks and notes must be fetched because they are new or changed.
        dirty: contacts marked dirty by webhooks, not already among `changed`.
        sweep_k: K of the rolling sweep (each night sweeps 1/K of the contacts); 1 sweeps everything.
        tasks_batch: contact ids per task search request.
        daily_remaining: requests left today for this location (None: no daily limit).
        write_reserve: requests kept back for tonight's writes.
        sweep_candidates: the size of tonight's slice not already changed or dirty (default:
            ceil((contacts_total - changed - dirty) / sweep_k)).
        tasks_per_contact: average tasks per contact (previous snapshot), to estimate task pages.
        tasks_page: tasks per task search page.
    """
    if sweep_k < 1:
        raise ValueError("sweep_k must be >= 1")
    others = max(0, contacts_total - changed - dirty)
    wanted = math.ceil(others / sweep_k) if sweep_candidates is None else sweep_candidates
    pages = contact_pages(contacts_total)

    def tasks(n: int) -> int:
        return task_requests(n, tasks_batch, tasks_per_contact, tasks_page)

    available = None if daily_remaining is None else daily_remaining - write_reserve
    # T of the module docstring: the changed and dirty contacts' tasks when those searches fit, else none
    tasks_of = changed + dirty if available is None or pages + tasks(changed + dirty) <= available else 0

    def cost(n: int) -> int:
        return pages + tasks(max(n, tasks_of)) + n

    def plan(n_changed: int, n_dirty: int, sweep: int, status: str, reason: str | None) -> RequestPlan:
        n = n_changed + n_dirty + sweep
        deferred = changed + dirty - n_changed - n_dirty
        searched = max(n, tasks_of) if status != "insufficient" else 0
        return RequestPlan(pages, tasks(searched), n, n_changed, n_dirty, sweep, wanted, deferred, daily_remaining,
                           write_reserve, status, reason, deferred_tasks_read=deferred > 0 and searched > n)

    if available is None:  # no daily limit: nothing is cut
        return plan(changed, dirty, wanted, "ok", None)
    if cost(0) > available:
        return plan(0, 0, 0, "insufficient",
                    f"the contact listing needs {cost(0)} requests but only {max(0, available)} are left "
                    f"({daily_remaining} remaining today - {write_reserve} reserved for writes)")
    must = _largest_fitting(cost, 0, changed + dirty, available)
    n_changed = min(changed, must)
    n_dirty = must - n_changed
    if must < changed + dirty:
        return plan(n_changed, n_dirty, 0, "shrunk",
                    f"{changed + dirty - must} changed/dirty contacts deferred and the sweep skipped: "
                    f"{available} requests available after the write reserve")
    sweep = _largest_fitting(cost, must, must + wanted, available) - must
    if sweep < wanted:
        return plan(changed, dirty, sweep, "shrunk",
                    f"sweep shrunk from {wanted} to {sweep} contacts to keep {write_reserve} requests for "
                    f"writes ({daily_remaining} remaining today)")
    return plan(changed, dirty, wanted, "ok", None)


def _largest_fitting(cost: Any, low: int, high: int, available: int) -> int:
    """The largest n in [low, high] with cost(n) <= available (cost is non-decreasing; cost(low) fits)."""
    while low < high:
        mid = (low + high + 1) // 2
        if cost(mid) <= available:
            low = mid
        else:
            high = mid - 1
    return low
