"""The snapshot's closing log line: a system's requests as the run counted them (pure, no server)."""

from __future__ import annotations

from contact_recon.stages.snapshot import _total


def test_the_logged_requests_are_the_runs_total_not_a_sum_of_its_counts() -> None:
    # a first night of 1,000,000 contacts once logged 356,001 requests: its phases, its total and its 429s added up
    used = {"contacts": 2_001, "tasks": 20_001, "notes": 155_998, "total": 178_000, "rate_limited": 3,
            "retried": 1, "wall_s": 697.8, "phase_s": {"contacts": 11.0}}
    assert _total(used) == ("178,000 (contacts 2,001, tasks 20,001, notes 155,998, rate_limited 3, retried 1)")


def test_without_a_total_the_phases_are_summed_and_retries_are_not() -> None:
    assert _total({"lists": 1, "members": 14_004, "rate_limited": 2, "retried": 2}) == (
        "14,005 (lists 1, members 14,004, rate_limited 2, retried 2)")
    assert _total(412) == "412"
