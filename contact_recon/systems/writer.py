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
- `Ledger.refused(ops, exc)` records a refusal the writer met outside `send` (a failed precondition read).
- `Ledger.close(ops, Unsent.X, why)` closes ops that are not sent, for the reason `Unsent` names.
- `remember_created` / `remember_home_list`: what this run made that no snapshot shows (a task or note
  by its marker, the home list), kept by the stage in the store.

A writer takes its ops as `WriteOp`s, which the journal's entries are, and hands the same objects back,
so the stage records outcomes on its own rows. Ops address people through `model.keys.Person`.

The op is the third of the shapes a contact takes (systems/models.py: API model -> canonical record ->
op -> request body); a writer turns ops into request bodies at the moment of sending, and the canonical
record of a live read (its system's `mapping.py`) into the precondition it checks.

Adding a system (e.g. Mailchimp): a folder systems/<name>/ with client.py, models.py, contract.py,
mapping.py and a writer.py whose class satisfies `Writer`, registered in stages/apply.py (`writers`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from contact_recon.model.normalise import normalise_phone, phone_region
from contact_recon.model.ops import Kind
from contact_recon.systems.errors import ConnectorError, UnknownOutcome

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

    async def send(self, ops: Sequence[OpT_contra], send: Send, landed: Landed) -> bool: ...

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
