"""Global concurrency limits with slot decay, against a real Prefect server, shared by two worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from contact_recon.systems import concurrency
from contact_recon.systems.concurrency import (
    LimitSpec,
    batch_slots,
    ensure_budget_limit,
    ensure_limit,
    limit_name,
    window_limit,
)
from tests.support import REPO

WORKER = textwrap.dedent("""
    import asyncio, json, pathlib, sys, time
    from contact_recon.systems.concurrency import batch_slots

    async def main(key, batch, count, go):
        async with batch_slots("test", key, 1):  # warmed up: the Prefect client made, its first call answered
            pass
        print("ready", flush=True)
        while not pathlib.Path(go).exists():  # both workers start together, whatever their start-up took
            await asyncio.sleep(0.01)
        for _ in range(count):
            async with batch_slots("test", key, batch):
                print(json.dumps({"t": time.time(), "n": batch}), flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
""")


async def read_limit(name: str) -> tuple[int, float]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        found = await client.read_global_concurrency_limit_by_name(name)
    return found.limit, found.slot_decay_per_second


def test_window_limit_never_grants_more_than_the_window_allows() -> None:
    assert window_limit(100, 10, 10) == LimitSpec(20, 8.0)
    assert window_limit(100, 10, 5) == LimitSpec(10, 9.0)
    assert window_limit(60, 60, 10) == LimitSpec(20, 40 / 60)
    for requests, window_s, batch in [(100, 10, 10), (100, 10, 1), (60, 60, 30), (7, 3, 2)]:
        spec = window_limit(requests, window_s, batch)
        assert batch <= spec.limit and spec.limit + spec.slot_decay_per_second * window_s <= requests + 1e-9
    with pytest.raises(ValueError):
        window_limit(10, 10, 6)


def test_limits_are_created_and_updated_with_their_decay(prefect_server: str) -> None:  # noqa: F811
    name = f"test:{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_limit(name, 20, 2.0))
    assert asyncio.run(read_limit(name)) == (20, 2.0)
    asyncio.run(ensure_limit(name, 30, 2.5))
    assert asyncio.run(read_limit(name)) == (30, 2.5)

    location = uuid.uuid4().hex[:20]
    spec = asyncio.run(ensure_budget_limit("ghl", location, requests=100, window_s=10, batch=10))
    assert spec == LimitSpec(20, 8.0)
    assert asyncio.run(read_limit(f"ghl:{location}")) == (20, 8.0)


def test_batch_slots_is_a_no_op_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(concurrency.ENV_FLAG, raising=False)

    async def run() -> int:
        done = 0
        for _ in range(3):  # no Prefect limit exists under this name: only a no-op can pass
            async with batch_slots("test", f"missing-{uuid.uuid4().hex}", 5):
                done += 1
        return done

    assert asyncio.run(run()) == 3


def test_batch_slots_refuses_a_missing_limit_and_an_oversized_batch(prefect_server: str,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    monkeypatch.setenv(concurrency.ENV_FLAG, "1")
    key = uuid.uuid4().hex[:8]

    async def take(n: int) -> None:
        async with batch_slots("test", key, n, timeout_s=5):
            pass

    with pytest.raises(ConcurrencySlotAcquisitionError):
        asyncio.run(take(1))
    asyncio.run(ensure_limit(limit_name("test", key), 4, 1.0))
    with pytest.raises(ValueError):
        asyncio.run(take(5))
    asyncio.run(take(4))


def test_two_workers_share_one_limit_without_exceeding_the_window(prefect_server: str,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    requests, window_s, batch, count = 24, 2.0, 3, 16
    key = uuid.uuid4().hex[:8]
    spec = asyncio.run(ensure_budget_limit("test", key, requests, window_s, batch))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, concurrency.ENV_FLAG: "1", "PYTHONPATH": str(REPO)}
    script, go = tmp_path / "worker.py", tmp_path / "go"
    script.write_text(WORKER)
    workers = [subprocess.Popen([sys.executable, str(script), key, str(batch), str(count), str(go)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:  # started (prefect imported) before the first batch is asked for
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    go.touch()
    grants: list[tuple[float, int, int]] = []
    for index, worker in enumerate(workers):
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        grants += [(g["t"], g["n"], index) for g in map(json.loads, out.splitlines())]
    grants.sort()

    # every batch asked for was granted: 2 x 16 x 3 slots, far beyond the bucket's limit, so the slots decayed and
    # the limit kept serving (a stalled bucket grants `spec.limit` slots and then blocks: communicate times out)
    assert sum(n for _, n, _ in grants) == 2 * count * batch > spec.limit
    owners = [index for _, _, index in grants]
    assert sum(a != b for a, b in zip(owners, owners[1:], strict=False)) >= 2, owners  # the two shared it, side by side
    busiest = max(sum(n for t2, n, _ in grants if t <= t2 < t + window_s) for t, _, _ in grants)
    assert busiest <= requests, f"{busiest} slots granted within {window_s} s (limit {requests})"
