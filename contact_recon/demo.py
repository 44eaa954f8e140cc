"""`make demo`: generate a fixture, start both sandbox servers as a real process, show what they hold, stop.

Later stages grow this into a full reconciliation; for now it proves the sandboxes serve a fixture.
"""

from __future__ import annotations

import os
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

from contact_recon.settings import get_settings
from sandbox.server import free_port


def run_demo(console: Console, *, contacts: int, seed: int) -> int:
    from sandbox.generate import generate_fixture, write_fixture

    demo_dir = get_settings().data_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    fixture_path = demo_dir / "fixture.json"
    started = time.monotonic()
    write_fixture(generate_fixture(contacts, seed=seed), fixture_path)
    console.print(f"[bold]1.[/] generated {fixture_path} ({contacts} people, seed {seed}) "
                  f"in {time.monotonic() - started:.1f}s", highlight=False)
    ports = {"ghl": free_port(), "tinyemail": free_port()}
    server = _start_server(fixture_path, ports)
    try:
        console.print(f"[bold]2.[/] sandbox servers up: GHL http://127.0.0.1:{ports['ghl']}, "
                      f"TinyEmail http://127.0.0.1:{ports['tinyemail']}/v1", highlight=False)
        ghl_state = httpx.get(f"http://127.0.0.1:{ports['ghl']}/__sandbox/state", timeout=30).json()
        te_state = httpx.get(f"http://127.0.0.1:{ports['tinyemail']}/__sandbox/state", timeout=30).json()
        console.print("[bold]3.[/] what each server holds:")
        console.print(_ghl_table(ghl_state))
        console.print(_tinyemail_table(te_state))
    finally:
        code = _stop_server(server)
    console.print(f"[bold]4.[/] sandbox stopped (exit {code}).", highlight=False)
    return 0 if code == 0 else 1


def _start_server(fixture: Path, ports: dict[str, int]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "contact_recon.cli", "sandbox", "serve", "--fixture", str(fixture),
           "--ghl-port", str(ports["ghl"]), "--tinyemail-port", str(ports["tinyemail"])]
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
