"""The event commands behind `recon webhooks serve`, `recon watch tinyemail`, `recon services [serve]` and
`recon alerts setup|listen`."""

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
    for name in ("contact_recon.service.webhooks", "contact_recon.service.watch", "contact_recon.service.syncer",
                 "contact_recon.sync"):
        logging.getLogger(name).setLevel(logging.INFO)


def run_webhooks_serve(settings: Settings, host: str, port: int, console: Console, err: Console) -> int:
    import uvicorn

    from contact_recon.service.signatures import ED25519, key_source
    from contact_recon.service.webhooks import PATH, create_app, start_heartbeat

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
    heartbeat = start_heartbeat(app, settings)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        heartbeat.stop()
        app.state.forwarder.stop()
    return 0


def run_watch_tinyemail(settings: Settings, interval: float, budget_share: float, once: bool, console: Console,
                        err: Console) -> int:
    from contact_recon.events import SERVICE_WATCH
    from contact_recon.service.heartbeat import Heartbeat
    from contact_recon.service.watch import PollResult, share_budget, watch
    from contact_recon.systems.errors import ConnectorError

    if prefect_api_url() is None:
        err.print(f"[bold red]error:[/] {NO_PREFECT}", highlight=False)
        return 2
    budget = share_budget(settings, budget_share)
    console.print(f"watching TinyEmail at {settings.tinyemail_base_url}: {budget.limit} requests a minute "
                  f"({budget_share:.0%} of {settings.tinyemail_rate_per_minute:g})", highlight=False)

    polls = {"polls": 0, "emitted": 0}

    def report(result: PollResult) -> None:
        polls["polls"] += 1
        polls["emitted"] += result.emitted
        who = f"[{result.tenant}] " if result.tenant else ""
        if result.baseline:
            console.print(f"{who}baseline: {result.customers} customers recorded, {result.requests} requests, "
                          f"{result.seconds:.1f} s", highlight=False)
            return
        console.print(f"{who}poll: {result.customers} customers, {result.created} created, {result.updated} "
                      f"updated, {result.emitted} events, {result.echoes} our own writes, {result.requests} requests, "
                      f"{result.seconds:.1f} s", highlight=False)

    heartbeat = Heartbeat(SERVICE_WATCH, settings.service_heartbeat_s,
                          details=lambda: {**polls, "interval_s": interval})
    if not once:
        heartbeat.start()
    try:
        watch(settings, interval_s=interval, budget_share=budget_share, once=once, on_poll=report)
    except ConnectorError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("watch stopped", style="dim")
    finally:
        heartbeat.stop()
    return 0


def run_services_serve(settings: Settings, console: Console, err: Console) -> int:
    from contact_recon.service.syncer import serve_syncs

    if prefect_api_url() is None:
        err.print(f"[bold red]error:[/] {NO_PREFECT}", highlight=False)
        return 2
    _quiet_logging()
    service = serve_syncs(settings)
    console.print(f"sync service: following GHL and TinyEmail events at {prefect_api_url()}; coalescing "
                  f"{settings.sync_coalesce_s:g} s per person; waiting up to {settings.sync_lock_wait_s:.0f} s for a "
                  f"busy location; heartbeat every {settings.service_heartbeat_s:g} s", highlight=False)
    sys.stdout.flush()
    try:
        service.wait()
    except KeyboardInterrupt:
        console.print("sync service stopped", style="dim")
    finally:
        service.stop()
    return 0


def run_services_status(settings: Settings, as_json: bool, console: Console, err: Console) -> int:
    """Each service's state from its last heartbeat; exit 0 when all are up, 1 otherwise."""
    import json
    from datetime import UTC, datetime

    from contact_recon.service.heartbeat import UP, read_heartbeats, service_states

    if prefect_api_url() is None:
        err.print(f"[bold red]error:[/] {NO_PREFECT}", highlight=False)
        return 2
    states = service_states(read_heartbeats(), datetime.now(UTC), settings.service_stale_s)
    if as_json:
        console.print_json(json.dumps([{"service": s.name, "state": s.state, "last_heartbeat":
                                        s.last.isoformat() if s.last else None, "age_s": s.age_s,
                                        "pid": s.payload.get("pid"), "host": s.payload.get("host")} for s in states]))
    else:
        for s in states:
            last = f"last heartbeat {s.last:%Y-%m-%d %H:%M:%S} UTC, {s.age_s:.0f} s ago" if s.last else "no heartbeat"
            where = f" (pid {s.payload.get('pid')} on {s.payload.get('host')})" if s.payload else ""
            console.print(f"{s.name:<16} {s.state:<6} {last}{where}", highlight=False)
    return 0 if all(s.state == UP for s in states) else 1


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
