"""`make demo`: the whole story in a few minutes, against real sandbox servers and a real Prefect flow.

1. Generate a fixture (~2,000 people, some on one side only, some awkward records).
2. Start both sandbox servers as a real process (`recon sandbox serve`, at --rate-scale 10 so the demo's
   clients may go 10x faster than the real limits; they are told so through RECON_GHL_RATE_SCALE and
   RECON_TINYEMAIL_RATE_PER_MINUTE).
3. First reconciliation: the `reconcile` flow (snapshot, merge, checks, apply, report), on the server that
   PREFECT_API_URL names, or else on Prefect's temporary (ephemeral) server with a home of its own under the demo's
   data dir (`data/demo/prefect`, 0700, kept from one demo to the next), so a `prefect server start` there shows
   the runs afterwards; `contact_recon.stages.process` keeps that server's telemetry off.
4. A day of drift made through both public APIs (`recon sandbox mutate`: edits, tags, unsubscribes,
   conflicting edits of one field on both sides).
5. The nightly reconciliation again; print its summary; stop the sandbox (and the temporary Prefect server).
6. Say how to open what it just did: the report (a file) and the two flow runs in the Prefect UI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from contact_recon.sandbox.server import free_port
from contact_recon.settings import get_settings
from contact_recon.store.files import private_dir

RATE_SCALE = 10
PREFECT_DIR = "prefect"  # the temporary Prefect server's home, under the demo's data dir
PREFECT_UI_PORT = 4200  # `prefect server start`'s default


@dataclass
class Story:
    """What the demo did, for its last words: the nightly run's summary and both flow runs."""

    summary: dict[str, Any]
    flow_runs: list[str]


def run_demo(console: Console, *, contacts: int, seed: int) -> int:
    from contact_recon.sandbox.generate import generate_fixture, write_fixture

    data_dir = get_settings().data_dir / "demo"
    _fresh(data_dir)
    prefect_home = _own_prefect_home(data_dir)
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
        story = _story(console, fixture, ports, seed)
        _show_state(console, ports)
    finally:
        stopped = _stop_server(server)
        if prefect_home is not None:
            _stop_temporary_prefect()
    console.print(f"sandbox stopped (exit {stopped}); total {time.monotonic() - started:.0f}s", highlight=False)
    _where_to_look(console, story, prefect_home)
    code = 0 if story.summary["status"] in ("completed", "held") else 1
    return code if stopped == 0 else 1


def _fresh(data_dir: Path) -> None:
    """The demo's own data dir, emptied: every demo starts from nothing (Prefect's home is kept: its database's
    migrations take a while, and the UI can show every demo's runs)."""
    private_dir(data_dir)
    for entry in data_dir.iterdir():
        if entry.name == PREFECT_DIR:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _own_prefect_home(data_dir: Path) -> Path | None:
    """Without PREFECT_API_URL, the flows run on Prefect's temporary server: give it a home (its SQLite database)
    under the demo's data dir, owner-only. Prefect reads PREFECT_HOME when it is imported, which is later."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    home = private_dir(data_dir / PREFECT_DIR)
    os.environ["PREFECT_HOME"] = str(home.resolve())
    return home


def _stop_temporary_prefect() -> None:
    """Stop the temporary server the flows started (Prefect would at exit, after the demo's last words), once the
    flow runs' last logs and events have reached it."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    APILogWorker.drain_all(timeout=15)
    EventsWorker.drain_all(timeout=15)
    SubprocessASGIServer().stop()  # the one `get_client` started: one instance per port, None for "any free port"


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


def _story(console: Console, fixture: dict[str, Any], ports: dict[str, int], seed: int) -> Story:
    from contact_recon.flows.reconcile import reconcile_flow
    from contact_recon.sandbox.mutate import mutate

    console.print("[bold]3.[/] first reconciliation (Prefect flow `reconcile`)...")
    first_state = reconcile_flow(approve=True, return_state=True)
    first: dict[str, Any] = first_state.result()  # type: ignore[assignment]  # a completed run's summary
    console.print(_summary_table(first, "First reconciliation"))
    token = fixture["ghl"]["tokens"][0]
    report = mutate(f"http://127.0.0.1:{ports['ghl']}", f"http://127.0.0.1:{ports['tinyemail']}/v1", 120,
                    seed=seed + 1, ghl_token=token["token"], ghl_location=token["locationId"],
                    tinyemail_key=fixture["tinyemail"]["apiKeys"][0])
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report["by_kind"].items()))
    console.print(f"[bold]4.[/] a day of drift through both APIs: {report['changes']} changes ({kinds})",
                  highlight=False, soft_wrap=True)
    console.print("[bold]5.[/] the nightly reconciliation...")
    second_state = reconcile_flow(return_state=True)
    second: dict[str, Any] = second_state.result()  # type: ignore[assignment]  # its summary (held too)
    console.print(_summary_table(second, "Nightly reconciliation"))
    return Story(second, [str(state.state_details.flow_run_id) for state in (first_state, second_state)])


def _where_to_look(console: Console, story: Story, prefect_home: Path | None) -> None:
    """The demo's last words: how to open the report and the Prefect UI for the two flow runs it just made."""
    report = Path(str(story.summary.get("report")))
    run_id, nightly = story.summary["run_id"], story.flow_runs[-1]
    lines = ["[bold]6.[/] what it just did:",
             f"  report: {report} (and summary.json beside it); open it in a browser, it is one self-contained "
             f"file: {report.resolve().as_uri()}",
             f"  again later: RECON_DATA_DIR={report.parents[2]} {_command('recon')} report {run_id}",
             f"  or over HTTP: RECON_DATA_DIR={report.parents[2]} {_command('recon')} report serve, then "
             f"http://127.0.0.1:8705/runs/{run_id}/report.html"]
    if prefect_home is None:  # PREFECT_API_URL: a real server, with its UI
        ui = _ui_url()
        runs = ", ".join(f"{ui}/runs/flow-run/{fid}" for fid in story.flow_runs) if ui else ", ".join(story.flow_runs)
        lines.append(f"  Prefect: the flow runs (first, nightly): {runs}")
    else:  # the temporary server has stopped; its database stays in the demo's Prefect home
        lines += [f"  Prefect: both flow runs are kept in {prefect_home}; to browse them in the Prefect UI, run",
                  f"    PREFECT_HOME={prefect_home} {_command('prefect')} server start",
                  f"  then open http://127.0.0.1:{PREFECT_UI_PORT}/runs/flow-run/{nightly} (the nightly run; "
                  f"the first one is {story.flow_runs[0]})"]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _command(name: str) -> str:
    """How to call one of this environment's commands (`.venv/bin/recon` when it is not on PATH)."""
    script = Path(sys.executable).parent / name
    if not script.exists() or shutil.which(name) == str(script):
        return name
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _ui_url() -> str | None:
    from prefect.settings import PREFECT_UI_URL

    value = PREFECT_UI_URL.value()
    return str(value).rstrip("/") if value else None


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
