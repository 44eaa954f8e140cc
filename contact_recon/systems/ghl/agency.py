"""GHL agency installs: one Company token pair for many client locations (apps/oauth.json, NOTES.md).

An app installed at agency level holds a Company pair (`recon auth ghl --agency`, kept in the company's own
token file and refreshed like any pair, `GHLOAuth(user_type="Company")`). From it:
- `installed_locations` pages `GET /oauth/installedLocations` (`companyId`, `appId`) for the locations the
  app is installed on;
- `LocationFromCompany` is the `Credentials` of one location: a location access token minted with
  `POST /oauth/locationToken` (form `companyId`, `locationId`, the Company access token), kept in memory
  until `refresh_margin_s` before it expires, then minted again (it has no refresh token of its own); one
  mint at a time per location, and once more when the API answers 401. A location the app is no longer
  installed on is refused by the API: `AuthError` naming the location (it is retired, never written).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from contact_recon.systems.auth import GHLOAuth
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


class LocationFromCompany:
    """`Credentials` of one location of an agency install: minted from the Company token, cached until expiry."""

    def __init__(self, company: GHLOAuth, *, company_id: str, location_id: str, base_url: str,
                 http: httpx.AsyncClient | None = None, refresh_margin_s: float = 300,
                 clock: Callable[[], float] = time.time):
        self.company, self.company_id, self.location_id = company, company_id, location_id
        self.url = base_url.rstrip("/") + "/oauth/locationToken"
        self.http, self.refresh_margin_s, self.clock = http, refresh_margin_s, clock
        self._lock = asyncio.Lock()
        self._access: str | None = None
        self._expires_at = 0.0
        self.mints = 0

    async def token(self) -> str:
        if self._access is not None and self._expires_at - self.refresh_margin_s > self.clock():
            return self._access  # still fresh: no request
        return await self._mint_once(self._access)

    async def rejected(self, token: str) -> bool:
        await self._mint_once(token)
        return True

    async def _mint_once(self, stale: str | None) -> str:
        async with self._lock:
            if self._access is not None and self._access != stale and \
                    self._expires_at - self.refresh_margin_s > self.clock():
                return self._access  # another task minted while we waited
            self._access, self._expires_at = await self._mint()
            self.mints += 1
            return self._access

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
