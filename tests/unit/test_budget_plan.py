"""The request planner (contact_recon/engine/budget_plan.py): table tests of its arithmetic and its priorities."""

from __future__ import annotations

import pytest

from contact_recon.engine.budget_plan import contact_pages, plan_requests, task_requests


@pytest.mark.parametrize(("contacts", "pages"), [(0, 1), (1, 1), (499, 1), (500, 2), (100_000, 201)])
def test_contact_pages_end_on_a_short_page(contacts: int, pages: int) -> None:
    assert contact_pages(contacts) == pages


@pytest.mark.parametrize(("n", "batch", "per_contact", "expected"), [
    (0, 100, 1.0, 0),
    (1, 100, 0.5, 1),  # one batch, 50 tasks: one short page
    (100, 100, 0.5, 1),
    (101, 100, 0.5, 2),
    (100, 100, 1.5, 2),  # 150 tasks a batch: a full page and a short one
    (1000, 100, 1.0, 20),  # exactly 100 tasks a batch: the full page needs a short one after it
    (250, 50, 0.5, 5),
])
def test_task_requests(n: int, batch: int, per_contact: float, expected: int) -> None:
    assert task_requests(n, batch, per_contact) == expected


# contacts, changed, dirty, k, daily, reserve -> status, changed, dirty, sweep, deferred, total
CASES = [
    # plenty: everything fits; sweep = ceil((1000 - 10 - 5) / 10) = 99; 2 task pages per batch of 100 at 1 task each
    (1000, 10, 5, 10, 200_000, 20_000, "ok", 10, 5, 99, 0, 3 + 4 + 114),
    # no daily limit: never shrunk
    (1000, 10, 5, 10, None, 20_000, "ok", 10, 5, 99, 0, 3 + 4 + 114),
    # 60 available: 3 pages; n contacts cost 2 * ceil(n / 100) + n -> n = 55 fits (3 + 2 + 55 = 60)
    (1000, 10, 5, 10, 80, 20, "shrunk", 10, 5, 40, 0, 60),
    # 12 available: listing 3, then 7 contacts (3 + 2 + 7); changed first, then dirty, no sweep
    (1000, 10, 5, 10, 32, 20, "shrunk", 7, 0, 0, 8, 12),
    (1000, 3, 5, 10, 32, 20, "shrunk", 3, 4, 0, 1, 12),
    # the listing itself does not fit: insufficient, nothing read
    (1000, 10, 5, 10, 22, 20, "insufficient", 0, 0, 0, 15, 3),
    # K = 1 (full sweep): every other contact is wanted
    (200, 0, 0, 1, 200_000, 20_000, "ok", 0, 0, 200, 0, 1 + 4 + 200),
    # first night: all changed, nothing left to sweep
    (200, 200, 0, 30, 200_000, 20_000, "ok", 200, 0, 0, 0, 1 + 4 + 200),
]


@pytest.mark.parametrize(("contacts", "changed", "dirty", "k", "daily", "reserve", "status", "p_changed", "p_dirty",
                          "p_sweep", "deferred", "total"), CASES)
def test_plan_table(contacts: int, changed: int, dirty: int, k: int, daily: int | None, reserve: int, status: str,
                    p_changed: int, p_dirty: int, p_sweep: int, deferred: int, total: int) -> None:
    plan = plan_requests(contacts, changed, dirty, k, 100, daily, reserve)
    assert (plan.status, plan.changed, plan.dirty, plan.sweep, plan.deferred, plan.total) == (
        status, p_changed, p_dirty, p_sweep, deferred, total)
    assert (plan.reason is None) == (status == "ok")
    if daily is not None and status != "insufficient":
        assert plan.total <= daily - reserve


def test_the_shrunk_sweep_is_the_largest_that_fits() -> None:
    for daily in range(25, 400, 7):
        plan = plan_requests(5000, 4, 2, 30, 100, daily, 20, sweep_candidates=160)
        if plan.status == "insufficient":
            assert plan.contact_pages > daily - 20 and plan.fetched == 0
            continue
        assert plan.total <= daily - 20
        if plan.sweep < 160:
            bigger = plan_requests(5000, 4, 2, 30, 100, None, 0, sweep_candidates=plan.sweep + 1)
            assert bigger.total > daily - 20


def test_sweep_candidates_override_the_estimate_and_k_must_be_positive() -> None:
    assert plan_requests(1000, 0, 0, 30, sweep_candidates=7).sweep == 7
    with pytest.raises(ValueError):
        plan_requests(1000, 0, 0, 0)


def test_plan_json_carries_the_total() -> None:
    plan = plan_requests(1000, 10, 5, 10, 100, 80, 20)
    assert plan.to_json()["total"] == plan.total == plan.contact_pages + plan.task_requests + plan.note_requests


@pytest.mark.parametrize(("contacts", "changed", "daily", "reserve", "notes", "tasks", "tasks_read"), [
    # a first night of a million contacts at GHL's 200,000 a day: 2,001 listing pages, every contact's tasks
    # (10,000 batches of 2 pages), and the notes of what is left: 200,000 - 20,000 - 2,001 - 20,000
    (1_000_000, 1_000_000, 200_000, 20_000, 157_999, 20_000, True),
    # 12 available: listing 3, the 15 changed+dirty contacts' tasks 2, notes of 7
    (1000, 15, 32, 20, 7, 2, True),
    # 500 changed contacts' tasks (10 requests) do not fit beside the listing: tasks go with the notes only
    (1000, 500, 30, 20, 5, 2, False),
])
def test_deferred_contacts_still_have_their_tasks_searched_when_those_fit(
        contacts: int, changed: int, daily: int, reserve: int, notes: int, tasks: int, tasks_read: bool) -> None:
    """Tasks make the fact tags: a contact whose notes wait for want of requests still has its tasks read when
    the searches (100 contacts a request) fit, so it does not read as having no open task."""
    plan = plan_requests(contacts, changed, 0, 30, 100, daily, reserve)
    assert plan.status == "shrunk" and plan.deferred == changed - notes
    assert (plan.note_requests, plan.task_requests, plan.deferred_tasks_read) == (notes, tasks, tasks_read)
    assert plan.total <= daily - reserve
    assert plan.to_json()["deferred_tasks_read"] is tasks_read


def test_nothing_deferred_reads_tasks_with_the_notes_as_before() -> None:
    checked = 0
    for daily in range(25, 400, 3):
        plan = plan_requests(5000, 40, 20, 30, 100, daily, 20, sweep_candidates=160)
        if plan.status == "insufficient" or plan.deferred:
            continue
        checked += 1
        assert not plan.deferred_tasks_read
        assert plan.task_requests == task_requests(plan.fetched, 100)
        assert plan.total <= daily - 20
    assert checked > 50  # most allowances here fit every changed and dirty contact
