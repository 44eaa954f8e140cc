"""`recon doctor` as a subprocess against both sandboxes: usable, missing scope, bad key, missing configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contact_recon.sandbox.generate import generate_fixture
from tests.support import REPO

READ_ONLY_TOKEN = "sbx-ghl-readonly-" + "0" * 24


@pytest.fixture
def world(sandboxes: Any) -> dict[str, Any]:
    """Both sandboxes; the GHL one also knows a token without contacts.write."""
    fixture = generate_fixture(10, seed=5)
    location = fixture["ghl"]["tokens"][0]["locationId"]
    fixture["ghl"]["tokens"].append({"token": READ_ONLY_TOKEN, "locationId": location,
                                     "scopes": ["contacts.readonly", "locations/tasks.readonly"]})
    ghl, tinyemail = sandboxes(fixture)
    return {"ghl": ghl.base_url, "tinyemail": tinyemail.base_url + "/v1", "location": location,
            "token": fixture["ghl"]["tokens"][0]["token"], "key": fixture["tinyemail"]["apiKeys"][0],
            "client": fixture["ghl"]["oauthClients"][0]}


def env_for(world: dict[str, Any], **overrides: str) -> dict[str, str]:
    return {"RECON_GHL_BASE_URL": world["ghl"], "RECON_GHL_TOKEN": world["token"],
            "RECON_GHL_LOCATION_IDS": world["location"], "RECON_TINYEMAIL_BASE_URL": world["tinyemail"],
            "RECON_TINYEMAIL_API_KEY": world["key"], **overrides}


def doctor(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECON_")}
    full = {**base, "PYTHONPATH": str(REPO), "RECON_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "160", **env}
    return subprocess.run([sys.executable, "-m", "contact_recon.cli.main", "doctor"], env=full, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.strip() for line in result.stderr.splitlines() if line.strip()]


def assert_clean(result: subprocess.CompletedProcess[str], world: dict[str, Any]) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    for secret in (world["token"], world["key"], READ_ONLY_TOKEN, world["client"]["client_secret"]):
        assert secret not in text


def test_full_scope_token_is_usable_and_budgets_are_shown(world: dict[str, Any], tmp_path: Path) -> None:
    result = doctor(env_for(world), tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result) == []
    out = result.stdout
    assert "Remaining budgets" in out and world["location"] in out
    assert "of 100 per 10 s" in out  # the GHL window, adopted from X-RateLimit-Max / -Interval-Milliseconds
    assert "of 200,000" in out  # the GHL day, from X-RateLimit-Limit-Daily
    assert "of 60 per 60 s" in out  # TinyEmail's assumed limit, with our own count
    assert out.count("ok") >= 4
    assert_clean(result, world)


def test_a_read_only_token_lacks_contacts_write(world: dict[str, Any], tmp_path: Path) -> None:
    result = doctor(env_for(world, RECON_GHL_TOKEN=READ_ONLY_TOKEN), tmp_path)

    assert result.returncode == 1
    assert lines(result) == [f"GHL location {world['location']}: token lacks scope contacts.write"]
    assert_clean(result, world)


def test_the_write_probe_changes_nothing(world: dict[str, Any], tmp_path: Path) -> None:
    import httpx

    before = httpx.get(world["ghl"] + "/__sandbox/state").json()
    assert doctor(env_for(world), tmp_path).returncode == 0
    assert httpx.get(world["ghl"] + "/__sandbox/state").json() == before
    probes = [r for r in httpx.get(world["ghl"] + "/__sandbox/requests").json()["requests"]
              if r["path"].endswith("/tags")]
    assert [(r["method"], r["status"]) for r in probes] == [("POST", 400)]


def test_a_bad_tinyemail_key(world: dict[str, Any], tmp_path: Path) -> None:
    wrong = "sbx-te-" + "f" * 32
    result = doctor(env_for(world, RECON_TINYEMAIL_API_KEY=wrong), tmp_path)

    assert result.returncode == 1
    assert lines(result) == ["TinyEmail: the API key was refused (RECON_TINYEMAIL_API_KEY)"]
    assert wrong not in result.stdout + result.stderr
    assert_clean(result, world)


def test_a_refused_ghl_token(world: dict[str, Any], tmp_path: Path) -> None:
    wrong = "sbx-ghl-" + "e" * 32
    result = doctor(env_for(world, RECON_GHL_TOKEN=wrong), tmp_path)

    assert result.returncode == 1
    [line] = lines(result)
    assert line.startswith(f"GHL location {world['location']}: the token was refused")
    assert wrong not in result.stdout + result.stderr


def test_unset_configuration(world: dict[str, Any], tmp_path: Path) -> None:
    result = doctor({}, tmp_path)

    assert result.returncode == 1
    assert lines(result) == ["RECON_GHL_TOKEN or RECON_GHL_CLIENT_ID/RECON_GHL_CLIENT_SECRET not set",
                             "RECON_GHL_LOCATION_IDS not set", "RECON_TINYEMAIL_API_KEY not set"]


def test_oauth_configured_but_never_authorized(world: dict[str, Any], tmp_path: Path) -> None:
    env = env_for(world, RECON_GHL_TOKEN="", RECON_GHL_CLIENT_ID=world["client"]["client_id"],
                  RECON_GHL_CLIENT_SECRET=world["client"]["client_secret"])
    result = doctor(env, tmp_path)

    assert result.returncode == 1
    [line] = lines(result)
    assert line.startswith(f"GHL location {world['location']}:") and "recon auth ghl" in line
    assert_clean(result, world)


def test_an_unreachable_tinyemail(world: dict[str, Any], tmp_path: Path) -> None:
    from contact_recon.sandbox.server import free_port

    result = doctor(env_for(world, RECON_TINYEMAIL_BASE_URL=f"http://127.0.0.1:{free_port()}/v1"), tmp_path)

    assert result.returncode == 1
    [line] = lines(result)
    assert line.startswith("TinyEmail: unreachable or failing")
    assert_clean(result, world)


def test_webhook_key_types_are_shown_and_a_missing_ed25519_key_warned(world: dict[str, Any], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    default = doctor(env_for(world), tmp_path)  # GHL's published RSA key only
    assert default.returncode == 0, default.stdout + default.stderr
    out = " ".join(default.stdout.split())
    assert "verification keys: 1 key (1 RSA), GHL's published RSA key" in out
    assert "warning: no Ed25519 webhook key configured: GHL signs webhooks only with X-GHL-Signature" in out

    both = doctor(env_for(world, RECON_GHL_WEBHOOK_PUBLIC_KEY="sandbox"), tmp_path)
    out = " ".join(both.stdout.split())
    assert both.returncode == 0 and "2 keys (1 Ed25519, 1 RSA), the sandbox test keys" in out
    assert "warning" not in out

    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    wrong = doctor(env_for(world, RECON_GHL_WEBHOOK_PUBLIC_KEY=ec_pem), tmp_path)
    assert wrong.returncode == 1
    assert " ".join(wrong.stderr.split()).startswith("RECON_GHL_WEBHOOK_PUBLIC_KEY: webhook key 1 is an EC key")
    assert_clean(wrong, world)
