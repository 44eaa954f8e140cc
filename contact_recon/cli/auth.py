"""`recon auth ghl`: the one-time OAuth consent that gives the connectors their first GHL token pair.

1. Read the OAuth client (RECON_GHL_CLIENT_ID / RECON_GHL_CLIENT_SECRET) and RECON_GHL_BASE_URL.
2. Print the authorize URL for the settings' redirect URI and the scopes the product needs.
3. Take the authorization code: `--code`, else a hidden prompt; a whole redirect URL pasted in works
   too (its `code=` parameter is used).
4. Trade the code at `{base}/oauth/token` and store the pair in one token store: the Prefect
   Secret block named by RECON_GHL_TOKEN_BLOCK when set (deployments), else the 0600 file of the
   location the pair belongs to, `{data_dir}/secrets/ghl/location-{id}.json` (local runs; one file per
   token owner, so each location's single-use refresh token is refreshed under its own lock).
With `--agency` the pair is a Company pair (`user_type=Company`, an agency install), stored in the
company's own file `{data_dir}/secrets/ghl/company-{companyId}.json`; set RECON_GHL_COMPANY_ID to that
company and each location's token is minted from it (`contact_recon/systems/ghl/agency.py`).
Only the location (or company) and the expiry are printed; the code, the tokens and the client secret never are
(every error passes through `redact`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from rich.console import Console

from contact_recon.settings import Settings
from contact_recon.systems.auth import FileTokenStore, GHLOAuth, PrefectSecretTokenStore, TokenSet, TokenStore
from contact_recon.systems.errors import ConnectorError
from contact_recon.systems.ghl.contract import REQUIRED_SCOPES
from contact_recon.systems.redaction import redact, register_secret


class AuthSetupError(Exception):
    """Something the person running `recon auth ghl` must fix (the message says what)."""


def extract_code(text: str) -> str:
    """The authorization code from what was pasted: the bare code or the whole redirect URL."""
    text = text.strip()
    if "code=" in text:
        query = urlsplit(text).query if "://" in text else text.lstrip("?")
        codes = parse_qs(query).get("code")
        if not codes or not codes[0].strip():
            raise AuthSetupError("the pasted URL has no code= parameter")
        text = codes[0].strip()
    if not text:
        raise AuthSetupError("no authorization code given")
    register_secret(text)
    return text


class _OwnerFileStore:
    """Keeps the exchanged pair until its owner is known, then saves it in that owner's own 0600 file."""

    def __init__(self, settings: Settings):
        self.settings, self.path = settings, settings.ghl_token_file

    def load(self) -> TokenSet | None:
        return FileTokenStore(self.path).load()

    def save(self, tokens: TokenSet) -> None:
        if tokens.company_id:  # a Company pair (agency install): the company's own file
            self.path = self.settings.ghl_token_file_for(tokens.company_id, "company")
        elif tokens.location_id:  # a location pair: its own file; a pair that names no location: the shared one
            self.path = self.settings.ghl_token_file_for(tokens.location_id)
        FileTokenStore(self.path).save(tokens)


def token_store(settings: Settings) -> TokenStore:
    """The Prefect Secret block when RECON_GHL_TOKEN_BLOCK is set, else the owner's 0600 file under the data dir."""
    if settings.ghl_token_block:
        return PrefectSecretTokenStore(settings.ghl_token_block)
    return _OwnerFileStore(settings)


def store_label(settings: Settings, store: TokenStore) -> str:
    if isinstance(store, _OwnerFileStore):
        return f"{store.path} (0600)"
    return f"Prefect Secret block {settings.ghl_token_block}"


def oauth_client(settings: Settings, store: TokenStore, agency: bool = False) -> GHLOAuth:
    secret = settings.ghl_client_secret.get_secret_value() if settings.ghl_client_secret else ""
    if not settings.ghl_client_id or not secret:
        raise AuthSetupError("RECON_GHL_CLIENT_ID/RECON_GHL_CLIENT_SECRET not set")
    return GHLOAuth(store, client_id=settings.ghl_client_id, client_secret=secret, base_url=settings.ghl_base_url,
                    user_type="Company" if agency else "Location")


def authorize_ghl(settings: Settings, code: str | None, prompt: Callable[[], str], out: Console,
                  store: TokenStore | None = None, agency: bool = False) -> TokenSet:
    """Print the authorize URL, take the code, exchange and store it; the stored pair (never printed)."""
    oauth = oauth_client(settings, store or token_store(settings), agency)
    out.print("Open this URL, choose the location and approve:", highlight=False)
    out.print(oauth.authorize_url(settings.ghl_redirect_uri, REQUIRED_SCOPES), highlight=False, soft_wrap=True)
    the_code = extract_code(code if code is not None else prompt())
    try:
        return asyncio.run(oauth.exchange_code(the_code, settings.ghl_redirect_uri))
    except ConnectorError as exc:
        raise AuthSetupError(str(exc)) from None


def summary(tokens: TokenSet, settings: Settings, store: TokenStore) -> str:
    expires = datetime.fromtimestamp(tokens.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    owner = f"company {tokens.company_id}" if tokens.company_id else f"location {tokens.location_id or '(unknown)'}"
    return (f"GHL authorized for {owner}; access token expires {expires}; "
            f"stored in {store_label(settings, store)}")


def run(settings: Settings, code: str | None, prompt: Callable[[], str], out: Console, err: Console,
        agency: bool = False) -> int:
    """The command's body: 0 when the pair is stored, 1 with one red line otherwise."""
    store = token_store(settings)
    try:
        tokens = authorize_ghl(settings, code, prompt, out, store, agency)
    except AuthSetupError as exc:
        err.print(f"[bold red]error:[/] {redact(exc)}", highlight=False)
        return 1
    out.print(summary(tokens, settings, store), highlight=False)
    return 0
