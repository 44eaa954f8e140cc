"""Shared test fixtures: real sandbox servers over HTTP on 127.0.0.1, and where the specs are."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette

from contact_recon.sandbox.server import RunningServer, serve_in_thread

REPO = Path(__file__).resolve().parent.parent


def specs_dir() -> Path:
    """The read-only specs: $RECON_SPECS_DIR, else ../shared/specs beside the repo."""
    return Path(os.environ.get("RECON_SPECS_DIR", REPO.parent / "shared" / "specs"))


@pytest.fixture
def sandboxes(serve: Callable[[Starlette], RunningServer]) -> Callable[..., tuple[RunningServer, RunningServer]]:
    """Start both sandbox servers from one (validated) fixture: `sandboxes(fixture, rate_scale=.., faults=..)`."""
    from contact_recon.sandbox import ghl, tinyemail
    from contact_recon.sandbox.fixture import validate_fixture

    def start(fixture: dict, **options: object) -> tuple[RunningServer, RunningServer]:
        data = validate_fixture(fixture)
        return serve(ghl.create_app(data["ghl"], **options)), serve(tinyemail.create_app(data["tinyemail"], **options))

    return start


@pytest.fixture
def serve() -> Iterator[Callable[[Starlette], RunningServer]]:
    """Start apps on free loopback ports for one test; all are stopped after it."""
    running: list[RunningServer] = []

    def start(app: Starlette) -> RunningServer:
        server = serve_in_thread(app)
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


class FakeClock:
    """A settable clock for exact rate-limit and date tests."""

    def __init__(self, t: float = 1_790_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One throwaway Prefect server (the test harness, a temporary SQLite database, ~12 s to start) for the
    whole session; its API URL, so subprocesses can be pointed at it through PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness gave no API URL"
        yield str(url)
