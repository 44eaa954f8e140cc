"""`recon run`: one reconciliation as a Prefect flow run (snapshot -> merge -> checks -> apply -> report)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

from rich.console import Console

from contact_recon.settings import Settings
from contact_recon.stages.progress import progress_bars
from contact_recon.systems.redaction import redact

EXIT_COMPLETED, EXIT_FAILED, EXIT_USAGE, EXIT_HELD = 0, 1, 2, 3
EXIT_BY_STATUS = {"completed": EXIT_COMPLETED, "held": EXIT_HELD, "failed": EXIT_FAILED}


def run_tenants_command(settings: Settings, tenant: str | None, locations: Sequence[str], dry_run: bool,
                        approve: bool, full_sweep: bool, console: Console, err: Console,
                        lock_wait_s: float = 60.0) -> int:
    """`recon run [--tenant NAME]`: with RECON_TENANTS_FILE, that tenant, or every tenant one after the other (each
    its own flow run, under its own data dir and budgets); the worst exit wins (failed, then held). Without a
    tenants file, the single-tenant run (`--tenant` is then a usage error)."""
    from contact_recon.tenants import TenantsError, tenants_of

    if settings.tenants_file is None and tenant is None:  # the single-tenant RECON_* setup, unchanged
        return run_reconcile_command(settings, locations, dry_run, approve, full_sweep, console, err, lock_wait_s)
    try:
        tenants = tenants_of(settings)
        chosen = [tenant] if tenant is not None else list(tenants)
        missing = [name for name in chosen if name not in tenants]
        if missing:
            raise TenantsError(f"no tenant {missing[0]!r} in {settings.tenants_file}")
    except TenantsError as exc:
        err.print(f"[bold red]error:[/] {redact(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    codes = []
    for name in chosen:
        console.print(f"tenant {name}", highlight=False)
        codes.append(run_reconcile_command(tenants[name], locations, dry_run, approve, full_sweep, console, err,
                                           lock_wait_s, tenant=name))
    return next((code for code in (EXIT_USAGE, EXIT_FAILED, EXIT_HELD) if code in codes), EXIT_COMPLETED)


def run_reconcile_command(settings: Settings, locations: Sequence[str], dry_run: bool, approve: bool,
                          full_sweep: bool, console: Console, err: Console, lock_wait_s: float = 60.0,
                          tenant: str | None = None) -> int:
    """Run the reconcile flow in this process; print the run id, status and report path.

    Exit 0 completed, 3 held (a guard tripped: `recon approve RUN_ID`, then `recon run --approve` or the next
    run), 1 failed (with one clear line; the traceback goes to the Prefect UI only), 2 usage (no location
    configured, and not an agency install: its run lists the installed locations). A run of the same location in
    progress elsewhere is waited for up to `lock_wait_s`.
    """
    from contact_recon.flows.reconcile import run_in_process
    from contact_recon.stages.lock import LocationBusy
    from contact_recon.systems.ghl.client import is_agency_install

    covered = list(locations) or list(settings.ghl_location_ids)
    if not covered and not is_agency_install(settings):  # an agency install lists its locations in the run
        err.print("[bold red]error:[/] no GHL location: pass --location or set RECON_GHL_LOCATION_IDS (or "
                  "RECON_GHL_COMPANY_ID for an agency install)")
        return EXIT_USAGE
    try:
        with progress_bars(console), console_without_tracebacks():
            summary = run_in_process(locations=covered or None, dry_run=dry_run, approve=approve, full_sweep=full_sweep,
                                     lock_wait_s=lock_wait_s, tenant=tenant)
    except LocationBusy as exc:
        err.print(f"[bold red]busy:[/] {redact(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback; the run row keeps the error
        err.print(f"[bold red]run failed:[/] {type(exc).__name__}: {redact(str(exc))}", highlight=False,
                  soft_wrap=True)
        return EXIT_FAILED
    console.print(f"run {summary['run_id']}", highlight=False)
    console.print(f"status: [bold]{summary['status']}[/]" + (" (dry run: nothing written)" if dry_run else ""),
                  highlight=False)
    for guard in summary.get("guards", []):
        console.print(f"  held by {guard.get('reason') or guard.get('name')}", highlight=False, soft_wrap=True)
    if summary["status"] == "held":
        console.print(f"  approve with `recon approve {summary['run_id']}`", highlight=False)
    counts = {k: summary.get(k, 0) for k in ("conflicts", "quarantined", "stale", "failed")}
    console.print("  " + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)
    console.print(f"report: {summary.get('report')}", highlight=False, soft_wrap=True)
    if summary.get("policy_version"):
        console.print(f"policy {summary['policy_version']} ({summary.get('policy_source')})", highlight=False,
                      soft_wrap=True)
    return EXIT_BY_STATUS.get(summary["status"], EXIT_FAILED)


class _NoTraceback(logging.Filter):
    """Drops the traceback of a flow or task run's log record on its way to the console; the record is
    formatted whole by Prefect's API handler first (it sits on the run loggers, the console on the root)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.exc_info or record.exc_text) and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def console_without_tracebacks() -> Iterator[None]:
    """While the flow runs, Prefect's console logs carry no traceback: a failure is the one line this command
    prints, and the traceback stays in the flow run's logs in the Prefect UI."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    quiet = _NoTraceback()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
