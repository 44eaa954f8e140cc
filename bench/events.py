"""Benchmark: how long a change takes to reach the other system between nights (goal < 30 s).

    .venv/bin/python bench/events.py [--contacts 300] [--changes 3] [--json PATH]

Everything runs as it would in production, each part its own process on 127.0.0.1:
- a Prefect server (`prefect server start`, a temporary PREFECT_HOME) with its trigger and action services;
- both sandboxes (`recon sandbox serve --only ...`), the GHL one sending signed webhooks (`--webhook-url`);
- `recon webhooks serve` (verifies with the sandbox test key, emits `ghl.contact.*` events);
- `recon watch tinyemail --interval 2` (TinyEmail has no webhooks: polls, emits `tinyemail.customer.*`);
- the `sync-contact` deployment of prefect.yaml (its event triggers) and a process worker that runs it.
A first `recon run --approve` makes the base (the webhooks of its own writes come back as echoes and are
acknowledged without a sync run: stages/echo.py). Then, `--changes` times per direction, one field is changed
through one system's public API and the other system is polled (every 0.25 s) until it shows the value:
GHL -> TinyEmail (a city) and TinyEmail -> GHL (a city). Prints each latency, the median and the worst.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--changes", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
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
    stack.start([RECON, "watch", "tinyemail", "--interval", "2", "--budget-share", "0.5"], "watch")
    stack.run([*PREFECT, "work-pool", "create", "recon-pool", "--type", "process", "--overwrite"])
    stack.run([*PREFECT, "--no-prompt", "deploy", "--name", "sync-contact"])
    stack.start([*PREFECT, "worker", "start", "--pool", "recon-pool", "--prefetch-seconds", "5"], "worker")
    time.sleep(8)  # the watcher's first poll is its baseline; the worker polls its queue
    # GHL contacts the first run just wrote are inside their echo window (stages/echo.py): a person's edit of
    # them would wait for the night, by design; measure the others. (Its TinyEmail writes are older than the
    # watcher's baseline poll, so they hold nothing back.)
    echoed = {json.loads(line).get("contact_id") for line in (tmp / "data" / "echo" / "ghl_writes.jsonl").open()}
    ghl_to_te, te_to_ghl = measure(args.changes, fixture, ports, echoed)
    both = ghl_to_te + te_to_ghl
    print(f"GHL -> TinyEmail: {', '.join(f'{s:.1f}' for s in ghl_to_te)} s")
    print(f"TinyEmail -> GHL: {', '.join(f'{s:.1f}' for s in te_to_ghl)} s")
    print(f"median {statistics.median(both):.1f} s, worst {max(both):.1f} s (goal < 30 s)")
    return [info("events", "GHL -> TinyEmail median", statistics.median(ghl_to_te), "s"),
            info("events", "TinyEmail -> GHL median", statistics.median(te_to_ghl), "s"),
            goal("events", "worst change-to-other-side latency", max(both), "<", 30.0, "s")]


def measure(changes: int, fixture: dict[str, Any], ports: dict[str, int],
            echoed: set[str]) -> tuple[list[float], list[float]]:
    ghl = f"http://127.0.0.1:{ports['ghl']}"
    te = f"http://127.0.0.1:{ports['te']}/v1"
    auth = {"Authorization": f"Bearer {fixture['ghl']['tokens'][0]['token']}", "Version": "2021-07-28"}
    key = {"X-API-KEY": fixture["tinyemail"]["apiKeys"][0]}
    state = httpx.get(ghl + "/__sandbox/state", timeout=60).json()
    customers = {c["email"].lower() for c in httpx.get(te.removesuffix("/v1") + "/__sandbox/state",
                                                        timeout=60).json()["customers"]}
    pairs = [c for c in next(iter(state["locations"].values()))["contacts"]
             if (c.get("email") or "").lower() in customers and c["id"] not in echoed][: 2 * changes]
    ghl_to_te, te_to_ghl = [], []
    for i, contact in enumerate(pairs[:changes]):
        value = f"Webhook City {i}"
        started = time.monotonic()
        httpx.put(f"{ghl}/contacts/{contact['id']}", json={"city": value}, headers=auth, timeout=30).raise_for_status()
        ghl_to_te.append(wait_for(lambda c=contact: httpx.get(f"{te}/account/customer/{c['email']}", headers=key,
                                                            timeout=30).json().get("city"), value, started))
    for i, contact in enumerate(pairs[changes:]):
        value = f"Watched City {i}"
        started = time.monotonic()
        httpx.put(f"{te}/account/customer", headers=key, timeout=30,
                  json={"updateMembers": [{"email": contact["email"], "city": value}]}).raise_for_status()
        te_to_ghl.append(wait_for(lambda c=contact: httpx.get(f"{ghl}/contacts/{c['id']}", headers=auth,
                                                            timeout=30).json()["contact"].get("city"), value, started))
    return ghl_to_te, te_to_ghl


def wait_for(read: Any, value: str, started: float, timeout: float = 120) -> float:
    while time.monotonic() - started < timeout:
        if read() == value:
            return time.monotonic() - started
        time.sleep(0.25)
    print(json.dumps({"timeout": value}))
    return timeout


if __name__ == "__main__":
    main()
