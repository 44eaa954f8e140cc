"""GHL agency installs: one Company token pair for many client locations (apps/oauth.json, NOTES.md).

An app installed at agency level holds a Company pair (`recon auth ghl --agency`, kept in the company's own
token file and refreshed like any pair, `GHLOAuth(user_type="Company")`). From it:
- `installed_locations` pages `GET /oauth/installedLocations` (`companyId`, `appId`) for the locations the
  app is installed on;
- `LocationFromCompany` is the `Credentials` of one location: a location access token minted with
  `POST /oauth/locationToken` (form `companyId`, `locationId`, the Company access token), kept until
  `refresh_margin_s` before it expires, then minted again (it has no refresh token of its own), and once more
  when the API answers 401. The minted token is cached across processes in the location's own token file
  (`Settings.ghl_token_file_for(location)`, 0600, a `TokenSet` with an empty refresh token and its expiry),
  read and written under that file's cross-process lock (`FileTokenStore.exclusive`): the first process
  mints, every other flow run, `sync-contact` process or shell reuses it until it expires. In memory the
  token is reused without reading the file. A location the app is no longer installed on is refused by the
  API: `AuthError` naming the location (it is retired, never written).
- `agency_locations`: the locations a run of an agency install covers when no explicit ids are configured:
  the installed ones, plus those an INSTALL webhook added since (contact_recon/store/installs.py), minus the
  retired ones.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from contact_recon.systems.auth import GHLOAuth, TokenSet, TokenStore, _acquire, _exclusive
from contact_recon.systems.errors import AuthError
from contact_recon.systems.redaction import register_secret

VERSION = "2021-07-28"
PAGE = 100


@dataclass(frozen=True)
class InstalledLocation:
    location_id: str
    name: str


async def _get(http: httpx.AsyncClient, url: str, **kwargs: object) -> httpx.Response:
    try:
        return await http.request(url=url, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        raise AuthError(f"GHL OAuth endpoint unreachable: {type(exc).__name__}", system="ghl") from None


async def installed_locations(company: GHLOAuth, base_url: str, company_id: str, app_id: str,
                              http: httpx.AsyncClient) -> list[InstalledLocation]:
    """Every location the app is installed on under the company, page by page."""
    found: list[InstalledLocation] = []
    while True:
        params = {"companyId": company_id, "appId": app_id, "skip": str(len(found)), "limit": str(PAGE)}
        headers = {"Authorization": f"Bearer {await company.token()}", "Version": VERSION}
        answer = await _get(http, base_url.rstrip("/") + "/oauth/installedLocations", method="GET",
                            params=params, headers=headers)
        if answer.status_code != 200:
            raise AuthError(f"installed locations answered {answer.status_code}", system="ghl",
                            method="GET", path="/oauth/installedLocations", status=answer.status_code)
        page = answer.json().get("locations") or []
        found += [InstalledLocation(item["_id"], item.get("name", "")) for item in page]
        if len(page) < PAGE:
            return found


def agency_locations(installed: Iterable[str], installs: dict[str, dict[str, str]], company_id: str) -> list[str]:
    """The locations a run of the agency install covers: installed (`GET /oauth/installedLocations`, in its
    order), then the company's INSTALL-webhook additions not listed yet, less every retired one."""
    listed = list(dict.fromkeys(installed))
    added = sorted(loc for loc, entry in installs.items()
                   if entry.get("state") == "installed" and entry.get("company_id") == company_id and loc not in listed)
    retired = {loc for loc, entry in installs.items() if entry.get("state") == "retired"}
    return [loc for loc in listed + added if loc not in retired]


class LocationFromCompany:
    """`Credentials` of one location of an agency install: minted from the Company token, cached until expiry in
    memory and, with `store`, in the location's own token file for every process."""

    def __init__(self, company: GHLOAuth, *, company_id: str, location_id: str, base_url: str,
                 store: TokenStore | None = None, http: httpx.AsyncClient | None = None,
                 refresh_margin_s: float = 300, clock: Callable[[], float] = time.time):
        self.company, self.company_id, self.location_id = company, company_id, location_id
        self.url = base_url.rstrip("/") + "/oauth/locationToken"
        self.store, self.http, self.refresh_margin_s, self.clock = store, http, refresh_margin_s, clock
        self._lock = threading.Lock()  # polled from async code, like GHLOAuth's: no loop binding, no thread
        self._access: str | None = None
        self._expires_at = 0.0
        self.mints = 0

    async def token(self) -> str:
        if self._access is not None and self._fresh(self._expires_at):
            return self._access  # still fresh: no request, no file read
        return await self._mint_once(self._access)

    async def rejected(self, token: str) -> bool:
        await self._mint_once(token)
        return True

    def _fresh(self, expires_at: float) -> bool:
        return expires_at - self.refresh_margin_s > self.clock()

    async def _mint_once(self, stale: str | None) -> str:
        """Reuse the token another task or process minted meanwhile, else mint one; one mint at a time."""
        await _acquire(self._lock)
        try:
            async with _exclusive(self.store) if self.store is not None else contextlib.nullcontext():
                cached = self._cached()
                if cached is not None and cached.access_token != stale and self._fresh(cached.expires_at):
                    self._access, self._expires_at = cached.access_token, cached.expires_at
                    return cached.access_token  # minted by another task or process while we waited
                self._access, self._expires_at = await self._mint()
                self.mints += 1
                if self.store is not None:  # every other process reuses it until it expires
                    self.store.save(TokenSet(self._access, "", self._expires_at, location_id=self.location_id))
                return self._access
        finally:
            self._lock.release()

    def _cached(self) -> TokenSet | None:
        """The token this object or, from the location's file, another process minted last."""
        if self.store is not None:
            return self.store.load()
        if self._access is None:
            return None
        return TokenSet(self._access, "", self._expires_at)

    async def _mint(self) -> tuple[str, float]:
        http = self.http or httpx.AsyncClient(timeout=30)
        try:
            headers = {"Authorization": f"Bearer {await self.company.token()}", "Version": VERSION,
                       "Accept": "application/json"}
            answer = await _get(http, self.url, method="POST", headers=headers,
                                data={"companyId": self.company_id, "locationId": self.location_id})
        finally:
            if self.http is None:
                await http.aclose()
        if answer.status_code in (400, 403, 422):
            raise AuthError(f"GHL refused a token for location {self.location_id}: the app is not installed there "
                            "(retired) or the agency install lost access", system="ghl", method="POST",
                            path="/oauth/locationToken", status=answer.status_code)
        if answer.status_code != 200:
            raise AuthError(f"location token endpoint answered {answer.status_code}", system="ghl",
                            status=answer.status_code)
        body = answer.json()
        register_secret(body["access_token"])
        return body["access_token"], self.clock() + float(body.get("expires_in", 86399))
