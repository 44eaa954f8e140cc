"""The chaos suite's world: sandboxes, a data dir and `recon run` (in this process, or as a real child process
where the fault needs one), plus the checks every fault mix must pass once a clean rerun has had its turn.

Sizes (`RECON_CHAOS_SCALE`): `short` (the default, what `make test` and CI run) is 40 people against sandboxes
at `--rate-scale 50`; `full` (`make chaos`) is 2,000 people at `--rate-scale 10`.

The checks (`assert_converged`), after the faulted runs and a clean rerun:
1. a dry run plans nothing but identity reviews (nothing lost: every failed op was carried out later);
2. no duplicate contact, task or note (`tests.support.worlds.duplicates`);
3. both systems agree on every shared field, but for the conflicts the data team must settle (`disagreements`);
4. both systems equal those of the same days lived without faults (the reference world), person by person.

The drift is chosen by email from the fixture (never from the live state, whose GHL ids depend on the order of
creates), so every world drifts alike whatever happened to it before.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from contact_recon.model.cells import unguarded
from contact_recon.model.normalise import normalise_email
from contact_recon.model.policy import Policy
from contact_recon.model.records import SHARED_TEXT_FIELDS
from contact_recon.sandbox.generate import generate_fixture
from contact_recon.sandbox.server import free_port
from contact_recon.systems.ghl.mapping import ghl_contact_record
from contact_recon.systems.tinyemail.mapping import tinyemail_customer_record
from tests.support import REPO
from tests.support.runs import (  # noqa: F401  (re-exported for the chaos tests)
    Outcome,
    RunWorld,
    Scale,
    environment,
    one_clear_line,
)
from tests.support.worlds import duplicates, ghl_people, person_diff, te_people

COMPARED = tuple(f for f in SHARED_TEXT_FIELDS if f != "email")


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


# ------------------------------------------------------------------------------------ the world


class World(RunWorld):
    """A chaos world: `recon run` against both sandboxes and a data dir (tests/support/runs.py), and the
    day of drift every chaos story tells."""

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
    """Both systems person by person (tests.support.worlds: no ids, dates or markers)."""
    ghl, te = world.state()
    return ghl_people(ghl), te_people(te)


def leftover_ops(world: World) -> tuple[Outcome, pl.DataFrame]:
    """A dry run's plan, but for identity reviews: what the runs so far left undone."""
    dry = world.ok("--dry-run")
    plan = pl.read_parquet(world.data / "runs" / dry.run_id / "plan.parquet")
    return dry, plan.filter(pl.col("kind") != "identity_review")


def disagreements(ghl_state: dict[str, Any], te_state: dict[str, Any], conflicts: pl.DataFrame,
                  policy: Policy | None = None, region: str = "US",
                  pending: Iterable[str] = ()) -> list[tuple[str, str, Any, Any]]:
    """(email, field, GHL value, TinyEmail value) for every shared field on which the systems differ, but for
    the conflicts (key, field) the data team must settle; a person on one side only is listed as `presence`,
    unless a presence conflict reports them (`deleted_in_ghl`, `tinyemail_missing`: reported, never written) or
    they are `pending` (emails of an open identity review, e.g. the old email of a GHL contact whose email changed).

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
    reported = {normalise_email(e)[0] for e in pending}
    for row in conflicts.filter(pl.col("reason").is_in(["deleted_in_ghl", "tinyemail_missing"])).iter_rows(named=True):
        reported |= {normalise_email(v)[0] for v in (row["tinyemail"], row["ghl"], row["base"]) if v}
    out: list[tuple[str, str, Any, Any]] = [(e, "presence", e in ghl, e in te) for e in sorted(set(ghl) ^ set(te))
                                            if e not in reported]
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
    """Tags outside the list and fact namespaces, by their key (case-folded, trimmed, inner spaces collapsed: each
    system keeps its own spelling of one tag, issue 21); written here apart from model/tags.py on purpose."""
    def key(tag: str) -> str:
        return " ".join(tag.split()).casefold()

    facts, lists = {key(policy.tasks.open_task_tag), key(policy.tasks.overdue_task_tag)}, key(policy.tags.list_prefix)
    return sorted(k for k in {key(t) for t in tags} - facts if not k.startswith(lists))


def te_lists(te_state: dict[str, Any], policy: Policy) -> dict[str, set[str]]:
    """Email -> the names of the TinyEmail lists it is in (GHL's list tags are `list:<name>`), but our home list
    (policy `create.tinyemail_list`). The fixtures' list names are unique, so a name is its list's label."""
    out: dict[str, set[str]] = {}
    for lst in te_state["lists"]:
        if lst["name"] != policy.create.tinyemail_list:
            for email in lst["members"]:
                out.setdefault(email.strip().lower(), set()).add(lst["name"])
    return out


def assert_converged(world: World, reference: tuple[dict[str, Any], dict[str, Any]] | None) -> None:
    """The four checks of the module docstring (the last one when a reference is given)."""
    dry, left = leftover_ops(world)
    assert left.height == 0, f"the runs left ops undone:\n{left.select('target', 'kind', 'key', 'field', 'status')}"
    ghl_state, te_state = world.state()
    dups = duplicates(ghl_state)
    assert dups == {}, f"duplicates: {dups}"
    conflicts = unguarded(pl.read_csv(world.data / "runs" / dry.run_id / "conflicts.csv", infer_schema_length=0))
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
