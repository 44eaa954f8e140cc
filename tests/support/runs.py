"""`recon run` as a command against both sandboxes (by base URL) and a data dir: in this process (typer's runner,
on the session's Prefect server: no Python start-up of its own) or as a real child process where a story needs
one (a SIGKILL, a concurrent run, a locked file, a full disk). Shared by the crash-resume tests
(tests/e2e/test_apply_crash.py) and the chaos suite (tests/support/chaos.py, tests/e2e/test_chaos.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import REPO
from tests.support.worlds import LOOSE

GHL_VERSION = "2021-07-28"
PREFECT_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| [A-Z]+ +\| ")

@dataclass(frozen=True)
class Scale:
    name: str
    people: int
    rate_scale: float
    drift: int  # people touched by each kind of drift
    run_timeout_s: float


# ------------------------------------------------------------------------------------- one run


@dataclass
class Outcome:
    """A finished `recon run`: its exit code, output and wall time."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def run_id(self) -> str:
        for line in self.stdout.splitlines():
            if line.startswith("run "):
                return line.split()[1]
        raise AssertionError(f"no run id in the output of recon run:\n{self.text}")

    def line(self) -> str:
        """One line for the figures: arguments, exit code, seconds, op counts and the last line of stderr."""
        tail = next((x for x in reversed(self.stderr.splitlines()) if x.strip()), "")
        counts = next((x.strip() for x in self.stdout.splitlines() if x.strip().startswith("conflicts ")), "")
        return f"recon run {' '.join(self.args)}: exit {self.returncode} in {self.seconds:.1f}s {counts} {tail[:200]}"

    @property
    def text(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f}s\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def one_clear_line(outcome: Outcome, *starts: str) -> str:
    """The failure's message: exit 1, no traceback anywhere, and on stderr exactly one line of the command's
    own, which starts with one of `starts` (e.g. "run failed:", "busy:"); any other line is one of Prefect's
    one-line log records (a child process logs at WARNING)."""
    assert outcome.returncode == 1, outcome.text
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.text
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    own = [line for line in lines if not PREFECT_LOG_LINE.match(line)]
    assert len(own) == 1 and own[0].startswith(starts), outcome.text
    return own[0]


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """These variables set (every other RECON_* one unset) for the duration."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("RECON_") or k in values}
    for name in [k for k in os.environ if k.startswith("RECON_")]:
        del os.environ[name]
    os.environ.update(values)
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.startswith("RECON_") or k in values]:
            del os.environ[name]
        os.environ.update(saved)


# ------------------------------------------------------------------------------------ the world


@dataclass
class RunWorld:
    """Both sandboxes (by base URL), a data dir and the environment of `recon run`."""

    fixture: dict[str, Any]
    ghl_url: str
    te_url: str  # without /v1
    data: Path
    prefect_api: str
    scale: Scale
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        policy = self.data.parent / f"{self.data.name}-policy.toml"
        policy.write_text(LOOSE)
        token = self.fixture["ghl"]["tokens"][0]
        self.vars = {**os.environ, "PREFECT_API_URL": self.prefect_api, "RECON_DATA_DIR": str(self.data),
                     "RECON_GHL_BASE_URL": self.ghl_url, "RECON_GHL_TOKEN": token["token"],
                     "RECON_GHL_LOCATION_IDS": token["locationId"], "RECON_TINYEMAIL_BASE_URL": self.te_url + "/v1",
                     "RECON_TINYEMAIL_API_KEY": self.fixture["tinyemail"]["apiKeys"][0],
                     "RECON_GHL_RATE_SCALE": str(self.scale.rate_scale),
                     "RECON_TINYEMAIL_RATE_PER_MINUTE": str(60 * self.scale.rate_scale),
                     "RECON_POLICY_FILE": str(policy), "PREFECT_LOGGING_LEVEL": "WARNING"}
        for name in ("RECON_FAILPOINT", "RECON_SNAPSHOT_CONCURRENCY"):
            self.vars.pop(name, None)

    @property
    def location(self) -> str:
        return str(self.fixture["ghl"]["tokens"][0]["locationId"])

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "contact_recon.cli.main", "run", *args]

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.vars, **extra}

    def start(self, *args: str, preexec: Callable[[], None] | None = None, **extra: str) -> subprocess.Popen[str]:
        """`recon run ARGS` as a child process in the background (extra: environment, e.g. RECON_FAILPOINT)."""
        return subprocess.Popen(self.command(*args), cwd=REPO, env=self.env(**extra), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=preexec)

    def finish(self, child: subprocess.Popen[str], args: tuple[str, ...], started: float) -> Outcome:
        """Wait for a child started by `start` and record its outcome."""
        try:
            stdout, stderr = child.communicate(timeout=self.scale.run_timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
            raise AssertionError(f"recon run {args} did not finish in {self.scale.run_timeout_s}s:\n{stderr}") \
                from None
        return self._record(Outcome(args, child.returncode, stdout, stderr, time.monotonic() - started))

    def child(self, *args: str, preexec: Callable[[], None] | None = None, **extra: str) -> Outcome:
        """`recon run ARGS` as a real child process, to its end."""
        started = time.monotonic()
        return self.finish(self.start(*args, preexec=preexec, **extra), args, started)

    def run(self, *args: str) -> Outcome:
        """`recon run ARGS` in this process (the same command, without a Python start-up of its own)."""
        from typer.testing import CliRunner

        from contact_recon.cli.main import app

        started = time.monotonic()
        with environment({k: v for k, v in self.vars.items() if k.startswith("RECON_")}):
            result = CliRunner().invoke(app, ["run", *args])
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(result.exception))
        return self._record(Outcome(args, result.exit_code, result.stdout, stderr, time.monotonic() - started))

    def ok(self, *args: str) -> Outcome:
        """`recon run ARGS` in this process, which must complete."""
        outcome = self.run(*args)
        assert outcome.returncode == 0, outcome.text
        return outcome

    def _record(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        print(f"[{self.data.name}] {outcome.line()}")  # the figures, shown by pytest -rP or -s
        return outcome

    def lock_held(self) -> bool:
        """Whether some process holds this world's location lock (contact_recon/stages/lock.py `location_lock`)."""
        path = self.data / "locks" / f"{self.location}.lock"
        if not path.exists():
            return False
        with path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    # -- the sandboxes

    def faults(self, spec: str | None, seed: int = 0) -> None:
        """Set (None: clear) the fault mix of both sandboxes through their admin route."""
        for url in (self.ghl_url, self.te_url):
            answer = httpx.post(url + "/__sandbox/faults", json={"faults": spec or "none", "seed": seed})
            assert answer.status_code == 200, answer.text

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return (httpx.get(self.ghl_url + "/__sandbox/state", timeout=60).json(),
                httpx.get(self.te_url + "/__sandbox/state", timeout=60).json())

    def requests(self, url: str) -> list[dict[str, Any]]:
        return httpx.get(url + "/__sandbox/requests", timeout=60).json()["requests"]
    def _ghl(self, method: str, path: str, body: dict[str, Any]) -> None:
        token = self.fixture["ghl"]["tokens"][0]["token"]
        _send(method, self.ghl_url + path, body, {"Authorization": f"Bearer {token}", "Version": GHL_VERSION})

    def _te(self, method: str, path: str, body: dict[str, Any]) -> None:
        _send(method, self.te_url + path, body, {"X-API-KEY": self.fixture["tinyemail"]["apiKeys"][0]})


def _send(method: str, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    """One drift request, sent again after a 429 (the sandboxes refuse before applying)."""
    for _ in range(60):
        answer = httpx.request(method, url, json=body, headers=headers, timeout=30)
        if answer.status_code != 429:
            assert answer.status_code in (200, 201, 204), (method, url, answer.status_code, answer.text)
            return
        time.sleep(float(answer.headers.get("retry-after", "1")))
    raise AssertionError(f"{method} {url} kept answering 429")
