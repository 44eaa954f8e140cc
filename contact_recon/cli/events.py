"""The event commands behind `recon webhooks serve`, `recon watch tinyemail` and `recon alerts setup|listen`."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr
from rich.console import Console

from contact_recon.settings import Settings

if TYPE_CHECKING:
    from contact_recon.service.alerts import SmtpServer

NO_PREFECT = ("no Prefect API configured: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api after "
              "`prefect server start`) so the events reach the server that runs the deployments")


def prefect_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    value = PREFECT_API_URL.value()
    return str(value) if value else None


def _quiet_logging() -> None:
    """Our own loggers at INFO on stderr (ids and verdicts only); the libraries' at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("contact_recon.service.webhooks", "contact_recon.service.watch"):
        logging.getLogger(name).setLevel(logging.INFO)


def run_webhooks_serve(settings: Settings, host: str, port: int, console: Console, err: Console) -> int:
    import uvicorn

    from contact_recon.service.signatures import ED25519, key_source
    from contact_recon.service.webhooks import PATH, create_app

    if prefect_api_url() is None:
        err.print(f"[bold red]error:[/] {NO_PREFECT}", highlight=False)
        return 2
    _quiet_logging()
    try:
        app = create_app(settings)  # starts the forwarder; Prefect need not be reachable yet
    except (OSError, ValueError) as exc:
        err.print(f"[bold red]error:[/] cannot load the webhook public key: {exc}", highlight=False)
        return 2
    receiver = app.state.receiver
    console.print(f"GHL webhook receiver: http://{host}:{port}{PATH}", highlight=False)
    console.print(f"verifying with {key_source(settings.ghl_webhook_public_key)}: {receiver.keys.describe()}; "
                  f"age window {settings.webhook_max_age_s:.0f} s, dedupe window "
                  f"{settings.webhook_dedupe_window_s:.0f} s; {len(receiver.spool)} events spooled; events to "
                  f"{prefect_api_url()}", highlight=False)
    if ED25519 not in receiver.keys.types:
        err.print("[bold yellow]warning:[/] no Ed25519 key configured: GHL signs webhooks only with X-GHL-Signature "
                  "(Ed25519) since 2026-07-01, so real webhooks will be refused (RECON_GHL_WEBHOOK_PUBLIC_KEY)",
                  highlight=False)
    sys.stdout.flush()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        app.state.forwarder.stop()
    return 0


def run_watch_tinyemail(settings: Settings, interval: float, budget_share: float, once: bool, console: Console,
                        err: Console) -> int:
    from contact_recon.service.watch import PollResult, share_budget, watch
    from contact_recon.systems.errors import ConnectorError

    if prefect_api_url() is None:
        err.print(f"[bold red]error:[/] {NO_PREFECT}", highlight=False)
        return 2
    budget = share_budget(settings, budget_share)
    console.print(f"watching TinyEmail at {settings.tinyemail_base_url}: {budget.limit} requests a minute "
                  f"({budget_share:.0%} of {settings.tinyemail_rate_per_minute:g})", highlight=False)

    def report(result: PollResult) -> None:
        if result.baseline:
            console.print(f"baseline: {result.customers} customers recorded, {result.requests} requests, "
                          f"{result.seconds:.1f} s", highlight=False)
            return
        console.print(f"poll: {result.customers} customers, {result.created} created, {result.updated} updated, "
                      f"{result.emitted} events, {result.echoes} our own writes, {result.requests} requests, "
                      f"{result.seconds:.1f} s", highlight=False)

    try:
        watch(settings, interval_s=interval, budget_share=budget_share, once=once, on_poll=report)
    except ConnectorError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("watch stopped", style="dim")
    return 0


@dataclass(frozen=True)
class AlertsSetupOptions:
    """`recon alerts setup`'s options, as typed (contact_recon/cli/main.py)."""

    slack: str | None
    teams: str | None
    email: list[str]
    smtp_host: str | None
    smtp_port: int
    smtp_security: str
    smtp_user: str | None
    smtp_password: str | None
    smtp_from: str | None
    apprise: str | None
    webhook_url: str | None
    flows: list[str]
    nightly_deployment: str
    nightly_window_hours: float | None
    long_run_minutes: float | None

    def smtp(self) -> SmtpServer | None:
        from contact_recon.service.alerts import AlertTargetError, SmtpServer

        if not self.smtp_host:
            return None
        if self.smtp_security not in ("starttls", "ssl", "none"):
            raise AlertTargetError("--smtp-security takes starttls, ssl or none")
        password = SecretStr(self.smtp_password) if self.smtp_password else None
        return SmtpServer(self.smtp_host, self.smtp_port, self.smtp_security,  # type: ignore[arg-type]  # checked
                          self.smtp_user, password, self.smtp_from)


def run_alerts_setup(options: AlertsSetupOptions, console: Console, err: Console) -> int:
    from contact_recon.service.alerts import BLOCK_NAME, AlertRules, AlertTargetError, choose_target, setup_alerts
    from contact_recon.settings import get_settings

    try:
        target = choose_target(slack=options.slack, teams=options.teams, email=[
            address.strip() for value in options.email for address in value.split(",") if address.strip()],
            smtp=options.smtp(), apprise=options.apprise, webhook_url=options.webhook_url)
        rules = AlertRules.from_settings(get_settings(), flow_names=options.flows,
                                         nightly_deployment=options.nightly_deployment,
                                         nightly_window_hours=options.nightly_window_hours,
                                         long_run_minutes=options.long_run_minutes)
    except AlertTargetError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    if prefect_api_url() is None:
        err.print(f"[bold red]error:[/] {NO_PREFECT}", highlight=False)
        return 2
    setup = setup_alerts(target, rules)
    console.print(f"notification block {BLOCK_NAME!r} ({target.block.get_block_type_name()}, {setup.block_id}) "
                  f"sends to {target.shown}", highlight=False)
    for name, automation_id in setup.automation_ids.items():
        verb = "created" if name in setup.created else "updated"
        console.print(f"automation {name!r} {verb} ({automation_id})", highlight=False)
    return 0


def run_alerts_listen(out: Path, port: int, console: Console) -> int:
    import uvicorn

    from contact_recon.service.alerts import sink_app

    console.print(f"writing alerts POSTed to http://127.0.0.1:{port}/ into {out}", highlight=False)
    uvicorn.run(sink_app(out), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0
