"""Benchmark: how long a change takes to reach the other system between nights, steady and in a storm.

    .venv/bin/python bench/events.py [--contacts 300] [--changes 20] [--burst-people 100] [--burst-each 10]
                                     [--interval 2] [--quick] [--json PATH]

Everything runs as it would in production, each part its own process on 127.0.0.1:
- a Prefect server (`prefect server start`, a temporary PREFECT_HOME) with its trigger and action services;
- both sandboxes (`recon sandbox serve --only ...`), the GHL one sending signed webhooks (`--webhook-url`);
- `recon webhooks serve` (verifies with the sandbox test key, emits `ghl.contact.*` events);
- `recon watch tinyemail --interval N` (TinyEmail has no webhooks: polls, emits `tinyemail.customer.*`);
- `recon services serve`, the sync service (service/syncer.py): follows the events, coalesces them per person
  and syncs each in its own process (the `sync-contact` task), no process started per change.
A first `recon run --approve` makes the base (the webhooks of its own writes come back as echoes). Then:
1. **1 change a second**, `--changes` times per direction: one person's city changed through one system's
   public API each second; the other system's state is read (the sandboxes' `/__sandbox/state`, which spends
   no rate budget) every 0.2 s until it shows the value. GHL -> TinyEmail (a webhook), then TinyEmail -> GHL
   (bounded by the watcher's poll interval, reported with it).
2. **A burst**: `--burst-people` people changed `--burst-each` times each in GHL as fast as its API takes it,
   each person's changes back to back (1,000 webhooks for 100 people by default); latency from each person's last
   change to TinyEmail showing it; syncs the service started for the burst (its `syncs.json`), failed syncs and
   failed flow runs, and the requests both sandboxes answered meanwhile.
Figures: latency p50, p95 and max per direction and phase (goal: p95 under 5 s at 1 change a second, GHL side),
syncs per burst, requests, failed runs (goal 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

from figures import goal, info, write_figures  # noqa: E402

from contact_recon.sandbox.generate import generate_fixture, write_fixture  # noqa: E402
from contact_recon.sandbox.server import free_port  # noqa: E402
from contact_recon.stages.echo import WINDOW_S  # noqa: E402

RECON = str(REPO / ".venv/bin/recon")
PREFECT = [sys.executable, "-m", "prefect"]
LOOSE = "[guards]\ndeletes_or_inactivations = 1.0\nfield_updates = 1.0\ntag_removals = 1.0\n"


class Stack:
    """The processes of the benchmark; all stopped at the end."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []
        self.env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}

    def start(self, cmd: list[str], name: str, ready: str | None = None) -> subprocess.Popen[str]:
        log = (self.tmp / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE if ready else log,
                                stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        if ready:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if ready in line:
                    break
            # keep draining its output into the log: a full pipe would stall the server
            threading.Thread(target=lambda: [log.write(line) or log.flush() for line in proc.stdout],  # type: ignore
                             daemon=True).start()
        return proc

    def run(self, cmd: list[str], timeout: float = 600) -> str:
        done = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode not in (0, 3):
            raise RuntimeError(f"{' '.join(cmd[:4])}... exit {done.returncode}: "
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=300)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--burst-people", type=int, default=100)
    parser.add_argument("--burst-each", type=int, default=10)
    parser.add_argument("--interval", type=float, default=2.0, help="the watcher's poll interval (s)")
    parser.add_argument("--quick", action="store_true", help="a small run: 200 contacts, 5 changes, 30 x 10 burst")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.contacts, args.changes, args.burst_people = 200, 5, 30
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    stack = Stack(tmp)
    try:
        figures = run(args, stack, tmp)
    finally:
        stack.stop()
    write_figures(args.json, figures)
    sys.exit(0 if all(f.passed is not False for f in figures) else 1)


def run(args: argparse.Namespace, stack: Stack, tmp: Path) -> list[Any]:
    fixture = generate_fixture(args.contacts, seed=9, awkward=0.0)
    write_fixture(fixture, tmp / "fixture.json")
    (tmp / "policy.toml").write_text(LOOSE)
    ports = {name: free_port() for name in ("prefect", "ghl", "te", "hooks")}
    api = f"http://127.0.0.1:{ports['prefect']}/api"
    stack.start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])], "prefect")
    wait_http(api + "/health")
    token = fixture["ghl"]["tokens"][0]
    stack.env.update({
        "PREFECT_API_URL": api, "RECON_DATA_DIR": str(tmp / "data"), "RECON_POLICY_FILE": str(tmp / "policy.toml"),
        "RECON_GHL_BASE_URL": f"http://127.0.0.1:{ports['ghl']}", "RECON_GHL_TOKEN": token["token"],
        "RECON_GHL_LOCATION_IDS": token["locationId"], "RECON_TINYEMAIL_BASE_URL": f"http://127.0.0.1:{ports['te']}/v1",
        "RECON_TINYEMAIL_API_KEY": fixture["tinyemail"]["apiKeys"][0], "RECON_GHL_WEBHOOK_PUBLIC_KEY": "sandbox",
        "RECON_GHL_RATE_SCALE": "10", "RECON_TINYEMAIL_RATE_PER_MINUTE": "600"})
    hook_url = f"http://127.0.0.1:{ports['hooks']}/webhooks/ghl"
    for only, ready in (("ghl", "GHL sandbox"), ("tinyemail", "TinyEmail sandbox")):
        stack.start([RECON, "sandbox", "serve", "--fixture", str(tmp / "fixture.json"), "--only", only, "--ghl-port",
                     str(ports["ghl"]), "--tinyemail-port", str(ports["te"]), "--rate-scale", "10",
                     *(["--webhook-url", hook_url] if only == "ghl" else [])], f"sandbox-{only}", ready)
    stack.start([RECON, "webhooks", "serve", "--port", str(ports["hooks"])], "webhooks")
    wait_http(f"http://127.0.0.1:{ports['hooks']}/healthz")
    stack.run([RECON, "run", "--approve"])  # the base: the first reconciliation (its webhooks are echoes)
    based = time.monotonic()
    stack.start([RECON, "watch", "tinyemail", "--interval", str(args.interval), "--budget-share", "0.5"], "watch")
    stack.start([RECON, "services", "serve"], "services", ready="sync service")
    # GHL contacts the first run just wrote are inside their echo window (stages/echo.py, 120 s): a person's edit
    # of them would wait for the night, by design; wait it out (the watcher's first poll, its baseline, meanwhile)
    time.sleep(max(2 * args.interval, WINDOW_S + 5 - (time.monotonic() - based)))
    sides = Sides(fixture, ports)
    people = sides.pairs(set())
    need = 2 * args.changes + args.burst_people
    if len(people) < need:
        raise RuntimeError(f"{len(people)} people to measure, {need} needed: raise --contacts")
    steady = people[: 2 * args.changes]
    ghl_to_te = steady_changes(sides, steady[: args.changes], "ghl")
    te_to_ghl = steady_changes(sides, steady[args.changes:], "te")
    time.sleep(3)  # the steady phase's own echoes (a sync's GHL write comes back as a webhook) settle
    burst = burst_changes(sides, people[2 * args.changes: need], args.burst_each, tmp / "data")
    failed_flow_runs = count_failed_flow_runs(api)
    print(f"1 change/s, GHL -> TinyEmail: {', '.join(f'{s:.1f}' for s in ghl_to_te)} s")
    print(f"1 change/s, TinyEmail -> GHL (poll every {args.interval:g} s): "
          f"{', '.join(f'{s:.1f}' for s in te_to_ghl)} s")
    print(f"burst: {burst['webhooks']} webhooks for {burst['people']} people -> {burst['syncs']} syncs, "
          f"{burst['failed']} failed, {burst['requests']} requests; latency "
          f"{', '.join(f'{s:.1f}' for s in burst['latency'])}")
    print(f"failed flow runs: {failed_flow_runs}")
    figures = [*latency("1 change/s GHL -> TinyEmail", ghl_to_te, goal_p95=5.0),
               *latency(f"1 change/s TinyEmail -> GHL (watcher poll {args.interval:g} s)", te_to_ghl),
               *latency(f"burst of {burst['webhooks']} webhooks GHL -> TinyEmail", burst["latency"]),
               info("events", f"syncs started per burst of {burst['webhooks']} webhooks for {burst['people']} people",
                    burst["syncs"]),
               info("events", "requests used in the burst (GHL + TinyEmail)", burst["requests"]),
               goal("events", "failed syncs in the burst", burst["failed"], "<=", 0),
               goal("events", "failed flow runs (alerts) over the run", failed_flow_runs, "<=", 0)]
    return figures


def latency(name: str, values: list[float], goal_p95: float | None = None) -> list[Any]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]
    return [info("events", f"{name} latency p50", statistics.median(ordered), "s"),
            goal("events", f"{name} latency p95", p95, "<", goal_p95, "s") if goal_p95 is not None
            else info("events", f"{name} latency p95", p95, "s"),
            info("events", f"{name} latency max", ordered[-1], "s")]


class Sides:
    """Both sandboxes through their public APIs (the changes) and their state routes (the reads: no budget)."""

    def __init__(self, fixture: dict[str, Any], ports: dict[str, int]):
        self.ghl, self.te = f"http://127.0.0.1:{ports['ghl']}", f"http://127.0.0.1:{ports['te']}"
        self.auth = {"Authorization": f"Bearer {fixture['ghl']['tokens'][0]['token']}", "Version": "2021-07-28"}
        self.key = {"X-API-KEY": fixture["tinyemail"]["apiKeys"][0]}
        self.http = httpx.Client(timeout=60)

    def pairs(self, echoed: set[str]) -> list[dict[str, Any]]:
        state = self.http.get(self.ghl + "/__sandbox/state").json()
        customers = {c["email"].lower() for c in self.http.get(self.te + "/__sandbox/state").json()["customers"]}
        return [c for c in next(iter(state["locations"].values()))["contacts"]
                if (c.get("email") or "").lower() in customers and c["id"] not in echoed]

    def change(self, side: str, person: dict[str, Any], city: str) -> None:
        if side == "ghl":
            self.http.put(f"{self.ghl}/contacts/{person['id']}", json={"city": city},
                          headers=self.auth).raise_for_status()
        else:
            self.http.put(f"{self.te}/v1/account/customer", headers=self.key,
                          json={"updateMembers": [{"email": person["email"], "city": city}]}).raise_for_status()

    def cities(self, side: str) -> dict[str, str | None]:
        """Person (GHL id, or email) -> city, on the side that receives the change."""
        if side == "te":
            return {c["email"].lower(): c.get("city") for c in self.http.get(self.te + "/__sandbox/state").json()[
                "customers"]}
        state = self.http.get(self.ghl + "/__sandbox/state").json()
        return {c["id"]: c.get("city") for c in next(iter(state["locations"].values()))["contacts"]}

    def requests(self) -> int:
        return sum(self.http.get(base + "/__sandbox/requests?offset=1000000000").json()["total"]
                   for base in (self.ghl, self.te))


def arrivals(sides: Sides, target: str, wanted: dict[str, tuple[str, float]], expected: int,
             timeout: float = 300) -> list[float]:
    """Seconds from each change (its start time) until the target side shows it (`timeout` if never). Runs beside
    the changes (`wanted` fills as they are made, up to `expected`), so an early change is timed when it lands,
    not when the last one was made."""
    got: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while (len(got) < expected) and time.monotonic() < deadline:
        cities, now = sides.cities(target), time.monotonic()
        for who, (city, started) in list(wanted.items()):
            if who not in got and started <= now and cities.get(who) == city:
                got[who] = now - started
        time.sleep(0.2)
    missing = [w for w in wanted if w not in got]
    if missing:
        print(json.dumps({"timeout": len(missing)}))
    return [got.get(w, timeout) for w in wanted]


def measured_beside(sides: Sides, target: str, wanted: dict[str, tuple[str, float]], expected: int) -> Any:
    """`arrivals` in a thread started now; `.join()` then `.result`."""
    class Watch(threading.Thread):
        result: list[float] = []

        def run(self) -> None:
            self.result = arrivals(sides, target, wanted, expected)

    watch = Watch(daemon=True)
    watch.start()
    return watch


def steady_changes(sides: Sides, people: list[dict[str, Any]], side: str) -> list[float]:
    """One change a second on `side`, each measured on the other side (read in a thread beside the changes)."""
    target = "te" if side == "ghl" else "ghl"
    wanted: dict[str, tuple[str, float]] = {}
    watch = measured_beside(sides, target, wanted, len(people))
    for i, person in enumerate(people):
        started = time.monotonic()
        city = f"{'Webhook' if side == 'ghl' else 'Watched'} City {i}"
        sides.change(side, person, city)
        wanted[person["email"].lower() if target == "te" else person["id"]] = (city, started)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    watch.join(600)
    return list(watch.result)


def burst_changes(sides: Sides, people: list[dict[str, Any]], each: int, data: Path) -> dict[str, Any]:
    """`each` GHL changes of every person, as fast as the API answers, a person's changes back to back (a storm as
    GHL makes one: a bulk action or a workflow touches a contact several times within a second, then the next
    contact); the last one counts. (Until 2026-12-02 the burst went round after round over all the people, so one
    person's changes were a whole round apart, 4-5 s at 100 people, and no short window could coalesce them.)"""
    before, requests_before = service_counts(data), sides.requests()
    wanted: dict[str, tuple[str, float]] = {}
    changes: dict[str, tuple[str, float]] = {}  # each person's last change, handed to the watch once made
    watch = measured_beside(sides, "te", wanted, len(people))
    for person in people:
        for round_ in range(each):
            city = f"Burst City {round_}"
            sides.change("ghl", person, city)
            changes[person["email"].lower()] = (city, time.monotonic())
        wanted[person["email"].lower()] = changes[person["email"].lower()]
    watch.join(600)
    latency = list(watch.result)
    time.sleep(3)  # the last syncs' own echoes
    after = service_counts(data)
    return {"webhooks": each * len(people), "people": len(people), "latency": latency,
            "syncs": after["syncs"] - before["syncs"], "failed": after["failed"] - before["failed"],
            "requests": sides.requests() - requests_before}


def service_counts(data: Path) -> dict[str, int]:
    """The sync service's counters (`data_dir/services/syncs.json`, service/syncer.py)."""
    path = data / "services" / "syncs.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    return {"syncs": int(saved.get("syncs", 0)), "failed": int(saved.get("by_status", {}).get("failed", 0))}


def count_failed_flow_runs(api: str) -> int:
    answer = httpx.post(api + "/flow_runs/count", timeout=30,
                        json={"flow_runs": {"state": {"type": {"any_": ["FAILED", "CRASHED"]}}}})
    answer.raise_for_status()
    return int(answer.json())


if __name__ == "__main__":
    main()
