"""The data team's answer to a held run: approve every guard it tripped, approve only some, or reject it.

A run whose plan trips a guard is held (`contact_recon/stages/plan.py`). Someone answers it, from the Prefect UI
(the held flow run's approval form, `contact_recon/flows/reconcile.py`) or with `recon approve RUN_ID`:

| decision | what the apply stage may write                                                             |
|----------|--------------------------------------------------------------------------------------------|
| approve  | the planned ops, and the ops held by the approved guards (all of them when `guards` is None) |
| reject   | nothing; the run ends 'rejected' and the next run plans afresh                              |

A share guard (`policy.GUARD_KINDS`) holds the ops of its kinds, so approving it releases exactly those. A
whole-run guard (`tinyemail_empty`, `ghl_empty`: a side came back empty) holds everything: an approval that
leaves one of them out releases nothing, and the run is rejected instead (`effective`). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from contact_recon.model.policy import GUARD_KINDS

Decision = Literal["approve", "reject"]
DECISIONS: tuple[Decision, ...] = ("approve", "reject")


@dataclass(frozen=True)
class Approval:
    decision: Decision
    guards: tuple[str, ...] | None = None  # the approved guards' names; None: every guard the run tripped
    note: str = ""
    by: str = "cli"  # who answered: "cli", "prefect-ui"

    def effective(self, tripped: Sequence[str]) -> Approval:
        """This answer as it applies to a run that tripped `tripped` (guard names): unknown names are refused,
        and an approval leaving out a whole-run guard becomes a reject (it could release nothing safely)."""
        if self.decision == "reject" or self.guards is None:
            return self
        unknown = sorted(set(self.guards) - set(tripped))
        if unknown:
            raise ValueError(f"guards {unknown} did not trip on this run; it tripped {list(tripped)}")
        left_out = [g for g in tripped if g not in self.guards and g not in GUARD_KINDS]
        if left_out:
            why = f"not approved: {', '.join(left_out)} holds the whole run"
            return Approval("reject", None, f"{self.note} ({why})".strip(), self.by)
        return self

    def released_kinds(self, tripped: Sequence[str]) -> frozenset[str] | None:
        """The op kinds whose guard-held ops this answer releases; None: every guard-held op."""
        if self.decision == "reject":
            return frozenset()
        if self.guards is None or set(tripped) <= set(self.guards):
            return None
        return frozenset(kind for g in self.guards for kind in GUARD_KINDS.get(g, ()))

    def as_dict(self) -> dict[str, object]:
        return {"decision": self.decision, "guards": list(self.guards) if self.guards is not None else None,
                "note": self.note, "by": self.by}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Approval:
        decision = data.get("decision")
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {list(DECISIONS)}, not {decision!r}")
        guards = data.get("guards")
        chosen = tuple(str(g) for g in guards) if isinstance(guards, list) else None
        return cls("approve" if decision == "approve" else "reject", chosen, str(data.get("note") or ""),
                   str(data.get("by") or "cli"))


def guard_name(reason: str) -> str:
    """The guard's name of a held reason ("field_updates: 40 of 300 people ...")."""
    return reason.split(":", 1)[0].strip()


def tripped_guards(held_reasons: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(guard_name(r) for r in held_reasons))
