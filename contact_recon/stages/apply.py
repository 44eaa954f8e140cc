"""Apply a plan: journaled, idempotent, rate-limited writes to every system that survive a crash.

This stage is the system-neutral half of applying: it reads the run's ops from the journal, drops those
rejected before, hands each system's writer the ops of its target (`writers`; the writers run side by
side, each within its own rate budget), and records every outcome in the journal through the `Ledger` of
systems/writer.py. What a write looks like on the wire (batches, request bodies and their quirks, the
precondition read, the re-read after an unknown outcome) is the writer's: systems/ghl/writer.py,
systems/tinyemail/writer.py.

Neither API offers etags or idempotency keys, so safety comes from three habits:

1. **Journal first** (`contact_recon/store/journal.py`): every op of the run is recorded before anything is
   sent, and an op is marked `sending` (committed) before its request leaves (`JournalLedger.send`). After
   a crash, only ops left in `sending` may have landed.
2. **Precondition**: before an update the writer reads the live record and the field is compared with the
   value the plan expected (`expected`, systems/writer.py `premises`). A person's edit since the snapshot
   makes the op `stale`: it is not sent, and the next run plans again from the new state. Tag and list ops
   are set operations (add x, remove x) merged into the live set, so a tag somebody added meanwhile is kept.
3. **Unknown outcomes** (timeout, reset, 5xx on a write): the writer's re-read (`landed`) says whether the
   write landed before it is sent again. A create is looked for first: a GHL contact by email (or phone), a
   TinyEmail customer by email, a task or note by the marker `[recon:<op id>]` its body carries. So a
   retry never makes a duplicate.

Order within a system is its writer's (creates first: a contact exists before its updates, tags, tasks and
notes; see each writer's docstring).

Rejections (400/422) end the op `rejected` (status and error_kind) with the API's message (`last_error`) and
are not sent again while the op writes the same value (store/journal.py `rejected_before`) unless a person
retries it (`recon quarantine retry OP_ID`, store/journal.py `retry_rejected`). A batch call refused for one
member is narrowed down to that member (systems/writer.py `send_isolating`): the others land. Rejected ops
are counted apart from `failed` ones, which are the service's failures (the failed-ops alert counts those).

Rate-limit exhaustion and outages leave the op `failed` (error_kind `unavailable`); the next run plans it
again, because the base advances only for confirmed ops (`contact_recon/engine/state.py`). Authentication
failures stop the stage.

`recover(journal, clients)` runs before planning: it resolves the ops an interrupted run left `sending`.
The new snapshot already shows whatever landed, except the memory of created tasks and notes, so a task or
note found by its marker is remembered (never created twice); every other unfinished op is closed as
`failed` (unknown) and the fresh plan covers it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from contact_recon.model.keys import Person, is_te_key
from contact_recon.model.list_tags import ListNames
from contact_recon.model.policy import ConsentPolicy, CustomFieldRule
from contact_recon.stages import failpoints
from contact_recon.stages.echo import EchoLog
from contact_recon.store import journal as J
from contact_recon.store.journal import Entry, Journal
from contact_recon.systems.errors import (
    AuthError,
    ConnectorError,
    Duplicate,
    NotFound,
    RateLimited,
    ScopeError,
    Unavailable,
    UnknownOutcome,
    Validation,
)
from contact_recon.systems.ghl.client import GHLClient
from contact_recon.systems.ghl.writer import GHLWriter, contact_of, find_marked
from contact_recon.systems.tinyemail.client import TinyEmailClient
from contact_recon.systems.tinyemail.writer import TinyEmailWriter
from contact_recon.systems.writer import EVENT_KINDS, Landed, Send, Unsent, Writer

log = logging.getLogger("contact_recon.stages.apply")

# how the journal records an op a writer closed without sending: (status, error_kind)
_UNSENT: dict[Unsent, tuple[str, str | None]] = {
    Unsent.ALREADY: (J.DONE, None),
    Unsent.STALE: (J.STALE, J.PRECONDITION),
    Unsent.DEPENDENCY: (J.FAILED, J.DEPENDENCY),
    Unsent.NOT_FOUND: (J.FAILED, "not_found"),
    Unsent.REJECTED: (J.REJECTED, J.REJECTED),
    Unsent.HELD: (J.HELD, None),
}


@dataclass
class ApplyResult:
    counts: dict[str, int] = field(default_factory=dict)  # journal status -> ops of this run
    created_contacts: dict[str, str] = field(default_factory=dict)  # person key -> new GHL contact id


class StageStopped(Exception):  # noqa: N818 - the name is the contract
    """The apply stage stopped before the end (authentication or scope failure); the journal says where."""


# ------------------------------------------------------------------------------------------- applier


def writers(ledger: JournalLedger, ghl: Mapping[str, GHLClient], te: TinyEmailClient, people: Mapping[str, Person],
            *, default_location: str, region: str, concurrency: int, max_attempts: int, home_list: str | None,
            consent: ConsentPolicy, echo: EchoLog | None, te_echo: EchoLog | None,
            list_tags: ListNames | None = None,
            custom: Mapping[str, CustomFieldRule] | None = None) -> dict[str, Writer[Entry]]:
    """The writer of every system, by op target (model/ops.py TARGETS): a new system registers its writer here."""
    return {
        "ghl": GHLWriter(ghl, people, ledger, default_location=default_location, region=region,
                         concurrency=concurrency, consent=consent, echo=echo, list_tags=list_tags),
        "tinyemail": TinyEmailWriter(te, people, ledger, region=region, concurrency=concurrency,
                                     max_attempts=max_attempts, home_list=home_list, consent=consent, echo=te_echo,
                                     custom=custom),
    }


class Applier:
    """Executes one run's journaled ops. Build with the journal, a GHL client per location and a TinyEmail
    client; `people` maps plan keys to how each person is addressed (contact_recon/stages/plan.py writes it);
    `consent` is the policy's consent part (which values are tight, and the value a tightening writes); `custom`
    its custom fields (where a custom field op is written in TinyEmail)."""

    def __init__(self, journal: Journal, ghl: Mapping[str, GHLClient], te: TinyEmailClient,
                 people: Mapping[str, Person], *, default_location: str, region: str = "US",
                 concurrency: int = 16, max_attempts: int = 3, home_list: str | None = None,
                 echo: EchoLog | None = None, te_echo: EchoLog | None = None,
                 consent: ConsentPolicy = ConsentPolicy(), list_tags: ListNames | None = None,
                 custom: Mapping[str, CustomFieldRule] | None = None):
        self.journal = journal
        self.ledger = JournalLedger(journal, max_attempts)
        self.writers = writers(self.ledger, ghl, te, dict(people), default_location=default_location, region=region,
                               concurrency=concurrency, max_attempts=max_attempts, home_list=home_list,
                               consent=consent, echo=echo, te_echo=te_echo, list_tags=list_tags, custom=custom)

    async def run(self, run_id: str) -> ApplyResult:
        """Send every `planned` op of the run, each system's through its writer."""
        entries = self._not_rejected(self.journal.entries(run_id), run_id)
        # the systems have budgets of their own and no op of one waits for another: side by side
        results = await asyncio.gather(*(writer.write([e for e in entries if e.target == target])
                                         for target, writer in self.writers.items()), return_exceptions=True)
        stops = [r for r in results if isinstance(r, BaseException)]
        if stops:
            raise stops[0]
        created = {key: made for writer in self.writers.values() for key, made in writer.created.items()}
        return ApplyResult(self.journal.counts(run_id), created)

    def _not_rejected(self, entries: list[Entry], run_id: str) -> list[Entry]:
        # an op the API rejected before, with the same content, is not sent again (issue: retried only
        # when its inputs change; changed inputs give another op id)
        rejected = self.journal.rejected_before([e.op_id for e in entries], run_id)
        for entry in (e for e in entries if e.op_id in rejected):
            self.journal.finish([entry], J.REJECTED, error_kind=J.REJECTED,
                                error=f"rejected by an earlier run, not sent again: {rejected[entry.op_id]}")
        return [e for e in entries if e.op_id not in rejected]


# -------------------------------------------------------------------------------------------- ledger


class JournalLedger:
    """The writers' `Ledger` (systems/writer.py) on the run's journal: the send loop, and every outcome recorded."""

    def __init__(self, journal: Journal, max_attempts: int = 3):
        self.journal, self.max_attempts = journal, max_attempts
        self.confirmed_ids: dict[str, str | None] = {}  # op id -> the id the API returned, for ops confirmed here

    async def send(self, entries: Sequence[Entry], send: Send, landed: Landed, *, isolate: bool = False) -> bool:
        """Send one request for `entries` until it is confirmed, refused or out of attempts.

        `send` returns the id the API gave (or None); `landed` re-reads the target after an unknown
        outcome and returns False (not landed: send again) or the id / True (landed). Returns whether the
        write is confirmed; the journal has the outcome either way, except with `isolate`: then a refusal
        (`Validation`) is raised to the writer unrecorded, which narrows it down to the refused members
        (systems/writer.py `send_isolating`) and records those; the others are sent again.
        """
        entries = list(entries)
        for attempt in range(1, self.max_attempts + 1):
            log.debug("%s: sending %d %s op(s), attempt %d", entries[0].target, len(entries), entries[0].kind, attempt)
            self.journal.sending(entries)
            failpoints.hit("sending", entries[0].kind, entries[0].target)
            try:
                result_id = await send()
                failpoints.hit("answered", entries[0].kind, entries[0].target)
            except UnknownOutcome as exc:
                found = await self._reread(entries, landed, exc)
                if found is None:
                    return False
                if found is not False:
                    self._confirm(entries, found if isinstance(found, str) else None)
                    return True
                continue  # re-read says it did not land: send again
            except ConnectorError as exc:
                if isolate and isinstance(exc, Validation):
                    raise  # the writer isolates the refused members (systems/writer.py send_isolating)
                self.refused(entries, exc)
                return False
            self._confirm(entries, result_id)
            return True
        self.journal.finish(entries, J.FAILED, error_kind=J.UNKNOWN,
                            error=f"not confirmed after {self.max_attempts} attempts")
        return False

    def confirmed(self, entry: Entry) -> bool:
        return entry.op_id in self.confirmed_ids

    def result(self, entry: Entry) -> str | None:
        return self.confirmed_ids.get(entry.op_id)

    def _confirm(self, entries: list[Entry], result_id: str | None) -> None:
        self.journal.finish(entries, J.DONE, result_id=result_id)
        for entry in entries:
            self.confirmed_ids[entry.op_id] = result_id

    async def _reread(self, entries: list[Entry], landed: Landed, cause: Exception) -> str | bool | None:
        try:
            return await landed()
        except ConnectorError as exc:
            # the outcome stays unknown: the op stays unconfirmed and the next snapshot tells
            self.journal.finish(entries, J.FAILED, error_kind=J.UNKNOWN, error=f"{cause}; re-read failed: {exc}")
            if isinstance(exc, AuthError | ScopeError):
                raise StageStopped(str(exc)) from exc
            return None

    def refused(self, entries: Sequence[Entry], exc: ConnectorError) -> None:
        if isinstance(exc, Validation | Duplicate):
            self.journal.finish(entries, J.REJECTED, error_kind=J.REJECTED, error="; ".join(
                getattr(exc, "messages", None) or [str(exc)]))
        elif isinstance(exc, NotFound):
            self.journal.finish(entries, J.FAILED, error_kind="not_found", error=str(exc))
        elif isinstance(exc, AuthError | ScopeError):
            self.journal.finish(entries, J.PLANNED, error_kind="auth", error=str(exc))
            raise StageStopped(str(exc)) from exc
        else:  # RateLimited, Unavailable after the connector's own retries, or anything else it raised
            kind = J.UNAVAILABLE if isinstance(exc, RateLimited | Unavailable) else "error"
            self.journal.finish(entries, J.FAILED, error_kind=kind, error=str(exc))

    def close(self, entries: Sequence[Entry], why: Unsent, error: str) -> None:
        status, error_kind = _UNSENT[why]
        self.journal.finish(entries, status, error_kind=error_kind, error=error)

    def remember_created(self, entry: Entry, object_id: str | None, contact_id: str | None) -> None:
        self.journal.remember_created(entry, object_id, contact_id)

    def remember_home_list(self, name: str, list_id: str) -> None:
        self.journal.remember_home_list(name, list_id)


# ----------------------------------------------------------------------------------------- recovery


async def recover(journal: Journal, ghl: Mapping[str, GHLClient], default_location: str) -> dict[str, int]:
    """Resolve ops an interrupted run left `sending` (module docstring); returns outcome -> count."""
    outcome: dict[str, int] = defaultdict(int)
    for entry in journal.unfinished():
        if entry.kind in EVENT_KINDS:
            client = ghl.get(entry.location_id or default_location)
            found = contact_id = None
            if client is not None and entry.result_id is None:
                # a person created by that same run (`te:<email>`) is addressed by the id its create returned
                made = journal.result_of(entry.run_id, entry.key, "create", "ghl") if is_te_key(entry.key) else None
                contact_id = await contact_of(client, entry.key, made)
                found = await find_marked(client, contact_id, entry) if contact_id else None
            if found:
                journal.finish([entry], J.DONE, result_id=found, error="found by its marker after an interruption")
                journal.remember_created(entry, found, contact_id)
                outcome["found"] += 1
                continue
        journal.finish([entry], J.FAILED, error_kind=J.UNKNOWN,
                       error="interrupted while sending; the next snapshot shows whether it landed")
        outcome["unknown"] += 1
    return dict(outcome)
