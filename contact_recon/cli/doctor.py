"""`recon doctor`: is the configuration usable? Connections, scopes and remaining budgets, in one look.

Order of the checks:
1. Configuration: the settings load, GHL has credentials (RECON_GHL_TOKEN, or RECON_GHL_CLIENT_ID and
   RECON_GHL_CLIENT_SECRET) and locations (RECON_GHL_LOCATION_IDS), TinyEmail has a key. A missing
   piece is a problem line and the system's probes are skipped.
2. For each GHL location, one harmless call per scope the features need (`REQUIRED_SCOPES`):
   - contacts.readonly: `POST /contacts/search` with pageLimit 1;
   - locations/tasks.readonly: `POST /locations/{id}/tasks/search` for one dummy contact id;
   - contacts.write: `POST /contacts/{PROBE_CONTACT_ID}/tags` on a 20-character id that does not
     exist. GHL checks the token's scope before it looks the contact up (the sandbox follows the
     documented gate order: auth, scope, body, handler), so "400 Contact with id .. not found" proves
     the scope is present and nothing was changed, while "401 not authorized for this scope" proves
     it is missing. Assumption: the real API keeps that order; if it looked the contact up first, a
     token without the scope would pass this probe (a false "ok", never a changed record).
   An AuthError (token refused, OAuth never authorized) stops the probes of that location.
3. TinyEmail: `GET /contacts` (the lists) proves the key works.
4. Budgets: every client's `RateBudget` has followed the answers' rate headers by then (GHL sends
   X-RateLimit-*; TinyEmail only 429s, so its budget is our own count against the assumed limit);
   the table shows what remains of the current window and of the day.
5. Webhooks: the keys of RECON_GHL_WEBHOOK_PUBLIC_KEY load (a key neither Ed25519 nor RSA, or an unreadable
   file, is a problem), and the check line says which key types are configured. No Ed25519 key is a warning
   (yellow, on stdout, not a problem: the webhooks are optional), since GHL signs only `X-GHL-Signature`
   (Ed25519) from 2026-07-01 and the receiver would refuse every real webhook.
Exit 0 when there is no problem, else 1 with one red line per problem. Every line passes through
`redact`, and no exception escapes as a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from contact_recon.service.signatures import ED25519, key_source, load_keys
from contact_recon.settings import Settings
from contact_recon.systems.budget import BudgetSnapshot
from contact_recon.systems.errors import (
    AuthError,
    ConnectorError,
    NotFound,
    RateLimited,
    ScopeError,
    Unavailable,
    UnknownOutcome,
)
from contact_recon.systems.redaction import redact

REQUIRED_SCOPES = {  # scope -> the feature that needs it
    "contacts.readonly": "contact snapshots",
    "locations/tasks.readonly": "task snapshots",
    "contacts.write": "applying plans (tags, updates)",
}
PROBE_CONTACT_ID = "reconDoctorNoSuchId0"  # 20 characters, like GHL ids; must not exist
PROBE_TAG = "recon-doctor-probe"
CLIENT_OPTIONS: dict[str, Any] = {"timeout": 15.0, "max_attempts": 2, "backoff_max_s": 1.0}


@dataclass(frozen=True)
class Check:
    target: str
    what: str
    ok: bool


@dataclass(frozen=True)
class BudgetRow:
    system: str
    key: str
    window: str
    daily: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    budgets: list[BudgetRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def record(self, target: str, what: str, problem: str | None) -> None:
        self.checks.append(Check(target, what, problem is None))
        if problem is not None:
            self.problems.append(redact(problem))


# ----------------------------------------------------------------------------------- configuration


def config_problems(settings: Settings) -> list[str]:
    problems = []
    if not ghl_credentials_set(settings):
        problems.append("RECON_GHL_TOKEN or RECON_GHL_CLIENT_ID/RECON_GHL_CLIENT_SECRET not set")
    if not settings.ghl_location_ids:
        problems.append("RECON_GHL_LOCATION_IDS not set")
    if not _secret(settings.tinyemail_api_key):
        problems.append("RECON_TINYEMAIL_API_KEY not set")
    return problems


def ghl_credentials_set(settings: Settings) -> bool:
    return bool(_secret(settings.ghl_token) or (settings.ghl_client_id and _secret(settings.ghl_client_secret)))


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


# -------------------------------------------------------------------------------------------- GHL


def _ghl_problem(target: str, scope: str, exc: ConnectorError) -> str:
    """One line for a failed scope probe."""
    if isinstance(exc, ScopeError) and exc.status == 401:
        return f"{target}: token lacks scope {scope}"
    if isinstance(exc, ScopeError):
        return f"{target}: the token has no access to this location"
    if isinstance(exc, AuthError) and exc.status == 401:
        return f"{target}: the token was refused (RECON_GHL_TOKEN, or the OAuth pair: run `recon auth ghl`)"
    if isinstance(exc, AuthError):
        return f"{target}: {exc}"
    if isinstance(exc, RateLimited):
        return f"{target}: rate limited while checking {scope}; try again later"
    if isinstance(exc, Unavailable | UnknownOutcome):
        return f"{target}: unreachable or failing while checking {scope} ({exc})"
    return f"{target}: the {scope} check failed ({exc})"


def ghl_probes(client: Any) -> list[tuple[str, Callable[[], Awaitable[Any]], type[ConnectorError] | None]]:
    """(scope, call, the error that still proves the scope) for each required scope."""
    return [
        ("contacts.readonly", lambda: client.search_contacts(page_limit=1), None),
        ("locations/tasks.readonly", lambda: client.search_tasks([PROBE_CONTACT_ID]), None),
        ("contacts.write", lambda: client.add_tags(PROBE_CONTACT_ID, [PROBE_TAG]), NotFound),
    ]


async def check_ghl_location(settings: Settings, location_id: str, report: Report, **client_options: Any) -> None:
    from contact_recon.systems.ghl.client import GHLClient

    target = f"GHL location {location_id}"
    async with GHLClient.from_settings(settings, location_id, **CLIENT_OPTIONS, **client_options) as client:
        for scope, call, proof in ghl_probes(client):
            try:
                await call()
                problem = None
            except ConnectorError as exc:
                problem = None if proof is not None and isinstance(exc, proof) else _ghl_problem(target, scope, exc)
                if isinstance(exc, AuthError):
                    report.record(target, f"scope {scope}", problem)
                    break  # a refused token fails every probe: one line is enough
            report.record(target, f"scope {scope}", problem)
        report.budgets.append(budget_row("ghl", location_id, client.budget_snapshot()))


# -------------------------------------------------------------------------------------- TinyEmail


async def check_tinyemail(settings: Settings, report: Report, **client_options: Any) -> None:
    from contact_recon.systems.tinyemail.client import TinyEmailClient

    async with TinyEmailClient.from_settings(settings, **CLIENT_OPTIONS, **client_options) as client:
        try:
            await client.lists()
            problem = None
        except AuthError:
            problem = "TinyEmail: the API key was refused (RECON_TINYEMAIL_API_KEY)"
        except RateLimited:
            problem = "TinyEmail: rate limited while listing; try again later"
        except ConnectorError as exc:
            problem = f"TinyEmail: unreachable or failing ({exc})"
        report.record("TinyEmail", "API key (GET /contacts)", problem)
        report.budgets.append(budget_row("tinyemail", "API key", client.api.budget.snapshot()))


# ---------------------------------------------------------------------------------------- budgets


def budget_row(system: str, key: str, snap: BudgetSnapshot) -> BudgetRow:
    window_s = f"{snap.window_s:g} s"
    window = f"{max(0, snap.limit - snap.in_window)} of {snap.limit} per {window_s}"
    if snap.paused_for_s > 0:
        window += f" (paused {snap.paused_for_s:.0f} s)"
    daily = "-" if snap.daily_remaining is None else f"{snap.daily_remaining:,} of {snap.daily_limit or 0:,}"
    return BudgetRow(system, key, window, daily)
def check_webhook_keys(settings: Settings, report: Report) -> None:
    """Step 5 of the module docstring."""
    try:
        keys = load_keys(settings.ghl_webhook_public_key)
    except (OSError, ValueError) as exc:
        report.record("webhooks", "verification keys", f"RECON_GHL_WEBHOOK_PUBLIC_KEY: {exc}")
        return
    report.record("webhooks", f"verification keys: {keys.describe()}, {key_source(settings.ghl_webhook_public_key)}",
                  None)
    if ED25519 not in keys.types:  # GHL's only signature since 2026-07-01 would verify under no key
        report.warnings.append("no Ed25519 webhook key configured: GHL signs webhooks only with X-GHL-Signature "
                               "(Ed25519) since 2026-07-01, so `recon webhooks serve` would refuse them; add GHL's "
                               "Ed25519 public key to RECON_GHL_WEBHOOK_PUBLIC_KEY")


# ------------------------------------------------------------------------------------------ running


async def diagnose(settings: Settings, **client_options: Any) -> Report:
    """Every check of the module docstring; problems are collected, never raised."""
    report = Report()
    report.problems.extend(config_problems(settings))
    check_webhook_keys(settings, report)
    jobs = []
    if ghl_credentials_set(settings):
        jobs += [check_ghl_location(settings, loc, report, **client_options) for loc in settings.ghl_location_ids]
    if _secret(settings.tinyemail_api_key):
        jobs.append(check_tinyemail(settings, report, **client_options))
    await asyncio.gather(*jobs)
    return report


def render(report: Report, out: Console, err: Console) -> int:
    if report.checks:
        checks = Table(title="Checks")
        for column in ("target", "check", "result"):
            checks.add_column(column)
        for check in sorted(report.checks, key=lambda c: c.target):  # stable: probe order kept
            checks.add_row(check.target, check.what, "[green]ok[/]" if check.ok else "[red]problem[/]")
        out.print(checks)
    if report.budgets:
        budgets = Table(title="Remaining budgets")
        for column in ("system", "location / key", "this window", "today"):
            budgets.add_column(column)
        for row in sorted(report.budgets, key=lambda r: (r.system, r.key)):
            budgets.add_row(row.system, row.key, row.window, row.daily)
        out.print(budgets)
    for warning in report.warnings:
        out.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
    for problem in report.problems:
        err.print(Text(redact(problem), style="bold red"), soft_wrap=True)
    if report.problems:
        return 1
    out.print("[green]usable: every check passed[/]")
    return 0


def run_doctor(settings_factory: Callable[[], Settings], out: Console, err: Console) -> int:
    """The command's body: 0 when usable, else 1 with one red line per problem (never a traceback)."""
    try:
        settings = settings_factory()
    except ValidationError as exc:
        names = ", ".join(sorted({"RECON_" + str(e["loc"][0]).upper() for e in exc.errors() if e["loc"]}))
        err.print(Text(f"invalid configuration: {redact(names)}", style="bold red"), soft_wrap=True)
        return 1
    except ValueError as exc:  # a tenant that is not in RECON_TENANTS_FILE, or a file that is refused
        err.print(Text(f"invalid configuration: {redact(exc)}", style="bold red"), soft_wrap=True)
        return 1
    try:
        report = asyncio.run(diagnose(settings))
    except Exception as exc:  # noqa: BLE001 - the doctor reports, it never shows a traceback
        err.print(Text(f"doctor failed: {type(exc).__name__}: {redact(exc)}", style="bold red"), soft_wrap=True)
        return 1
    return render(report, out, err)
