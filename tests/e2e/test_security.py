"""Security checks: token files are 0600, the sandboxes' admin routes answer only loopback clients, and a full run
(inside a Prefect flow, logging at DEBUG) leaves no configured secret in the data dir (DuckDB file, plan parquet,
conflicts CSV, GX Data Docs), the captured logs and output, the Prefect server's logs or its database.
`tests/support/secret_scan.py` is the scanner; its own tests here plant every encoding in every kind of file it
reads, so a scan that finds nothing means something.

Safe by default (`contact_recon/stages/process.py`): every process entry masks secrets in every log record (a
flow run's logs in the Prefect API, the console, caplog, handlers added later), and a `reconcile` flow run (the
deployments' flow, GHL over OAuth, under a permissive umask) leaves only 0700 folders and 0600 files in its data
dir and nothing secret in what the Prefect API keeps of it (logs, artifacts, parameters, states, task runs). Each
of these checks is shown to fail on a planted secret or a file of the default mode.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import os
import secrets
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import duckdb
import httpx
import polars as pl
import pytest
from prefect import flow  # at collection: else Prefect's logging setup runs inside a test and drops caplog's handler

from contact_recon.sandbox import ghl as ghl_sandbox
from contact_recon.sandbox import tinyemail as te_sandbox
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import HOST, RunningServer
from contact_recon.settings import Settings
from contact_recon.stages.process import EPHEMERAL_SERVER_DEFAULTS, prepare_process
from contact_recon.systems.auth import FileTokenStore, GHLOAuth, TokenSet
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.redaction import install_log_redaction, register_secret
from contact_recon.systems.tinyemail.client import TinyEmailClient
from tests.support.modes import loose_modes
from tests.support.prefect import flow_run_texts
from tests.support.secret_scan import Finding, ScanError, encodings, find_secrets

RATE_SCALE = 50
SECRET = "sk-test-" + "Zq3/+x=" + "0123456789abcdef"  # URL- and JSON-sensitive characters on purpose


# ------------------------------------------------------------------------------------------ the scanner


def planted(tmp_path: Path, secret: str) -> dict[str, Path]:
    """One file per kind the scanner reads, each holding `secret` in one encoding."""
    d = tmp_path / "planted"
    d.mkdir()
    b64 = base64.b64encode(b"client-id:" + secret.encode()).decode()  # the secret at an offset inside base64
    files = {"as-is": d / "report.html", "url": d / "calls.log", "base64": d / "headers.json", "json": d / "plan.csv",
             "parquet": d / "plan.parquet", "duckdb": d / "recon.duckdb", "gzip": d / "old.log.gz",
             "zip": d / "docs.zip", "binary": d / "blob.bin"}
    files["as-is"].write_text(f"<html><td>{secret}</td></html>")
    files["url"].write_text(f"GET /callback?code=x&secret={quote(secret, safe='')}\n")
    files["base64"].write_text(f'{{"Authorization": "Basic {b64}"}}')
    files["json"].write_text('id,raw\n1,"{""k"": ""' + secret.replace("/", "\\/") + '""}"\n')
    # without statistics (whose min/max would hold the secret in clear) the zstd pages are all there is
    pl.DataFrame({"id": list(range(2000)), "raw": [f"row {i}" for i in range(1999)] + [secret]}).write_parquet(
        files["parquet"], compression="zstd", statistics=False)
    with duckdb.connect(str(files["duckdb"])) as con:  # similar values: DuckDB compresses them with FSST
        con.execute("CREATE TABLE runs (run_id VARCHAR, tags VARCHAR[], error VARCHAR)")
        con.execute("INSERT INTO runs SELECT 'r' || i, ['a', 'b'], 'failed: ' || ? || ' on run ' || i "
                    "FROM range(5000) t(i)", [secret])
        con.execute("CHECKPOINT")
    files["gzip"].write_bytes(gzip.compress(f"token={secret}\n".encode() * 10))
    with zipfile.ZipFile(files["zip"], "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("index.html", f"<p>{secret}</p>" * 10)
    files["binary"].write_bytes(os.urandom(512) + secret.encode() + os.urandom(512))
    return files


def test_the_scanner_finds_a_planted_secret_in_every_kind_of_file_and_encoding(tmp_path: Path) -> None:
    files = planted(tmp_path, SECRET)
    findings = find_secrets([tmp_path / "planted"], {"key": SECRET}, texts={"log": f"sent {SECRET}"})

    def found(where: str, encoding: str) -> bool:
        return any(f.where.startswith(where) and f.encoding == encoding for f in findings)

    assert found(str(files["as-is"]), "as-is") and found(str(files["url"]), "url")
    assert found(str(files["base64"]), "base64") and found(str(files["json"]), "json")
    assert found(f"{files['parquet']}::raw", "as-is") and found(f"{files['duckdb']}::main.runs.error", "as-is")
    assert found(f"{files['gzip']}::gunzip", "as-is") and found(f"{files['zip']}::index.html", "as-is")
    assert found(str(files["binary"]), "as-is") and found("log", "as-is")
    assert all(SECRET not in str(f) and SECRET not in repr(f) for f in findings)  # a finding names, never shows
    # compressed: a byte scan alone would miss these (no encoding of the secret is in their bytes), the decoded
    # scan must not
    needles = [needle for variants in encodings(SECRET).values() for needle in variants]
    for kind, decoded in (("parquet", "::raw"), ("duckdb", "::main.runs.error"), ("gzip", "::gunzip"),
                          ("zip", "::index.html")):
        raw = files[kind].read_bytes()
        assert not any(needle in raw for needle in needles), f"{kind}: the secret is readable in the file's bytes"
        assert not any(f.where == str(files[kind]) for f in findings)  # no finding in the raw bytes...
        assert found(f"{files[kind]}{decoded}", "as-is")  # ...only in what the scanner decoded


def test_the_scanner_is_quiet_on_clean_files_and_refuses_what_it_cannot_scan(tmp_path: Path) -> None:
    planted(tmp_path, "another-secret-value-42")
    assert find_secrets([tmp_path], {"key": SECRET}, texts={"log": "nothing to see"}) == []
    assert find_secrets([tmp_path], [SECRET]) == []
    with pytest.raises(ValueError, match="at least 6"):
        find_secrets([tmp_path], ["abc"])
    with pytest.raises(ScanError, match="no such file"):
        find_secrets([tmp_path / "missing"], [SECRET])
    broken = tmp_path / "broken.duckdb"
    broken.write_bytes(b"\0" * 8 + b"DUCK" + os.urandom(4000))
    with pytest.raises(ScanError, match="DuckDB"):
        find_secrets([broken], [SECRET])


def test_a_finding_reads_well() -> None:
    assert str(Finding("data/recon.duckdb::main.runs.error", "GHL token", "base64")) == \
        "GHL token (base64) in data/recon.duckdb::main.runs.error"


# ------------------------------------------------------------------------------------------ token files


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the old one comes back after it."""
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(old)


def pair(seconds: float = 3600) -> TokenSet:
    return TokenSet(access_token="at-" + secrets.token_hex(16), refresh_token="rt-" + secrets.token_hex(16),
                    expires_at=time.time() + seconds, location_id="L1", scope="contacts.readonly")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o002, 0o022, 0o077])
def test_the_token_file_is_0600_and_its_new_folder_0700_whatever_the_umask(tmp_path: Path, umask: Any,
                                                                          mask: int) -> None:
    umask(mask)
    path = tmp_path / "secrets" / "nested" / "ghl_tokens.json"
    FileTokenStore(path).save(pair())
    assert mode(path) == 0o600
    assert mode(path.parent) & 0o077 == 0 and mode(path.parent.parent) & 0o077 == 0
    assert [p.name for p in path.parent.iterdir()] == ["ghl_tokens.json"]


def test_a_world_readable_token_file_is_replaced_by_a_0600_one(tmp_path: Path, umask: Any) -> None:
    umask(0o000)
    path = tmp_path / "ghl_tokens.json"
    path.write_text("{}")
    path.chmod(0o666)
    store = FileTokenStore(path)
    store.save(pair())
    assert mode(path) == 0o600
    store.save(replace(pair(), scope="contacts.write"))  # every later save keeps it so
    assert mode(path) == 0o600 and store.load() is not None and store.load().scope == "contacts.write"


def test_a_refresh_through_the_sandbox_stores_the_new_pair_0600(serve: Callable[..., RunningServer], tmp_path: Path,
                                                                umask: Any) -> None:
    umask(0o000)
    fixture = generate_fixture(5, seed=29)
    server = serve(ghl_sandbox.create_app(fixture["ghl"], rate_scale=RATE_SCALE, search_lag_s=0))
    client = fixture["ghl"]["oauthClients"][0]
    location = fixture["ghl"]["tokens"][0]["locationId"]
    code = httpx.post(server.base_url + "/__sandbox/oauth/code", json={
        "client_id": client["client_id"], "locationId": location, "scopes": ["contacts.readonly"]}).json()["code"]
    path = tmp_path / "secrets" / "ghl_tokens.json"
    store = FileTokenStore(path)

    def oauth() -> GHLOAuth:
        return GHLOAuth(store, client_id=client["client_id"], client_secret=client["client_secret"],
                        base_url=server.base_url)

    first = asyncio.run(oauth().exchange_code(code))
    store.save(replace(first, expires_at=time.time() + 60))  # inside the refresh margin
    later = oauth()  # a later run, reading the store
    asyncio.run(later.token())
    refreshed = store.load()
    assert later.refreshes == 1 and refreshed is not None and refreshed.refresh_token != first.refresh_token
    assert mode(path) == 0o600 and mode(path.parent) & 0o077 == 0


# ------------------------------------------------------------------------------------------ admin routes

REFUSED_CLIENTS = ["10.1.2.3", "192.168.0.7", "8.8.8.8", "2001:db8::1", "::ffff:10.0.0.1", "::1:2", "::1f00:1",
                   "fe80::1", "0.0.0.0", "localhost", "testclient", ""]
LOOPBACK_CLIENTS = ["127.0.0.1", "127.5.6.7", "::1"]


def sandbox_apps() -> dict[str, Any]:
    fixture = generate_fixture(5, seed=31)
    return {"ghl": ghl_sandbox.create_app(fixture["ghl"]), "tinyemail": te_sandbox.create_app(fixture["tinyemail"])}


def admin_routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, path) under /__sandbox/ that the app serves: routes added later are covered too."""
    return sorted((method, route.path) for route in app.routes if route.path.startswith("/__sandbox/")
                  for method in route.methods - {"HEAD"})


async def status_from(app: Any, method: str, path: str, client: str, headers: list[tuple[bytes, bytes]]) -> int:
    """One request straight into the ASGI app, from a chosen client address."""
    scope = {"type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
             "root_path": "", "scheme": "http", "query_string": b"", "headers": headers,
             "client": (client, 40000) if client else None, "server": (HOST, 80)}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


SPOOFED = [(b"x-forwarded-for", b"127.0.0.1"), (b"x-real-ip", b"127.0.0.1"), (b"forwarded", b"for=127.0.0.1"),
           (b"host", b"127.0.0.1")]


@pytest.mark.parametrize("system", ["ghl", "tinyemail"])
def test_every_admin_route_of_both_sandboxes_refuses_non_loopback_clients(system: str) -> None:
    app = sandbox_apps()[system]
    routes = admin_routes(app)
    assert ("GET", "/__sandbox/state") in routes and ("POST", "/__sandbox/faults") in routes
    if system == "ghl":
        assert ("POST", "/__sandbox/oauth/code") in routes
    for method, path in routes:
        for client in REFUSED_CLIENTS:
            for headers in ([], SPOOFED):  # proxy headers claiming loopback change nothing
                assert asyncio.run(status_from(app, method, path, client, headers)) == 403, (method, path, client)
        for client in LOOPBACK_CLIENTS:
            assert asyncio.run(status_from(app, method, path, client, [])) != 403, (method, path, client)


def test_the_sandboxes_listen_on_loopback_only(sandboxes: Callable[..., tuple[RunningServer, RunningServer]]) -> None:
    for server in sandboxes(generate_fixture(5, seed=37)):
        assert server.server.config.host == "127.0.0.1" and server.base_url.startswith("http://127.0.0.1:")
        assert all(s.getsockname()[0] == "127.0.0.1" for srv in server.server.servers for s in srv.sockets)


# ------------------------------------------------------------------------------------------ a dry run leaves no secret


def prefect_db() -> Path:
    """The folder of the test Prefect server's SQLite database (the file and its write-ahead log)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    assert url.startswith("sqlite"), url
    return Path(url.split(":///", 1)[1]).parent


async def prefect_logs(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    texts: list[str] = []
    async with get_client() as client:
        while True:
            batch = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                           limit=200, offset=len(texts))
            texts += [f"{log.level} {log.name} {log.message}" for log in batch]
            if len(batch) < 200:
                return texts


def test_a_full_run_leaves_no_secret_in_data_reports_logs_artifacts_or_prefect(
        sandboxes: Callable[..., tuple[RunningServer, RunningServer]], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], prefect_server: str,  # noqa: F811
) -> None:
    from prefect import flow
    from prefect.logging.handlers import APILogHandler

    fixture = generate_fixture(60, seed=41, awkward=0.2)
    configured = {"GHL token": "pit-" + secrets.token_hex(16), "TinyEmail API key": "te-" + secrets.token_hex(16),
                  "GHL client secret": "cs-" + secrets.token_urlsafe(24)}
    fixture["ghl"]["tokens"][0]["token"] = configured["GHL token"]
    fixture["tinyemail"]["apiKeys"][0] = configured["TinyEmail API key"]
    fixture["ghl"]["oauthClients"][0]["client_secret"] = configured["GHL client secret"]
    location = fixture["ghl"]["tokens"][0]["locationId"]
    ghl, te = sandboxes(fixture, rate_scale=RATE_SCALE)
    data = tmp_path / "data"
    settings = Settings(_env_file=None, data_dir=data, ghl_base_url=ghl.base_url, ghl_token=configured["GHL token"],
                        ghl_client_id=fixture["ghl"]["oauthClients"][0]["client_id"],
                        ghl_client_secret=configured["GHL client secret"], ghl_location_ids=[location],
                        tinyemail_base_url=te.base_url + "/v1", tinyemail_api_key=configured["TinyEmail API key"],
                        tinyemail_rate_per_minute=60 * RATE_SCALE, policy_file=tmp_path / "policy.toml")
    (tmp_path / "policy.toml").write_text("[guards]\nfield_updates = 1.0\ntag_removals = 1.0\n"
                                          "deletes_or_inactivations = 1.0\n")
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="prefect")

    debug_records: list[logging.LogRecord] = []
    debug_handler = logging.Handler(logging.DEBUG)
    debug_handler.emit = debug_records.append  # type: ignore[method-assign]

    @flow(name="security-full-run")
    def full_run() -> tuple[str, str, int]:
        from contact_recon.tasks.reconcile import PREFECT_STEPS
        from prefect.logging import get_run_logger
        from prefect.runtime import flow_run

        from contact_recon.stages.run import reconcile

        get_run_logger().info("planning with settings %r", settings)  # what a careless flow would log
        # a user debugging a run: everything at DEBUG into one more handler (attached here, inside the flow run,
        # since the flow run's logging setup may replace the handlers caplog installed)
        root = logging.getLogger()
        root.setLevel(logging.DEBUG)
        root.addHandler(debug_handler)
        logging.getLogger("recon.careless").debug("settings at DEBUG: %r", settings)
        summary = reconcile(settings, locations=[location], docs=True, steps=PREFECT_STEPS,
                            ghl_client=lambda loc: GHLClient.from_settings(
                                settings, loc, budget=RateBudget(100 * RATE_SCALE, 10.0, 200_000)),
                            tinyemail_client=lambda: TinyEmailClient.from_settings(
                                settings, budget=RateBudget(60 * RATE_SCALE, 60.0, None))).summary
        assert summary is not None
        return summary["run_id"], str(flow_run.id), sum(summary["counts"]["applied"]["ghl"].values())

    run_id, flow_run_id, applied = full_run()
    APILogHandler().flush()
    output = capfd.readouterr()

    directory = data / "runs" / run_id
    assert applied > 0, "the run wrote nothing to GHL: not a full run"
    for name in ("plan.parquet", "summary.json", "report.html", "conflicts.csv"):
        assert (directory / name).exists(), name
    assert list(data.rglob("index.html")), "the Data Docs were not built"
    shipped = asyncio.run(prefect_logs(flow_run_id))
    assert any("planning with settings" in line for line in shipped), "the flow's logs did not reach Prefect"
    logging.getLogger().removeHandler(debug_handler)
    debug_text = "\n".join(logging.Formatter().format(r) for r in debug_records)
    assert any(r.levelno == logging.DEBUG for r in debug_records), "DEBUG records were not captured"
    assert any(r.name == "contact_recon.stages.apply" for r in debug_records), \
        "the apply stage's DEBUG lines were not captured"
    findings = find_secrets([data, prefect_db()], configured, texts={
        "caplog": caplog.text, "debug log": debug_text,
        "stdout": output.out, "stderr": output.err, "prefect logs": "\n".join(shipped)})
    assert findings == [], "\n".join(map(str, findings))


# ------------------------------------------------------------------------------------------ log redaction


@pytest.fixture
def unprepared(umask: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """This process as if no entry had prepared it (no log redaction, umask 022, no Prefect defaults), with a
    Prefect home of its own that does not exist yet; all restored after the test. Yields that home."""
    saved = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    umask(0o022)
    for name in EPHEMERAL_SERVER_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    yield tmp_path / "prefect-home"
    logging.setLogRecordFactory(saved)


def current_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def test_a_record_keeps_its_args_unless_it_holds_a_secret(unprepared: Path) -> None:
    secret = "rk-" + secrets.token_hex(12)
    register_secret(secret)
    install_log_redaction()
    install_log_redaction()  # twice: one factory, not two
    factory = logging.getLogRecordFactory()
    plain = factory("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s"', ("127.0.0.1", "GET", "/"), None)
    assert plain.args == ("127.0.0.1", "GET", "/")  # uvicorn's access formatter unpacks them
    masked = factory("x", logging.INFO, __file__, 1, "token %s and %d", (secret, 3), None)
    assert masked.getMessage() == "token *** and 3" and masked.args is None
    misfit = factory("x", logging.INFO, __file__, 1, "count %d", (secret,), None)  # logging would print the args
    assert misfit.getMessage() == "count %d (arguments that do not fit it: ('***',))"
    assert getattr(factory, "make", None) is logging.LogRecord  # wraps the factory it found, once


def test_every_entry_prepares_the_process(unprepared: Path, tmp_path: Path) -> None:
    """The `recon` command (any command: its app callback) and each flow as a worker loads it (by entrypoint
    path, in a process of its own) mask secrets in every log record, set the umask 077 and make Prefect's home
    0700."""
    from typer.testing import CliRunner

    from contact_recon.cli.main import app
    from tests.support import REPO

    probe = ("import logging, os, sys\n"
             "os.umask(0o022)\n"
             "from prefect.flows import load_flow_from_entrypoint\n"
             "load_flow_from_entrypoint(sys.argv[1])\n"
             "from contact_recon.systems.redaction import register_secret\n"
             "register_secret('probe-secret-42')\n"
             "record = logging.getLogger('x').makeRecord('x', 20, '', 0, 'token %s', ('probe-secret-42',), None)\n"
             "print(record.getMessage(), oct(os.umask(0)), os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'])\n")
    env = {k: v for k, v in os.environ.items() if k not in EPHEMERAL_SERVER_DEFAULTS}
    workers = [subprocess.Popen([sys.executable, "-c", probe, entrypoint], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for entrypoint in ("flows/reconcile.py:reconcile_flow", "flows/sync_contact.py:sync_contact_flow")]

    shown = CliRunner().invoke(app, ["mapping"], env={"RECON_DATA_DIR": str(tmp_path / "data")})
    assert shown.exit_code == 0, shown.output
    secret = "cli-" + secrets.token_hex(12)
    register_secret(secret)
    record = logging.getLogger("contact_recon.cli").makeRecord("x", logging.INFO, "", 0, "%s", (secret,), None)
    assert record.getMessage() == "***" and current_umask() == 0o077
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert mode(unprepared) == 0o700
    for worker in workers:
        out, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors
        assert out.split() == ["token", "***", "0o77", "false"], out + errors


def test_a_secret_logged_in_a_flow_run_reaches_neither_the_prefect_api_nor_the_console(
        unprepared: Path, prefect_server: str, caplog: pytest.LogCaptureFixture,  # noqa: F811
        capfd: pytest.CaptureFixture[str]) -> None:
    """Through a flow run's logger, a module logger with Prefect's API handler added after the redaction was
    installed (as PREFECT_LOGGING_EXTRA_LOGGERS does), and a traceback. The same flow run without redaction shows
    the check can fail: there the secret reaches the API."""
    from prefect.logging import get_run_logger
    from prefect.logging.handlers import APILogHandler
    from prefect.runtime import flow_run

    secret = "sk-live-" + secrets.token_hex(12)
    register_secret(secret)
    ours = logging.getLogger("contact_recon.security_probe")

    @flow(name="logs-a-secret")
    def logs_a_secret() -> str:
        get_run_logger().warning("run logger: token %s", secret)
        ours.warning("module logger: token %s", secret)
        try:
            raise RuntimeError(f"refused {secret}")
        except RuntimeError:
            ours.exception("with a traceback")
        return str(flow_run.id)

    def shipped(flow_run_id: str) -> str:
        APILogHandler().flush()
        return asyncio.run(flow_run_texts(flow_run_id))["logs"]

    api = APILogHandler()
    ours.addHandler(api)
    try:
        unmasked = shipped(logs_a_secret())
        assert secret in unmasked, "without redaction the secret should reach the API: the check cannot fail"
        capfd.readouterr()
        caplog.clear()

        prepare_process()  # what each entry does (test_every_entry_prepares_the_process)
        ours.removeHandler(api)
        api = APILogHandler()  # a handler made after the redaction was installed
        ours.addHandler(api)
        texts = shipped(logs_a_secret())
    finally:
        ours.removeHandler(api)
    output = capfd.readouterr()
    assert "run logger: token ***" in texts and "module logger: token ***" in texts
    assert "RuntimeError: refused ***" in texts  # the traceback arrives, masked
    assert "module logger: token ***" in caplog.text and "run logger: token ***" in caplog.text  # the root's handlers
    findings = find_secrets([], {"secret": secret}, texts={"Prefect logs": texts, "caplog": caplog.text,
                                                           "stdout": output.out, "stderr": output.err})
    assert findings == [], "\n".join(map(str, findings))


# ------------------------------------------------------------------------------ a full reconcile flow run


@dataclass
class FullRun:
    """One `reconcile` flow run (the deployments' flow) on the session's Prefect server, made under umask 022,
    with GHL over OAuth (its token file refreshed during the run) and every kind of configured secret."""

    data: Path
    token_file: Path
    flow_run_id: str
    summary: dict[str, Any]
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def full_run(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FullRun]:  # noqa: F811
    from contact_recon.flows.reconcile import reconcile_flow  # its import prepares the process: umask 077

    from contact_recon.sandbox.fixture import validate_fixture
    from contact_recon.sandbox.server import serve_in_thread
    from tests.support.runs import environment

    fixture = generate_fixture(60, seed=43, awkward=0.2)
    configured = {"GHL client secret": "cs-" + secrets.token_urlsafe(24),
                  "TinyEmail API key": "te-" + secrets.token_hex(16),
                  "GHL token of another location": "pit-" + secrets.token_hex(16)}
    client = fixture["ghl"]["oauthClients"][0]
    client["client_secret"] = configured["GHL client secret"]
    fixture["tinyemail"]["apiKeys"][0] = configured["TinyEmail API key"]
    location = fixture["ghl"]["tokens"][0]["locationId"]
    data = validate_fixture(fixture)
    servers = [serve_in_thread(ghl_sandbox.create_app(data["ghl"], rate_scale=RATE_SCALE, search_lag_s=0)),
               serve_in_thread(te_sandbox.create_app(data["tinyemail"], rate_scale=RATE_SCALE))]
    ghl, te = servers
    data_dir = tmp_path_factory.mktemp("full-run") / "data"
    settings = Settings(_env_file=None, data_dir=data_dir)
    try:
        code = httpx.post(ghl.base_url + "/__sandbox/oauth/code", json={
            "client_id": client["client_id"], "locationId": location,
            "scopes": ["contacts.readonly", "contacts.write", "locations/tasks.readonly"]}).json()["code"]
        store = FileTokenStore(settings.ghl_token_file)
        first = asyncio.run(GHLOAuth(store, client_id=client["client_id"], client_secret=client["client_secret"],
                                     base_url=ghl.base_url).exchange_code(code))
        store.save(replace(first, expires_at=time.time() + 60))  # inside the refresh margin: the run rotates it
        values = {"RECON_DATA_DIR": str(data_dir), "RECON_GHL_BASE_URL": ghl.base_url,
                  "RECON_GHL_CLIENT_ID": client["client_id"], "RECON_GHL_CLIENT_SECRET": client["client_secret"],
                  "RECON_GHL_LOCATION_IDS": location,
                  "RECON_GHL_LOCATION_TOKENS": f"LOTHER{location[:4]}={configured['GHL token of another location']}",
                  "RECON_TINYEMAIL_BASE_URL": te.base_url + "/v1",
                  "RECON_TINYEMAIL_API_KEY": configured["TinyEmail API key"],
                  "RECON_GHL_RATE_SCALE": str(RATE_SCALE), "RECON_TINYEMAIL_RATE_PER_MINUTE": str(60 * RATE_SCALE)}
        old_mask = os.umask(0o022)  # a permissive umask: what the run creates must be private by itself
        try:
            with environment(values):
                state = reconcile_flow(approve=True, return_state=True)
        finally:
            os.umask(old_mask)
        summary = state.result()
    finally:
        for server in servers:
            server.stop()
    rotated = store.load()
    assert rotated is not None and rotated.refresh_token != first.refresh_token, "the run did not refresh the pair"
    configured |= {"GHL access token": first.access_token, "GHL refresh token": first.refresh_token,
                   "GHL rotated access token": rotated.access_token,
                   "GHL rotated refresh token": rotated.refresh_token}
    yield FullRun(data_dir, settings.ghl_token_file, str(state.state_details.flow_run_id), summary, configured)


def test_a_full_run_leaves_only_owner_only_folders_and_files(full_run: FullRun, tmp_path: Path) -> None:
    assert full_run.summary["status"] == "completed", full_run.summary
    assert sum(full_run.summary["counts"]["applied"]["ghl"].values()) > 0, "not a full run: nothing applied"
    made = {p.relative_to(full_run.data).parts[0] for p in full_run.data.rglob("*")}
    assert {"recon.duckdb", "runs", "gx", "locks", "echo", "secrets"} <= made, made
    run = full_run.data / "runs" / full_run.summary["run_id"]
    assert {"plan.parquet", "conflicts.csv", "summary.json", "report.html", "state"} <= {p.name for p in run.iterdir()}
    assert full_run.token_file.is_file()
    assert loose_modes(full_run.data) == []
    # the check can fail: a file made with the umask's default mode, a folder made by mkdir
    old = os.umask(0o022)
    try:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "report.html").write_text("x")
    finally:
        os.umask(old)
    assert sorted(loose_modes(tmp_path / "data")) == ["data/report.html: 0o644", "data: 0o755"]


def test_a_full_run_leaves_no_secret_in_the_prefect_api(full_run: FullRun) -> None:
    """Every log of the flow run and its task runs, every artifact, the flow run's parameters and states, each
    task run and its states, as the Prefect client reads them back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate, LogCreate

    texts = asyncio.run(flow_run_texts(full_run.flow_run_id))
    assert "task_run=None" in texts["logs"] and any("task_run=None" not in line for line in
                                                      texts["logs"].splitlines()), "flow and task run logs"
    assert texts["artifacts"], "the run published no artifact"
    assert '"approve":true' in texts["flow run"].replace(" ", ""), "the flow run's parameters"
    for step in ("recover", "snapshot-merge-check", "apply", "report"):
        assert f'"name":"{step}-' in texts["task runs"], step
    findings = find_secrets([], full_run.secrets, texts=texts)
    assert findings == [], "\n".join(map(str, findings))

    # the check can fail: a secret planted in a log and an artifact of that flow run is found
    planted = full_run.secrets["GHL rotated access token"]

    async def plant() -> None:
        async with get_client() as client:
            await client.create_logs([LogCreate(name="planted", level=logging.INFO, message=f"Bearer x {planted}",
                                                timestamp=datetime.now(UTC), flow_run_id=UUID(full_run.flow_run_id))])
            await client.create_artifact(ArtifactCreate(key="planted-secret", type="markdown", data=f"**{planted}**",
                                                        flow_run_id=UUID(full_run.flow_run_id)))

    asyncio.run(plant())
    again = find_secrets([], full_run.secrets, texts=asyncio.run(flow_run_texts(full_run.flow_run_id)))
    assert {(f.where, f.secret) for f in again} == {("logs", "GHL rotated access token"),
                                                    ("artifacts", "GHL rotated access token")}, again
