"""The run report (contact_recon/report/build.py): summary.json against its JSON Schema, report.html (charts, tables,
escaping, no secrets) rendered in headless Chromium, the Prefect artifacts, and `recon runs` / `recon report`.

Runs are made by the real planning pipeline against both sandboxes (tests/support/worlds.py `World`, as in
tests/e2e/test_pipeline.py); an apply is simulated by inserting journal rows for the run with SQL, as the apply
stage would leave them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import polars as pl
import pytest
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.model.policy import Policy, load_policy
from contact_recon.report.applied import applied_changes, run_context
from contact_recon.report.build import (
    KINDS,
    SUMMARY_SCHEMA,
    build_summary,
    load_conflicts,
    open_identity_reviews,
    publish_artifacts,
    rebuild_run_files,
    run_ops,
    write_run_files,
)
from contact_recon.sandbox.fixture import validate_fixture
from contact_recon.stages.plan import PlanRun
from contact_recon.store.reviews import Reviews, load_quarantine_file
from contact_recon.systems.http import RequestStats
from tests.support.browser import browser_page
from tests.support.servers import Sandboxes
from tests.support.worlds import LOOSE_GUARDS, World, awkward_fixture, planning_world, table_rows

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">Eve & "Co"'
CHARTS = ("drift", "trends", "kinds", "checks", "requests")
GHL_APP = "https://app.gohighlevel.com/v2/location/"
VALIDATOR = jsonschema.Draft202012Validator(SUMMARY_SCHEMA, format_checker=jsonschema.FormatChecker())


@pytest.fixture
def world(sandboxes: Sandboxes, tmp_path: Path) -> Iterator[World]:
    """test_pipeline's world, with a hostile TinyEmail first name among the conflicts."""
    fixture, edited = awkward_fixture()
    contacts = next(iter(fixture["ghl"]["locations"].values()))["contacts"]
    email = next(c["email"] for c in contacts if c["id"] == edited["renamed"][0])
    next(c for c in fixture["tinyemail"]["customers"] if c["email"] == email)["firstName"] = HOSTILE
    yield from planning_world(sandboxes, tmp_path, validate_fixture(fixture), edited)


def loose_policy(world: World) -> Policy:
    path = world.settings.data_dir / "loose.toml"
    path.write_text(LOOSE_GUARDS, encoding="utf-8")
    return load_policy(path)


def simulate_apply(world: World, result: PlanRun, status: str, outcome: Callable[[int, dict[str, Any]], tuple],
                   error: str | None = None) -> pl.DataFrame:
    """Journal every op of the plan with the (status, error_kind, last_error) `outcome` gives it, as the apply
    stage would, and close the run with `status`; returns the journal rows."""
    now = datetime.now(UTC)
    rows = []
    for seq, op in enumerate(result.plan.iter_rows(named=True)):
        op_status, error_kind, last_error = outcome(seq, op)
        sent = op_status in ("done", "rejected", "failed", "stale")
        rows.append([result.run_id, op["op_id"], seq, op["target"], op["kind"], op["key"], op["field"], op["expected"],
                     op["new"], op["reason"], world.location, op_status, int(sent), error_kind, last_error, None,
                     op["quarantined_by"], now, now if sent else None, now if sent else None])
    world.store.con.executemany(f"INSERT INTO journal VALUES ({', '.join(['?'] * 20)})", rows)
    world.store.con.execute("UPDATE runs SET kind = 'reconcile', status = ?, error = ? WHERE run_id = ?",
                            [status, error, result.run_id])
    return world.store._frame("SELECT * FROM journal WHERE run_id = ?", [result.run_id])


def applied(seq: int, op: dict[str, Any]) -> tuple:
    """Quarantined ops stay quarantined; one op in 7 rejected (its error names a token), one failed (the service),
    one went stale; the rest done."""
    if op["status"] == "quarantined":
        return "quarantined", None, None
    return {0: ("rejected", "rejected", "422 Unprocessable: firstName too long"),
            1: ("stale", "precondition", None),
            2: ("failed", "unavailable", "503 Service Unavailable after 3 attempts")}.get(seq % 7, ("done", None, None))


def requests() -> dict[str, Any]:
    return {"ghl": RequestStats(used=120, rate_limited=2, retried=3),
            "tinyemail": {"used": 40, "rate_limited": 0, "retried": 1, "budget": 3000}}


class Tags(HTMLParser):
    """The tag names and attributes of a document, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attrs.extend(attrs)


def assert_valid(summary: dict[str, Any]) -> None:
    errors = sorted(VALIDATOR.iter_errors(summary), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    json.dumps(summary)  # plain JSON


def plan_counts(plan: pl.DataFrame) -> dict[str, dict[str, int]]:
    return {t: {k: plan.filter((pl.col("target") == t) & (pl.col("kind") == k)).height for k in KINDS}
            for t in ("ghl", "tinyemail")}


# ------------------------------------------------------------------------------------------ summary


def test_the_schema_rejects_a_summary_that_breaks_the_contract() -> None:
    empty_counts = {k: 0 for k in KINDS}
    good = {"run_id": "r", "status": "completed", "started_at": "2025-01-02T02:00:00Z",
            "finished_at": "2025-01-02T02:01:00Z", "dry_run": False, "locations": ["loc"],
            "counts": {"ghl": empty_counts, "tinyemail": empty_counts,
                       "applied": {"ghl": empty_counts, "tinyemail": empty_counts}},
            "conflicts": 0, "quarantined": 0, "stale": 0, "failed": 0,
            "requests": {s: {"used": 0, "rate_limited": 0, "retried": 0} for s in ("ghl", "tinyemail")},
            "guards": []}
    assert_valid(good)
    broken = [{**good, "status": "planned"}, {**good, "started_at": "yesterday"},
              {**good, "counts": {"ghl": empty_counts, "tinyemail": empty_counts}},
              {**good, "counts": {**good["counts"], "ghl": {"create": 1}}}, {**good, "failed": -1},
              {**good, "guards": [{"reason": "no name"}]}, {k: v for k, v in good.items() if k != "requests"}]
    for summary in broken:
        assert list(VALIDATOR.iter_errors(summary)), summary


def test_summary_json_follows_the_contract_for_dry_completed_held_and_failed_runs(world: World) -> None:
    policy = loose_policy(world)
    data_dir = world.settings.data_dir

    # a dry run: the plan file's ops, nothing applied
    dry = world.plan(policy=policy)
    summary = build_summary(world.store, data_dir, dry.run_id, dry_run=True, requests=requests(), guards=[])
    assert_valid(summary)
    assert summary["status"] == "completed" and summary["dry_run"] and summary["locations"] == [world.location]
    assert {s: summary["counts"][s] for s in ("ghl", "tinyemail")} == plan_counts(dry.plan)
    assert sum(n for s in ("ghl", "tinyemail") for n in summary["counts"]["applied"][s].values()) == 0
    assert summary["conflicts"] == dry.conflicts.height > 0
    assert summary["quarantined"] == dry.quarantined.height > 0 and summary["failed"] == summary["stale"] == 0
    # requests: the snapshot's (its run row) plus the caller's; the GHL budget is the daily allowance left
    # when the snapshot began (its request plan), TinyEmail has none unless the caller gives one
    snapshot = world.store.get_run(dry.snapshot_run_id)
    used, plans = json.loads(snapshot["requests_used_json"]), json.loads(snapshot["plan_json"])
    ghl = used[f"ghl:{world.location}"]
    assert summary["requests"]["ghl"] == {"used": 120 + ghl["total"], "rate_limited": 2 + ghl["rate_limited"],
                                          "retried": 3 + ghl["retried"],
                                          "budget": plans[f"ghl:{world.location}"]["daily_remaining"]}
    assert summary["requests"]["ghl"]["budget"] > 0 and ghl["total"] > 0
    assert summary["requests"]["tinyemail"]["used"] == 40 + used["tinyemail"]["total"]
    assert summary["requests"]["tinyemail"]["budget"] == 3000 and summary["guards"] == []

    # completed: applied through the journal
    done = world.plan(policy=policy)
    journal = simulate_apply(world, done, "completed", applied)
    summary = build_summary(world.store, data_dir, done.run_id, dry_run=False, requests=requests(), guards=[])
    assert_valid(summary)
    assert summary["status"] == "completed" and not summary["dry_run"] and summary["kind"] == "reconcile"
    assert {s: summary["counts"][s] for s in ("ghl", "tinyemail")} == plan_counts(done.plan)
    assert summary["counts"]["applied"] == plan_counts(journal.filter(pl.col("status") == "done"))
    by_status = dict(journal.group_by("status").len().iter_rows())
    assert summary["failed"] == by_status["failed"] > 0 and summary["stale"] == by_status["stale"] > 0
    assert summary["quarantined"] == by_status["quarantined"] == done.quarantined.height
    assert summary["started_at"].endswith("Z") and summary["finished_at"] >= summary["started_at"]

    # held by a guard: the tripped guards come from the run row when the caller names none
    held = world.plan()
    simulate_apply(world, held, "held", lambda seq, op: ("held" if op["status"] == "planned" else "quarantined",
                                                          None, None))
    summary = build_summary(world.store, data_dir, held.run_id, dry_run=False, requests={}, guards=[])
    assert_valid(summary)
    assert summary["status"] == "held" and summary["held"] > 0
    assert [g["name"] for g in summary["guards"]] == [r.split(":")[0] for r in held.held_reasons]
    assert "field_updates" in {g["name"] for g in summary["guards"]}
    assert summary["requests"]["ghl"]["used"] > 0 and summary["requests"]["ghl"]["budget"] is not None  # the snapshot's
    assert summary["requests"]["tinyemail"]["budget"] is None  # no daily allowance

    # failed: the error is kept, redacted
    token = world.secrets()[0]
    failed = world.plan(policy=policy)
    simulate_apply(world, failed, "failed", lambda seq, op: ("done", None, None) if seq < 5 else
                   ("quarantined", None, None) if op["status"] == "quarantined" else
                   ("failed", "unavailable", "GHL kept answering 503"), error=f"Unavailable: Bearer {token}")
    guards = [{"name": "failed_share", "reason": "more than 10% of the ops failed"}]
    summary = build_summary(world.store, data_dir, failed.run_id, dry_run=False, requests=requests(), guards=guards)
    assert_valid(summary)
    assert summary["status"] == "failed" and summary["failed"] == failed.plan.height - 5 - failed.quarantined.height
    assert summary["guards"][0]["name"] == "failed_share" and token not in json.dumps(summary)
    # a run a dead process left 'applying' is reported failed
    world.store.con.execute("UPDATE runs SET status = 'applying' WHERE run_id = ?", [failed.run_id])
    assert build_summary(world.store, data_dir, failed.run_id, dry_run=False, requests={}, guards=[])["status"] \
        == "failed"


# --------------------------------------------------------------------------------------------- HTML


def completed_run_with_files(world: World) -> tuple[dict[str, Any], Any, PlanRun]:
    """Three dry runs (the drift history), then an applied run with docs, its summary and files written."""
    policy = loose_policy(world)
    for _ in range(3):
        world.plan(policy=policy)
    result = world.plan(policy=policy, docs=True)
    simulate_apply(world, result, "completed", applied)
    summary = build_summary(world.store, world.settings.data_dir, result.run_id, dry_run=False,
                            requests=requests(), guards=[])
    return summary, write_run_files(world.store, world.settings.data_dir, result.run_id, summary), result


def test_report_html_has_the_charts_the_tables_and_escapes_user_data(world: World) -> None:
    summary, files, result = completed_run_with_files(world)

    assert files.directory == world.settings.data_dir / "runs" / result.run_id
    assert json.loads(files.summary.read_text(encoding="utf-8")) == summary
    assert not list(files.directory.glob("*.tmp")) and not list(files.directory.glob(".*.tmp"))
    html = files.report.read_text(encoding="utf-8")
    for chart in CHARTS:
        assert html.count(f'data-chart="{chart}"') == 1, chart
    assert html.count("<svg") == len(CHARTS)
    # self-contained: no script, no stylesheet or image fetched from anywhere
    tags = Tags()
    tags.feed(html)
    assert not {"script", "link", "img", "iframe", "object", "embed", "image", "use"} & tags.names, tags.names
    # the only absolute links: a contact's page in GHL (and the Prefect UI, unknown here)
    assert not [a for a in tags.attrs if a[0] == "src" or (a[0] == "href" and ":" in (a[1] or "")
                                                           and not (a[1] or "").startswith(GHL_APP))], tags.attrs
    assert "@import" not in html and "url(" not in html
    # the hostile name is in the conflicts table, escaped
    assert HOSTILE not in html and "window.__pwned" in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x onerror=&quot;" in html
    assert "Eve &amp; &quot;Co&quot;" in html
    # the tables: conflicts, rejected (with the API's message), failed, stale, quarantined, with their counts
    assert f"then `recon conflicts import`) <small>({summary['conflicts']:,})</small>" in html
    assert f"`recon quarantine retry OP_ID`) <small>({summary['rejected']:,})</small>" in html
    assert "firstName too long" in html and summary["rejected"] > 0
    assert f"planned again next run) <small>({summary['failed']:,})</small>" in html and "after 3 attempts" in html
    assert f"<small>({summary['stale']:,})</small>" in html and f"<small>({summary['quarantined']:,})</small>" in html
    # the drift chart shows the four runs; the Data Docs link resolves from the report's folder
    drift = html[html.index('data-chart="drift"'):html.index("</svg>", html.index('data-chart="drift"'))]
    assert drift.count("<rect") >= 4 and result.run_id in drift
    href = html.split('id="data-docs" href="')[1].split('"')[0]
    assert not href.startswith("/") and (files.directory / href).resolve().is_file()
    for secret in world.secrets():
        assert secret not in html and secret not in files.summary.read_text(encoding="utf-8")


def test_report_tables_are_capped_and_say_how_many_more(world: World) -> None:
    result = world.plan(policy=loose_policy(world))
    simulate_apply(world, result, "failed", lambda seq, op: ("failed", "unavailable", f"503 on op {seq}"))
    summary = build_summary(world.store, world.settings.data_dir, result.run_id, dry_run=False, requests={},
                            guards=[])
    html = write_run_files(world.store, world.settings.data_dir, result.run_id, summary).report.read_text()

    assert result.plan.height > 100
    assert f"… and {result.plan.height - 100:,} more not shown ({result.plan.height:,} in all)" in html
    assert "503 on op 99<" in html and "503 on op 100<" not in html


def test_report_renders_in_headless_chromium(world: World, tmp_path: Path) -> None:
    _, files, _ = completed_run_with_files(world)
    with browser_page() as watched:
        page = watched.page
        page.goto(files.report.as_uri(), wait_until="load")
        boxes = {name: page.locator(f'svg[data-chart="{name}"]').bounding_box() for name in CHARTS}
        bars = {name: page.locator(f'svg[data-chart="{name}"] rect').evaluate_all(
            "els => els.filter(e => { const b = e.getBoundingClientRect(); return b.width > 0 && "
            "b.height > 0; }).length") for name in CHARTS}
        pwned = page.evaluate("window.__pwned")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    problems, fetched = watched.problems, watched.fetched

    assert problems == [] and pwned is None
    assert fetched == [files.report.as_uri()]  # nothing else was loaded
    for name, box in boxes.items():
        assert box is not None and box["width"] > 300 and box["height"] > 40, (name, box)
    assert bars["drift"] >= 4 and bars["kinds"] >= 2 and bars["checks"] >= 1 and bars["requests"] >= 2, bars
    assert (tmp_path / "report.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------- artifacts


def test_publish_artifacts_creates_the_summary_tables_and_link(world: World, prefect_server: str) -> None:  # noqa: F811
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    summary, files, result = completed_run_with_files(world)
    ops = run_ops(world.store, world.settings.data_dir, result.run_id)
    conflicts = load_conflicts(world.settings.data_dir, result.run_id)

    changes = applied_changes(ops, run_context(world.settings.data_dir, result.run_id), {})

    @flow(name="report-artifacts-test")
    def publish() -> dict[str, Any]:
        return publish_artifacts(summary, files, conflicts=conflicts, problems=ops, applied=changes,
                                 quarantine=quarantine, identity=identity)

    quarantine = load_quarantine_file(world.settings.data_dir, result.run_id, Reviews(world.store).dismissed())
    identity = open_identity_reviews(world.settings.data_dir, result.run_id, world.store)
    assert quarantine is not None and identity is not None
    ids = publish()
    assert set(ids) == {"recon-summary", "recon-conflicts", "recon-rejected-ops", "recon-failed-ops",
                        "recon-quarantined-ops",
                        "recon-applied-changes", "recon-identity-reviews", "recon-report"}
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=list(ids.values()))))
    by_key = {a.key: a for a in found}
    assert set(by_key) == set(ids) and all(a.flow_run_id is not None for a in found)
    assert by_key["recon-summary"].type == "markdown" and result.run_id in by_key["recon-summary"].data
    updates = summary["counts"]["tinyemail"]["update"]
    assert f"| tinyemail | update | {updates:,} | {summary['counts']['applied']['tinyemail']['update']:,} |" \
        in by_key["recon-summary"].data
    failed = json.loads(by_key["recon-failed-ops"].data)
    assert by_key["recon-failed-ops"].type == "table" and len(failed) == min(summary["failed"], 50)
    assert {row["error_kind"] for row in failed} == {"unavailable"}
    rejected = json.loads(by_key["recon-rejected-ops"].data)  # counted and shown apart from the service's failures
    assert summary["rejected"] > 0 and len(rejected) == min(summary["rejected"], 50)
    assert {row["last_error"] for row in rejected} == {"422 Unprocessable: firstName too long"}
    quarantined = json.loads(by_key["recon-quarantined-ops"].data)
    assert len(quarantined) == min(summary["quarantined"], 50)
    # each quarantined op with its person and since when it is held
    assert all(row["first_seen"] and row["quarantined_by"] and "nights_open" in row for row in quarantined)
    assert any(row["email"] for row in quarantined) and any(row["ghl_url"] for row in quarantined)
    reviews = json.loads(by_key["recon-identity-reviews"].data)  # an empty table is its columns, no rows
    assert (len(reviews) if isinstance(reviews, list) else 0) == min(identity.height, 50)
    assert set(reviews[0] if isinstance(reviews, list) else reviews) >= {"review_id", "email", "first_seen"}
    done = sum(sum(kinds.values()) for kinds in summary["counts"]["applied"].values())
    applied_rows = json.loads(by_key["recon-applied-changes"].data)
    assert by_key["recon-applied-changes"].type == "table" and len(applied_rows) == min(done, 50) > 0
    assert all(row["email"] for row in applied_rows if row["ghl_url"]) and any(row["name"] for row in applied_rows)
    assert any(row["tinyemail"] == HOSTILE for row in json.loads(by_key["recon-conflicts"].data))
    assert by_key["recon-report"].type == "markdown"  # prefect renders a link artifact as markdown
    assert files.report.resolve().as_uri() in by_key["recon-report"].data
    for secret in world.secrets():
        assert all(secret not in str(a.data) for a in found)


# ---------------------------------------------------------------------------------------------- CLI


def test_recon_runs_and_recon_report(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    summary, files, result = completed_run_with_files(world)
    for name, value in {**world.env(), "COLUMNS": "220"}.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    runs = runner.invoke(app, ["runs"])
    assert runs.exit_code == 0, runs.output
    rows = table_rows(runs.output)
    assert result.run_id in rows, runs.output
    assert rows[result.run_id][1:3] == ["reconcile", "completed"]
    assert rows[result.run_id][5:7] == [f"{result.plan.height:,}", f"{summary['failed']:,}"]
    plans = [cells for cells in rows.values() if cells[1] == "plan"]
    assert len(plans) == 3 and all(c[2] == "planned" and c[6] == "-" for c in plans)
    assert any(cells[1] == "snapshot" for cells in rows.values())

    # the latest reconcile/plan run by default; the report files are written again when missing
    files.report.unlink()
    shown = runner.invoke(app, ["report"])
    assert shown.exit_code == 0, shown.output
    assert f"run {result.run_id}: completed" in shown.output and f"report: {files.report}" in shown.output
    assert f"failed {summary['failed']:,}" in shown.output and files.report.exists()
    files.summary.unlink()
    as_json = runner.invoke(app, ["report", result.run_id, "--json"])
    assert as_json.exit_code == 0, as_json.output
    rebuilt = json.loads(as_json.output[:as_json.output.rindex("}") + 1])
    assert_valid(rebuilt)
    assert rebuilt["counts"] == summary["counts"] and rebuilt["failed"] == summary["failed"]
    assert rebuilt["dry_run"] is False and files.summary.exists()

    unknown = runner.invoke(app, ["report", "no-such-run"])
    assert unknown.exit_code == 1 and "unknown run 'no-such-run'" in unknown.output


def test_rebuilding_a_dry_runs_files_takes_requests_and_guards_from_the_run_row(world: World) -> None:
    result = world.plan()  # held by the field-update guard

    summary, files = rebuild_run_files(world.store, world.settings.data_dir, result.run_id)
    assert_valid(summary)
    assert summary["status"] == "held" and summary["dry_run"] and files.report.exists()
    assert [g["name"] for g in summary["guards"]] == ["field_updates"]
    # the run row's requests (its snapshot's, per location and phase) summed per system
    used = json.loads(world.store.get_run(result.run_id)["requests_used_json"])
    assert summary["requests"]["ghl"]["used"] == used[f"ghl:{world.location}"]["total"] > 0
    assert summary["requests"]["tinyemail"]["used"] == used["tinyemail"]["total"] > 0
    # kept files are reused as they are
    files.report.write_text("kept", encoding="utf-8")
    assert rebuild_run_files(world.store, world.settings.data_dir, result.run_id)[0] == summary
    assert files.report.read_text(encoding="utf-8") == "kept"


def test_recon_report_serve_serves_reports_and_nothing_else(tmp_path: Path, serve: Any) -> None:
    """`recon report serve` (contact_recon/service/reports.py): the reports at a URL, nothing else of the data dir."""
    from contact_recon.service.reports import report_app

    run_id = "20261201T020000Z-0123abcd"
    directory = tmp_path / "runs" / run_id
    directory.mkdir(parents=True)
    (directory / "report.html").write_text("<h1>the report</h1>")
    (directory / "plan.parquet").write_bytes(b"PAR1 customer data")
    (tmp_path / "recon.duckdb").write_bytes(b"the store")
    server = serve(report_app(tmp_path))
    index = httpx.get(server.base_url + "/")
    assert index.status_code == 200 and f"/runs/{run_id}/report.html" in index.text
    report = httpx.get(f"{server.base_url}/runs/{run_id}/report.html")
    assert report.status_code == 200 and "the report" in report.text and "text/html" in report.headers["content-type"]
    for path in (f"/runs/{run_id}/plan.parquet", "/recon.duckdb", f"/runs/{run_id}/../../recon.duckdb",
                 "/runs/not-a-run/report.html", f"/runs/{run_id}/summary.json"):
        assert httpx.get(server.base_url + path).status_code == 404, path
