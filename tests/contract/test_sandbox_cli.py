"""`recon sandbox serve|generate|mutate` as real processes, and the issue's rate-limit acceptance check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from contact_recon.sandbox.server import free_port

RECON = [sys.executable, "-m", "contact_recon.cli.main"]
ENV = {**os.environ, "COLUMNS": "200"}


@pytest.fixture(scope="module")
def fixture_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "fixture.json"
    subprocess.run([*RECON, "sandbox", "generate", "--contacts", "200", "--out", str(path), "--seed", "5"],
                   check=True, capture_output=True, env=ENV, timeout=60)
    return path


class Served:
    def __init__(self, proc: subprocess.Popen[str], urls: dict[str, str]):
        self.proc, self.urls = proc, urls

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        return self.proc.returncode, out


def serve(fixture: Path, *extra: str) -> Served:
    ports = [str(free_port()), str(free_port())]
    proc = subprocess.Popen([*RECON, "sandbox", "serve", "--fixture", str(fixture), "--ghl-port", ports[0],
                             "--tinyemail-port", ports[1], *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    urls: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("GHL sandbox:"):
            urls["ghl"] = line.split()[-1]
        elif line.startswith("TinyEmail sandbox:"):
            urls["tinyemail"] = line.split()[-1]
        elif line.startswith("Ctrl+C"):
            return Served(proc, urls)
    raise AssertionError(f"serve exited early with {proc.wait()}")


@pytest.fixture
def served(fixture_file: Path) -> Iterator[Served]:
    running = serve(fixture_file)
    yield running
    if running.proc.poll() is None:
        running.stop()


def _ghl_credentials(fixture: Path) -> tuple[str, str]:
    token = json.loads(fixture.read_text())["ghl"]["tokens"][0]
    return token["token"], token["locationId"]


def test_150_requests_in_10s_give_exactly_100_successes_and_50_429s(served: Served, fixture_file: Path):
    """A burst of 150 searches: each answer is what the sandbox's own sliding window says it must be, by the times
    its request log gives (100 in any 10 s, 200000 a day), so the check holds however long the burst took on a
    loaded machine; and when the burst fits one window, as it does here, that is exactly 100 then 50 429s."""
    token, location = _ghl_credentials(fixture_file)
    headers = {"Authorization": f"Bearer {token}", "Version": "2021-07-28"}
    with httpx.Client(base_url=served.urls["ghl"], headers=headers, timeout=10) as client:
        answers = [client.post("/contacts/search", json={"locationId": location, "pageLimit": 1}) for _ in range(150)]
    log = [r for r in httpx.get(served.urls["ghl"] + "/__sandbox/requests").json()["requests"]
           if r["path"] == "/contacts/search"]
    assert [r["status"] for r in log] == [a.status_code for a in answers]  # the log is the burst, in order
    times = [datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp() for r in log]
    granted: list[float] = []  # the sandbox's window, replayed from its own times
    for i, (answer, when) in enumerate(zip(answers, times, strict=True)):
        in_window = [t for t in granted if t > when - 10.0]
        allowed = len(in_window) < 100
        assert answer.status_code == (200 if allowed else 429), (i, len(in_window))
        if allowed:
            granted.append(when)
        assert answer.headers["X-RateLimit-Max"] == "100"
        assert answer.headers["X-RateLimit-Interval-Milliseconds"] == "10000"
        assert answer.headers["X-RateLimit-Limit-Daily"] == "200000"
        assert answer.headers["X-RateLimit-Remaining"] == str(100 - len(in_window) - 1 if allowed else 0)
        assert answer.headers["X-RateLimit-Daily-Remaining"] == str(200_000 - len(granted))
        if not allowed:
            assert answer.json() == {"statusCode": 429, "message": "Too many requests"}
            assert 1 <= int(answer.headers["Retry-After"]) <= 10
    if times[-1] - times[0] < 10.0:  # the whole burst inside one window (its figures say so)
        assert [a.status_code for a in answers] == [200] * 100 + [429] * 50


def test_serve_prints_urls_and_stops_cleanly_on_sigterm(served: Served):
    assert served.urls["ghl"].startswith("http://127.0.0.1:")
    assert served.urls["tinyemail"].endswith("/v1")
    assert httpx.get(served.urls["ghl"] + "/__sandbox/state").status_code == 200
    code, out = served.stop()
    assert code == 0 and "sandbox stopped" in out
    with pytest.raises(httpx.ConnectError):
        httpx.get(served.urls["ghl"] + "/__sandbox/state")


def test_only_ghl_and_rate_scale(fixture_file: Path):
    running = serve(fixture_file, "--only", "ghl", "--rate-scale", "10")
    try:
        assert set(running.urls) == {"ghl"}
        token, location = _ghl_credentials(fixture_file)
        answer = httpx.get(f"{running.urls['ghl']}/contacts/", params={"locationId": location},
                           headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"})
        assert answer.headers["X-RateLimit-Max"] == "1000"
    finally:
        assert running.stop()[0] == 0


def test_faults_flag_is_applied_and_validated(fixture_file: Path):
    running = serve(fixture_file, "--faults", "5xx=1", "--seed", "3")
    try:
        token, location = _ghl_credentials(fixture_file)
        answer = httpx.get(f"{running.urls['ghl']}/contacts/", params={"locationId": location},
                           headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"})
        assert answer.status_code in (500, 502, 503)
        assert httpx.get(f"{running.urls['ghl']}/__sandbox/faults").json() == {"faults": "5xx=1", "seed": 3}
    finally:
        running.stop()
    bad = subprocess.run([*RECON, "sandbox", "serve", "--fixture", str(fixture_file), "--faults", "5xx=7"],
                         capture_output=True, text=True, env=ENV, timeout=60, check=False)
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr


def test_mutate_cli_prints_json_of_what_it_did(served: Served, fixture_file: Path):
    out = subprocess.run([*RECON, "sandbox", "mutate", "--ghl", served.urls["ghl"], "--tinyemail",
                          served.urls["tinyemail"], "--changes", "5", "--seed", "2", "--fixture", str(fixture_file)],
                         capture_output=True, text=True, env=ENV, timeout=120, check=True).stdout
    report = json.loads(out)
    assert report["changes"] == 5 and sum(report["by_kind"].values()) == 5
    token, _ = _ghl_credentials(fixture_file)
    assert token not in out


def test_generate_is_deterministic(tmp_path: Path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        subprocess.run([*RECON, "sandbox", "generate", "--contacts", "50", "--out", str(path), "--seed", "9"],
                       check=True, capture_output=True, env=ENV, timeout=60)
    assert a.read_bytes() == b.read_bytes()
