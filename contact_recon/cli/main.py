"""The `recon` command line (typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from contact_recon.cli.sandbox import sandbox_app

if TYPE_CHECKING:
    from contact_recon.settings import Settings

app = typer.Typer(help="contact-recon: keep GHL and TinyEmail consistent.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
auth_app = typer.Typer(help="Authorize the connectors.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")
webhooks_app = typer.Typer(help="Receive GHL webhooks and emit Prefect events.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
watch_app = typer.Typer(help="Poll systems without webhooks and emit Prefect events.", no_args_is_help=True)
app.add_typer(watch_app, name="watch")
services_app = typer.Typer(help="The long-running services: the sync service, and every service's heartbeat.",
                            invoke_without_command=True)
app.add_typer(services_app, name="services")
alerts_app = typer.Typer(help="Prefect notifications: failed, held, failing, missing and long runs.",
                         no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
policy_app = typer.Typer(help="The reconciliation policy as a Prefect block (a form in the Prefect UI).",
                         no_args_is_help=True)
app.add_typer(policy_app, name="policy")

console = Console()
err = Console(stderr=True)

TenantOption = Annotated[str | None, typer.Option(help="Act on this tenant of RECON_TENANTS_FILE: its data dir and "
                                                       "settings (default: the RECON_* settings).")]


def tenant_settings(tenant: str | None) -> Settings:
    """The RECON_* settings, or with `--tenant` that tenant's (its data dir, policy, credentials); exit 2 with one
    line when the tenants file is not set, refused, or has no such tenant."""
    from contact_recon.tenants import TenantsError, get_tenant_settings

    try:
        return get_tenant_settings(tenant)
    except TenantsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None

@app.callback()
def main() -> None:
    """contact-recon: keep GHL and TinyEmail consistent."""
    from contact_recon.stages.process import prepare_process

    prepare_process()  # every command: secrets masked in all logs, owner-only files, a quiet Prefect server


@app.command("demo")
def demo(
    contacts: Annotated[int, typer.Option(help="Size of the generated fixture.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the fixture.")] = 7,
) -> None:
    """The whole story: generate a fixture, start both sandboxes, reconcile, drift for a day through both APIs,
    reconcile again (the nightly flow), print the summary, stop, and say how to open the report and the two flow
    runs in the Prefect UI."""
    from contact_recon.cli.demo import run_demo

    raise typer.Exit(run_demo(console, contacts=contacts, seed=seed))


@auth_app.command("ghl")
def auth_ghl(
    code: Annotated[str | None, typer.Option(help="The authorization code, or the whole redirect URL.")] = None,
    agency: Annotated[bool, typer.Option("--agency", help="An agency install: store a Company token pair, "
                                         "from which each installed location's token is minted.")] = False,
    tenant: TenantOption = None,
) -> None:
    """Print the GHL authorize URL, take the code, and store the OAuth token pair (never printed)."""
    from contact_recon.cli.auth import run

    def prompt() -> str:
        return str(typer.prompt("Paste the code (or the whole redirect URL)", hide_input=True))

    raise typer.Exit(run(tenant_settings(tenant), code, prompt, console, err, agency=agency))


@app.command("doctor")
def doctor(
    tenant: Annotated[str | None, typer.Option(help="Check this tenant of RECON_TENANTS_FILE.")] = None,
) -> None:
    """Check both connections, the scopes the features need and the remaining budgets; exit 1 on a problem."""
    from contact_recon.cli.doctor import run_doctor
    from contact_recon.tenants import get_tenant_settings

    raise typer.Exit(run_doctor(lambda: get_tenant_settings(tenant), console, err))


@app.command("snapshot")
def snapshot(
    location: Annotated[list[str] | None, typer.Option(help="GHL location id (repeatable); default: all configured.")]
    = None,
    full_sweep: Annotated[bool, typer.Option(help="Read the tasks and notes of every contact tonight.")] = False,
    tenant: TenantOption = None,
) -> None:
    """Snapshot GHL and TinyEmail into the store; print counts, requests planned vs used; exit 1 on failure."""
    from contact_recon.cli.snapshot import run_snapshot_command

    raise typer.Exit(run_snapshot_command(tenant_settings(tenant), location or [], full_sweep, console, err))



@app.command("plan")
def plan(
    location: Annotated[list[str] | None, typer.Option(help="GHL location id (repeatable); default: all configured.")]
    = None,
    approve: Annotated[bool, typer.Option(help="Approve up front whatever guard the plan trips.")] = False,
    full_sweep: Annotated[bool, typer.Option(help="Read the tasks and notes of every contact tonight.")] = False,
    reuse_snapshot: Annotated[bool, typer.Option(help="Plan from the latest stored snapshot; read neither system.")]
    = False,
    tenant: TenantOption = None,
) -> None:
    """The dry run (`recon run --dry-run` once the apply stage exists): snapshot and plan, writing nothing to GHL
    or TinyEmail.

    Prints the run id, its status (planned, or held by a guard with the reasons), the operations per
    system and kind, the conflicts, the quarantined operations and where plan.parquet is.
    Exit 0 planned, 3 held (see `recon approve`), 1 failed.
    """
    from contact_recon.cli.plan import run_plan_command

    raise typer.Exit(run_plan_command(tenant_settings(tenant), location or [], approve, full_sweep, reuse_snapshot,
                                      console, err))


@app.command("run")
def run(
    location: Annotated[list[str] | None, typer.Option(help="GHL location id (repeatable); default: all configured.")]
    = None,
    dry_run: Annotated[bool, typer.Option(help="Plan and report only: write nothing to GHL or TinyEmail.")] = False,
    approve: Annotated[bool, typer.Option(help="Approve up front whatever guard the plan trips.")] = False,
    full_sweep: Annotated[bool, typer.Option(help="Read the tasks and notes of every contact tonight.")] = False,
    lock_wait: Annotated[float, typer.Option(help="Seconds to wait for another run of the same locations before "
                                             "giving up (exit 1, busy).", min=0)] = 60.0,
    tenant: Annotated[str | None, typer.Option(help="The tenant of RECON_TENANTS_FILE; default: every tenant "
                                               "(or the RECON_* settings when no tenants file is set).")] = None,
) -> None:
    """Reconcile now (a Prefect flow run): snapshot, merge, checks, apply, report.

    Prints the run id, the status and the report path. Exit 0 completed, 3 held (a guard tripped:
    `recon approve RUN_ID`), 1 failed.
    """
    from contact_recon.cli.run import run_tenants_command
    from contact_recon.settings import get_settings

    raise typer.Exit(run_tenants_command(get_settings(), tenant, location or [], dry_run, approve, full_sweep,
                                         console, err, lock_wait_s=lock_wait))


@app.command("mapping")
def mapping(
    policy: Annotated[Path | None, typer.Option(help="Policy file (.toml or .json); default: the policy a run would "
                                                "use (RECON_POLICY_BLOCK, RECON_POLICY_FILE, the defaults).")]
    = None,
    tenant: TenantOption = None,
) -> None:
    """Print the active field map and rules as a table: how data moves between GHL and TinyEmail."""
    from contact_recon.cli.plan import run_mapping_command

    raise typer.Exit(run_mapping_command(tenant_settings(tenant), policy, console, err))


@policy_app.command("push")
def policy_push(
    file: Annotated[Path | None, typer.Argument(help="Policy file (.toml or .json); default: RECON_POLICY_FILE, "
                                                "else the default policy.")] = None,
    name: Annotated[str | None, typer.Option(help="The block's name; default: RECON_POLICY_BLOCK.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the block if it exists (edits made in the UI are "
                                            "lost).")] = False,
) -> None:
    """Register the recon-policy block type and save a policy into a block, to edit as a form in the Prefect UI.
    Uses PREFECT_API_URL (unset: Prefect's local ephemeral API)."""
    from contact_recon.cli.policy import run_policy_push_command
    from contact_recon.settings import get_settings

    raise typer.Exit(run_policy_push_command(get_settings(), file, name, overwrite, console, err))


@policy_app.command("show")
def policy_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole policy as JSON.")] = False,
) -> None:
    """The policy a run would use now (RECON_POLICY_BLOCK, else RECON_POLICY_FILE, else the defaults): its source,
    its version and its field map. Exit 2 with the field named when the block or file is invalid."""
    from contact_recon.cli.policy import run_policy_show_command
    from contact_recon.settings import get_settings

    raise typer.Exit(run_policy_show_command(get_settings(), as_json, console, err))


@app.command("approve")
def approve(
    run_id: Annotated[str, typer.Argument(help="The id of a held run.")],
    guard: Annotated[list[str] | None, typer.Option(help="Approve only this guard (repeatable); the ops the other "
                                                         "guards hold are not written. Default: every guard.")]
    = None,
    reject: Annotated[bool, typer.Option(help="Reject the run: nothing of it is written.")] = False,
    note: Annotated[str, typer.Option(help="Why (kept with the run, shown in its report).")] = "",
    apply: Annotated[bool, typer.Option(help="Apply a held `recon run` right after approving it.")] = True,
    tenant: TenantOption = None,
) -> None:
    """Answer a run held by a guard: print the reasons and the operations the answer lets it write. A run that
    waits in the Prefect UI (a deployment run) is resumed there; a held `recon run` is applied here as an
    `apply-approved` flow run, each write checked against the live record first (exit 0 done, 1 failed);
    a `recon plan` run is only approved."""
    from contact_recon.cli.plan import run_approve_command

    raise typer.Exit(run_approve_command(tenant_settings(tenant), run_id, console, err, apply=apply,
                                         guards=guard or [], reject=reject, note=note, tenant=tenant))


@webhooks_app.command("serve")
def webhooks_serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (put a TLS proxy in front for GHL).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8703,
) -> None:
    """Receive GHL webhooks at POST /webhooks/ghl: verify X-GHL-Signature (Ed25519) or x-wh-signature (RSA),
    refuse stale and repeated ones, spool each accepted one durably and forward it to Prefect as an event
    (ghl.contact.*, ghl.note.*, ghl.task.*). Needs PREFECT_API_URL (the server may be down at start)."""
    from contact_recon.cli.events import run_webhooks_serve
    from contact_recon.settings import get_settings

    raise typer.Exit(run_webhooks_serve(get_settings(), host, port, console, err))


@watch_app.command("tinyemail")
def watch_tinyemail(
    interval: Annotated[float, typer.Option(help="Seconds between the end of a poll and the next.", min=0)] = 60,
    budget_share: Annotated[float, typer.Option(help="Share of the TinyEmail rate budget polls may use.",
                                                min=0.01, max=1)] = 0.5,
    once: Annotated[bool, typer.Option(help="Poll once and exit.")] = False,
) -> None:
    """Poll every TinyEmail customer, emit tinyemail.customer.created|updated for those that changed since
    the previous poll (the first poll records a baseline). Needs PREFECT_API_URL."""
    from contact_recon.cli.events import run_watch_tinyemail
    from contact_recon.settings import get_settings

    raise typer.Exit(run_watch_tinyemail(get_settings(), interval, budget_share, once, console, err))


@services_app.callback()
def services(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="The states as JSON.")] = False,
) -> None:
    """Show each service's state from its last heartbeat on the Prefect server (up, stale, never): the webhook
    receiver, the TinyEmail watcher and the sync service. Exit 0 when every one is up."""
    if ctx.invoked_subcommand is not None:
        return
    from contact_recon.cli.events import run_services_status
    from contact_recon.settings import get_settings

    raise typer.Exit(run_services_status(get_settings(), as_json, console, err))


@services_app.command("serve")
def services_serve() -> None:
    """Run the sync service: follow the GHL and TinyEmail events on the Prefect server, coalesce them per person
    and sync each person in this process (the sync-contact task), waiting out a nightly run. Needs PREFECT_API_URL."""
    from contact_recon.cli.events import run_services_serve
    from contact_recon.settings import get_settings

    raise typer.Exit(run_services_serve(get_settings(), console, err))


@alerts_app.command("setup")
def alerts_setup(
    slack: Annotated[str | None, typer.Option(
        help="A Slack incoming webhook URL (hooks.slack.com: Prefect's SlackWebhook block). A Slack-compatible "
             "webhook at another host (Mattermost, Rocket.Chat, a local receiver) is sent the Slack body "
             "{\"text\": ...} by a Custom Webhook block: Apprise's Slack plugin only posts to slack.com.")] = None,
    teams: Annotated[str | None, typer.Option(
        help="A Microsoft Teams Workflows (Power Automate) URL (Prefect's MicrosoftTeamsWebhook block).")] = None,
    email: Annotated[list[str] | None, typer.Option(
        help="Email the alerts to this address (repeatable), over SMTP (--smtp-host).")] = None,
    smtp_host: Annotated[str | None, typer.Option(help="The SMTP server for --email.")] = None,
    smtp_port: Annotated[int, typer.Option(help="Its port.")] = 587,
    smtp_security: Annotated[str, typer.Option(help="starttls, ssl or none.")] = "starttls",
    smtp_user: Annotated[str | None, typer.Option(help="The SMTP login.")] = None,
    smtp_password: Annotated[str | None, typer.Option(envvar="RECON_SMTP_PASSWORD", show_default=False,
                                                      help="The SMTP password (better: the environment).")] = None,
    smtp_from: Annotated[str | None, typer.Option(help="The From address (default: the login).")] = None,
    apprise: Annotated[str | None, typer.Option(help="Any Apprise URL (discord://, tgram://, ntfy://, json://...).")]
    = None,
    webhook_url: Annotated[str | None, typer.Option(
        help="A webhook that is POSTed {text, subject, body, source} (Slack's text plus the older fields).")] = None,
    flow: Annotated[list[str] | None, typer.Option(
        help="Alert only on these flows' failed runs, and watch these for long runs (repeatable; default: every "
             "flow's failures, the reconcile flow's long runs).")] = None,
    nightly_deployment: Annotated[str, typer.Option(help="The deployment whose runs must complete every night.")]
    = "nightly-reconcile",
    nightly_window_hours: Annotated[float | None, typer.Option(
        help="Alert when no nightly run completed this long after the previous one "
             "(default RECON_ALERT_NIGHTLY_WINDOW_HOURS, 26: a day and a grace).")] = None,
    long_run_minutes: Annotated[float | None, typer.Option(
        help="Alert when a run is still running after this long (default RECON_ALERT_LONG_RUN_MINUTES, 120).")]
    = None,
) -> None:
    """Create or update the notification block and the automations: a failed run, a held run (with the link to
    its approval), a failed-op share over the threshold, a nightly that did not complete in time, a long run.
    Give exactly one target: --slack, --teams, --email, --apprise or --webhook-url. Needs PREFECT_API_URL."""
    from contact_recon.cli.events import AlertsSetupOptions, run_alerts_setup

    options = AlertsSetupOptions(slack, teams, email or [], smtp_host, smtp_port, smtp_security, smtp_user,
                                 smtp_password, smtp_from, apprise, webhook_url, flow or [], nightly_deployment,
                                 nightly_window_hours, long_run_minutes)
    raise typer.Exit(run_alerts_setup(options, console, err))


@alerts_app.command("listen")
def alerts_listen(
    out: Annotated[Path, typer.Option(help="File to append the alerts to (JSON lines).")] = Path("alerts.jsonl"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8704,
) -> None:
    """A local alert target: append every POSTed alert to a file (use http://127.0.0.1:PORT/ as --slack or
    --webhook-url)."""
    from contact_recon.cli.events import run_alerts_listen

    raise typer.Exit(run_alerts_listen(out, port, console))


conflicts_app = typer.Typer(help="Conflicts the runs left for people to decide.", no_args_is_help=True)
app.add_typer(conflicts_app, name="conflicts")


@app.command("runs")
def runs(limit: Annotated[int, typer.Option(help="How many runs to show.", min=1)] = 20,
         tenant: TenantOption = None) -> None:
    """Recent runs, newest first: id, kind, status, start, duration, ops and failed ops."""
    from contact_recon.cli.report import run_runs_command

    raise typer.Exit(run_runs_command(tenant_settings(tenant), limit, console, err))


@app.command("report")
def report(
    run_id: Annotated[str | None, typer.Argument(help="The run (default: the latest reconcile or plan run); or "
                                                      "`serve`: serve the reports over HTTP.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json as it is.")] = False,
    host: Annotated[str, typer.Option(help="With `serve`: the interface to listen on (the reports hold customer "
                                           "data: keep 127.0.0.1 or put an authenticating proxy in front).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="With `serve`: the port.")] = 8705,
    tenant: TenantOption = None,
) -> None:
    """Print a run's summary and the path of its HTML report (written again if its files are missing).

    `recon report serve` serves the runs' reports at http://HOST:PORT/runs/<run_id>/report.html; set
    RECON_REPORT_BASE_URL to that address and each flow run's report artifact links there."""
    if run_id == "serve":
        from contact_recon.cli.report import run_report_serve

        raise typer.Exit(run_report_serve(tenant_settings(tenant), host, port, console))
    from contact_recon.cli.report import run_report_command

    raise typer.Exit(run_report_command(tenant_settings(tenant), run_id, as_json, console, err))


@app.command("explain")
def explain(
    person: Annotated[str, typer.Argument(help="An email address or a GHL contact id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the story as JSON.")] = False,
    tenant: TenantOption = None,
) -> None:
    """One person's story across runs: both sides' values at each snapshot, every op planned, applied, failed or
    quarantined and why, conflicts, the base, identity links and decisions, with run ids, times and policy."""
    from contact_recon.cli.explain import run_explain_command

    raise typer.Exit(run_explain_command(tenant_settings(tenant), person, as_json, console, err))


@conflicts_app.command("import")
def conflicts_import(
    file: Annotated[Path, typer.Argument(help="A conflicts.csv with a `decision` column (ghl | tinyemail | value | "
                                              "skip) and, for `value`, a `value` column.")],
    tenant: TenantOption = None,
) -> None:
    """Store the data team's decisions on conflicts; the next run writes them. One bad row imports nothing."""
    from contact_recon.cli.report import run_conflicts_import_command

    raise typer.Exit(run_conflicts_import_command(tenant_settings(tenant), file, console, err))


identity_app = typer.Typer(help="Identity reviews (an email in two contacts, an email changed): decide without SQL.",
                           no_args_is_help=True)
app.add_typer(identity_app, name="identity")
quarantine_app = typer.Typer(help="Ops a blocking check held and ops the API rejected: since when, dismiss those "
                                  "accepted as they are, retry a rejected one.",
                             no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


@identity_app.command("list")
def identity_list(as_json: Annotated[bool, typer.Option("--json", help="Print the reviews as JSON.")] = False,
                  tenant: TenantOption = None) -> None:
    """The open identity reviews of the latest run: who, the values on both sides, since when."""
    from contact_recon.cli.review import run_identity_list

    raise typer.Exit(run_identity_list(tenant_settings(tenant), as_json, console, err))


@identity_app.command("resolve")
def identity_resolve(
    target: Annotated[str, typer.Argument(help="A filled-in identity.csv, or one REVIEW_ID with --decision.")],
    decision: Annotated[str | None, typer.Option(help="For one REVIEW_ID: pair (pair these two), apart (keep them "
                                                      "apart), ignore (no longer reported) or reopen (undo).")]
    = None,
    contact: Annotated[str | None, typer.Option(help="With pair: the contact id that is the TinyEmail customer.")]
    = None,
    note: Annotated[str | None, typer.Option(help="Why (kept with the decision).")] = None,
    tenant: TenantOption = None,
) -> None:
    """Store decisions on identity reviews; the next run honours them. A file is checked row by row: one bad row
    imports nothing."""
    from contact_recon.cli.review import run_identity_resolve

    raise typer.Exit(run_identity_resolve(tenant_settings(tenant), target, decision, contact, note, console, err))


@quarantine_app.command("list")
def quarantine_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the ops as JSON.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Dismissed ops too.")] = False,
    tenant: TenantOption = None,
) -> None:
    """The quarantined ops of the latest run: the person, the values, the check, since when."""
    from contact_recon.cli.review import run_quarantine_list

    raise typer.Exit(run_quarantine_list(tenant_settings(tenant), as_json, show_all, console, err))


@quarantine_app.command("dismiss")
def quarantine_dismiss(
    op_id: Annotated[str, typer.Argument(help="The op id (`recon quarantine list`).")],
    note: Annotated[str | None, typer.Option(help="Why (kept with the dismissal).")] = None,
    undo: Annotated[bool, typer.Option("--undo", help="Restore a dismissed op to the open quarantine.")] = False,
    tenant: TenantOption = None,
) -> None:
    """Accept a quarantined op's record as it is: recorded, never written, no longer reported as open."""
    from contact_recon.cli.review import run_quarantine_dismiss

    raise typer.Exit(run_quarantine_dismiss(tenant_settings(tenant), op_id, note, undo, console, err))


@quarantine_app.command("retry")
def quarantine_retry(
    op_id: Annotated[str, typer.Argument(help="A rejected op's id (`recon quarantine list`).")],
    note: Annotated[str | None, typer.Option(help="Why (kept with the retry).")] = None,
    tenant: TenantOption = None,
) -> None:
    """Send an op the API rejected once more on the next run (it is otherwise not sent again until its value
    changes)."""
    from contact_recon.cli.review import run_quarantine_retry

    raise typer.Exit(run_quarantine_retry(tenant_settings(tenant), op_id, note, console, err))


@conflicts_app.command("list")
def conflicts_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the conflicts as JSON.")] = False,
    tenant: TenantOption = None,
) -> None:
    """The open conflicts: who, which field, both sides' values, since when (first seen, nights open) and any
    decision waiting for the next run."""
    from contact_recon.cli.report import run_conflicts_list_command

    raise typer.Exit(run_conflicts_list_command(tenant_settings(tenant), as_json, console, err))


@conflicts_app.command("undo")
def conflicts_undo(
    key: Annotated[str, typer.Argument(help="The conflict's key (a GHL contact id or te:<email>).")],
    field: Annotated[str, typer.Argument(help="The conflict's field; `-` for a row without one (a deletion).")],
    tenant: TenantOption = None,
) -> None:
    """Forget a decision (pending or already used) or a skip, so the next run reports the conflict again."""
    from contact_recon.cli.report import run_conflicts_undo_command

    raise typer.Exit(run_conflicts_undo_command(tenant_settings(tenant), key, field, console, err))

if __name__ == "__main__":
    app()
