"""Fault specs and their deterministic draws."""

from __future__ import annotations

from collections import Counter

import pytest

from contact_recon.sandbox.faults import FaultInjector, FaultSpec

FULL = "5xx=0.02,applied_5xx=0.5,timeout=0.01,reset=0.01,latency=20ms,429=0.01"


def test_parse_full_spec_round_trips():
    spec = FaultSpec.parse(FULL)
    assert (spec.p_5xx, spec.applied_5xx, spec.timeout, spec.reset, spec.p_429) == (0.02, 0.5, 0.01, 0.01, 0.01)
    assert spec.latency_s == pytest.approx(0.02)
    assert FaultSpec.parse(str(spec)) == spec
    assert FaultSpec.parse("latency=1.5s,timeout_hold=2s").timeout_hold_s == 2.0
    assert FaultSpec.parse("") == FaultSpec() == FaultSpec.parse("none")


@pytest.mark.parametrize("bad, words", [
    ("5xx=2", "between 0 and 1"), ("boom=0.1", "unknown fault"), ("5xx", "unknown fault"),
    ("latency=fast", "needs a number"), ("5xx=0.6,reset=0.5", "more than 1"),
])
def test_bad_specs_are_named(bad, words):
    with pytest.raises(ValueError, match=words):
        FaultSpec.parse(bad)


def _workload(injector: FaultInjector, n: int = 5000) -> list[str | None]:
    return [injector.draw("POST", f"/contacts/{i % 50}/tags", "", b'{"tags":["a"]}').kind for i in range(n)]


def test_same_seed_same_faults_different_seed_different_faults():
    spec = FaultSpec.parse(FULL)
    first = _workload(FaultInjector(spec, seed=1))
    assert first == _workload(FaultInjector(spec, seed=1))
    assert first != _workload(FaultInjector(spec, seed=2))


def test_draws_do_not_depend_on_interleaving():
    spec = FaultSpec.parse("5xx=0.3")
    forward, backward = FaultInjector(spec, 3), FaultInjector(spec, 3)
    paths = [f"/contacts/{i}" for i in range(300)]
    a = {p: forward.draw("GET", p).kind for p in paths}
    b = {p: backward.draw("GET", p).kind for p in reversed(paths)}
    assert a == b


def test_shares_are_close_to_the_spec_and_retries_get_fresh_draws():
    injector = FaultInjector(FaultSpec.parse(FULL), seed=9)
    kinds = Counter(_workload(injector, 40_000))
    assert kinds["5xx"] == pytest.approx(800, rel=0.15)
    assert kinds["timeout"] == pytest.approx(400, rel=0.2)
    assert kinds["reset"] == pytest.approx(400, rel=0.2)
    assert kinds["429"] == pytest.approx(400, rel=0.2)
    # the same request repeated (a retry) is not doomed to the same fault forever
    repeated = [injector.draw("PUT", "/contacts/x", "", b"{}").kind for _ in range(200)]
    assert repeated.count(None) > 150


def test_applied_share_of_failed_writes():
    injector = FaultInjector(FaultSpec.parse("5xx=1,applied_5xx=0.5"), seed=4)
    applied = sum(injector.draw("POST", "/contacts/", "", str(i).encode()).apply_write for i in range(4000))
    assert applied == pytest.approx(2000, rel=0.08)
