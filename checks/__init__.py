"""Data-hygiene checks: great-expectations suites over the snapshot frames and the plan.

`suites.py` holds the suites as data (each expectation's meaning, severity and threshold), `run.py`
validates them with GX and builds Data Docs under `$RECON_DATA_DIR/gx/`, and `quarantine.py` marks the
ops of records that failed a blocking expectation as `quarantined`, so bad data is never copied from
one system to the other. Results are stored in DuckDB's `check_results` (`contact_recon/store/db.py`).
"""

from contact_recon.checks.quarantine import apply_quarantine, split_plan
from contact_recon.checks.run import CheckReport, ExpectationResult, run_checks
from contact_recon.checks.suites import SUITES, Thresholds, describe_suites

__all__ = ["SUITES", "CheckReport", "ExpectationResult", "Thresholds", "apply_quarantine", "describe_suites",
           "run_checks", "split_plan"]
