"""What every process that runs the product sets up first: `prepare_process()`.

Its entries call it: the `recon` command (its app callback, so every command, the demo, `recon webhooks serve` and
`recon watch tinyemail` included) and the flow modules (`flows/reconcile.py`, `flows/sync_contact.py`) at import,
which is how a worker's flow-run process starts our code. Calling it again changes nothing.

1. Secrets are masked in every log record of the process (`systems/redaction.py` `install_log_redaction`): the
   console, Prefect's API log handler (the flow run's logs in the UI), and any handler added later.
2. The umask is 077: a file that a library creates for us (DuckDB's write-ahead log, the great-expectations
   project, Prefect's local database in a temporary server this process starts) is its owner's alone from the
   start; the data dir's own files get 0700/0600 explicitly anyway (`store/files.py`).
3. Prefect's home (`PREFECT_HOME`, `~/.prefect` by default: its local database keeps flow-run logs and
   parameters) is a 0700 folder.
4. A temporary Prefect server that this process starts (`recon run`, the demo, without `PREFECT_API_URL`) sends
   no telemetry: at its start the telemetry service writes to the new SQLite database while the migrations hold
   it, which printed a "database is locked" traceback; and it may take 120 s to start (a new database's
   migrations take longer than Prefect's 20 s default on a busy machine). Both are defaults: the environment wins.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from contact_recon.store.files import PRIVATE_UMASK, private_dir
from contact_recon.systems.redaction import install_log_redaction

EPHEMERAL_SERVER_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}

log = logging.getLogger(__name__)


def prepare_process() -> None:
    """Mask secrets in every log record, umask 077, Prefect's home 0700, a quiet temporary Prefect server."""
    install_log_redaction()
    os.umask(PRIVATE_UMASK)
    for name, value in EPHEMERAL_SERVER_DEFAULTS.items():
        os.environ.setdefault(name, value)
    home = prefect_home()
    try:
        private_dir(home)
    except OSError as exc:  # not ours (a shared home): Prefect decides, and we say so
        log.warning("Prefect's home %s could not be made owner-only: %s", home, exc)


def prefect_home() -> Path:
    """Prefect's home as Prefect reads it from the environment (its settings would import Prefect: seconds)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
