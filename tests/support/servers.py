"""Real sandbox servers over HTTP on 127.0.0.1, stopped after the test that started them, and a settable clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from starlette.applications import Starlette

from contact_recon.sandbox.server import RunningServer, serve_in_thread

Serve = Callable[[Starlette], RunningServer]
Sandboxes = Callable[..., tuple[RunningServer, RunningServer]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start apps on free loopback ports for one test; all are stopped after it."""
    running: list[RunningServer] = []

    def start(app: Starlette) -> RunningServer:
        server = serve_in_thread(app)
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def sandboxes(serve: Serve) -> Sandboxes:
    """Start both sandbox servers from one (validated) fixture: `sandboxes(fixture, rate_scale=.., faults=..)`.

    GHL's search shows writes at once here (`search_lag_s=0`) unless a test asks for the lag
    (`search_lag_s=2`, the sandbox's default, as tests/e2e/test_pipeline.py's search-lag test does)."""
    from contact_recon.sandbox import ghl, tinyemail
    from contact_recon.sandbox.fixture import validate_fixture

    def start(fixture: dict, search_lag_s: float = 0.0, **options: object) -> tuple[RunningServer, RunningServer]:
        data = validate_fixture(fixture)
        return (serve(ghl.create_app(data["ghl"], search_lag_s=search_lag_s, **options)),
                serve(tinyemail.create_app(data["tinyemail"], **options)))

    return start


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
