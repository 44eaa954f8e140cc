"""`recon policy push [FILE]` and `recon policy show`: the reconciliation policy as a Prefect block, and which policy
a run would use (its source and version). The resolving itself is `contact_recon/systems/policy_source.py`."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from contact_recon.cli.views import mapping_table
from contact_recon.model.policy import Policy
from contact_recon.settings import Settings
from contact_recon.systems.policy_source import (
    DEFAULTS,
    LoadedPolicy,
    PolicyExists,
    PolicyInvalid,
    PolicyMissing,
    load_file_policy,
    push_policy,
    resolve_policy,
)
from contact_recon.systems.redaction import redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _error(err: Console, message: str) -> None:
    err.print(f"[bold red]error:[/] {redact(message)}", highlight=False, soft_wrap=True)


def loaded_policy(settings: Settings, err: Console, path: Path | None = None) -> LoadedPolicy | None:
    """The policy a run would use (with `path`: that file's), or None after one clear line when it cannot be had."""
    try:
        return load_file_policy(path) if path is not None else resolve_policy(settings)
    except (PolicyInvalid, PolicyMissing) as exc:
        _error(err, str(exc))
    except (OSError, ValueError) as exc:  # unreadable, or not TOML / JSON
        _error(err, f"policy file {path or settings.policy_file}: {exc}")
    except Exception as exc:  # noqa: BLE001 - the Prefect API unreachable, say: one clear line, never a traceback
        _error(err, f"policy block {settings.policy_block}: {type(exc).__name__}: {exc}")
    return None


def describe(loaded: LoadedPolicy) -> str:
    """`policy <version> (<source>)`: the line the commands print."""
    return f"policy {loaded.version} ({loaded.source})"


def run_policy_show_command(settings: Settings, as_json: bool, console: Console, err: Console) -> int:
    """Print the policy a run would use now: its source and version, then its field map (or all of it as JSON);
    2 and one clear line when it cannot be had (a missing or invalid block, a bad file)."""
    loaded = loaded_policy(settings, err)
    if loaded is None:
        return EXIT_USAGE
    if as_json:
        console.print_json(json.dumps({"version": loaded.version, "source": loaded.source,
                                       "policy": loaded.policy.model_dump(mode="json")}))
        return EXIT_OK
    console.print(describe(loaded), highlight=False, soft_wrap=True)
    console.print(mapping_table(loaded.policy))
    return EXIT_OK


def run_policy_push_command(settings: Settings, file: Path | None, name: str | None, overwrite: bool,
                            console: Console, err: Console) -> int:
    """Register the `recon-policy` block type and save a policy into the block `name` (default RECON_POLICY_BLOCK):
    the policy of `file`, else of RECON_POLICY_FILE, else the defaults. 0 saved; 1 the block exists (without
    `overwrite`) or the server refused; 2 no name, or the file is unusable."""
    name = name or settings.policy_block
    if not name:
        _error(err, "no block name: pass --name or set RECON_POLICY_BLOCK")
        return EXIT_USAGE
    path = file or settings.policy_file
    if path is not None:
        loaded = loaded_policy(settings, err, path)
        if loaded is None:
            return EXIT_USAGE
    else:
        loaded = LoadedPolicy(Policy(), DEFAULTS)
    try:
        pushed = push_policy(name, loaded.policy, overwrite=overwrite)
    except PolicyExists as exc:
        _error(err, str(exc))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        _error(err, f"push failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    console.print(f"saved {describe(pushed)} from {loaded.source}", highlight=False, soft_wrap=True)
    console.print(f"edit it in the Prefect UI (Blocks, Recon Policy, {name}); runs use it with "
                  f"RECON_POLICY_BLOCK={name}", highlight=False, soft_wrap=True)
    return EXIT_OK
