"""GHL OAuth against the GHL sandbox over HTTP: code exchange, the token stores, refresh rules, `recon auth ghl`."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from contact_recon.cli.auth import AuthSetupError, extract_code
from contact_recon.cli.main import app
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.systems.auth import FileTokenStore, GHLOAuth, PrefectSecretTokenStore, TokenSet, TokenStore
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.errors import AuthError
from contact_recon.systems.http import ApiClient

VERSION = "2021-07-28"


@pytest.fixture
def ghl(sandboxes: Any) -> dict[str, Any]:
    """A GHL sandbox and its OAuth client; `secrets` collects every secret the test handles."""
    fixture = generate_fixture(10, seed=3)
    server, _ = sandboxes(fixture, rate_scale=20)
    client = fixture["ghl"]["oauthClients"][0]
    return {"url": server.base_url, "client_id": client["client_id"], "client_secret": client["client_secret"],
            "location": fixture["ghl"]["tokens"][0]["locationId"], "secrets": [client["client_secret"]]}


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def mint_code(ghl: dict[str, Any], scopes: tuple[str, ...] = ("contacts.readonly", "contacts.write")) -> str:
    answer = httpx.post(ghl["url"] + "/__sandbox/oauth/code",
                        json={"client_id": ghl["client_id"], "locationId": ghl["location"], "scopes": list(scopes)})
    assert answer.status_code == 201, answer.text
    code = answer.json()["code"]
    ghl["secrets"].append(code)
    return code


def oauth(ghl: dict[str, Any], store: TokenStore) -> GHLOAuth:
    return GHLOAuth(store, client_id=ghl["client_id"], client_secret=ghl["client_secret"], base_url=ghl["url"])


def authorized(ghl: dict[str, Any], path: Path) -> tuple[FileTokenStore, TokenSet]:
    """A file store holding a fresh pair got through the code flow."""
    store = FileTokenStore(path)
    tokens = asyncio.run(oauth(ghl, store).exchange_code(mint_code(ghl)))
    ghl["secrets"] += [tokens.access_token, tokens.refresh_token]
    return store, tokens


def expiring(store: FileTokenStore, seconds: float = 60) -> TokenSet:
    """Make the stored pair expire within the refresh margin (the server still accepts it)."""
    tokens = store.load()
    assert tokens is not None
    store.save(replace(tokens, expires_at=time.time() + seconds))
    return tokens


def api(ghl: dict[str, Any], credentials: GHLOAuth, used: list[str] | None = None) -> ApiClient:
    def header(token: str) -> dict[str, str]:
        if used is not None:
            used.append(token)
        return {"Authorization": f"Bearer {token}", "Version": VERSION}

    return ApiClient(system="ghl", base_url=ghl["url"], credentials=credentials, budget=RateBudget(2000, 10),
                     auth_header=header, sleep=lambda s: asyncio.sleep(0))


async def search(client: ApiClient, location: str) -> int:
    body = {"locationId": location, "pageLimit": 1}
    answer = await client.request("POST", "/contacts/search", write=False, json=body)
    return answer.status_code


def requests_log(ghl: dict[str, Any]) -> list[dict[str, Any]]:
    return httpx.get(ghl["url"] + "/__sandbox/requests").json()["requests"]


def token_posts(ghl: dict[str, Any]) -> int:
    return sum(1 for r in requests_log(ghl) if (r["method"], r["path"]) == ("POST", "/oauth/token"))


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text


# ----------------------------------------------------------------------------------- code and stores


def test_code_exchange_stores_the_pair_0600_and_atomically(ghl: dict[str, Any], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "secrets" / "ghl_tokens.json"
    store, tokens = authorized(ghl, path)

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(path.parent) == ["ghl_tokens.json"]  # no temp file left behind
    assert store.load() == tokens
    assert tokens.location_id == ghl["location"] and tokens.expires_at > time.time() + 3600
    store.save(replace(tokens, expires_at=tokens.expires_at + 1))  # a replace keeps the mode, leaves nothing
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and os.listdir(path.parent) == ["ghl_tokens.json"]

    async def use() -> int:
        async with api(ghl, oauth(ghl, store)) as client:
            return await search(client, ghl["location"])

    assert asyncio.run(use()) == 200
    assert_no_secret(caplog.text, ghl["secrets"])


def test_a_refused_code_says_to_reauthorize_without_the_code(ghl: dict[str, Any], tmp_path: Path) -> None:
    code = mint_code(ghl)
    store = FileTokenStore(tmp_path / "t.json")
    asyncio.run(oauth(ghl, store).exchange_code(code))
    with pytest.raises(AuthError) as caught:
        asyncio.run(oauth(ghl, store).exchange_code(code))  # codes are single-use
    assert "recon auth ghl" in str(caught.value)
    assert_no_secret(str(caught.value), ghl["secrets"])


def test_prefect_secret_block_store_round_trips(ghl: dict[str, Any], prefect_server: str) -> None:  # noqa: F811
    store = PrefectSecretTokenStore(f"ghl-tokens-{uuid.uuid4().hex[:8]}")
    assert store.load() is None
    pair = TokenSet("a" * 40, "r" * 40, time.time() + 100, "loc1", "contacts.readonly")
    store.save(pair)
    assert store.load() == pair

    async def flow() -> tuple[str, TokenSet | None]:  # the credentials use the store from async code
        credentials = oauth(ghl, store)
        await credentials.exchange_code(mint_code(ghl))
        return await credentials.token(), store.load()

    access, stored = asyncio.run(flow())
    assert stored is not None and stored.access_token == access and stored.location_id == ghl["location"]
    assert stored.access_token != pair.access_token


# ------------------------------------------------------------------------------------------- refresh


def test_twenty_concurrent_requests_on_an_expiring_token_refresh_once(ghl: dict[str, Any], tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    store, _ = authorized(ghl, tmp_path / "t.json")
    old = expiring(store)
    posts_before = token_posts(ghl)
    credentials = oauth(ghl, store)

    async def run() -> list[int]:
        async with api(ghl, credentials) as client:
            return await asyncio.gather(*(search(client, ghl["location"]) for _ in range(20)))

    assert asyncio.run(run()) == [200] * 20
    assert credentials.refreshes == 1
    assert token_posts(ghl) - posts_before == 1
    new = store.load()
    assert new is not None and new.refresh_token != old.refresh_token and new.expires_at > time.time() + 3600
    ghl["secrets"] += [new.access_token, new.refresh_token]
    assert_no_secret(caplog.text, ghl["secrets"])


def test_twenty_concurrent_token_calls_refresh_once(ghl: dict[str, Any], tmp_path: Path) -> None:
    store, _ = authorized(ghl, tmp_path / "t.json")
    expiring(store)
    credentials = oauth(ghl, store)

    async def run() -> set[str]:
        return set(await asyncio.gather(*(credentials.token() for _ in range(20))))

    tokens = asyncio.run(run())
    stored = store.load()
    assert stored is not None and tokens == {stored.access_token}
    assert credentials.refreshes == 1


def test_a_401_refreshes_once_and_retries(ghl: dict[str, Any], tmp_path: Path) -> None:
    store, tokens = authorized(ghl, tmp_path / "t.json")
    revoked = "revoked-" + uuid.uuid4().hex  # unknown to the server, not expired by our clock
    store.save(replace(tokens, access_token=revoked))
    credentials = oauth(ghl, store)
    start = len(requests_log(ghl))

    async def run() -> int:
        async with api(ghl, credentials) as client:
            return await search(client, ghl["location"])

    assert asyncio.run(run()) == 200
    assert credentials.refreshes == 1
    trail = [(r["method"], r["path"], r["status"]) for r in requests_log(ghl)[start:]]
    assert trail == [("POST", "/contacts/search", 401), ("POST", "/oauth/token", 200),
                     ("POST", "/contacts/search", 200)]


def test_a_dead_refresh_token_asks_to_reauthorize(ghl: dict[str, Any], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store, _ = authorized(ghl, tmp_path / "t.json")
    old = expiring(store)
    asyncio.run(oauth(ghl, store).token())  # rotates: the old refresh token is dead now
    rotated = store.load()
    assert rotated is not None
    ghl["secrets"] += [rotated.access_token, rotated.refresh_token]
    stale = FileTokenStore(tmp_path / "stale.json")
    stale.save(replace(old, expires_at=time.time() + 60))

    with pytest.raises(AuthError) as caught:
        asyncio.run(oauth(ghl, stale).token())
    message = str(caught.value)
    assert "re-authorize" in message and "recon auth ghl" in message
    assert_no_secret(message, ghl["secrets"])
    assert_no_secret(caplog.text, ghl["secrets"])


class RecordingStore:
    """A file store that notes each save, so the test can see the order of save and first use."""

    def __init__(self, inner: FileTokenStore, events: list[tuple[str, str]]):
        self.inner, self.events = inner, events

    def load(self) -> TokenSet | None:
        return self.inner.load()

    def save(self, tokens: TokenSet) -> None:
        self.inner.save(tokens)
        self.events.append(("save", tokens.access_token))


def test_the_rotated_pair_is_stored_before_the_new_token_is_used(ghl: dict[str, Any], tmp_path: Path) -> None:
    file_store, _ = authorized(ghl, tmp_path / "t.json")
    old = expiring(file_store)
    events: list[tuple[str, str]] = []
    on_disk_at_first_use: dict[str, TokenSet | None] = {}
    credentials = oauth(ghl, RecordingStore(file_store, events))

    class Watch(list[str]):
        def append(self, token: str) -> None:
            if token != old.access_token and token not in on_disk_at_first_use:
                on_disk_at_first_use[token] = FileTokenStore(tmp_path / "t.json").load()
            events.append(("use", token))
            super().append(token)

    used = Watch()

    async def run() -> list[int]:
        async with api(ghl, credentials, used) as client:
            return await asyncio.gather(*(search(client, ghl["location"]) for _ in range(5)))

    assert asyncio.run(run()) == [200] * 5
    saves = [token for kind, token in events if kind == "save"]
    assert len(saves) == 1
    new_access = saves[0]
    assert events.index(("save", new_access)) < events.index(("use", new_access))
    stored = on_disk_at_first_use[new_access]
    assert stored is not None and stored.access_token == new_access and stored.refresh_token != old.refresh_token


# --------------------------------------------------------------------------------------- the command


def cli_env(ghl: dict[str, Any], data_dir: Path, **extra: str) -> dict[str, str]:
    return {"RECON_GHL_BASE_URL": ghl["url"], "RECON_GHL_CLIENT_ID": ghl["client_id"],
            "RECON_GHL_CLIENT_SECRET": ghl["client_secret"], "RECON_DATA_DIR": str(data_dir),
            "RECON_GHL_TOKEN_BLOCK": "", "RECON_GHL_TOKEN": "", **extra}


def test_recon_auth_ghl_with_code_stores_the_pair(ghl: dict[str, Any], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    code = mint_code(ghl, ("contacts.readonly", "contacts.write", "locations/tasks.readonly"))
    result = CliRunner().invoke(app, ["auth", "ghl", "--code", code], env=cli_env(ghl, tmp_path))

    assert result.exit_code == 0, result.output
    assert "chooselocation" in result.output and "scope=contacts.readonly+contacts.write" in result.output
    assert f"location {ghl['location']}" in result.output and "expires" in result.output
    path = tmp_path / "secrets" / "ghl" / f"location-{ghl['location']}.json"  # the location's own file
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and str(path) in result.output.replace("\n", "")
    tokens = FileTokenStore(path).load()
    assert tokens is not None and tokens.location_id == ghl["location"]
    assert "locations/tasks.readonly" in tokens.scope
    ghl["secrets"] += [tokens.access_token, tokens.refresh_token]
    assert_no_secret(result.output + caplog.text, ghl["secrets"])


def test_recon_auth_ghl_takes_a_pasted_redirect_url(ghl: dict[str, Any], tmp_path: Path) -> None:
    code = mint_code(ghl)
    pasted = f"http://127.0.0.1:8765/oauth/callback?code={code}&state=x\n"
    result = CliRunner().invoke(app, ["auth", "ghl"], input=pasted, env=cli_env(ghl, tmp_path))

    assert result.exit_code == 0, result.output
    tokens = FileTokenStore(tmp_path / "secrets" / "ghl" / f"location-{ghl['location']}.json").load()
    assert tokens is not None
    assert_no_secret(result.output, [*ghl["secrets"], tokens.access_token, tokens.refresh_token])


def test_recon_auth_ghl_fails_cleanly(ghl: dict[str, Any], tmp_path: Path) -> None:
    runner = CliRunner()
    unset = runner.invoke(app, ["auth", "ghl", "--code", "whatever"],
                          env=cli_env(ghl, tmp_path, RECON_GHL_CLIENT_ID="", RECON_GHL_CLIENT_SECRET=""))
    assert unset.exit_code == 1
    assert "RECON_GHL_CLIENT_ID/RECON_GHL_CLIENT_SECRET not set" in unset.output

    bad_code = "not-a-real-code-" + uuid.uuid4().hex
    refused = runner.invoke(app, ["auth", "ghl", "--code", bad_code], env=cli_env(ghl, tmp_path))
    assert refused.exit_code == 1
    assert "recon auth ghl" in refused.output and "Traceback" not in refused.output
    assert_no_secret(refused.output, [*ghl["secrets"], bad_code])
    assert not (tmp_path / "secrets").exists()


def test_recon_auth_ghl_into_a_prefect_secret_block(ghl: dict[str, Any], tmp_path: Path,
                                                    prefect_server: str) -> None:  # noqa: F811
    block = f"ghl-cli-{uuid.uuid4().hex[:8]}"
    code = mint_code(ghl)
    result = CliRunner().invoke(app, ["auth", "ghl", "--code", code],
                                env=cli_env(ghl, tmp_path, RECON_GHL_TOKEN_BLOCK=block))
    assert result.exit_code == 0, result.output
    assert f"Prefect Secret block {block}" in result.output
    tokens = PrefectSecretTokenStore(block).load()
    assert tokens is not None and tokens.location_id == ghl["location"]
    assert not (tmp_path / "secrets").exists()
    assert_no_secret(result.output, [*ghl["secrets"], tokens.access_token, tokens.refresh_token])


@pytest.mark.parametrize(("pasted", "code"), [
    ("abc123def", "abc123def"),
    ("  abc123def \n", "abc123def"),
    ("http://127.0.0.1:8765/oauth/callback?code=abc123def&state=1", "abc123def"),
    ("https://app.example/cb?state=1&code=abc123def", "abc123def"),
    ("?code=abc123def", "abc123def"),
])
def test_extract_code(pasted: str, code: str) -> None:
    assert extract_code(pasted) == code


@pytest.mark.parametrize("pasted", ["", "   ", "http://127.0.0.1:8765/oauth/callback?code=&state=1"])
def test_extract_code_refuses_nothing(pasted: str) -> None:
    with pytest.raises(AuthSetupError):
        extract_code(pasted)


# ------------------------------------------------------------------------------- across processes

REFRESHER = """
import asyncio, hashlib, os, sys, time
from pathlib import Path
import httpx
from contact_recon.systems.auth import FileTokenStore, GHLOAuth

path, url, barrier, me = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
credentials = GHLOAuth(FileTokenStore(path), client_id=os.environ["T_CLIENT_ID"],
                       client_secret=os.environ["T_CLIENT_SECRET"], base_url=url)

async def main() -> None:
    credentials._load()  # both processes hold the same stale pair in memory before either refreshes
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)
    token = await credentials.token()
    answer = httpx.post(url + "/contacts/search", json={"locationId": os.environ["T_LOCATION"], "pageLimit": 1},
                        headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"})
    print(hashlib.sha256(token.encode()).hexdigest(), answer.status_code, credentials.refreshes)

asyncio.run(main())
"""


def test_two_processes_refreshing_one_pair_make_exactly_one_refresh(ghl: dict[str, Any], tmp_path: Path) -> None:
    """Two real processes on one expiring pair (single-use refresh tokens): the token POSTs are slowed and the
    processes start refreshing together, so without the cross-process lock both would send the same refresh
    token and the second would be refused. With it: one refresh reaches the sandbox, both succeed."""
    path = tmp_path / "secrets" / "ghl" / f"location-{ghl['location']}.json"
    store, _ = authorized(ghl, path)
    expiring(store)
    httpx.post(ghl["url"] + "/__sandbox/faults", json={"faults": "latency=400ms"}).raise_for_status()
    posts_before = token_posts(ghl)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "T_CLIENT_ID": ghl["client_id"], "T_CLIENT_SECRET": ghl["client_secret"],
           "T_LOCATION": ghl["location"]}
    procs = [subprocess.Popen([sys.executable, "-c", REFRESHER, str(path), ghl["url"], str(barrier), str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    httpx.post(ghl["url"] + "/__sandbox/faults", json={"faults": ""}).raise_for_status()

    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    results = [out.split() for out, _ in outputs]
    stored = store.load()
    assert stored is not None
    ghl["secrets"] += [stored.access_token, stored.refresh_token]
    assert token_posts(ghl) - posts_before == 1  # the sandbox saw exactly one refresh
    assert sorted(int(refreshes) for _, _, refreshes in results) == [0, 1]  # one process refreshed, one read it
    assert {digest for digest, _, _ in results} == {hashlib.sha256(stored.access_token.encode()).hexdigest()}
    assert [status for _, status, _ in results] == ["200", "200"]
    assert path.with_name(path.name + ".lock").exists()
    for _, err in outputs:
        assert_no_secret(err, ghl["secrets"])
