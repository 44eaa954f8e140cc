"""Typed settings (pydantic-settings), read from the environment and `.env`.

The environment names are a contract: RECON_GHL_BASE_URL, RECON_GHL_TOKEN, RECON_GHL_CLIENT_ID,
RECON_GHL_CLIENT_SECRET, RECON_GHL_LOCATION_IDS (comma-separated), RECON_TINYEMAIL_BASE_URL,
RECON_TINYEMAIL_API_KEY, RECON_DATA_DIR. Secrets are `SecretStr`, so printing the settings shows
`**********`; the connectors register them for redaction when they use them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GHL_BASE_URL = "https://services.leadconnectorhq.com"
TINYEMAIL_BASE_URL = "https://api.tinyemail.com/v1"


class Settings(BaseSettings):
    # hide_input_in_errors: a malformed value may hold a secret (a token list); errors name the field only
    model_config = SettingsConfigDict(env_prefix="RECON_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    data_dir: Path = Path("data")
    ghl_base_url: str = GHL_BASE_URL
    ghl_token: SecretStr | None = None
    ghl_client_id: str | None = None
    ghl_client_secret: SecretStr | None = None
    ghl_location_ids: Annotated[list[str], NoDecode] = []
    # several locations, each with a Private Integration token of its own (GHL tokens belong to one location):
    # "LOCATION=TOKEN,LOCATION=TOKEN" or a JSON object; a location not listed uses ghl_token or OAuth
    ghl_location_tokens: Annotated[dict[str, SecretStr], NoDecode] = {}
    ghl_redirect_uri: str = "http://127.0.0.1:8765/oauth/callback"
    tinyemail_base_url: str = TINYEMAIL_BASE_URL
    tinyemail_api_key: SecretStr | None = None
    tinyemail_rate_per_minute: float = 60  # CONTRACT.md: assumed 60 a minute per key
    # GHL's published limits (100 per 10 s, 200,000 a day per location) times this: only for a sandbox started
    # with the same --rate-scale (demo, benchmarks); keep 1 against the real API
    ghl_rate_scale: float = 1.0
    use_global_limits: bool = False  # share budgets between processes via Prefect global concurrency limits
    ghl_token_block: str | None = None  # Prefect Secret block holding the OAuth pair (deployments)
    # agency install (`recon auth ghl --agency`): the company whose Company pair mints each location's token
    ghl_company_id: str | None = None
    ghl_app_id: str | None = None  # the marketplace app id; default: the client id's part before its first "-"
    tenants_file: Path | None = None  # TOML, one [tenants.NAME] table per client (contact_recon/tenants.py)
    default_region: str = "US"
    # Snapshot stage (contact_recon/stages/snapshot.py, contact_recon/engine/budget_plan.py)
    notes_sweep_k: int = 30  # each night re-reads the notes and tasks of 1/K of all contacts
    notes_safety_lag_s: float = 600  # a contact updated after (watermark - lag) counts as changed
    write_reserve: int = 20_000  # GHL requests a day per location kept back for writes
    snapshot_concurrency: int = 10  # requests in flight per location during the snapshot
    # Planning (contact_recon/stages/plan.py): the reconciliation policy file (.toml or .json); None: the default policy
    policy_file: Path | None = None
    # the Prefect block (type recon-policy) holding the policy, edited in the Prefect UI; set, it wins over policy_file
    # (contact_recon/systems/policy_source.py)
    policy_block: str | None = None
    # Events (service/webhooks.py, service/signatures.py, service/watch.py): the GHL webhook verification keys,
    # one or more PEM public keys (Ed25519 verifies X-GHL-Signature, RSA the legacy x-wh-signature) inline or in
    # a file named by its path, or "sandbox" (the sandbox's two test keys); None: GHL's published RSA key.
    ghl_webhook_public_key: str | None = None
    # GHL retries a webhook answered 429 up to 6 times ~10 min apart with its original timestamp (~70 min): a
    # timestamp further than webhook_max_age_s from now is refused as stale, and webhookIds are remembered for
    # webhook_dedupe_window_s past their timestamp (never shorter than the max age, so no retry slips through)
    webhook_max_age_s: float = 75 * 60
    webhook_dedupe_window_s: float = 90 * 60
    # the durable spool of accepted webhooks not yet confirmed by Prefect (service/spool.py); over it: 429
    webhook_spool_max_bytes: int = 256 * 1024 * 1024
    # the alert on refused signatures (a rotated key must not fail silently): at least webhook_401_alert_min
    # requests answered 401 and that share of all requests within the window
    webhook_401_alert_share: float = 0.5
    webhook_401_alert_min: int = 5
    webhook_401_alert_window_s: float = 900
    # The sync service (`recon services serve`, service/syncer.py): events of one person within sync_coalesce_s
    # of each other become one sync; a sync that meets a nightly's lock or its DuckDB file waits up to
    # sync_lock_wait_s, then is left to the nightly (status `deferred`, never a failure)
    sync_coalesce_s: float = 1.0
    sync_lock_wait_s: float = 6 * 3600
    # Services' heartbeats (service/heartbeat.py): each long-running service emits recon.service.heartbeat every
    # service_heartbeat_s; `recon services` and the `recon: service stopped` alert call one silent for
    # service_stale_s stale
    service_heartbeat_s: float = 60
    service_stale_s: float = 180
    # Held runs (flows/reconcile.py): how long a held deployment run waits for its answer in the Prefect UI
    # (capped to end before the flow's next scheduled run); unanswered, it expires and writes nothing
    approval_window_hours: float = 20.0
    # The report (`recon report serve`): the URL the team opens the run reports at, e.g.
    # "http://recon-worker:8705"; None: the Prefect link artifact points at the file on the worker
    report_base_url: str | None = None
    # Alerts (`recon alerts setup`, service/alerts.py): the nightly's window (a day and a grace) and how long a
    # reconciliation run may run before it is "longer than usual"
    alert_nightly_window_hours: float = 26
    alert_long_run_minutes: float = 120

    @field_validator("ghl_location_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("ghl_location_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                return json.loads(text)
            pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected LOCATION=TOKEN pairs separated by commas (the tokens are not shown)")
            return {location.strip(): token.strip() for location, token in pairs}
        return value

    @field_validator("ghl_base_url", "tinyemail_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _dedupe_covers_max_age(self) -> Settings:
        if self.webhook_dedupe_window_s < self.webhook_max_age_s:
            raise ValueError("webhook_dedupe_window_s must be at least webhook_max_age_s: a retry still inside the "
                             "age window would no longer be recognised as a duplicate")
        return self

    @property
    def ghl_app(self) -> str:
        """The marketplace app id `GET /oauth/installedLocations` asks for."""
        return self.ghl_app_id or (self.ghl_client_id or "").split("-")[0]

    @property
    def ghl_token_file(self) -> Path:
        """Where local runs kept the GHL OAuth pair (0600) before one file per owner; still read for a location
        that has no file of its own, so an install authorized earlier keeps working."""
        return self.data_dir / "secrets" / "ghl_tokens.json"

    def ghl_token_file_for(self, owner: str, kind: str = "location") -> Path:
        """The 0600 file of one token owner's OAuth pair (`kind` "location" or "company"): a location token belongs
        to one location, so no two owners ever share, and race on, one single-use refresh token."""
        if kind not in ("location", "company") or not _OWNER_ID.fullmatch(owner):
            raise ValueError(f"not a token owner: {kind} {owner!r}")
        return self.data_dir / "secrets" / "ghl" / f"{kind}-{owner}.json"


_OWNER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # GHL ids; never a path


def get_settings() -> Settings:
    return Settings()
