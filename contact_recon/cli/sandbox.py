"""`recon sandbox ...`: serve, generate and mutate the sandbox servers of both APIs.

The only production-side module that imports `contact_recon.sandbox` (the demo aside), and only inside
its commands, so a plain `recon` never loads the sandbox.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

sandbox_app = typer.Typer(help="Sandbox servers of both APIs and their fixtures.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


class Only(StrEnum):
    ghl = "ghl"
    tinyemail = "tinyemail"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _load(fixture: Path) -> dict[str, Any]:
    from contact_recon.sandbox.fixture import FixtureError, load_fixture

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
    webhook_url: Annotated[str | None, typer.Option(help="POST signed GHL webhooks (sandbox test key) here.")]
    = None,
    webhook_signature: Annotated[str, typer.Option(
        help="How the webhooks are signed: ed25519 (X-GHL-Signature, as GHL does today) or rsa (legacy "
             "x-wh-signature).")] = "ed25519",
    search_lag: Annotated[float | None, typer.Option(help="Seconds before a GHL write shows in POST /contacts/search "
                                                          "(NOTES.md: real results lag by a few seconds); "
                                                          "default 2.")]
    = None,
) -> None:
    """Serve the GHL and TinyEmail sandboxes on 127.0.0.1 until SIGINT/SIGTERM."""
    from contact_recon.sandbox.faults import FaultSpec

    try:
        FaultSpec.parse(faults)
    except ValueError as exc:
        _fail(f"--faults: {exc}")
    if rate_scale <= 0:
        _fail("--rate-scale must be > 0")
    from contact_recon.sandbox.ghl_webhooks import SIGNATURES

    if webhook_signature not in SIGNATURES:
        _fail(f"--webhook-signature takes {' or '.join(SIGNATURES)}")
    if search_lag is not None and search_lag < 0:
        _fail("--search-lag must be >= 0")
    data = _load(fixture)
    if only is not None:  # the other system's part is let go before serving (at a million contacts, gigabytes)
        data = {only.value: data[only.value]}
    from contact_recon.sandbox import ghl, tinyemail
    from contact_recon.sandbox.server import serve_forever

    # owned: the stores serve the parsed fixture's objects (`del data` below), not a copy of them
    options: dict[str, Any] = {"rate_scale": rate_scale, "faults": faults or None, "seed": seed, "owned": True}
    apps = {}
    if only in (None, Only.ghl):
        apps["ghl"] = (ghl.create_app(data["ghl"], **options, webhook_url=webhook_url,
                                      webhook_signature=webhook_signature,
                                      search_lag_s=ghl.DEFAULT_SEARCH_LAG_S if search_lag is None else search_lag),
                       ghl_port)
    if only in (None, Only.tinyemail):
        apps["tinyemail"] = (tinyemail.create_app(data["tinyemail"], **options), tinyemail_port)

    def ready(urls: dict[str, str]) -> None:
        if "ghl" in urls:
            console.print(f"GHL sandbox:       {urls['ghl']}", highlight=False)
        if "tinyemail" in urls:
            console.print(f"TinyEmail sandbox: {urls['tinyemail']}/v1", highlight=False)
        if webhook_url and "ghl" in urls:
            console.print(f"GHL webhooks ->    {webhook_url} (signed {webhook_signature} with the sandbox test key: "
                          "run the receiver with RECON_GHL_WEBHOOK_PUBLIC_KEY=sandbox)", highlight=False)
        console.print("Ctrl+C or SIGTERM stops them.", style="dim")
        sys.stdout.flush()

    del data  # the stores own their parts now: nothing else may hold them
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
    from contact_recon.sandbox.generate import generate_fixture, write_fixture

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
    from contact_recon.sandbox.mutate import credentials_from_env, credentials_from_fixture, mutate

    creds: dict[str, Any] = credentials_from_fixture(_load(fixture)) if fixture else credentials_from_env()
    report = mutate(ghl, tinyemail, changes, seed=seed, **creds)
    print(json.dumps(report, indent=2, ensure_ascii=False))
