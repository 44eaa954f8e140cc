"""The report's trend charts (contact_recon/report/charts.py: log-scale columns, small multiples), readable values
(contact_recon/report/applied.py) and the offline, escaped Data Docs helpers (checks/data_docs.py)."""

from __future__ import annotations

import html
import re

import polars as pl
import pytest
from contact_recon.checks.data_docs import REPLACED, escaped, offline, unescaped
from hypothesis import given
from hypothesis import strategies as st

from contact_recon.report import charts
from contact_recon.report.applied import readable

HOSTILE = '<script>alert(1)</script>&"'
RECT = re.compile(r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)" fill="(#[0-9a-f]+)"><title>')  # bars


def heights(svg: str, color: str) -> list[float]:
    return [float(h) for _, h, c in RECT.findall(svg) if c == color]


def test_log_columns_keep_small_nights_visible_and_label_the_decades() -> None:
    series = [charts.Series("to GHL", "#111111"), charts.Series("to TinyEmail", "#222222")]
    rows = [charts.Row("first", [5000, 1]), charts.Row("night", [3, 10]), charts.Row(HOSTILE, [1, 0])]
    svg = charts.columns(charts.Chart("drift", "Drift", series, rows), highlight="night", log=True)

    ghl = heights(svg, "#111111")
    assert ghl == sorted(ghl, reverse=True) and len(ghl) == 3
    assert ghl[0] == charts.COL_AREA_H
    # 1 op of 5,000: a tenth of the column or so on a log scale, a 1/5000 sliver on a linear one
    assert ghl[2] / ghl[0] > 0.05 > 1 / 5000
    for decade in ("1", "10", "100", "1,000"):
        assert f">{decade}</text>" in svg, decade
    assert ">10,000</text>" not in svg
    assert HOSTILE not in svg and html.escape(HOSTILE) in svg
    assert svg.count('fill="none" stroke="#111"') == 1  # the highlighted run


def test_small_multiples_draw_each_panel_to_its_own_scale() -> None:
    labels = ["r1", "r2", "r3"]
    panels = [charts.Panel("ops: create", [5000, 2, 1], "#aa0000"),
              charts.Panel("conflicts open", [1, 3, 2], "#00aa00"),
              charts.Panel("never", [0, 0, 0], "#0000aa"), charts.Panel(HOSTILE, [0, 1, 0], "#aaaa00")]
    svg = charts.multiples("trends", "Trends", labels, panels, highlight=2)

    creates, conflicts = heights(svg, "#aa0000"), heights(svg, "#00aa00")
    assert max(creates) == max(conflicts) == charts.PANEL_H  # each panel reaches its own top
    assert conflicts == pytest.approx([charts.PANEL_H / 3, charts.PANEL_H, charts.PANEL_H * 2 / 3], abs=0.1)
    assert "never" not in svg and heights(svg, "#0000aa") == []  # an always-empty panel is left out
    assert ">max 5,000<" in svg and ">max 3<" in svg
    assert HOSTILE not in svg and html.escape(HOSTILE) in svg
    assert svg.count('fill="none" stroke="#111"') == 3  # the run at index 2, outlined in each panel shown
    assert "no runs" in charts.multiples("trends", "Trends", [], panels, empty="no runs")


def test_readable_values_show_payload_fields_and_list_names() -> None:
    names = {"6f1c2b1e-0000-4000-8000-000000000001": "Newsletter"}
    record = ('{"email":"a@example.com","first_name":"Ann","lists":["6f1c2b1e-0000-4000-8000-000000000001"],'
              '"phone":null}')
    assert readable(record, names) == "email: a@example.com · first_name: Ann · lists: Newsletter"
    assert readable("list:6f1c2b1e-0000-4000-8000-000000000001", names) == "list:Newsletter"
    assert readable('["b", "a"]', {}) == "b, a"
    assert readable("{not json", {}) == "{not json" and readable(None, names) is None
    assert readable("list:6f1c2b1e-0000-4000-8000-00000000000f", names) == "list:6f1c2b1e-0000-4000-8000-00000000000f"


def test_offline_templates_reference_nothing_on_the_network() -> None:
    source = ('<link rel="stylesheet" href="https://cdn.example/bootstrap.css"/>\n'
              '<script src="https://code.jquery.com/jquery.js" integrity="x"></script>\n'
              "<style>{% include 'data_docs_default_styles.css' %}</style>\n"
              "body{background:url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/x.png')}\n"
              '<a href="https://greatexpectations.io">GX</a>')
    text = offline(source)
    assert "cdn.example" not in text and "jquery" not in text and "s3.us-east-2" not in text
    assert "<style>" in text and "{% include 'data_docs_default_styles.css' %}" in text
    assert '<a href="https://greatexpectations.io">' in text  # a link is no asset
    assert all("http" not in t and "<script" not in t for t in REPLACED.values())


@given(st.lists(st.one_of(st.none(), st.text()), min_size=1, max_size=8))
def test_escaped_values_read_back_as_they_were(values: list[str | None]) -> None:
    frame = escaped(pl.DataFrame({"check": values}, schema={"check": pl.String}))
    for original, shown in zip(values, frame["check"].to_list(), strict=True):
        assert (shown is None) == (original is None)
        if original is not None:
            assert "<" not in shown and ">" not in shown and '"' not in shown
            assert shown == html.escape(original) and unescaped(shown) == original
