"""Chaos: the nightly flow (`recon run`) under fault mixes; after each, a clean rerun leaves both systems converged
(tests/support/chaos.py `assert_converged`: nothing left to plan, no duplicate, every shared field agreeing but for
conflicts, and the same people as the same days lived without faults), and every failure ends with exit 1 and one
readable line, never a traceback.

The days: day 1 is the first run (creates on both sides), day 2 a day of drift on both sides and a run (updates,
tags, tasks, a conflict). The reference world lives them without faults, once per module.

`recon run` runs in this process (the same command through typer's runner, on the session's Prefect server)
unless the fault needs a process of its own: a SIGKILL, a concurrent run, a run that meets a sandbox restart, a
locked DuckDB file or a full disk; those run `recon run` as a real child process, as cron would.
`RECON_CHAOS_SCALE=full` (`make chaos`) tells the same stories at 2,000 people.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from starlette.applications import Starlette

from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.store.db import db_path, open_db
from tests.support.chaos import (
    DuckDBHolder,
    GhlProcess,
    Outcome,
    SmallDisk,
    World,
    assert_converged,
    chaos_fixture,
    current_scale,
    final_state,
    latency_spikes,
    one_clear_line,
)

SCALE = current_scale()
FIXTURE = chaos_fixture(SCALE)
People = tuple[dict[str, Any], dict[str, Any]]


@pytest.fixture
def world_of(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path,
             prefect_server: str) -> Callable[..., World]:
    """A world with both sandboxes in this process (faults are set later through their admin route)."""
    def make(name: str, data: Path | None = None) -> World:
        ghl, te = sandboxes(FIXTURE, rate_scale=SCALE.rate_scale)
        return World(FIXTURE, ghl.base_url, te.base_url, data or tmp_path / name, prefect_server, SCALE)
    return make


@pytest.fixture(scope="module")
def reference_cache() -> dict[str, People]:
    return {}


@pytest.fixture
def reference(world_of: Callable[..., World], reference_cache: dict[str, People]) -> dict[str, People]:
    """Both systems after day 1 and after day 2 without any fault (once per module); that world passes the
    checks."""
    if not reference_cache:
        world = world_of("reference")
        world.ok()
        reference_cache["day 1"] = final_state(world)
        world.drift()
        world.ok()
        assert_converged(world, None)
        reference_cache["day 2"] = final_state(world)
    return reference_cache


def completed_or_clear(outcome: Outcome) -> None:
    """A run under faults either completes, or fails with one clear line."""
    if outcome.returncode != 0:
        one_clear_line(outcome, "run failed:")


def faults_met(world: World) -> dict[str, int]:
    """The faults the sandboxes drew, by kind."""
    met: dict[str, int] = {}
    for url in (world.ghl_url, world.te_url):
        for record in world.requests(url):
            if record.get("fault"):
                met[record["fault"]] = met.get(record["fault"], 0) + 1
    return met


def writes_since(world: World, urls: tuple[str, ...], seen: dict[str, int]) -> bool:
    """Whether the sandboxes at `urls` took a write after the first `seen[url]` requests of their logs."""
    return any(is_write(r) for url in urls for r in world.requests(url)[seen.get(url, 0):])


def is_write(record: dict[str, Any]) -> bool:
    return record["method"] != "GET" and not record["path"].endswith("/search")


def wait_for(condition: Callable[[], bool], timeout_s: float = 600, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)


# ------------------------------------------------------------------------------------------ fault mixes


@pytest.mark.parametrize(("spec", "both_days", "kinds"), [
    ("429=0.3", False, {"429"}),
    ("5xx=0.1,applied_5xx=0.5", True, {"5xx", "5xx+applied"}),
    ("reset=0.05,applied_5xx=0.5", True, {"reset"}),
], ids=["429-storm", "5xx-half-applied", "resets"])
def test_a_fault_mix_then_a_clean_rerun_converges(world_of: Callable[..., World], reference: dict[str, People],
                                                    spec: str, both_days: bool, kinds: set[str]) -> None:
    world = world_of("chaos")
    world.faults(spec, seed=1)
    completed_or_clear(world.run())  # day 1: creates on both sides
    world.faults(None)
    world.drift()
    if both_days:  # day 2 under the faults too: updates, tags, follow-up tasks (created once, whatever lands)
        world.faults(spec, seed=2)
        completed_or_clear(world.run())
        world.faults(None)
    assert kinds <= set(faults_met(world)), faults_met(world)
    world.ok()
    assert_converged(world, reference["day 2"])


def test_a_429_storm_that_outlasts_the_retries_loses_nothing(world_of: Callable[..., World],
                                                             reference: dict[str, People]) -> None:
    world = world_of("chaos")
    world.faults("latency=100ms")  # GHL's writes (creates, then tags, per contact) take a while
    child = world.start()
    wait_for(lambda: writes_since(world, (world.ghl_url, world.te_url), {}) or child.poll() is not None)
    # from the first write on GHL answers only 429: its writes fail after the client's retries, TinyEmail's land
    answer = httpx.post(world.ghl_url + "/__sandbox/faults", json={"faults": "429=1"})
    assert answer.status_code == 200, answer.text
    completed_or_clear(world.finish(child, (), time.monotonic()))
    world.faults(None)
    with open_db(db_path(world.data)) as store:
        failed = store.con.execute("SELECT count(*) FROM journal WHERE target = 'ghl' AND kind = 'tag_add' "
                                   "AND status = 'failed'").fetchone()
    assert failed and failed[0] > 0, "no GHL tag write failed: the storm came too late"
    world.ok()
    assert_converged(world, reference["day 1"])


def test_latency_spikes(world_of: Callable[..., World], reference: dict[str, People]) -> None:
    world = world_of("chaos")
    with latency_spikes(world, "latency=600ms"):
        completed_or_clear(world.run())
    assert max(r.get("duration_ms") or 0 for r in world.requests(world.ghl_url)) >= 600
    world.drift()
    world.ok()
    assert_converged(world, reference["day 2"])


# ------------------------------------------------------------------------------------ a sandbox restart


@pytest.fixture
def ghl_process(tmp_path: Path) -> Iterator[GhlProcess]:
    process = GhlProcess(FIXTURE, tmp_path / "ghl-sandbox", SCALE.rate_scale)
    process.start()
    yield process
    process.stop()


def test_the_ghl_sandbox_restarted_mid_apply(ghl_process: GhlProcess, serve: Callable[[Starlette], RunningServer],
                                             tmp_path: Path, prefect_server: str,
                                             reference: dict[str, People]) -> None:
    from contact_recon.sandbox import tinyemail

    te = serve(tinyemail.create_app(validate_fixture(FIXTURE)["tinyemail"], rate_scale=SCALE.rate_scale))
    world = World(FIXTURE, ghl_process.base_url, te.base_url, tmp_path / "chaos", prefect_server, SCALE)
    started = time.monotonic()
    child = world.start()
    wait_for(lambda: writes_since(world, (ghl_process.base_url,), {}) or child.poll() is not None)
    assert child.poll() is None, "the run ended before it wrote to GHL"
    ghl_process.crash()  # writes in flight are cut, the state is kept, then SIGKILL
    time.sleep(1.0)  # the outage: connections refused
    ghl_process.restart()
    completed_or_clear(world.finish(child, (), started))
    assert len(world.requests(ghl_process.base_url)) > 0, "the run sent nothing to the restarted sandbox"
    world.drift()
    world.ok()
    assert_converged(world, reference["day 2"])


# ------------------------------------------------------------------------------------- SIGKILL in apply


def test_sigkill_during_apply_under_5xx(world_of: Callable[..., World], reference: dict[str, People]) -> None:
    world = world_of("chaos")
    world.faults("5xx=0.1,applied_5xx=0.5", seed=3)
    killed = world.child(RECON_FAILPOINT="answered:create:4")  # a create landed, the journal does not know
    assert killed.returncode == -signal.SIGKILL, killed.text
    world.faults(None)
    world.ok()
    with open_db(db_path(world.data)) as store:
        runs = store.runs()
    assert runs.filter(runs["error"].str.contains("interrupted")).height == 1, "the killed run was not closed"
    assert_converged(world, reference["day 1"])


# --------------------------------------------------------------------------------------- a second run


def test_a_second_run_is_told_busy_or_waits_never_both_writing(world_of: Callable[..., World],
                                                                reference: dict[str, People]) -> None:
    world = world_of("chaos")
    first_started = time.monotonic()
    first = world.start()
    wait_for(lambda: world.lock_held() or first.poll() is not None, every_s=0.02)
    assert first.poll() is None, "the first run ended before it was seen holding the lock"
    first.send_signal(signal.SIGSTOP)  # frozen while it holds the location: the others meet the lock for sure
    try:
        impatient = world.child("--lock-wait", "1")
    finally:
        resume = threading.Timer(2.0, first.send_signal, (signal.SIGCONT,))
        resume.start()
    # this one waits (in this process) until the first, resumed in 2 s, lets go of the location
    waited = world.run("--lock-wait", str(SCALE.run_timeout_s))
    resume.join()
    line = one_clear_line(impatient, "busy:")
    assert world.location in line, line
    done = world.finish(first, (), first_started)
    assert done.returncode == 0 and waited.returncode == 0, done.text + waited.text
    with open_db(db_path(world.data)) as store:
        one, two = store.get_run(done.run_id), store.get_run(waited.run_id)
    assert one["finished_at"] <= two["started_at"], "the waiting run planned before the first had finished"
    assert_converged(world, reference["day 1"])


# ------------------------------------------------------------------------------------- the DuckDB file


def test_the_duckdb_file_locked_by_another_process(world_of: Callable[..., World],
                                                   reference: dict[str, People]) -> None:
    world = world_of("chaos")
    holder = DuckDBHolder(db_path(world.data))
    try:
        refused = world.child()
    finally:
        holder.release()
    line = one_clear_line(refused, "run failed:")
    assert str(db_path(world.data)) in line and "lock" in line and f"PID {holder.pid}" in line, line
    # the traceback the console left out is in the flow run's logs on the Prefect server
    wait_for(lambda: any("Traceback" in m for m in prefect_errors(str(db_path(world.data)))), timeout_s=30)
    world.ok()
    assert_converged(world, reference["day 1"])


def prefect_errors(text: str) -> list[str]:
    """The latest error logs of flow and task runs on the Prefect server that mention `text`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterLevel
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(level=LogFilterLevel(ge_=40)), limit=50,
                                sort=LogSort.TIMESTAMP_DESC)
    return [log.message for log in logs if text in log.message]


def test_an_empty_store_file_left_by_a_full_disk_is_started_afresh_unless_held(tmp_path: Path) -> None:
    cut_short = tmp_path / "cut-short.duckdb"
    cut_short.touch()  # what DuckDB leaves when the disk is full as it creates the file
    with open_db(cut_short) as store:
        assert store.runs().height == 0
    assert cut_short.stat().st_size > 0
    held = tmp_path / "held.duckdb"
    held.touch()
    code = ("import fcntl, sys; f = open(sys.argv[1], 'r+b'); fcntl.lockf(f, fcntl.LOCK_EX); print('ready', "
            "flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(duckdb.Error):
            open_db(held)  # somebody's database in the making: left alone, DuckDB refuses
        assert held.exists()
    finally:
        holder.communicate("")


# -------------------------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "chaos", 64 if SCALE.name == "short" else 256)
    yield disk
    disk.close()


@pytest.mark.parametrize("when", ["at-start", "mid-apply"])
def test_the_data_dir_disk_full(world_of: Callable[..., World], small_disk: SmallDisk,
                                reference: dict[str, People], when: str) -> None:
    world = world_of("chaos", small_disk.path)
    started = time.monotonic()
    if when == "at-start":
        small_disk.fill()
    else:  # slow requests, so that the disk fills while the apply stage is writing
        world.faults("latency=200ms")
    child = world.start(preexec=small_disk.preexec())
    if when == "mid-apply":
        wait_for(lambda: writes_since(world, (world.ghl_url, world.te_url), {}) or child.poll() is not None)
        small_disk.fill(child.pid)
    full = world.finish(child, (), started)
    small_disk.free()
    world.faults(None)
    line = one_clear_line(full, "run failed:")
    assert "No space left on device" in line or "File too large" in line, line
    # nothing half-written: the store opens (a mid-apply run is left `applying`, its journal telling which ops
    # may have landed), and the next run finishes what this one could not
    with open_db(db_path(world.data)) as store:
        statuses = store.runs()["status"].to_list()
    assert ("applying" in statuses) == (when == "mid-apply"), statuses
    world.ok()
    assert_converged(world, reference["day 1"])
