"""Data-hygiene checks: great-expectations suites over the snapshot frames and the plan.

`suites.py` holds the suites as data (each expectation's meaning, severity and threshold), `run.py`
validates them with GX and builds Data Docs under `$RECON_DATA_DIR/gx/`, and `quarantine.py` marks the
ops of records that failed a blocking expectation as `quarantined`, so bad data is never copied from
one system to the other. Results are stored in DuckDB's `check_results` (`tasks/db.py`).
"""

from checks.quarantine import apply_quarantine, split_plan
from checks.run import CheckReport, ExpectationResult, run_checks
from checks.suites import SUITES, Thresholds, describe_suites

__all__ = ["SUITES", "CheckReport", "ExpectationResult", "Thresholds", "apply_quarantine", "describe_suites",
           "run_checks", "split_plan"]
