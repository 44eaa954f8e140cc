"""Chaos: the nightly flow (`recon run`) under fault mixes; after each, a clean rerun leaves both systems converged
(tests/chaos_support.py `assert_converged`: nothing left to plan, no duplicate, every shared field agreeing but for
conflicts, and the same people as the story told without faults), and every failure ends with exit 1 and one
readable line, never a traceback.

`recon run` runs in this process (the same command through typer's runner, on the session's Prefect server)
unless the fault needs a process of its own: a SIGKILL, a concurrent run, a run that must meet a sandbox
restart, a locked DuckDB file or a full disk; those run `recon run` as a real child process.
`RECON_CHAOS_SCALE=full` (`make chaos`) tells the same stories at 2,000 people.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from sandbox.fixture import validate_fixture
from sandbox.server import RunningServer
from tasks.db import db_path, open_db
from tests.chaos_support import (
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
def reference_cache() -> dict[str, Any]:
    return {}


@pytest.fixture
def reference(world_of: Callable[..., World], reference_cache: dict[str, Any]) -> People:
    """Both systems after run, drift, run without any fault (once per module); that world passes the checks."""
    if "people" not in reference_cache:
        world = world_of("reference")
        world.ok()
        world.drift()
        world.ok()
        assert_converged(world, None)
        reference_cache["people"] = final_state(world)
    return reference_cache["people"]


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


def slowest(world: World) -> float:
    return max(r.get("duration_ms") or 0 for url in (world.ghl_url, world.te_url) for r in world.requests(url))


# ------------------------------------------------------------------------------------------ fault mixes


@pytest.mark.parametrize(("spec", "kinds"), [
    ("429=0.3", {"429"}),
    ("5xx=0.1,applied_5xx=0.5", {"5xx", "5xx+applied"}),
    ("reset=0.05,applied_5xx=0.5", {"reset"}),
], ids=["429-storm", "5xx-half-applied", "resets"])
def test_a_fault_mix_then_a_clean_rerun_converges(world_of: Callable[..., World], reference: People,
                                                    spec: str, kinds: set[str]) -> None:
    world = world_of("chaos")
    # run, drift, run under the faults (the first run creates on both sides, the second updates, tags and tasks)
    world.faults(spec, seed=1)
    completed_or_clear(world.run())
    world.faults(None)
    world.drift()
    world.faults(spec, seed=2)
    completed_or_clear(world.run())
    world.faults(None)
    assert kinds <= set(faults_met(world)), faults_met(world)
    world.ok()
    assert_converged(world, reference)


def test_latency_spikes(world_of: Callable[..., World], reference: People) -> None:
    world = world_of("chaos")
    with latency_spikes(world):
        completed_or_clear(world.run())
        world.drift()
        completed_or_clear(world.run())
    assert slowest(world) >= 600
    world.ok()
    assert_converged(world, reference)


# ------------------------------------------------------------------------------------ a sandbox restart


@pytest.fixture
def ghl_process(tmp_path: Path) -> Iterator[GhlProcess]:
    process = GhlProcess(FIXTURE, tmp_path / "ghl-sandbox", SCALE.rate_scale)
    process.start()
    yield process
    process.stop()


def test_the_ghl_sandbox_restarted_mid_apply(ghl_process: GhlProcess, serve: Callable[[Starlette], RunningServer],
                                             tmp_path: Path, prefect_server: str, reference: People) -> None:
    from sandbox import tinyemail

    te = serve(tinyemail.create_app(validate_fixture(FIXTURE)["tinyemail"], rate_scale=SCALE.rate_scale))
    world = World(FIXTURE, ghl_process.base_url, te.base_url, tmp_path / "chaos", prefect_server, SCALE)
    started = time.monotonic()
    child = world.start()
    wait_for(lambda: any(is_write(r) for r in world.requests(ghl_process.base_url)) or child.poll() is not None)
    assert child.poll() is None, "the run ended before it wrote to GHL"
    ghl_process.crash()  # writes in flight are cut, the state is kept, then SIGKILL
    time.sleep(1.0)  # the outage: connections refused
    ghl_process.restart()
    completed_or_clear(world.finish(child, (), started))
    world.ok()
    world.drift()
    world.ok()
    assert_converged(world, reference)


def is_write(record: dict[str, Any]) -> bool:
    return record["method"] != "GET" and not record["path"].endswith("/search")


def wait_for(condition: Callable[[], bool], timeout_s: float = 300, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)


# ------------------------------------------------------------------------------------- SIGKILL in apply


def test_sigkill_during_apply_under_5xx(world_of: Callable[..., World], reference: People) -> None:
    world = world_of("chaos")
    world.faults("5xx=0.1,applied_5xx=0.5", seed=3)
    killed = world.child(RECON_FAILPOINT="answered:create:4")  # a create landed, the journal does not know
    assert killed.returncode == -signal.SIGKILL, killed.text
    world.faults(None)
    world.ok()
    with open_db(db_path(world.data)) as store:
        closed = store.runs().filter(store.runs()["error"].str.contains("interrupted"))
    assert closed.height == 1, "the next run did not close the killed run"
    world.drift()
    world.ok()
    assert_converged(world, reference)


# --------------------------------------------------------------------------------------- a second run


def test_a_second_run_is_told_busy_or_waits_never_both_writing(world_of: Callable[..., World],
                                                                reference: People) -> None:
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
    world.drift()
    world.ok()
    assert_converged(world, reference)


# ------------------------------------------------------------------------------------- the DuckDB file


def test_the_duckdb_file_locked_by_another_process(world_of: Callable[..., World], reference: People) -> None:
    world = world_of("chaos")
    world.ok()
    world.drift()
    holder = DuckDBHolder(db_path(world.data))
    try:
        refused = world.child()
    finally:
        holder.release()
    line = one_clear_line(refused, "run failed:")
    assert str(db_path(world.data)) in line and "lock" in line, line
    assert f"PID {holder.pid}" in line, line
    world.ok()
    assert_converged(world, reference)


# -------------------------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "chaos", 64 if SCALE.name == "short" else 1024)
    yield disk
    disk.close()


@pytest.mark.parametrize("when", ["before", "while-writing"])
def test_the_data_dir_disk_full(world_of: Callable[..., World], small_disk: SmallDisk, reference: People,
                                when: str) -> None:
    world = world_of("chaos", small_disk.path)
    world.ok()
    world.drift()
    started = time.monotonic()
    if when == "before":
        small_disk.fill()
    child = world.start(preexec=small_disk.preexec())
    if when == "while-writing":
        wait_for(lambda: any(is_write(r) for url in (world.ghl_url, world.te_url) for r in world.requests(url))
                 or child.poll() is not None)
        small_disk.fill(child.pid)
    full = world.finish(child, (), started)
    small_disk.free()
    line = one_clear_line(full, "run failed:")
    assert "No space left on device" in line or "File too large" in line, line
    # nothing half-written: the store opens, and the next run finishes what this one could not
    with open_db(db_path(world.data)) as store:
        assert store.runs().height >= 2
    world.ok()
    assert_converged(world, reference)
