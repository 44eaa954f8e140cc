"""The run report: `build.py` (summary.json, report.html, Prefect artifacts), `charts.py` (inline SVG charts)
and `publish.py` (`report_run`, the step every run ends with)."""
