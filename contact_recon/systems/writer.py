"""The seam between the apply stage and each system's writer: what a writer is handed and what it reports back.

The apply stage (stages/apply.py) reads the run's ops from the journal, orders them, and hands every
writer the ops of its target (`Writer.write`). A writer (systems/<name>/writer.py) knows its API: how ops
group into calls, the request bodies and their quirks, how to read the live record an op's precondition
is checked on, and how to re-read the target when a write's outcome is unknown. It knows nothing of the
journal, which sits above it (store/): every outcome goes back through the `Ledger` the stage hands it.

- `Ledger.send(ops, send, landed)` is the one send loop: the stage marks the ops `sending` (committed
  before the request leaves), calls `send`, and on an unknown outcome calls `landed`, the writer's
  re-read (False: not landed, send again; True or the id the API gave: landed), never a blind resend.
  It returns whether the write is confirmed; `Ledger.result(op)` is then the id the API returned.
- `Ledger.send(..., isolate=True)` hands a refusal (a 400, `Validation`) back to the writer unrecorded instead:
  `send_isolating` uses it so that one member the API will not take never sinks its batch (below).
- `Ledger.refused(ops, exc)` records a refusal the writer met outside `send` (a failed precondition read, a
  member isolated as refused).
- `Ledger.close(ops, Unsent.X, why)` closes ops that are not sent, for the reason `Unsent` names.
- `remember_created` / `remember_home_list`: what this run made that no snapshot shows (a task or note
  by its marker, the home list), kept by the stage in the store.

A writer takes its ops as `WriteOp`s, which the journal's entries are, and hands the same objects back,
so the stage records outcomes on its own rows. Ops address people through `model.keys.Person`.

The op is the third of the shapes a contact takes (systems/models.py: API model -> canonical record ->
op -> request body); a writer turns ops into request bodies at the moment of sending, and the canonical
record of a live read (its system's `mapping.py`) into the precondition it checks.

**Isolating refused members** (`send_isolating`): a batch API refuses a whole call when one member is bad and
(usually) names that member's index (`updateMembers[3].email ...`). `split_refused` (pure) says what to do with
a refused part of a batch: a named member is refused alone and the rest goes again in one call; a refusal that
names no member splits the part in halves, each sent on its own, down to single members. So a refused member
costs one extra call when named, and at most about 2·log2(batch) when not; every call goes through the
client's rate budget like any other. The refused member's ops are recorded as rejected with the API's message
(stages/apply.py: not sent again while their content is the same).

Adding a system (e.g. Mailchimp): a folder systems/<name>/ with client.py, models.py, contract.py,
mapping.py and a writer.py whose class satisfies `Writer`, registered in stages/apply.py (`writers`).
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from contact_recon.model.normalise import normalise_phone, phone_region
from contact_recon.model.ops import Kind
from contact_recon.systems.errors import ConnectorError, UnknownOutcome, Validation

FIELD_KINDS = (Kind.UPDATE, Kind.CONSENT_TIGHTEN)
TAG_KINDS = (Kind.TAG_ADD, Kind.TAG_REMOVE)
LIST_KINDS = (Kind.LIST_ADD, Kind.LIST_REMOVE)
EVENT_KINDS = (Kind.TASK_CREATE, Kind.NOTE_CREATE)

Send = Callable[[], Awaitable[str | None]]  # one request; the id the API gave, or None
Landed = Callable[[], Awaitable[str | bool]]  # the re-read after an unknown outcome: False, True or the id


class WriteOp(Protocol):
    """An op as a writer sees it: the op's content (model/ops.py), its id and its GHL location (if any)."""

    @property
    def op_id(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def field(self) -> str | None: ...
    @property
    def expected(self) -> str | None: ...
    @property
    def new(self) -> str | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def location_id(self) -> str | None: ...


OpT = TypeVar("OpT", bound=WriteOp)
OpT_contra = TypeVar("OpT_contra", bound=WriteOp, contravariant=True)


class Unsent(StrEnum):
    """Why a writer closes an op without sending it."""

    ALREADY = "already"  # the live record already shows it (somebody made the same change): confirmed
    STALE = "stale"  # changed by a person since the snapshot: never overwrite a fresh edit
    DEPENDENCY = "dependency"  # what it needs is missing (its person's create failed, no email known)
    NOT_FOUND = "not_found"  # the live record it would change is gone
    REJECTED = "rejected"  # the API offers no way to make this write
    HELD = "held"  # a kind that is reported, never written


class Ledger(Protocol[OpT_contra]):
    """The apply stage's side of the seam (module docstring); stages/apply.py implements it on the journal."""

    async def send(self, ops: Sequence[OpT_contra], send: Send, landed: Landed, *, isolate: bool = False) -> bool: ...

    def confirmed(self, op: OpT_contra) -> bool: ...

    def result(self, op: OpT_contra) -> str | None: ...

    def refused(self, ops: Sequence[OpT_contra], exc: ConnectorError) -> None: ...

    def close(self, ops: Sequence[OpT_contra], why: Unsent, error: str) -> None: ...

    def remember_created(self, op: OpT_contra, object_id: str | None, contact_id: str | None) -> None: ...

    def remember_home_list(self, name: str, list_id: str) -> None: ...


class Echo(Protocol):
    """Where a writer notes what it is about to write, so the webhooks and watcher that see it come back know
    it as our echo (stages/echo.py EchoLog)."""

    def wrote(self, contact_ids: Iterable[str] = (), emails: Iterable[str] = ()) -> None: ...


class Writer(Protocol[OpT_contra]):
    """One system's writer: executes the ops of its target, every outcome through its ledger."""

    @property
    def created(self) -> Mapping[str, str]:
        """Person key -> the id a create of this run got (for systems that give ids)."""
        ...

    async def write(self, ops: Sequence[OpT_contra]) -> None: ...


# ------------------------------------------------------------------------------- shared by the writers


def blank(value: Any) -> str | None:
    text = value.strip() if isinstance(value, str) else value
    return text or None


def has_new(op: WriteOp, live: Mapping[str, Any], *, tight: Callable[[Any], bool]) -> bool:
    """Whether the live canonical record already shows what the op writes."""
    if op.kind == Kind.CONSENT_TIGHTEN:
        return tight(blank(live.get("consent")))
    return live_value(live, op.field, op.new) == blank(op.new)


def live_value(live: Mapping[str, Any], field: str | None, planned: Any) -> Any:
    """The live value of `field`, compared with a value the plan holds (`planned`: an op's expected or new).

    The plan reads a phone in the person's own country (a TinyEmail customer without one takes its matched GHL
    contact's), but a live record is re-read here in the default region: a national number such as `07700 900003`
    then reads differently. So a phone the plan holds in E.164 is compared with the live raw phone read in that
    number's own country too; it counts as the same number when that reading gives it.
    """
    current = blank(live.get(field or ""))
    if field != "phone" or current == blank(planned) or not live.get("phone_raw"):
        return current
    region = phone_region(planned)
    if region and normalise_phone(live["phone_raw"], region)[0] == planned:
        return planned  # the same number, written nationally in the planned number's country
    return current


def premises(ledger: Ledger[OpT], ops: list[OpT], live: Mapping[str, Any], *,
             tight: Callable[[Any], bool]) -> list[OpT]:
    """The field ops whose premise holds on the live canonical record; the others are closed here.

    `tight(consent)` says whether a canonical consent value already means "do not email" in this system.
    """
    todo = []
    for op in ops:
        current = live_value(live, op.field, op.expected)
        if has_new(op, live, tight=tight):
            # already as planned (somebody made the same change): confirmed without a write
            ledger.close([op], Unsent.ALREADY, "already as planned; nothing sent")
        elif current == blank(op.expected) or (op.kind == Kind.CONSENT_TIGHTEN and not tight(current)):
            # the premise holds (a consent op only needs the live value to be loose): write it
            todo.append(op)
        else:
            # changed by a person since the snapshot: never overwrite a fresh edit
            ledger.close([op], Unsent.STALE, "changed since the snapshot; planned again next run")
    return todo


def by_key(ops: Iterable[OpT]) -> dict[str, list[OpT]]:
    groups: dict[str, list[OpT]] = defaultdict(list)
    for op in ops:
        groups[op.key].append(op)
    return groups


async def resend_on_unknown(call: Callable[[], Awaitable[None]], attempts: int) -> None:
    """An idempotent call (a set operation), sent again after an unknown outcome, at most `attempts` times;
    for writes no op is journaled for (a created customer's lists)."""
    for attempt in range(attempts):
        try:
            await call()
            return
        except UnknownOutcome:
            if attempt == attempts - 1:
                raise


# ------------------------------------------------------------------------------ refused batch members

MEMBER_INDEX = re.compile(r"\b(?:updateMembers|assignMembers|unAssignMembers|members)\[(\d+)\]")
P = TypeVar("P")  # what one member of a batch call is on the wire (a customer object, an email)


def named_member(messages: Sequence[str], size: int) -> int | None:
    """The index of the member a refusal names (`updateMembers[3].email ...`), when it is one of the call's `size`."""
    for message in messages:
        found = MEMBER_INDEX.search(message)
        if found and int(found.group(1)) < size:
            return int(found.group(1))
    return None


@dataclass(frozen=True)
class Split:
    """What to do with a refused part of a batch: the member found refused (an index into the part), if any, and
    the parts (tuples of indexes into the part) to send again, each as one call."""

    refused: int | None
    parts: tuple[tuple[int, ...], ...]


def split_refused(size: int, named: int | None) -> Split:
    """The next step after a part of `size` members was refused, naming member `named` (or None)."""
    if named is not None and 0 <= named < size:
        # the refusal names its member: that member is refused, every other goes again in one call
        rest = tuple(i for i in range(size) if i != named)
        return Split(named, (rest,) if rest else ())
    if size <= 1:
        # it names none, and only one member was sent: that member is the refused one
        return Split(0 if size else None, ())
    # it names none: halves, each sent on its own, until the refused members stand alone
    middle = size // 2
    return Split(None, (tuple(range(middle)), tuple(range(middle, size))))


@dataclass
class Isolation:
    """What `send_isolating` did: calls made (the first included), and members found refused."""

    calls: int = 0
    refused: int = 0

    @property
    def extra_calls(self) -> int:
        return max(0, self.calls - 1)


class BatchItem(Generic[OpT, P]):
    """One member of a batch call: the ops it carries (recorded together) and the member as sent."""

    __slots__ = ("ops", "member")

    def __init__(self, ops: Sequence[OpT], member: P):
        self.ops, self.member = list(ops), member


async def send_isolating(ledger: Ledger[OpT], items: Sequence[BatchItem[OpT, P]],
                         send_of: Callable[[list[P]], Awaitable[Any]],
                         landed_of: Callable[[list[P]], Awaitable[str | bool]]) -> Isolation:
    """Send `items` as one call (`send_of(members)`, re-read by `landed_of(members)` after an unknown outcome); a
    refusal is narrowed down by `split_refused` (module docstring) until only the refused members are left out,
    each recorded as refused with the API's message. Every other outcome is the ledger's, as for `Ledger.send`."""
    done = Isolation()
    pending: deque[list[BatchItem[OpT, P]]] = deque([list(items)] if items else [])
    while pending:
        part = pending.popleft()
        members = [item.member for item in part]
        done.calls += 1
        try:
            await ledger.send([op for item in part for op in item.ops], partial(_sent, send_of, members),
                              partial(landed_of, members), isolate=True)
        except Validation as exc:
            split = split_refused(len(part), named_member(exc.messages, len(part)))
            if split.refused is not None:
                done.refused += 1
                ledger.refused(part[split.refused].ops, exc)
            pending.extend([part[i] for i in indexes] for indexes in split.parts)
    return done


async def _sent(send_of: Callable[[list[P]], Awaitable[Any]], members: list[P]) -> str | None:
    await send_of(members)
    return None
