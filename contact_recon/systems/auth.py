"""Credentials for the connectors: static tokens and keys, and GHL OAuth with rotating refresh tokens.

GHL OAuth access tokens live a day and every refresh returns a new refresh token while the old one
dies at once. Losing the new pair locks the product out until a person re-authorizes, so:
- the new pair is written to the token store (atomically) before the access token is handed out;
- one refresh runs at a time however many tasks or threads share the credentials; the others wait and
  then use the pair the first one stored (the lock is a thread lock polled from the event loop, so a
  cancelled waiter can never leave it held, and waiting takes no worker thread);
- across processes, a file store is read, refreshed and saved under an exclusive `fcntl.flock` on a lock
  file beside it (`<file>.lock`, polled like the thread lock), so any number of flow runs, `sync-contact`
  processes and shells share one pair: the first refreshes, the others read the pair it stored (a Prefect
  Secret block has no such lock: one deployment process per block);
- the current pair is kept in memory and the store is read again only to refresh (another process may
  have rotated the pair meanwhile), so a request costs no file or Prefect API read;
- the refresh happens `refresh_margin_s` before expiry, and once more when the API answers 401;
- a refresh token the server refuses gives `AuthError` telling to run `recon auth ghl` again.

Token stores share one small interface: a 0600 JSON file under the data dir for local use (one file per
token owner, a location or a company: `Settings.ghl_token_file_for`), and a Prefect Secret block in
deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx

from contact_recon.systems.errors import AuthError
from contact_recon.systems.redaction import register_secret

AUTHORIZE_URL = "https://marketplace.gohighlevel.com/v2/oauth/chooselocation"
DEFAULT_SCOPES = ("contacts.readonly", "contacts.write", "locations/tasks.readonly")


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    refresh_token: str
    expires_at: float  # epoch seconds
    location_id: str | None = None
    scope: str = ""
    company_id: str | None = None  # a Company pair (agency install) names its company and no location

    def register(self) -> TokenSet:
        register_secret(self.access_token)
        register_secret(self.refresh_token)
        return self


class TokenStore(Protocol):
    def load(self) -> TokenSet | None: ...
    def save(self, tokens: TokenSet) -> None: ...


class FileTokenStore:
    """Tokens in a JSON file readable by its owner only (0600), replaced atomically on every save; `exclusive()`
    holds the cross-process lock a refresh is made under."""

    def __init__(self, path: Path):
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold `flock(LOCK_EX)` on the lock file beside the tokens, polled so the event loop keeps running; the
        kernel drops it if the process dies, so a crashed holder never locks the others out."""
        _make_private_dirs(self.path.parent)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def load(self) -> TokenSet | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise AuthError(f"token file {self.path} is unreadable: re-authorize with `recon auth ghl`") from None
        return _token_set(data, f"token file {self.path}")

    def save(self, tokens: TokenSet) -> None:
        _make_private_dirs(self.path.parent)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(tokens), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class PrefectSecretTokenStore:
    """Tokens in a Prefect Secret block (deployments); the block holds the JSON of the pair."""

    def __init__(self, block_name: str):
        self.block_name = block_name

    # `_sync=True`: Prefect 3's `load`/`save` return coroutines when called inside an event loop,
    # and the credentials call the store from async code.

    def load(self) -> TokenSet | None:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(self.block_name, _sync=True).get()  # type: ignore[call-arg,union-attr]
        except ValueError:
            return None
        try:
            data = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            raise AuthError(f"Secret block {self.block_name} is unreadable: "
                            "re-authorize with `recon auth ghl`") from None
        return _token_set(data, f"Secret block {self.block_name}")

    def save(self, tokens: TokenSet) -> None:
        from prefect.blocks.system import Secret

        secret: Secret[Any] = Secret(value=json.dumps(asdict(tokens)))  # type: ignore[arg-type]  # stored as SecretStr
        secret.save(self.block_name, overwrite=True, _sync=True)  # type: ignore[call-arg]


def _make_private_dirs(path: Path) -> None:
    for folder in [*reversed(path.parents), path]:  # mkdir(parents=True) would give the parents
        if not folder.exists():  # it makes the umask's mode, not 0700
            folder.mkdir(mode=0o700, exist_ok=True)


def _exclusive(store: TokenStore) -> contextlib.AbstractAsyncContextManager[None]:
    """The store's cross-process lock when it has one (the file store), else nothing to hold."""
    exclusive = getattr(store, "exclusive", None)
    return exclusive() if exclusive is not None else contextlib.nullcontext()


async def _acquire(lock: threading.Lock) -> None:
    """Take a thread lock from async code by polling: no worker thread, and a cancelled waiter holds nothing."""
    while True:
        if lock.acquire(blocking=False):
            return
        await asyncio.sleep(0.005)


def _token_set(data: object, where: str) -> TokenSet:
    try:
        return TokenSet(**data).register()  # type: ignore[arg-type]
    except TypeError:
        raise AuthError(f"{where} does not hold a token pair: re-authorize with `recon auth ghl`") from None


class Credentials(Protocol):
    """What a connector asks for before each request, and tells after a 401."""

    async def token(self) -> str: ...
    async def rejected(self, token: str) -> bool: ...  # True when a fresh token is worth a retry


class StaticToken:
    """A Private Integration token (GHL) or an API key (TinyEmail): nothing to refresh."""

    def __init__(self, value: str):
        if not value:
            raise AuthError("no token configured")
        register_secret(value)
        self._value = value

    async def token(self) -> str:
        return self._value

    async def rejected(self, token: str) -> bool:
        return False


class GHLOAuth:
    """GHL OAuth credentials: refreshes shortly before expiry, one refresh at a time, store first."""

    def __init__(self, store: TokenStore, *, client_id: str, client_secret: str, base_url: str,
                 http: httpx.AsyncClient | None = None, refresh_margin_s: float = 300,
                 clock: Callable[[], float] = time.time, user_type: str = "Location"):
        register_secret(client_secret)
        self.user_type = user_type  # "Company" for an agency install's pair
        self.store, self.client_id, self.client_secret = store, client_id, client_secret
        self.token_url = base_url.rstrip("/") + "/oauth/token"
        self.http, self.refresh_margin_s, self.clock = http, refresh_margin_s, clock
        self._lock = threading.Lock()
        self._current: TokenSet | None = None
        self.refreshes = 0

    def authorize_url(self, redirect_uri: str, scopes: tuple[str, ...] = DEFAULT_SCOPES) -> str:
        query = {"response_type": "code", "redirect_uri": redirect_uri, "client_id": self.client_id,
                 "scope": " ".join(scopes)}
        return f"{AUTHORIZE_URL}?{urlencode(query)}"

    async def exchange_code(self, code: str, redirect_uri: str | None = None) -> TokenSet:
        """Trade an authorization code for the first pair, and store it."""
        register_secret(code)
        form = {"grant_type": "authorization_code", "code": code, "user_type": self.user_type}
        if redirect_uri:
            form["redirect_uri"] = redirect_uri
        tokens = await self._token_request(form)
        self.store.save(tokens)
        self._current = tokens
        return tokens

    async def token(self) -> str:
        tokens = self._current or self._load()
        if self._fresh(tokens):
            return tokens.access_token
        return (await self._refresh_once(tokens.access_token)).access_token

    async def rejected(self, token: str) -> bool:
        await self._refresh_once(token)
        return True

    def _load(self) -> TokenSet:
        tokens = self.store.load()
        if tokens is None:
            raise AuthError("GHL is not authorized yet: run `recon auth ghl`")
        self._current = tokens
        return tokens

    def _fresh(self, tokens: TokenSet) -> bool:
        return tokens.expires_at - self.refresh_margin_s > self.clock()

    async def _refresh_once(self, stale_access: str) -> TokenSet:
        """Refresh unless another task already replaced `stale_access`; only one refresh runs at once."""
        await _acquire(self._lock)
        try:
            async with _exclusive(self.store):  # and one across processes: read, refresh, save under one lock
                current = self._load()  # the store: another process may have rotated the pair meanwhile
                if current.access_token != stale_access and self._fresh(current):
                    return current  # someone refreshed while we waited
                tokens = await self._token_request({"grant_type": "refresh_token", "user_type": self.user_type,
                                                    "refresh_token": current.refresh_token})
                self.store.save(tokens)  # store the rotated pair before anyone uses it
                self._current = tokens
                self.refreshes += 1
                return tokens
        finally:
            self._lock.release()

    async def _token_request(self, form: dict[str, str]) -> TokenSet:
        data = {"client_id": self.client_id, "client_secret": self.client_secret, **form}
        http = self.http or httpx.AsyncClient(timeout=30)
        try:
            answer = await http.post(self.token_url, data=data, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise AuthError(f"token endpoint unreachable: {type(exc).__name__}", system="ghl") from None
        finally:
            if self.http is None:
                await http.aclose()
        if answer.status_code in (400, 401, 403, 422):
            raise AuthError("the refresh token or code was refused: re-authorize with `recon auth ghl`",
                            system="ghl", method="POST", path="/oauth/token", status=answer.status_code)
        if answer.status_code != 200:
            raise AuthError(f"token endpoint answered {answer.status_code}", system="ghl", status=answer.status_code)
        body = answer.json()
        return TokenSet(access_token=body["access_token"], refresh_token=body["refresh_token"],
                        expires_at=self.clock() + float(body.get("expires_in", 86399)),
                        location_id=body.get("locationId"), scope=body.get("scope", ""),
                        company_id=body.get("companyId") if body.get("userType") == "Company" else None).register()
