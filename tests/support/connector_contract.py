"""The contract every connector keeps, run against its sandbox over HTTP (STYLE.md: one contract-test
class that every storage subclasses).

Subclass `ConnectorContract` in a `test_connector_<system>.py` module (the class name must start
with `Test`) and provide:

    server_index: int                      # which of conftest `sandboxes(...)`'s servers: 0 GHL, 1 TinyEmail
    def make_client(self, server, fixture, *, bad_credentials=False): ...
        # a connected client for `server` (a conftest RunningServer; `server.base_url` is the root URL,
        # add any path prefix yourself). The client needs `.stats` (contact_recon.systems.http.RequestStats) and
        # `async aclose()`. Give it a fresh RateBudget, not the process registry's, so tests stay apart,
        # and a short backoff sleep (ApiClient's `sleep=`) so retries do not slow the tests down.
        # With bad_credentials=True use `self.BAD_SECRET` as the token/key.
    async def list_all(self, client) -> list: ...     # every record's key, through the full listing
    def expected_keys(self, state) -> list: ...       # the same keys, from GET /__sandbox/state
    async def one_read(self, client) -> object: ...   # one read call (deterministic target)
    async def one_write(self, client) -> None: ...    # exactly ONE write request (no read before it)
    def write_landed(self, state) -> bool: ...        # whether one_write's change is in the state
    def secrets(self, fixture) -> list[str]: ...      # every credential in the fixture

Optionally override the `contract_fixture` fixture (default: 60 generated people, seed 3).

The shared tests start the sandbox at `FAST_RATE_SCALE` (so rate limits stay out of the way unless
a test wants them), run the scenario in one `asyncio.run`, and then read the sandbox's own state and
request log to judge. An autouse fixture captures logs at DEBUG for the whole test and fails it when
a credential appears in a log record or in any exception message a test saw (`self.seen(exc)`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, ClassVar

import httpx
import pytest

from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import RunningServer
from contact_recon.systems.errors import AuthError, ConnectorError, UnknownOutcome

Scenario = Callable[[Any], Awaitable[Any]]


class ConnectorContract:
    server_index: ClassVar[int]
    FAST_RATE_SCALE: ClassVar[float] = 100.0
    BAD_SECRET: ClassVar[str] = "sbx-bad-credential-5f1e0c9a7b3d"
    FAULT_SEED: ClassVar[int] = 7

    # ------------------------------------------------------------------ what a subclass provides

    def make_client(self, server: RunningServer, fixture: dict[str, Any], *, bad_credentials: bool = False) -> Any:
        raise NotImplementedError

    async def list_all(self, client: Any) -> list[Hashable]:
        raise NotImplementedError

    def expected_keys(self, state: dict[str, Any]) -> list[Hashable]:
        raise NotImplementedError

    async def one_read(self, client: Any) -> object:
        raise NotImplementedError

    async def one_write(self, client: Any) -> None:
        raise NotImplementedError

    def write_landed(self, state: dict[str, Any]) -> bool:
        raise NotImplementedError

    def secrets(self, fixture: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ the machinery

    @pytest.fixture
    def contract_fixture(self) -> dict[str, Any]:
        return generate_fixture(60, seed=3)

    @pytest.fixture
    def start(self, sandboxes: Callable[..., tuple[RunningServer, RunningServer]],
              contract_fixture: dict[str, Any]) -> Callable[..., RunningServer]:
        """`start(**sandbox_options)`: this connector's sandbox server (fast rate scale by default)."""

        def run(**options: Any) -> RunningServer:
            options.setdefault("rate_scale", self.FAST_RATE_SCALE)
            options.setdefault("seed", self.FAULT_SEED)
            return sandboxes(contract_fixture, **options)[self.server_index]

        return run

    @pytest.fixture(autouse=True)
    def _no_secret_leaks(self, caplog: pytest.LogCaptureFixture, contract_fixture: dict[str, Any]) -> Iterator[None]:
        self._messages: list[str] = []
        caplog.set_level(logging.DEBUG)
        yield
        records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        texts = [formatter.format(r) for r in records] + self._messages
        for secret in [*self.secrets(contract_fixture), self.BAD_SECRET]:
            leaks = [t for t in texts if secret in t]
            assert not leaks, f"a credential leaked into {len(leaks)} log records or error messages"

    def seen(self, exc: BaseException) -> BaseException:
        """Record an exception's message for the secret check; returns it."""
        self._messages.append(str(exc))
        self._messages.append(repr(exc))
        return exc

    def with_client(self, server: RunningServer, fixture: dict[str, Any], scenario: Scenario,
                    *, bad_credentials: bool = False) -> tuple[Any, Any]:
        """Run `scenario(client)` on a fresh client; (its result, the client) for its stats."""

        async def main() -> tuple[Any, Any]:
            client = self.make_client(server, fixture, bad_credentials=bad_credentials)
            try:
                return await scenario(client), client
            finally:
                await client.aclose()

        return asyncio.run(main())

    @staticmethod
    def admin(server: RunningServer, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{server.base_url}/__sandbox/{path}"
        answer = httpx.post(url, json=body or {}) if body is not None else httpx.get(url)
        answer.raise_for_status()
        return answer.json()

    def state(self, server: RunningServer) -> dict[str, Any]:
        return self.admin(server, "state")

    def requests(self, server: RunningServer) -> list[dict[str, Any]]:
        return self.admin(server, "requests")["requests"]

    # ------------------------------------------------------------------------------ the contract

    @pytest.mark.parametrize("faults", ["5xx=0.05,reset=0.02", "5xx=0.2,reset=0.1"])
    def test_listing_under_faults_returns_every_record_once(self, start, contract_fixture, faults):
        server = start(faults=faults)
        keys, _ = self.with_client(server, contract_fixture, self.list_all)
        self.admin(server, "faults", {"faults": "none"})
        expected = self.expected_keys(self.state(server))
        assert expected, "the fixture must hold records to list"
        assert [k for k, n in Counter(keys).items() if n > 1] == []
        assert sorted(map(str, keys)) == sorted(map(str, expected))
        if faults.startswith("5xx=0.2"):
            assert any(r["fault"] for r in self.requests(server)), "the heavy fault run met no fault"

    def test_read_meeting_5xx_is_retried_and_succeeds(self, start, contract_fixture):
        server = start(faults="5xx=0.4")

        async def reads(client: Any) -> list[object]:
            return [await self.one_read(client) for _ in range(5)]

        results, client = self.with_client(server, contract_fixture, reads)
        assert len(results) == 5 and all(r is not None for r in results)
        statuses = [r["status"] for r in self.requests(server)]
        assert any(s is not None and s >= 500 for s in statuses), "no 5xx was met"
        assert client.stats.retried >= 1

    @pytest.mark.parametrize("faults, landed", [("5xx=1", False), ("reset=1", False),
                                                ("5xx=1,applied_5xx=1", True), ("reset=1,applied_5xx=1", True)])
    def test_write_meeting_5xx_or_reset_is_an_unknown_outcome(self, start, contract_fixture, faults, landed):
        server = start(faults=faults)

        async def write(client: Any) -> ConnectorError | None:
            try:
                await self.one_write(client)
            except ConnectorError as exc:
                return self.seen(exc)  # type: ignore[return-value]
            return None

        error, client = self.with_client(server, contract_fixture, write)
        assert isinstance(error, UnknownOutcome), f"expected UnknownOutcome, got {error!r}"
        assert client.stats.unknown_outcomes == 1
        assert len([r for r in self.requests(server) if r["fault"]]) == 1, "the write was resent"
        self.admin(server, "faults", {"faults": "none"})
        assert self.write_landed(self.state(server)) is landed

    def test_write_without_faults_lands(self, start, contract_fixture):
        server = start()
        self.with_client(server, contract_fixture, self.one_write)
        assert self.write_landed(self.state(server)) is True

    def test_429_answers_are_waited_out_and_the_calls_finish(self, start, contract_fixture):
        server = start(faults="429=0.3")

        async def reads(client: Any) -> list[object]:
            return [await self.one_read(client) for _ in range(6)]

        results, client = self.with_client(server, contract_fixture, reads)
        assert len(results) == 6
        assert client.stats.rate_limited >= 1
        assert sum(1 for r in self.requests(server) if r["status"] == 429) == client.stats.rate_limited

    def test_bad_credentials_raise_auth_error(self, start, contract_fixture):
        server = start()

        async def read(client: Any) -> BaseException | None:
            try:
                await self.one_read(client)
            except ConnectorError as exc:
                return self.seen(exc)
            return None

        error, _ = self.with_client(server, contract_fixture, read, bad_credentials=True)
        assert isinstance(error, AuthError), f"expected AuthError, got {error!r}"
        assert self.BAD_SECRET not in str(error)
