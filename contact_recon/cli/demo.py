"""`make demo`: the whole story in a few minutes, against real sandbox servers and a real Prefect flow.

1. Generate a fixture (~2,000 people, some on one side only, some awkward records).
2. Start both sandbox servers as a real process (`recon sandbox serve`, at --rate-scale 10 so the demo's
   clients may go 10x faster than the real limits; they are told so through RECON_GHL_RATE_SCALE and
   RECON_TINYEMAIL_RATE_PER_MINUTE).
3. First reconciliation: the `reconcile` flow (snapshot, merge, checks, apply, report), on Prefect's
   ephemeral API unless PREFECT_API_URL points at a server.
4. A day of drift made through both public APIs (`recon sandbox mutate`: edits, tags, unsubscribes,
   conflicting edits of one field on both sides).
5. The nightly reconciliation again; print its summary and where report.html is; stop the sandbox.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from contact_recon.sandbox.server import free_port
from contact_recon.settings import get_settings

RATE_SCALE = 10


def run_demo(console: Console, *, contacts: int, seed: int) -> int:
    from contact_recon.sandbox.generate import generate_fixture, write_fixture

    data_dir = get_settings().data_dir / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)  # the demo's own store: every demo starts from nothing
    data_dir.mkdir(parents=True, exist_ok=True)
    fixture_path = data_dir / "fixture.json"
    started = time.monotonic()
    fixture = generate_fixture(contacts, seed=seed)
    write_fixture(fixture, fixture_path)
    console.print(f"[bold]1.[/] generated {fixture_path} ({contacts} people, seed {seed}) "
                  f"in {time.monotonic() - started:.1f}s", highlight=False)
    ports = {"ghl": free_port(), "tinyemail": free_port()}
    server = _start_server(fixture_path, ports)
    try:
        console.print(f"[bold]2.[/] sandbox servers up: GHL http://127.0.0.1:{ports['ghl']}, "
                      f"TinyEmail http://127.0.0.1:{ports['tinyemail']}/v1 (rate scale {RATE_SCALE})",
                      highlight=False)
        _show_state(console, ports)
        _configure(fixture, ports, data_dir)
        code = _story(console, fixture, ports, seed)
        _show_state(console, ports)
    finally:
        stopped = _stop_server(server)
    console.print(f"sandbox stopped (exit {stopped}); total {time.monotonic() - started:.0f}s", highlight=False)
    return code if stopped == 0 else 1


def _configure(fixture: dict[str, Any], ports: dict[str, int], data_dir: Path) -> None:
    """Point this process's settings at the sandbox (the same variables a user sets for the real APIs)."""
    token = fixture["ghl"]["tokens"][0]
    os.environ.update({
        "RECON_DATA_DIR": str(data_dir), "RECON_GHL_BASE_URL": f"http://127.0.0.1:{ports['ghl']}",
        "RECON_GHL_TOKEN": token["token"], "RECON_GHL_LOCATION_IDS": token["locationId"],
        "RECON_TINYEMAIL_BASE_URL": f"http://127.0.0.1:{ports['tinyemail']}/v1",
        "RECON_TINYEMAIL_API_KEY": fixture["tinyemail"]["apiKeys"][0],
        "RECON_GHL_RATE_SCALE": str(RATE_SCALE), "RECON_TINYEMAIL_RATE_PER_MINUTE": str(60 * RATE_SCALE),
    })


def _story(console: Console, fixture: dict[str, Any], ports: dict[str, int], seed: int) -> int:
    from contact_recon.flows.reconcile import run_in_process
    from contact_recon.sandbox.mutate import mutate

    console.print("[bold]3.[/] first reconciliation (Prefect flow `reconcile`)...")
    first = run_in_process(approve=True)
    console.print(_summary_table(first, "First reconciliation"))
    token = fixture["ghl"]["tokens"][0]
    report = mutate(f"http://127.0.0.1:{ports['ghl']}", f"http://127.0.0.1:{ports['tinyemail']}/v1", 120,
                    seed=seed + 1, ghl_token=token["token"], ghl_location=token["locationId"],
                    tinyemail_key=fixture["tinyemail"]["apiKeys"][0])
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report["by_kind"].items()))
    console.print(f"[bold]4.[/] a day of drift through both APIs: {report['changes']} changes ({kinds})",
                  highlight=False, soft_wrap=True)
    console.print("[bold]5.[/] the nightly reconciliation...")
    second = run_in_process()
    console.print(_summary_table(second, "Nightly reconciliation"))
    console.print(f"report: {second.get('report')}", highlight=False, soft_wrap=True)
    console.print(f"summary: {Path(str(second.get('report'))).with_name('summary.json')}", highlight=False,
                  soft_wrap=True)
    return 0 if second["status"] in ("completed", "held") else 1


def _summary_table(summary: dict[str, Any], title: str) -> Table:
    table = Table(title=f"{title}: run {summary['run_id']} {summary['status']}")
    for column in ("system", "planned", "applied", "conflicts", "quarantined", "stale", "failed", "requests"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for system in ("ghl", "tinyemail"):
        planned = sum(summary["counts"][system].values())
        applied = sum(summary["counts"]["applied"][system].values())
        requests = summary.get("requests", {}).get(system, {}).get("used")
        table.add_row(system, str(planned), str(applied), "", "", "", "", str(requests if requests is not None else ""))
    table.add_row("all", "", "", *(str(summary.get(k, 0)) for k in ("conflicts", "quarantined", "stale", "failed")),
                  "")
    return table


def _show_state(console: Console, ports: dict[str, int]) -> None:
    ghl_state = httpx.get(f"http://127.0.0.1:{ports['ghl']}/__sandbox/state", timeout=30).json()
    te_state = httpx.get(f"http://127.0.0.1:{ports['tinyemail']}/__sandbox/state", timeout=30).json()
    console.print(_ghl_table(ghl_state))
    console.print(_tinyemail_table(te_state))


def _start_server(fixture: Path, ports: dict[str, int]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "contact_recon.cli.main", "sandbox", "serve", "--fixture", str(fixture),
           "--ghl-port", str(ports["ghl"]), "--tinyemail-port", str(ports["tinyemail"]),
           "--rate-scale", str(RATE_SCALE)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("TinyEmail sandbox:"):
            return proc
    raise RuntimeError(f"sandbox server exited with {proc.wait()} before it was ready")


def _stop_server(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _ghl_table(state: dict[str, Any]) -> Table:
    table = Table(title="GHL sandbox")
    for column in ("location", "contacts", "with email", "DND (email)", "tags", "tasks (open)", "notes"):
        table.add_column(column, justify="right" if column != "location" else "left", overflow="fold")
    for loc_id, loc in state["locations"].items():
        contacts = loc["contacts"]
        dnd = sum(1 for c in contacts if c.get("dnd") or
                  c.get("dndSettings", {}).get("Email", {}).get("status") in ("active", "permanent"))
        open_tasks = sum(1 for t in loc["tasks"] if not t.get("completed"))
        table.add_row(loc_id, str(len(contacts)), str(sum(1 for c in contacts if c.get("email"))), str(dnd),
                      str(sum(len(c.get("tags", [])) for c in contacts)),
                      f"{len(loc['tasks'])} ({open_tasks})", str(len(loc["notes"])))
    return table


def _tinyemail_table(state: dict[str, Any]) -> Table:
    statuses = Counter(c.get("status", "Subscribed") for c in state["customers"])
    table = Table(title="TinyEmail sandbox")
    table.add_column("customers", justify="right")
    for status in sorted(statuses):
        table.add_column(status, justify="right")
    table.add_column("lists (members)")
    lists = ", ".join(f"{lst['name']} ({len(lst['members'])})" for lst in state["lists"])
    table.add_row(str(len(state["customers"])), *(str(statuses[s]) for s in sorted(statuses)), lists)
    return table
