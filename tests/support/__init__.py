"""What the tests share: where things are (`REPO`, `specs_dir`), and the support modules beside this one.

- `servers`: the sandbox servers over HTTP on 127.0.0.1 (`serve`, `sandboxes`) and a settable clock;
- `prefect`: the session's Prefect server (`prefect_server`) and reading its events back (`prefect_events`),
  and all that a flow run left there (`flow_run_texts`);
- `worlds`: both sandboxes, settings, a store and the stages run against them (`World`), with state in
  comparable form (`ghl_people`, `te_people`, `duplicates`) and `recon` run as a command (`run_cli`);
- `runs`: `recon run` as a command (in this process or as a child process) against a data dir and both
  sandboxes, for the crash and chaos stories (`RunWorld`), and the chaos suite's faults and checks;
- `merge`, `connector_contract`, `ghl_openapi`, `secret_scan`, `modes`: the helpers of one group of tests each.

The fixtures are registered for every test by tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def specs_dir() -> Path:
    """The read-only specs: $RECON_SPECS_DIR, else ../shared/specs beside the repo."""
    return Path(os.environ.get("RECON_SPECS_DIR", REPO.parent / "shared" / "specs"))
