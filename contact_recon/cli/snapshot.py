"""`recon snapshot`: run the snapshot stage alone and print what it read and what it cost."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from contact_recon.engine.identity import SideCameBackEmpty
from contact_recon.settings import Settings
from contact_recon.stages.snapshot import SnapshotFailed, SnapshotResult, run_snapshot
from contact_recon.store.db import db_path, open_db
from contact_recon.systems.errors import ConnectorError
from contact_recon.systems.redaction import redact


def run_snapshot_command(settings: Settings, locations: Sequence[str], full_sweep: bool, console: Console,
                         err: Console) -> int:
    """Run the stage; 0 and a summary on success, 1 and one clear line on failure."""
    locations = list(locations) or list(settings.ghl_location_ids)
    if not locations:
        err.print("[bold red]error:[/] no GHL location: pass --location or set RECON_GHL_LOCATION_IDS", highlight=False)
        return 2
    try:
        with open_db(db_path(settings.data_dir)) as store:
            result = run_snapshot(settings, store, locations, full_sweep=full_sweep)
    except (SnapshotFailed, SideCameBackEmpty, ConnectorError) as exc:
        err.print(f"[bold red]error:[/] {redact(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    console.print(summary(result))
    for where, why in result.failed.items():  # the other locations went on
        err.print(f"[bold red]error:[/] snapshot of {where} failed, kept as it was: {redact(why)}", highlight=False,
                  soft_wrap=True)
    if result.unreadable:
        named = ", ".join(f"{u['system']} {u['key'] or u['where']}" for u in result.unreadable[:5])
        err.print(f"[yellow]warning:[/] {len(result.unreadable)} records present but unreadable, previous rows "
                  f"kept: {named}", highlight=False, soft_wrap=True)
    return 0


def summary(result: SnapshotResult) -> Table:
    """One table: rows per entity, then per system the requests planned vs used and the sweep."""
    table = Table(title=f"snapshot {result.run_id} ({result.wall_s:.1f} s, ingest {result.ingest_s:.2f} s)")
    table.add_column("what")
    table.add_column("value", justify="right")
    for entity, count in result.counts.items():
        table.add_row(f"rows {entity}", f"{count:,}")
    for system, plan in sorted(result.plans.items()):
        used = result.used.get(system, {})
        planned = plan.get("total", sum(v for v in plan.values() if isinstance(v, int)))
        table.add_row(f"{system} requests planned / used", f"{planned:,} / {used.get('total', 0):,}")
        if "sweep" in plan:
            table.add_row(f"{system} notes read (changed+dirty+sweep)",
                          f"{plan['changed']}+{plan['dirty']}+{plan['sweep']} (sweep wanted {plan['sweep_wanted']})")
            if plan.get("reason"):
                table.add_row(f"{system} plan", plan["reason"])
    return table
