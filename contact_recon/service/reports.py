"""`recon report serve`: the run reports at a URL the team can open from the Prefect UI.

A small read-only web app over the data dir: `/` lists the recent runs, `/runs/<run_id>/report.html` is a run's
report, `/runs/<run_id>/summary.json` and `/runs/<run_id>/conflicts.csv` its summary and conflicts. Nothing else
under the data dir is served (the plan and state files, the store, the tokens). Set `RECON_REPORT_BASE_URL` to the
address this is reachable at (e.g. behind the team's proxy) and the runs' Prefect link artifacts point here
(`contact_recon.report.build.report_url`). It binds 127.0.0.1 by default: the reports hold customer data.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from contact_recon.store.files import CONFLICTS_FILE, REPORT_FILE, SUMMARY_FILE

SERVED = {REPORT_FILE: "text/html; charset=utf-8", SUMMARY_FILE: "application/json",
          CONFLICTS_FILE: "text/csv; charset=utf-8"}
RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
LISTED = 50


def report_app(data_dir: Path) -> Starlette:
    runs = Path(data_dir) / "runs"

    async def index(request: Request) -> Response:
        reports = sorted((p for p in runs.glob(f"*/{REPORT_FILE}") if RUN_ID.match(p.parent.name)),
                         key=lambda p: p.parent.name, reverse=True)[:LISTED]
        items = "".join(f'<li><a href="/runs/{escape(p.parent.name)}/{REPORT_FILE}">{escape(p.parent.name)}</a></li>'
                        for p in reports) or "<li>no report yet</li>"
        return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>contact-recon reports</title>"
                            f"<h1>contact-recon reports</h1><ul>{items}</ul>")

    async def run_file(request: Request) -> Response:
        run_id, name = request.path_params["run_id"], request.path_params["name"]
        path = runs / run_id / name
        if not RUN_ID.match(run_id) or name not in SERVED or not path.is_file():
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path, media_type=SERVED[name])

    return Starlette(routes=[Route("/", index), Route("/runs/{run_id}/{name}", run_file)])
