"""The chaos suite's world: sandboxes, a data dir and `recon run` (in this process, or as a real child process
where the fault needs one), plus the checks every fault mix must pass once a clean rerun has had its turn.

Sizes (`RECON_CHAOS_SCALE`): `short` (the default, what `make test` and CI run) is 40 people against sandboxes
at `--rate-scale 50`; `full` (`make chaos`) is 2,000 people at `--rate-scale 10`.

The checks (`assert_converged`), after the faulted runs and a clean rerun:
1. a dry run plans nothing but identity reviews (nothing lost: every failed op was carried out later);
2. no duplicate contact, task or note (`apply_support.duplicates`);
3. both systems agree on every shared field, but for the conflicts the data team must settle (`disagreements`);
4. both systems equal those of the same days lived without faults (the reference world), person by person.

The drift is chosen by email from the fixture (never from the live state, whose GHL ids depend on the order of
creates), so every world drifts alike whatever happened to it before.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from contact_recon.model.policy import Policy
from contact_recon.model.records import SHARED_TEXT_FIELDS
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import free_port
from contact_recon.systems.ghl.mapping import ghl_contact_record
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record
from tests.apply_support import LOOSE, duplicates, ghl_people, te_people

REPO = Path(__file__).resolve().parent.parent
GHL_VERSION = "2021-07-28"
COMPARED = tuple(f for f in SHARED_TEXT_FIELDS if f != "email")
PREFECT_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| [A-Z]+ +\| ")


@dataclass(frozen=True)
class Scale:
    name: str
    people: int
    rate_scale: float
    drift: int  # people touched by each kind of drift
    run_timeout_s: float


SCALES = {
    "short": Scale("short", people=40, rate_scale=50, drift=3, run_timeout_s=240),
    "full": Scale("full", people=2_000, rate_scale=10, drift=40, run_timeout_s=3_600),
}


def current_scale() -> Scale:
    name = os.environ.get("RECON_CHAOS_SCALE", "short").strip().lower() or "short"
    if name not in SCALES:
        raise ValueError(f"RECON_CHAOS_SCALE={name!r}: known {sorted(SCALES)}")
    return SCALES[name]


def chaos_fixture(scale: Scale) -> dict[str, Any]:
    """People on one side only (creates both ways), on both (updates), with tasks and notes; nothing awkward."""
    return generate_fixture(scale.people, seed=91, overlap=0.5, awkward=0.0)


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
class World:
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

    def drift(self) -> None:
        """A fixed day of changes on both sides, chosen by email from the fixture (module docstring): new
        TinyEmail subscribers (GHL contacts and follow-up tasks), TinyEmail cities, GHL tags, GHL cities, and one
        last name changed differently on both sides (a conflict)."""
        k = self.scale.drift
        both = shared_contacts(self.fixture)
        assert len(both) >= 4 * k + 1, "the fixture is too small for the drift"
        members = [{"email": f"chaos.subscriber{i}@example.org", "firstName": f"Chaos{i}", "status": "Subscribed"}
                   for i in range(k)]
        members += [{"email": c["email"], "city": f"Drift City {i}"} for i, c in enumerate(both[:k])]
        conflicted = both[4 * k]
        members.append({"email": conflicted["email"], "lastName": "Tinyside"})
        self._te("PUT", "/v1/account/customer", {"updateMembers": members})
        # TinyEmail customers are seen through lists only: the new subscribers join the first list
        list_id = self.fixture["tinyemail"]["lists"][0]["id"]
        self._te("PUT", f"/v1/audiences/{list_id}", {"assignMembers": [{"email": m["email"]} for m in members[:k]]})
        for contact in both[k:2 * k]:
            self._ghl("POST", f"/contacts/{contact['id']}/tags", {"tags": ["chaos-drift"]})
        for i, contact in enumerate(both[2 * k:3 * k]):
            self._ghl("PUT", f"/contacts/{contact['id']}", {"city": f"Ghl City {i}"})
        self._ghl("PUT", f"/contacts/{conflicted['id']}", {"lastName": "Ghlside"})

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


def shared_contacts(fixture: dict[str, Any]) -> list[dict[str, Any]]:
    """The fixture's GHL contacts that TinyEmail also has, by email."""
    contacts = next(iter(fixture["ghl"]["locations"].values()))["contacts"]
    emails = {c["email"].lower() for c in fixture["tinyemail"]["customers"]}
    return sorted((c for c in contacts if (c.get("email") or "").lower() in emails), key=lambda c: c["email"])


# ------------------------------------------------------------------------------ the GHL process


class GhlProcess:
    """The GHL sandbox as its own process (`recon sandbox serve --only ghl`), so it can be killed and started
    again on the same port. The sandbox keeps its state in memory, so a restart starts from a fixture file: the
    state dumped (`/__sandbox/state`) before the kill, which is the fixture's `ghl` part, as a durable server's
    would be; and with another seed, as a real server never hands out an id twice."""

    def __init__(self, fixture: dict[str, Any], workdir: Path, rate_scale: float):
        self.fixture, self.workdir, self.rate_scale = fixture, workdir, rate_scale
        self.port, self.seed = free_port(), 0
        self.child: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self._write(fixture["ghl"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write(self, ghl: dict[str, Any]) -> None:
        (self.workdir / "ghl-fixture.json").write_text(json.dumps({"ghl": ghl, "tinyemail": {}}))

    def start(self) -> None:
        log = (self.workdir / "ghl-sandbox.log").open("a")
        self.child = subprocess.Popen(
            [sys.executable, "-m", "contact_recon.cli.main", "sandbox", "serve", "--only", "ghl", "--fixture",
             str(self.workdir / "ghl-fixture.json"), "--ghl-port", str(self.port), "--rate-scale",
             str(self.rate_scale), "--seed", str(self.seed)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base_url + "/__sandbox/faults", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.child.poll() is None, (self.workdir / "ghl-sandbox.log").read_text()
            time.sleep(0.1)
        raise AssertionError("the GHL sandbox did not answer within 60 s")

    def crash(self) -> None:
        """Stop taking writes (every request is cut: nothing lands), let the requests in flight end, keep the
        state, then SIGKILL the server: what is left is what a durable server would have on disk."""
        httpx.post(self.base_url + "/__sandbox/faults", json={"faults": "reset=1"}).raise_for_status()
        time.sleep(0.5)
        self._write(httpx.get(self.base_url + "/__sandbox/state", timeout=60).json())
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.seed += 1
        self.start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(sig)
            self.child.wait(30)
        self.child = None


# ----------------------------------------------------------------------------------- other faults


@contextlib.contextmanager
def latency_spikes(world: World, spike: str = "latency=600ms", period_s: float = 0.7) -> Iterator[None]:
    """Both sandboxes alternate between `spike` and no fault every `period_s` while the block runs."""
    stop = threading.Event()

    def toggle() -> None:
        on = True
        while not stop.is_set():
            world.faults(spike if on else None)
            on = not on
            stop.wait(period_s)

    thread = threading.Thread(target=toggle, name="latency-spikes", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        world.faults(None)


class DuckDBHolder:
    """Another process holding a write connection to a DuckDB file (DuckDB allows one writing process)."""

    def __init__(self, path: Path):
        code = "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('ready', flush=True); sys.stdin.read()"
        self.child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        assert self.child.stdout is not None and self.child.stdout.readline().strip() == "ready"
        self.pid = self.child.pid

    def release(self) -> None:
        if self.child.poll() is None:
            assert self.child.stdin is not None
            self.child.stdin.close()
            self.child.wait(30)
        assert self.child.stdout is not None
        self.child.stdout.close()


class SmallDisk:
    """The data dir on a disk that can be filled to the last byte: a tmpfs of `size_mb` mounted on it (root).

    Without root (no mount) a full disk is emulated for child processes: their file size is capped at 0
    (RLIMIT_FSIZE, set by `preexec` before the start or by prlimit on a running child; SIGXFSZ ignored), so
    each write that grows a file fails with EFBIG where a full disk gives ENOSPC."""

    FILLER = ".chaos-filler"

    def __init__(self, path: Path, size_mb: int):
        self.path, self.mounted, self.full = path, False, False
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                                  capture_output=True, text=True)
            self.mounted = done.returncode == 0

    def fill(self, pid: int | None = None) -> None:
        """No byte left (mounted); else the cap on for child `pid`, or for the next child started."""
        self.full = True
        if not self.mounted:
            if pid is not None:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
            return
        chunk = b"\0" * (1 << 20)
        with (self.path / self.FILLER).open("ab", buffering=0) as filler:
            while chunk:
                try:
                    filler.write(chunk)
                except OSError:
                    chunk = chunk[: len(chunk) // 2]
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self.full = False
        (self.path / self.FILLER).unlink(missing_ok=True)

    def preexec(self) -> Callable[[], None]:
        """For a child's start: SIGXFSZ ignored, and without a mount the cap when the disk is full already."""
        capped = self.full and not self.mounted

        def setup() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            if capped:
                resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        return setup

    def close(self) -> None:
        if self.mounted:
            done = subprocess.run(["umount", str(self.path)], capture_output=True, text=True)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, text=True)
            self.mounted = False


# ------------------------------------------------------------------------------------ the checks


def final_state(world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both systems person by person (apply_support: no ids, dates or markers)."""
    ghl, te = world.state()
    return ghl_people(ghl), te_people(te)


def leftover_ops(world: World) -> tuple[Outcome, pl.DataFrame]:
    """A dry run's plan, but for identity reviews: what the runs so far left undone."""
    dry = world.ok("--dry-run")
    plan = pl.read_parquet(world.data / "runs" / dry.run_id / "plan.parquet")
    return dry, plan.filter(pl.col("kind") != "identity_review")


def disagreements(ghl_state: dict[str, Any], te_state: dict[str, Any], conflicts: pl.DataFrame,
                  policy: Policy | None = None, region: str = "US") -> list[tuple[str, str, Any, Any]]:
    """(email, field, GHL value, TinyEmail value) for every shared field on which the systems differ, but for
    the conflicts (key, field) the data team must settle; a person on one side only is listed as `presence`.

    Tags by namespace (contact_recon/engine/merge.py, table C): plain tags equal on both sides; GHL's list tags equal
    the TinyEmail lists the customer is in (but our own home list); TinyEmail carries the open-task fact tag exactly
    when the GHL contact has an open task; TinyEmail's own list-namespace tags are ignored, as the merge does.
    Consent: tight on one side exactly when tight on the other."""
    policy = policy or Policy()
    location_id, location = next(iter(ghl_state["locations"].items()))
    ghl = {r["email"]: r for r in (ghl_contact_record(c, location_id, region) for c in location["contacts"])
           if r["email"]}
    customers = te_state["customers"]
    te = {r["email"]: r for r in (tinyemail_customer_record(c, [], region) for c in
                                  (customers.values() if isinstance(customers, dict) else customers)) if r["email"]}
    email_of = {r["contact_id"]: email for email, r in ghl.items()}
    settled = {(email_of.get(k, k.removeprefix("te:")), f) for k, f in conflicts.select("key", "field").iter_rows()}
    lists = te_lists(te_state, policy)
    open_tasks = {email_of.get(t["contactId"]) for t in location.get("tasks", []) if not t.get("completed")}
    out: list[tuple[str, str, Any, Any]] = [(e, "presence", e in ghl, e in te) for e in sorted(set(ghl) ^ set(te))]
    for email in sorted(set(ghl) & set(te)):
        a, b = ghl[email], te[email]
        sides = {name: (a[name], b[name]) for name in COMPARED}
        sides["tags"] = (plain_tags(a["tags"], policy), plain_tags(b["tags"], policy))
        sides["lists"] = (sorted(t for t in a["tags"] if t.startswith(policy.tags.list_prefix)),
                          sorted(policy.tags.list_prefix + x for x in lists.get(email, ())))
        sides["consent"] = (a["consent"] in policy.consent.ghl_tight, b["consent"] in policy.consent.tinyemail_tight)
        sides["open_task"] = (email in open_tasks, policy.tasks.open_task_tag in b["tags"])
        out += [(email, name, x, y) for name, (x, y) in sides.items() if x != y and (email, name) not in settled]
    return out


def plain_tags(tags: list[str], policy: Policy) -> list[str]:
    """Tags outside the list and fact namespaces."""
    facts = {policy.tasks.open_task_tag, policy.tasks.overdue_task_tag}
    return sorted(t for t in tags if not t.startswith(policy.tags.list_prefix) and t not in facts)


def te_lists(te_state: dict[str, Any], policy: Policy) -> dict[str, set[str]]:
    """Email -> the ids of the TinyEmail lists it is in, but our home list (policy `create.tinyemail_list`)."""
    out: dict[str, set[str]] = {}
    for lst in te_state["lists"]:
        if lst["name"] != policy.create.tinyemail_list:
            for email in lst["members"]:
                out.setdefault(email.strip().lower(), set()).add(lst["id"])
    return out


def person_diff(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    """Per person, the values that differ: (got, want); a person on one side only is `missing` / `extra`."""
    out: dict[str, Any] = {}
    for key in sorted(set(got) | set(want)):
        a, b = got.get(key), want.get(key)
        if a != b:
            out[key] = {k: (a.get(k), b.get(k)) for k in a if a.get(k) != b.get(k)} if a and b else \
                ("missing" if a is None else "extra")
    return out


def assert_converged(world: World, reference: tuple[dict[str, Any], dict[str, Any]] | None) -> None:
    """The four checks of the module docstring (the last one when a reference is given)."""
    dry, left = leftover_ops(world)
    assert left.height == 0, f"the runs left ops undone:\n{left.select('target', 'kind', 'key', 'field', 'status')}"
    ghl_state, te_state = world.state()
    dups = duplicates(ghl_state)
    assert dups == {}, f"duplicates: {dups}"
    conflicts = pl.read_csv(world.data / "runs" / dry.run_id / "conflicts.csv", infer_schema_length=0)
    differ = disagreements(ghl_state, te_state, conflicts)
    if differ:  # kept beside the data dir for a look
        for name, state in (("ghl", ghl_state), ("tinyemail", te_state)):
            (world.data.parent / f"{world.data.name}-{name}-state.json").write_text(json.dumps(state, indent=1))
    assert differ == [], f"the systems disagree (email, field, GHL, TinyEmail): {differ}"
    if reference is not None:
        got = ghl_people(ghl_state), te_people(te_state)
        for system, mine, theirs in (("GHL", got[0], reference[0]), ("TinyEmail", got[1], reference[1])):
            diff = person_diff(mine, theirs)
            assert diff == {}, f"{system} differs from the story told without faults (got, want): {diff}"
