"""The fixtures every test may use, from tests/support (see its __init__ for what is where), and the order of the
suite's files.

- `serve`, `sandboxes`, `clock` (tests/support/servers.py): real sandbox servers over HTTP on 127.0.0.1,
  stopped after the test; a settable clock;
- `prefect_server` (session), `prefect_events` (module) (tests/support/prefect.py): the session's Prefect
  server (one per pytest-xdist worker) and this process's events worker pointed at it.

The groups: tests/unit (pure functions, no server), tests/contract (the sandboxes, the connectors and the
specs they keep), tests/e2e (stages, flows, the CLI, Prefect, crash, chaos and security stories).

`make test` runs the files on two pytest-xdist workers, a whole file per worker (`--dist loadfile`: a file's
module-scoped fixtures are built once, and its tests run in their order), the longest files first (`SLOWEST`,
with `--no-loadscope-reorder`), so no long file is left to run alone at the end.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest_plugins = ["tests.support.servers", "tests.support.prefect"]

# The longest files (about 20 s and more of test time each), longest first; the others follow in collection order.
SLOWEST = (
    "tests/e2e/test_chaos.py",
    "tests/e2e/test_webhook_chaos.py",
    "tests/e2e/test_apply_crash.py",
    "tests/unit/test_merge_properties.py",
    "tests/e2e/test_held_runs.py",
    "tests/e2e/test_flow.py",
    "tests/e2e/test_reads.py",
    "tests/e2e/test_guards.py",
    "tests/e2e/test_security.py",
    "tests/e2e/test_demo.py",
    "tests/e2e/test_scale_out.py",
    "tests/e2e/test_postgres_workers.py",
    "tests/e2e/test_webhooks.py",
    "tests/e2e/test_webhook_syncs.py",
    "tests/e2e/test_alerts.py",
    "tests/e2e/test_apply.py",
    "tests/e2e/test_report.py",
    "tests/e2e/test_pipeline.py",
    "tests/e2e/test_policy_block.py",
    "tests/contract/test_connector_ghl.py",
    "tests/contract/test_bad_input.py",
    "tests/contract/test_auth.py",
    "tests/contract/test_connector_tinyemail.py",
)


# The terminal size variables as this session was started with them. pytest imports `readline` early
# (_pytest/capture.py), and GNU readline exports LINES and COLUMNS to the C environment (80x24 off a terminal):
# the controller's os.environ does not show them, but every process it starts inherits them, so without this the
# xdist workers would see COLUMNS=80, and a CLI console built then keeps that width whatever a test sets.
TERMINAL_SIZE = ("COLUMNS", "LINES")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(pytest-xdist, in the controller) Hand each worker the terminal size variables as they really are."""
    node.workerinput["terminal_size"] = {name: os.environ.get(name) for name in TERMINAL_SIZE}


def pytest_configure(config: pytest.Config) -> None:
    sizes = getattr(config, "workerinput", {}).get("terminal_size")
    for name, value in (sizes or {}).items():  # an xdist worker: the session's values, not readline's
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slowest files first (stable: tests keep their order within a file)."""
    rank = {path: i for i, path in enumerate(SLOWEST)}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        first.setdefault(item.nodeid.split("::", 1)[0], i)

    def key(item: pytest.Item) -> tuple[int, int]:
        path = item.nodeid.split("::", 1)[0]
        return rank.get(path, len(SLOWEST)), first[path]

    items.sort(key=key)
