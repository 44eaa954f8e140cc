"""The `recon` command line (typer + rich)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sandbox.faults import FaultSpec
from sandbox.fixture import FixtureError, load_fixture

app = typer.Typer(help="contact-recon: keep GHL and TinyEmail consistent.", no_args_is_help=True)
sandbox_app = typer.Typer(help="Sandbox servers of both APIs and their fixtures.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
auth_app = typer.Typer(help="Authorize the connectors.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")

console = Console()
err = Console(stderr=True)


class Only(StrEnum):
    ghl = "ghl"
    tinyemail = "tinyemail"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _load(fixture: Path) -> dict[str, Any]:
    try:
        return load_fixture(fixture)
    except FixtureError as exc:
        _fail(f"bad fixture {fixture}: {exc}")
        raise  # unreachable: _fail raises


@sandbox_app.command("serve")
def sandbox_serve(
    fixture: Annotated[Path, typer.Option(help="Fixture file (../shared/fixtures/FORMAT.md).")],
    ghl_port: Annotated[int, typer.Option(help="Port of the GHL sandbox.")] = 8701,
    tinyemail_port: Annotated[int, typer.Option(help="Port of the TinyEmail sandbox.")] = 8702,
    only: Annotated[Only | None, typer.Option(help="Serve only this system.")] = None,
    rate_scale: Annotated[float, typer.Option(help="Multiply the burst rate allowances (tests, benchmarks).")] = 1.0,
    faults: Annotated[str, typer.Option(help='Faults, e.g. "5xx=0.02,applied_5xx=0.5,reset=0.01,latency=20ms".')] = "",
    seed: Annotated[int, typer.Option(help="Seed for ids and faults.")] = 0,
) -> None:
    """Serve the GHL and TinyEmail sandboxes on 127.0.0.1 until SIGINT/SIGTERM."""
    try:
        FaultSpec.parse(faults)
    except ValueError as exc:
        _fail(f"--faults: {exc}")
    if rate_scale <= 0:
        _fail("--rate-scale must be > 0")
    data = _load(fixture)
    from sandbox import ghl, tinyemail
    from sandbox.server import serve_forever

    options = {"rate_scale": rate_scale, "faults": faults or None, "seed": seed}
    apps = {}
    if only in (None, Only.ghl):
        apps["ghl"] = (ghl.create_app(data["ghl"], **options), ghl_port)
    if only in (None, Only.tinyemail):
        apps["tinyemail"] = (tinyemail.create_app(data["tinyemail"], **options), tinyemail_port)

    def ready(urls: dict[str, str]) -> None:
        if "ghl" in urls:
            console.print(f"GHL sandbox:       {urls['ghl']}", highlight=False)
        if "tinyemail" in urls:
            console.print(f"TinyEmail sandbox: {urls['tinyemail']}/v1", highlight=False)
        console.print("Ctrl+C or SIGTERM stops them.", style="dim")
        sys.stdout.flush()

    serve_forever(apps, ready)
    console.print("sandbox stopped", style="dim")


@sandbox_app.command("generate")
def sandbox_generate(
    contacts: Annotated[int, typer.Option(help="Number of distinct people.", min=0)],
    out: Annotated[Path, typer.Option(help="Fixture file to write.")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same file.")] = 0,
    overlap: Annotated[float, typer.Option(help="Share of people present in both systems.", min=0, max=1)] = 0.7,
    tasks_per_contact: Annotated[float, typer.Option(help="Mean GHL tasks per contact.", min=0)] = 0.5,
    notes_per_contact: Annotated[float, typer.Option(help="Mean GHL notes per contact.", min=0)] = 1.0,
    awkward: Annotated[float, typer.Option(help="Share of awkward records.", min=0, max=1)] = 0.05,
    locations: Annotated[int, typer.Option(help="Number of GHL locations.", min=1)] = 1,
    allow_duplicates: Annotated[bool, typer.Option(help="Locations allow duplicate contacts.")] = False,
) -> None:
    """Write a deterministic fixture for both sandboxes."""
    from sandbox.generate import generate_fixture, write_fixture

    fixture = generate_fixture(contacts, seed=seed, overlap=overlap, tasks_per_contact=tasks_per_contact,
                               notes_per_contact=notes_per_contact, awkward=awkward, locations=locations,
                               allow_duplicates=allow_duplicates)
    write_fixture(fixture, out)
    ghl_count = sum(len(loc["contacts"]) for loc in fixture["ghl"]["locations"].values())
    console.print(f"wrote {out}: {ghl_count} GHL contacts, "
                  f"{len(fixture['tinyemail']['customers'])} TinyEmail customers", highlight=False)


@sandbox_app.command("mutate")
def sandbox_mutate(
    ghl: Annotated[str, typer.Option(help="Base URL of the GHL server.")],
    tinyemail: Annotated[str, typer.Option(help="Base URL of the TinyEmail server (with /v1).")],
    changes: Annotated[int, typer.Option(help="Number of changes to make.", min=0)],
    seed: Annotated[int, typer.Option(help="Seed for the choice of changes.")] = 0,
    fixture: Annotated[Path | None, typer.Option(help="Fixture whose credentials to use.")] = None,
) -> None:
    """Make a realistic day of changes through the public APIs of both servers; print them as JSON."""
    from sandbox.mutate import credentials_from_env, credentials_from_fixture, mutate

    creds = credentials_from_fixture(_load(fixture)) if fixture else credentials_from_env()
    report = mutate(ghl, tinyemail, changes, seed=seed, **creds)
    print(json.dumps(report, indent=2, ensure_ascii=False))


@app.command("demo")
def demo(
    contacts: Annotated[int, typer.Option(help="Size of the generated fixture.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the fixture.")] = 7,
) -> None:
    """Generate a fixture, start both sandboxes, show what each holds, and stop."""
    from contact_recon.demo import run_demo

    raise typer.Exit(run_demo(console, contacts=contacts, seed=seed))


@auth_app.command("ghl")
def auth_ghl(
    code: Annotated[str | None, typer.Option(help="The authorization code, or the whole redirect URL.")] = None,
) -> None:
    """Print the GHL authorize URL, take the code, and store the OAuth token pair (never printed)."""
    from contact_recon.auth_cli import run
    from contact_recon.settings import get_settings

    def prompt() -> str:
        return str(typer.prompt("Paste the code (or the whole redirect URL)", hide_input=True))

    raise typer.Exit(run(get_settings(), code, prompt, console, err))


@app.command("doctor")
def doctor() -> None:
    """Check both connections, the scopes the features need and the remaining budgets; exit 1 on a problem."""
    from contact_recon.doctor import run_doctor
    from contact_recon.settings import get_settings

    raise typer.Exit(run_doctor(get_settings, console, err))


@app.command("snapshot")
def snapshot(
    location: Annotated[list[str] | None, typer.Option(help="GHL location id (repeatable); default: all configured.")]
    = None,
    full_sweep: Annotated[bool, typer.Option(help="Read the tasks and notes of every contact tonight.")] = False,
) -> None:
    """Snapshot GHL and TinyEmail into the store; print counts, requests planned vs used; exit 1 on failure."""
    from contact_recon.settings import get_settings
    from contact_recon.snapshot_cli import run_snapshot_command

    raise typer.Exit(run_snapshot_command(get_settings(), location or [], full_sweep, console, err))



@app.command("plan")
def plan(
    location: Annotated[list[str] | None, typer.Option(help="GHL location id (repeatable); default: all configured.")]
    = None,
    approve: Annotated[bool, typer.Option(help="Approve up front whatever guard the plan trips.")] = False,
    full_sweep: Annotated[bool, typer.Option(help="Read the tasks and notes of every contact tonight.")] = False,
    reuse_snapshot: Annotated[bool, typer.Option(help="Plan from the latest stored snapshot; read neither system.")]
    = False,
) -> None:
    """The dry run (`recon run --dry-run` once the apply stage exists): snapshot and plan, writing nothing to GHL
    or TinyEmail.

    Prints the run id, its status (planned, or held by a guard with the reasons), the operations per
    system and kind, the conflicts, the quarantined operations and where plan.parquet is.
    Exit 0 planned, 3 held (see `recon approve`), 1 failed.
    """
    from contact_recon.plan_cli import run_plan_command
    from contact_recon.settings import get_settings

    raise typer.Exit(run_plan_command(get_settings(), location or [], approve, full_sweep, reuse_snapshot, console,
                                      err))


@app.command("mapping")
def mapping(
    policy: Annotated[Path | None, typer.Option(help="Policy file (.toml or .json); default: RECON_POLICY_FILE.")]
    = None,
) -> None:
    """Print the active field map and rules as a table: how data moves between GHL and TinyEmail."""
    from contact_recon.plan_cli import run_mapping_command
    from contact_recon.settings import get_settings

    raise typer.Exit(run_mapping_command(get_settings(), policy, console, err))


@app.command("approve")
def approve(run_id: Annotated[str, typer.Argument(help="The id of a held plan run.")]) -> None:
    """Approve a run held by a guard; print the reasons and the operations it approves."""
    from contact_recon.plan_cli import run_approve_command
    from contact_recon.settings import get_settings

    raise typer.Exit(run_approve_command(get_settings(), run_id, console, err))


if __name__ == "__main__":
    app()
