"""Coalescing (service/coalesce.py) and the echo files' compaction (stages/echo.py, store/expiring.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from contact_recon.service.coalesce import Change, Coalescer
from contact_recon.stages.echo import EchoFilter, EchoLog


def change(contact: str, kind: str = "ContactUpdate", at: float = 0.0, location: str = "L1") -> Change:
    return Change(None, location, contact, None, kind, at)


def test_a_storm_of_1000_webhooks_for_100_people_is_100_syncs() -> None:
    rng = random.Random(5)
    coalescer, syncs, now = Coalescer(window_s=1.0), [], 0.0
    people = [f"c{i:03d}" for i in range(100)]
    for n in range(1000):  # 1,000 webhooks over ~0.5 s, ten per person, in random order
        now = n * 0.0005
        coalescer.add(change(rng.choice(people) if n >= 100 else people[n], at=now), now)
        syncs += coalescer.due(now)
    syncs += coalescer.due(now + 1.0)
    assert len(syncs) == 100 and sorted(s.change.contact_id or "" for s in syncs) == people
    assert sum(s.events for s in syncs) == 1000 and not coalescer.pending


def test_a_note_among_a_persons_events_marks_and_a_busy_person_is_still_synced() -> None:
    coalescer = Coalescer(window_s=1.0, max_wait_s=5.0)
    coalescer.add(change("c1", "ContactUpdate"), 0.0)
    coalescer.add(change("c1", "NoteCreate"), 0.5)
    coalescer.add(change("c1", "ContactTagUpdate"), 0.9)
    assert coalescer.due(1.5) == []  # the window restarts with each event (a debounce)
    [synced] = coalescer.due(1.9)
    assert synced.events == 3 and synced.webhook_type == "NoteCreate"  # the sync marks the contact dirty
    for i in range(20):  # edited every 0.5 s without pause: synced when the cap (5 s after the first) comes
        coalescer.add(change("c2", at=i * 0.5), i * 0.5)
        if coalescer.due(i * 0.5):
            assert i * 0.5 >= 5.0
            break
    else:
        raise AssertionError("a person edited without pause was never synced")
    assert change("c1").key != change("c1", location="L2").key != Change(None, None, None, "a@x", None, 0).key


def test_the_echo_files_are_compacted_like_the_seen_ids(tmp_path: Path) -> None:
    """Every write of a night notes its contacts; the file keeps only the notes still inside their window once it
    holds more than twice those plus the slack, and the receiver's filter follows the rewrite."""
    now = [1_000.0]
    log = EchoLog(tmp_path, window_s=120, clock=lambda: now[0], compact_slack=50)
    echo = EchoFilter(tmp_path, clock=lambda: now[0])
    path = tmp_path / "echo" / "ghl_writes.jsonl"
    for night in range(10):  # ten runs, a day apart, 100 contacts each
        now[0] = 1_000.0 + night * 86_400
        log.wrote(contact_ids=[f"n{night}-{i}" for i in range(100)])
        assert echo.is_echo(f"n{night}-5")  # the receiver sees tonight's writes, before and after a rewrite
        assert not echo.is_echo(f"n{night - 1}-5")  # and yesterday's are over
    lines = path.read_text().splitlines()
    assert log.compacted == 4 and len(lines) <= 2 * 100 + 50  # not 1,000 lines: at most twice one window's worth
    assert {json.loads(line)["contact_id"].split("-")[0] for line in lines} == {"n8", "n9"}
    again = EchoLog(tmp_path, window_s=120, clock=lambda: now[0] + 200, compact_slack=0)  # a later run starts
    assert again.compacted == 1 and path.read_text() == ""  # everything expired: nothing kept
