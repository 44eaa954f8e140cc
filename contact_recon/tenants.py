"""Tenants: one install serving many clients (an agency's), each with its own GHL locations, email tool, policy,
budgets and data dir.

`RECON_TENANTS_FILE` names a TOML file with one `[tenants.NAME]` table per client. Its keys are the settings'
own names without the `RECON_` prefix, in lower case (`ghl_location_ids`, `ghl_token` or `ghl_company_id`,
`tinyemail_base_url`, `tinyemail_api_key`, `policy_file`, `data_dir`, ...); a key a tenant does not set falls
back to the environment (or `.env`), exactly as the single-tenant setup reads it, which keeps working
unchanged when no tenants file is set. A tenant's settings are `Settings(**its table)`: init values first,
then the environment, so validation and defaults are the settings' own.

Identity never crosses tenants, so the file is refused (`TenantsError`, naming the tenants, never a value) when
two tenants would share a data dir (each has its own DuckDB store, token files, run files and locks), a GHL
location or a TinyEmail API key (a webhook or a TinyEmail change must have exactly one owner). `owner_of_location`
and `owner_of_api_key` route a change to its tenant; one no tenant owns is refused by the caller and counted.
`route_change` is that routing for a sync (service/syncer.py, flows/sync_contact.py): a GHL change goes to the
tenant that owns its location (whatever tenant the event claims), a TinyEmail change to the tenant whose key the
watcher polled (the event's `tenant`), each then synced with that tenant's settings, in its data dir.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from contact_recon.settings import Settings
from contact_recon.store.installs import known_locations

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TenantsError(ValueError):
    """The tenants file is missing, unreadable, or describes tenants that would share data or credentials."""


def load_tenant_tables(path: Path) -> dict[str, dict[str, Any]]:
    """NAME -> the tenant's own keys, checked against the settings' names (values are not shown in errors)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TenantsError(f"tenants file {path} is unreadable: {type(exc).__name__}") from None
    tables = data.get("tenants")
    if not isinstance(tables, dict) or not tables:
        raise TenantsError(f"tenants file {path} has no [tenants.NAME] table")
    known = set(Settings.model_fields) - {"tenants_file"}
    for name, table in tables.items():
        if not NAME.fullmatch(name) or not isinstance(table, dict):
            raise TenantsError(f"tenant {name!r}: expected a [tenants.NAME] table with a plain name")
        unknown = sorted(set(table) - known)
        if unknown:
            raise TenantsError(f"tenant {name}: unknown keys {unknown} (use the settings' names without RECON_, "
                               "in lower case)")
    return tables


def _value(table: dict[str, Any], key: str) -> Any:
    value = table[key]
    if key in ("ghl_location_ids",) and isinstance(value, list):  # TOML arrays: the settings' comma form
        return ",".join(str(v) for v in value)
    return value


def get_tenant_settings(tenant: str | None = None) -> Settings:
    """The environment's settings (`tenant` None), or that tenant's."""
    settings = Settings()
    return settings if tenant is None else tenant_settings(settings, tenant)


def tenant_settings(settings: Settings, name: str) -> Settings:
    """One tenant's settings: its table over the environment's (the file named by `settings.tenants_file`)."""
    tables = tenants_of(settings)
    if name not in tables:
        raise TenantsError(f"no tenant {name!r} in {settings.tenants_file} (tenants: {', '.join(sorted(tables))})")
    return tables[name]


def tenants_of(settings: Settings) -> dict[str, Settings]:
    """Every tenant's settings, in file order, checked to share no data dir, location or TinyEmail key."""
    if settings.tenants_file is None:
        raise TenantsError("RECON_TENANTS_FILE is not set")
    tables = load_tenant_tables(settings.tenants_file)
    every = {name: Settings(**{k: _value(table, k) for k in table}, tenants_file=None)
             for name, table in tables.items()}
    _disjoint(every, "data dir", lambda s: {str(s.data_dir.resolve())})
    _disjoint(every, "GHL location", lambda s: set(s.ghl_location_ids))
    _disjoint(every, "TinyEmail API key",
              lambda s: {s.tinyemail_api_key.get_secret_value()} if s.tinyemail_api_key else set())
    return every


def _disjoint(tenants: dict[str, Settings], what: str, values: Any) -> None:
    owner: dict[str, str] = {}
    for name, settings in tenants.items():
        for value in values(settings):
            if value in owner:  # never shown: a key is a secret
                raise TenantsError(f"tenants {owner[value]} and {name} share a {what}: identity must never cross "
                                   "tenants")
            owner[value] = name


def owner_of_location(tenants: dict[str, Settings], location_id: str) -> str | None:
    """The tenant whose GHL locations include `location_id`, or None (unowned: refused). A tenant's locations are
    its explicit `ghl_location_ids`; an agency tenant that sets none (its runs cover GET /oauth/installedLocations)
    owns the locations its data dir knows: those its last run covered and every INSTALL since, less the retired
    (store/installs.py `known_locations`). Explicit ids are tried first."""
    explicit = next((name for name, s in tenants.items() if location_id in s.ghl_location_ids), None)
    if explicit is not None:
        return explicit
    return next((name for name, s in tenants.items() if not s.ghl_location_ids and s.ghl_company_id
                 and location_id in known_locations(s.data_dir)), None)


def owner_of_api_key(tenants: dict[str, Settings], api_key: str) -> str | None:
    """The tenant whose TinyEmail API key this is, or None (unowned: refused)."""
    return next((name for name, s in tenants.items()
                 if s.tinyemail_api_key is not None and s.tinyemail_api_key.get_secret_value() == api_key), None)


class Unowned(LookupError):  # noqa: N818 - the name is the contract
    """No tenant owns the change's location (or, for a TinyEmail change, the tenant it names does not exist)."""


def route_change(settings: Settings, *, tenant: str | None = None,
                 location_id: str | None = None) -> tuple[str | None, Settings]:
    """The tenant a change belongs to and the settings to sync it with; Unowned when no tenant owns it.

    Without a tenants file: (None, `settings`). With one: a change with a location goes to the location's owner
    (`owner_of_location`; a `tenant` named by the event is not trusted over it); a change without one (a TinyEmail
    customer) to the `tenant` the watcher named, which must exist."""
    if settings.tenants_file is None:  # single tenant: the environment's settings
        return None, settings
    tenants = tenants_of(settings)
    if location_id:  # a GHL change: owned by the tenant whose locations include it
        owner = owner_of_location(tenants, location_id)
        if owner is None:
            raise Unowned(f"no tenant owns location {location_id}")
        return owner, tenants[owner]
    if tenant in tenants:  # a TinyEmail change: the watcher polled this tenant's key
        return tenant, tenants[tenant]
    raise Unowned(f"no tenant {tenant!r} owns this change" if tenant else "a change naming no location nor tenant")
