"""A session-scoped Prefect server for the tests that need one (Secret blocks, global concurrency limits).

Import it in a test module with `from prefect_fixture import prefect_server  # noqa: F401`. The harness
starts a throwaway server on a temporary SQLite database (about 12 s), once per session; the fixture
gives its API URL so subprocesses can be pointed at it through PREFECT_API_URL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness gave no API URL"
        yield str(url)
