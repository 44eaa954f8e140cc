"""Where a run's reconciliation policy comes from, and which version it is.

`resolve_policy(settings)` is the one place a run gets its policy, in this order:

1. `RECON_POLICY_BLOCK` set: the Prefect block of that name (`ReconPolicy`, block type `recon-policy`,
   `contact_recon/systems/policy_block.py`), edited as a form in the Prefect UI. A missing block is
   `PolicyMissing`, naming the block; data that does not validate is `PolicyInvalid`, naming the block and
   every field path at fault (`guards.field_updates: Input should be a valid number`). Neither falls back to
   the file or the defaults: a run never plans with a policy nobody chose.
2. else `RECON_POLICY_FILE`: the TOML or JSON file (`contact_recon.model.policy.load_policy`); invalid: `PolicyInvalid`
   naming the file and the field paths.
3. else the default policy.

The result is a `LoadedPolicy`: the policy, its `source` (`block recon-policy/<name>`, `file <path>`, `defaults`, or
`given` for a policy a caller handed in) and its `version`, a short hash of the policy's canonical JSON: the same
policy has the same version whatever its source, so a file pushed into a block keeps its version, and an edit
in the UI gives a new one. Every plan records both on its run row (`Store.start_run`), and the report shows them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contact_recon.model.policy import Policy, load_policy
from contact_recon.settings import Settings

DEFAULTS, GIVEN = "defaults", "given"
VERSION_CHARS = 12  # hex characters of the SHA-256: short enough to read, ample for a team's policy history
MAX_ERRORS = 5  # field errors named in one message


class PolicyInvalid(ValueError):  # noqa: N818 - the name is the contract
    """The policy (a block's stored data or a file) does not validate; the message names each field path."""


class PolicyMissing(LookupError):  # noqa: N818 - the name is the contract
    """`RECON_POLICY_BLOCK` names a block that the Prefect server does not have."""


class PolicyExists(Exception):  # noqa: N818 - the name is the contract
    """`push_policy` would replace a saved block without `overwrite`."""


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: str  # "block recon-policy/<name>" | "file <path>" | "defaults" | "given"

    @property
    def version(self) -> str:
        return policy_version(self.policy)


def policy_version(policy: Policy) -> str:
    """A stable short hash of the policy's canonical JSON (keys sorted): equal policies, equal versions."""
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:VERSION_CHARS]


def resolve_policy(settings: Settings, policy: Policy | LoadedPolicy | None = None) -> LoadedPolicy:
    """The policy a run uses: `policy` when a caller gives one, else the block, the file or the defaults.

    Raises:
        PolicyMissing: RECON_POLICY_BLOCK names no block on the Prefect server.
        PolicyInvalid: the block's data or the file does not validate (the message names the fields).
        OSError, ValueError: the file cannot be read or parsed.
    """
    if isinstance(policy, LoadedPolicy):
        return policy
    if policy is not None:
        return LoadedPolicy(policy, GIVEN)
    if settings.policy_block:
        return load_block_policy(settings.policy_block)
    if settings.policy_file is not None:
        return load_file_policy(settings.policy_file)
    return LoadedPolicy(Policy(), DEFAULTS)


def load_block_policy(name: str) -> LoadedPolicy:
    """The policy stored in the `recon-policy` block `name` (a `<slug>/<name>` reference is accepted too)."""
    from prefect.exceptions import ObjectNotFound

    from contact_recon.systems.policy_block import BLOCK_TYPE_SLUG, policy_from_block_data, read_block_data

    name = name.removeprefix(f"{BLOCK_TYPE_SLUG}/")
    where = f"policy block {BLOCK_TYPE_SLUG}/{name}"
    try:
        data = read_block_data(name)
    except ObjectNotFound:
        raise PolicyMissing(f"{where} not found on the Prefect server: save it with `recon policy push --name "
                            f"{name}`, or unset RECON_POLICY_BLOCK") from None
    try:
        return LoadedPolicy(policy_from_block_data(data), f"block {BLOCK_TYPE_SLUG}/{name}")
    except ValidationError as exc:
        raise PolicyInvalid(f"{where} is invalid, refused: {field_errors(exc)}") from None


def load_file_policy(path: str | Path) -> LoadedPolicy:
    """The policy of a `.toml` or `.json` file, laid over the defaults."""
    try:
        return LoadedPolicy(load_policy(path), f"file {path}")
    except ValidationError as exc:
        raise PolicyInvalid(f"policy file {path} is invalid: {field_errors(exc)}") from None


def field_errors(exc: ValidationError) -> str:
    """`path: message` for each error (the first MAX_ERRORS), on one line; never the input values."""
    errors: list[Any] = exc.errors(include_url=False, include_input=False)
    named = [f"{'.'.join(str(part) for part in e['loc']) or '(policy)'}: {e['msg']}" for e in errors[:MAX_ERRORS]]
    more = f"; and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
    return "; ".join(named) + more


def push_policy(name: str, policy: Policy, *, overwrite: bool = False) -> LoadedPolicy:
    """Register the block type and save `policy` into the block `name`; the policy as the block now holds it.

    Raises PolicyExists when the block exists and `overwrite` is False (a data lead's edits are not replaced
    unasked).
    """
    from prefect.exceptions import ObjectAlreadyExists

    from contact_recon.systems.policy_block import BLOCK_TYPE_SLUG, save_policy

    try:
        save_policy(name, policy, overwrite=overwrite)
    except ValueError as exc:
        if not isinstance(exc.__cause__, ObjectAlreadyExists):
            raise
        raise PolicyExists(f"policy block {BLOCK_TYPE_SLUG}/{name} exists: pass --overwrite to replace it "
                           f"(a data lead's edits in the Prefect UI would be lost)") from None
    return load_block_policy(name)
