"""Chaos: the nightly flow (`recon run`, a real child process, on the session's Prefect server) under fault
mixes; after each, a clean rerun leaves both systems converged (tests/chaos_support.py: nothing left to plan, no
duplicate, every shared field agreeing but for conflicts, and the same people as the run without faults), and
every failure ends with exit 1 and one readable line, never a traceback.

Fault mixes: 429 storms, 5xx with half of the failed writes applied, connection resets, latency spikes, the
GHL sandbox restarted mid-run, SIGKILL during apply, a second concurrent run, the DuckDB file locked by another
process, the data dir's disk full. `RECON_CHAOS_SCALE=full` (`make chaos`) runs the same at 2,000 people.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.server import RunningServer
from tests.chaos_support import Outcome, World, assert_converged, chaos_fixture, current_scale, final_state, \
    one_clear_line

SCALE = current_scale()
FIXTURE = chaos_fixture(SCALE)


@pytest.fixture
def world_of(sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path,
             prefect_server: str) -> Callable[[str], World]:
    """A world with both sandboxes in this process (their faults set later through the admin route)."""
    def make(name: str) -> World:
        ghl, te = sandboxes(FIXTURE, rate_scale=SCALE.rate_scale)
        return World(FIXTURE, ghl.base_url, te.base_url, tmp_path / name, prefect_server, SCALE)
    return make


@pytest.fixture(scope="module")
def reference_cache() -> dict[str, Any]:
    return {}


@pytest.fixture
def reference(world_of: Callable[[str], World], reference_cache: dict[str, Any]) -> tuple[dict, dict]:
    """Both systems after run, drift, run without any fault (once per module); that world passes the checks."""
    if "state" not in reference_cache:
        world = world_of("reference")
        world.ok()
        world.drift()
        world.ok()
        assert_converged(world, None)
        reference_cache["state"] = final_state(world)
    return reference_cache["state"]


def clean_or_clear(outcome: Outcome) -> None:
    """A run under faults either completes, or fails with one clear line."""
    if outcome.returncode != 0:
        one_clear_line(outcome, "run failed:")


def faulted_story(world: World, spec: str) -> list[Outcome]:
    """run and drift and run under `spec`, then a clean rerun; the faulted runs' outcomes."""
    world.faults(spec, seed=1)
    first = world.run()
    world.faults(None)
    world.drift()
    world.faults(spec, seed=2)
    second = world.run()
    world.faults(None)
    world.ok()
    return [first, second]


def faults_met(world: World) -> dict[str, int]:
    """The faults the sandboxes drew, by kind."""
    met: dict[str, int] = {}
    for url in (world.ghl_url, world.te_url):
        for record in world.requests(url):
            if record.get("fault"):
                met[record["fault"]] = met.get(record["fault"], 0) + 1
    return met


@pytest.mark.parametrize(("spec", "kinds"), [
    ("429=0.3", {"429"}),
    ("5xx=0.1,applied_5xx=0.5", {"5xx", "5xx+applied"}),
    ("reset=0.05,applied_5xx=0.5", {"reset"}),
], ids=["429-storm", "5xx-half-applied", "resets"])
def test_a_fault_mix_then_a_clean_rerun_converges(world_of: Callable[[str], World], reference: tuple[dict, dict],
                                                    spec: str, kinds: set[str]) -> None:
    world = world_of("chaos")
    for outcome in faulted_story(world, spec):
        clean_or_clear(outcome)
    assert kinds <= set(faults_met(world)), faults_met(world)
    assert_converged(world, reference)
