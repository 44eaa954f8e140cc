"""Data Docs a person can open anywhere: one site per run, no network, user values shown as text.

GX Core 1.x builds Data Docs with Jinja templates whose pages load Bootstrap, jQuery, bootstrap-table,
Vega and Font Awesome from CDNs, take their logo from S3 and fill their index tables with JavaScript. Offline
those pages are unstyled and the index is empty. GX lets a site name its own *view* classes (the site
config's `view: {module_name, class_name}` per section and for the index), so:

- `OfflinePageView` and `OfflineIndexPageView` are GX's page views with one more template loader in front
  (`OfflineTemplates`): GX's own templates, each with every `http(s)://` asset reference taken out (CDN
  `<script>`/`<link>` tags, `url(...)` in CSS, the S3 image folder -> the site's own `static/images/`, as
  GX computes it per page), and
  six templates replaced: `js_script_imports.j2`, `cloud-footer.j2`, `bootstrap_table_js_functions.j2`,
  `page_action_card.j2` (its "failed only" toggle is jQuery) and `favicon.j2` (one folder short on
  validation pages) by nothing, and `bootstrap_table.j2` by
  the same columns and rows as a static HTML table, each row linking where GX's clickable row went.
  `OFFLINE_CSS` stands in for the few Bootstrap classes the pages use. The pages then need no network and run no script.
- `site_config(directory)` is a site writing into `directory` (the run's own folder, so an older run's
  report keeps linking its own results) with those views and no how-to buttons (their script needs jQuery).
- `prune_assets(directory)`: GX copies 4 MB of fonts, GIFs and images into every site; a run's site keeps
  only the files its pages reference (the logo), so a site per night stays small.
- Sample values: GX puts unexpected values into the page as markup (tried: an email
  `<img src=x onerror=...>` became a live tag). `escaped` HTML-escapes the text columns of the frame GX
  validates, so GX's page shows the value as text; `unescaped` turns GX's sample values back into the
  values themselves for the store and the report (`html.unescape` inverts `html.escape` exactly).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

REMOTE_TAG = re.compile(r"""<(script|link)\b[^>]*\b(?:src|href)\s*=\s*["']https?://[^>]*>(?:\s*</script>)?""",
                        re.IGNORECASE)
REMOTE_URL = re.compile(r"""url\(\s*['"]?https?://[^)]*\)""", re.IGNORECASE)
REMOTE_IMAGES = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
LOCAL_IMAGES = "./static/images/"  # copied into every site by GX (the index's path; other pages compute theirs)
REMOTE_IMAGES_SET = '{% set static_images_dir = "' + REMOTE_IMAGES + '" -%}'  # top_navbar.j2's override
LOCAL_IMAGES_SET = ('{% if "SiteIndex" in renderer_type %}{% set static_images_dir = "' + LOCAL_IMAGES
                    + '" -%}{% endif %}')
GX_STYLES = "<style>{% include 'data_docs_default_styles.css' %}</style>"  # in GX's page templates
OFFLINE_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;font-size:14px}
.container-fluid{padding:16px 32px}.row{display:flex;flex-wrap:wrap;gap:16px}.col-md-2{flex:0 0 16%}
.col-md-10{flex:1 1 70%;min-width:0}.navbar{display:flex;align-items:center;padding:0 24px;border-bottom:1px solid #ddd}
.navbar img{height:40px}.breadcrumb{display:inline-flex;list-style:none;gap:8px;margin:0 0 0 16px;padding:0}
.breadcrumb-item+.breadcrumb-item::before{content:"/";padding-right:8px;color:#777}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;
vertical-align:top}th{background:#f4f4f4}.card{border:1px solid #ddd;border-radius:4px;margin:0 0 14px}
.card-header{background:#f7f7f7;padding:6px 12px;border-bottom:1px solid #ddd}.card-body{padding:8px 12px}
.text-danger{color:#c62828}.text-success{color:#2e7d32}.badge{padding:1px 6px;border-radius:8px;background:#eee}
.collapse:not(.show){display:none}.d-none{display:none}.fas.fa-check-circle::before{content:"✔";color:#2e7d32}
.fas.fa-times::before{content:"✘";color:#c62828}.fas.fa-check::before{content:"✔";color:#2e7d32}
"""
_EMPTY = "{# offline: nothing #}"
_STATIC_TABLE = """{% include 'content_block_header.j2' %}
{% set table_columns = content_block["table_columns"] %}
<table id="{{ content_block_id ~ '-body-table' }}" class="table table-sm offline-table">
<thead><tr>{% for column in table_columns %}<th>{{ column["title"] }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in content_block["table_data"] | render_bootstrap_table_data %}
<tr>{% for column in table_columns %}{% set cell = row.get(column["field"], "") | safe %}<td>
{%- if row.get("_table_row_link_path") %}<a href="{{ row["_table_row_link_path"] }}">{{ cell }}</a>
{%- else %}{{ cell }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}
</tbody></table>
"""
REPLACED = {"js_script_imports.j2": _EMPTY, "cloud-footer.j2": _EMPTY, "bootstrap_table_js_functions.j2": _EMPTY,
            "page_action_card.j2": _EMPTY, "favicon.j2": _EMPTY, "bootstrap_table.j2": _STATIC_TABLE}


def offline(source: str) -> str:
    """A GX template's text with every http(s) asset reference taken out (module docstring)."""
    text = REMOTE_TAG.sub("", source)
    text = REMOTE_URL.sub("none", text)
    text = text.replace(REMOTE_IMAGES_SET, LOCAL_IMAGES_SET).replace(REMOTE_IMAGES, LOCAL_IMAGES)
    return text.replace(GX_STYLES, f"<style>{OFFLINE_CSS}</style>{GX_STYLES}")


def _loader() -> Any:
    from jinja2 import BaseLoader, ChoiceLoader, PackageLoader

    gx_templates = ChoiceLoader([PackageLoader("great_expectations", "render/view/templates"),
                                 PackageLoader("great_expectations", "render/view/static/styles")])

    class OfflineTemplates(BaseLoader):
        """GX's templates made offline (`offline`), four of them replaced (`REPLACED`)."""

        def get_source(self, environment: Any, template: str) -> tuple[str, str | None, Callable[[], bool] | None]:
            if template in REPLACED:
                return REPLACED[template], None, lambda: True
            source, filename, uptodate = gx_templates.get_source(environment, template)  # or TemplateNotFound
            return offline(source), filename, uptodate

    return OfflineTemplates()


def _offline_env(view: Any) -> None:
    from jinja2 import ChoiceLoader

    view.env.loader = ChoiceLoader([_loader(), view.env.loader])


def _views() -> tuple[type, type]:
    from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView

    class OfflinePageView(DefaultJinjaPageView):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            _offline_env(self)

    class OfflineIndexPageView(DefaultJinjaIndexPageView):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            _offline_env(self)

    return OfflinePageView, OfflineIndexPageView


def __getattr__(name: str) -> type:
    """The view classes, made on first use (GX is imported lazily: its import takes seconds)."""
    if name in ("OfflinePageView", "OfflineIndexPageView"):
        page, index = _views()
        globals().update(OfflinePageView=page, OfflineIndexPageView=index)
        return page if name == "OfflinePageView" else index
    raise AttributeError(name)


def site_config(directory: Path) -> dict[str, Any]:
    """A Data Docs site writing into `directory`, with the offline views and no how-to buttons."""
    page_view = {"module_name": __name__, "class_name": "OfflinePageView"}
    return {
        "class_name": "SiteBuilder", "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(directory)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "show_cta_footer": False,
                               "view": {"module_name": __name__, "class_name": "OfflineIndexPageView"}},
        "site_section_builders": {"expectations": {"view": page_view}, "validations": {"view": page_view},
                                  "profiling": {"view": page_view}},
    }


STATIC_REF = re.compile(r"""(?:src|href)\s*=\s*["'](?:\.\./|\./)*(static/[^"'?#]+)""")


def prune_assets(directory: Path) -> None:
    """Delete the files under `directory/static/` that no page of the site references."""
    used = {m.group(1) for page in directory.rglob("*.html") for m in STATIC_REF.finditer(page.read_text("utf-8"))}
    for path in sorted((directory / "static").rglob("*"), reverse=True):  # files before their folders
        if path.is_file() and path.relative_to(directory).as_posix() not in used:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def escaped(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its text columns HTML-escaped as `html.escape` does (the values GX writes into pages)."""
    text = [c for c, t in frame.schema.items() if t == pl.String]
    return frame.with_columns(pl.col(c).str.replace_all("&", "&amp;", literal=True)
                              .str.replace_all("<", "&lt;", literal=True).str.replace_all(">", "&gt;", literal=True)
                              .str.replace_all('"', "&quot;", literal=True).str.replace_all("'", "&#x27;", literal=True)
                              for c in text)


def unescaped(value: Any) -> str:
    """A sample value GX gave back, as the record held it (the inverse of `escaped`)."""
    return html.unescape(str(value))
