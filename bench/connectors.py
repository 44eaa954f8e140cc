"""Benchmark of the connectors against their sandboxes: requests per second achieved vs the allowed rate.

For each system a sandbox is served in a thread of this process (GHL at `--rate-scale` 10: 1,000
requests per 10 s = 100/s; TinyEmail at `--te-rate-scale` 100: 6,000 a minute = 100/s, with the client
configured for the same rate, since TinyEmail sends no rate headers). Then two phases run, reads and
writes, each with `--concurrency` tasks issuing calls through one client until the phase's duration
is over:
- GHL reads: `get_contact`, every tenth call a `search_contacts` page; writes: `add_tags`;
- TinyEmail reads: `get_customer`; writes: `upsert_customers` of one customer (one PUT each).

Why a fixed duration of whole rate windows rather than a fixed number of calls: the budget lets a
window's allowance go at once and then waits for the window to slide, so a count that ends just
after a burst would flatter the rate and one that ends just before it would understate it. Over whole
windows the figure is the sustained rate. The budget keeps 5% headroom (and a 0.25 s margin per
window) below the server's limit, so its ceiling is about 93-95% of the allowed rate.

Printed per phase: calls answered within the duration, requests/s, the share of the allowed rate
(goal >= 90%) and the 429 answers in the sandbox's request log (goal 0), with PASS/FAIL lines.

    .venv/bin/python bench/connectors.py [--rate-scale 10] [--seconds 30] [--te-rate-scale 100]
        [--te-seconds 60] [--concurrency 20] [--skip-tinyemail] [--json PATH]

`--json PATH` also writes the figures there (bench/figures.py; `make bench` collects them).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from figures import Figure, goal, info, write_figures  # noqa: E402  # bench/, the script's own directory

from contact_recon.sandbox.fixture import validate_fixture  # noqa: E402
from contact_recon.sandbox.generate import generate_fixture  # noqa: E402
from contact_recon.sandbox.server import RunningServer, serve_in_thread  # noqa: E402
from contact_recon.settings import Settings  # noqa: E402

SHARE_GOAL = 0.90
PLAIN_EMAIL = re.compile(r"[a-z0-9._+-]+@[a-z0-9-]+(\.[a-z0-9-]+)+")  # the fixture's awkward emails are left out
Call = Callable[[int], Awaitable[Any]]


@dataclass
class Phase:
    system: str
    kind: str
    calls: int
    seconds: float
    allowed_per_s: float
    too_many: int
    errors: int

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def share(self) -> float:
        return self.rate / self.allowed_per_s

    def lines(self) -> list[str]:
        share_ok, zero_429 = self.share >= SHARE_GOAL, self.too_many == 0
        return [
            f"{self.system} {self.kind}: {self.calls} calls in {self.seconds:.1f} s = {self.rate:.1f} req/s "
            f"of {self.allowed_per_s:.1f} allowed ({self.share:.1%}); 429s: {self.too_many}; errors: {self.errors}",
            f"  share >= {SHARE_GOAL:.0%}: {'PASS' if share_ok else 'FAIL'}",
            f"  zero 429: {'PASS' if zero_429 else 'FAIL'}",
        ]

    def figures(self) -> list[Figure]:
        name = f"{self.system} {self.kind}"
        return [info("connectors", f"{name}: calls", self.calls),
                info("connectors", f"{name}: rate", self.rate, "req/s"),
                goal("connectors", f"{name}: share of the allowed rate", self.share * 100, ">=",
                     SHARE_GOAL * 100, "%"),
                goal("connectors", f"{name}: 429 answers", self.too_many, "==", 0),
                goal("connectors", f"{name}: errors", self.errors, "==", 0)]


async def drive(call: Call, seconds: float, concurrency: int) -> tuple[int, int]:
    """Run `call(i)` from `concurrency` tasks until `seconds` pass; (calls answered in time, errors)."""
    done, errors, counter = 0, 0, iter(range(10**9))
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while True:
            try:
                await call(next(counter))
            except Exception as exc:  # noqa: BLE001  # a bench counts failures instead of stopping
                errors += 1
                if errors <= 3:
                    print(f"  error: {type(exc).__name__}: {exc}", flush=True)
                continue
            if time.monotonic() > deadline:
                return
            done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.wait(tasks, timeout=seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return done, errors


def count_429(server: RunningServer, since: int) -> tuple[int, int]:
    """429 answers in the sandbox's request log after entry `since`, and the log's length."""
    log = httpx.get(f"{server.base_url}/__sandbox/requests", params={"offset": since}, timeout=60).json()
    return sum(1 for r in log["requests"] if r["status"] == 429), since + len(log["requests"])


async def run_phases(system: str, server: RunningServer, allowed: float, window_s: float, seconds: float,
                     concurrency: int, phases: list[tuple[str, Call]]) -> list[Phase]:
    results, offset = [], count_429(server, 0)[1]
    for kind, call in phases:
        calls, errors = await drive(call, seconds, concurrency)
        too_many, offset = count_429(server, offset)
        results.append(Phase(system, kind, calls, seconds, allowed, too_many, errors))
        print("\n".join(results[-1].lines()), flush=True)
        await asyncio.sleep(window_s + 1)  # let the window drain, so each phase starts from a fresh one
    return results


async def bench_ghl(fixture: dict[str, Any], args: argparse.Namespace) -> list[Phase]:
    from contact_recon.sandbox import ghl
    from contact_recon.systems.ghl.client import GHLClient

    server = serve_in_thread(ghl.create_app(fixture["ghl"], rate_scale=args.rate_scale))
    token = fixture["ghl"]["tokens"][0]
    ids = [c["id"] for c in fixture["ghl"]["locations"][token["locationId"]]["contacts"]]
    settings = Settings(ghl_base_url=server.base_url, ghl_token=token["token"])
    client = GHLClient.from_settings(settings, token["locationId"])

    async def read(i: int) -> Any:
        if i % 10 == 9:
            return await client.search_contacts(page_limit=20, page=1 + i % 50)
        return await client.get_contact(ids[i % len(ids)])

    async def write(i: int) -> Any:
        return await client.add_tags(ids[i % len(ids)], [f"bench-{i % 7}"])

    allowed = ghl.BURST_LIMIT * args.rate_scale / ghl.BURST_WINDOW_S
    try:
        return await run_phases("ghl", server, allowed, ghl.BURST_WINDOW_S, args.seconds, args.concurrency,
                                [("reads", read), ("writes", write)])
    finally:
        print(f"  ghl client stats: {client.stats}; budget: {client.budget.snapshot()}")
        await client.aclose()
        server.stop()


async def bench_tinyemail(fixture: dict[str, Any], args: argparse.Namespace) -> list[Phase]:
    from contact_recon.sandbox import tinyemail
    from contact_recon.systems.tinyemail.client import TinyEmailClient
    from contact_recon.systems.tinyemail.models import Customer

    server = serve_in_thread(tinyemail.create_app(fixture["tinyemail"], rate_scale=args.te_rate_scale))
    per_minute = 60 * args.te_rate_scale
    emails = [c["email"] for c in fixture["tinyemail"]["customers"] if PLAIN_EMAIL.fullmatch(c.get("email") or "")]
    settings = Settings(tinyemail_base_url=f"{server.base_url}/v1",
                        tinyemail_api_key=fixture["tinyemail"]["apiKeys"][0], tinyemail_rate_per_minute=per_minute)
    client = TinyEmailClient.from_settings(settings)

    async def read(i: int) -> Any:
        return await client.get_customer(emails[i % len(emails)])

    async def write(i: int) -> Any:
        return await client.upsert_customers([Customer(email=emails[i % len(emails)], source=f"bench-{i % 7}")])

    try:
        return await run_phases("tinyemail", server, per_minute / 60, tinyemail.WINDOW_S, args.te_seconds,
                                args.concurrency,
                                [("reads", read), ("writes", write)])
    finally:
        print(f"  tinyemail client stats: {client.stats}; budget: {client.budget.snapshot()}")
        await client.aclose()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-scale", type=float, default=10.0, help="GHL sandbox rate scale (10: 100 req/s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="GHL phase length (whole 10 s windows)")
    parser.add_argument("--te-rate-scale", type=float, default=100.0, help="TinyEmail rate scale (100: 100 req/s)")
    parser.add_argument("--te-seconds", type=float, default=60.0, help="TinyEmail phase length (whole minutes)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--skip-tinyemail", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    fixture = validate_fixture(generate_fixture(args.contacts, seed=1))
    phases = asyncio.run(bench_ghl(fixture, args))
    if args.skip_tinyemail:
        print("tinyemail: skipped (--skip-tinyemail)")
    elif importlib.util.find_spec("contact_recon.systems.tinyemail.client") is None:
        print("tinyemail: skipped (contact_recon/systems/tinyemail/client.py does not exist yet)")
    else:
        phases += asyncio.run(bench_tinyemail(fixture, args))
    ok = all(p.share >= SHARE_GOAL and p.too_many == 0 and p.errors == 0 for p in phases)
    print(f"overall: {'PASS' if ok else 'FAIL'}")
    write_figures(args.json, [figure for phase in phases for figure in phase.figures()])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
