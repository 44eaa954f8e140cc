"""Guards that fit the location: tonight's figure against an absolute floor and this location's own history.

Pure: the policy's `GuardPolicy`, tonight's merge stats and a `GuardHistory` in; thresholds and tripped guards
out. The merge engine (`contact_recon/engine/merge.py`, table F) turns the trips into `held_reasons`; the plan
expectation `within_guards` (checks/suites.py) holds the ops of a guard's kinds with the same thresholds.

A share guard's *figure* is the number of people with at least one op of its kinds (`GUARD_KINDS`; the merge
stat `guard_<name>`); the people in play are the stat `people`. Tags are compared by key (`model/tags.py`), so a
change of case alone is no removal, and the ops that fold a second spelling away or respell a list tag join the
plan after the merge's stats: the figure never counts them (nor does the guard expectation). The guard trips
when the figure is

1. at least `min_people` (a small location's few changes are never a mass change), and
2. above the guard's share of the people in play (e.g. 5% for deletes_or_inactivations), and
3. above `median_multiple` times the *usual* figure: the median of the figure over the location's recent
   comparable runs (the last `history_runs` of them), once there are at least `history_min_runs` of them.
   Fewer (a new location, or only its first fill so far) and this condition is left out.

All three must hold, so history only ever lets more through than the floor does: an ordinary day passes on
its share, a location whose every night is busy passes on its own usual figure, and a mass change is above
both. The median (not the mean) keeps one approved mass change among the recent runs from moving the usual
figure, and `history_min_runs` keeps one or two such runs from being the usual figure on their own.

A threshold is the smallest figure that holds: max(min_people, floor(share x people) + 1, and, with a usable
usual figure, floor(multiple x usual) + 1); the floors ignore float error below 1e-9 (5% of 300 is 15, so 15
people pass and 16 hold). Which runs are comparable is the store's query (`Store.comparable_stats`: completed
reconcile runs of the same locations that were not a first fill); `GuardHistory.from_stats` takes their stats.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from contact_recon.model.policy import GUARD_KINDS, GuardPolicy

_EPSILON = 1e-9


@dataclass(frozen=True)
class Usual:
    """A guard's usual figure: the median of its figure over `runs` recent comparable runs."""

    median: float
    runs: int


@dataclass(frozen=True)
class GuardHistory:
    """Per guard name, its usual figure; a guard without an entry has no comparable run."""

    usual: Mapping[str, Usual] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, runs: Sequence[Mapping[str, int]], limit: int | None = None) -> GuardHistory:
        """From the merge stats of recent comparable runs, newest first; only the first `limit` runs count. A run
        whose stats lack a guard's figure (older than the guard) does not count for that guard."""
        recent = runs[:limit] if limit is not None else runs
        usual = {}
        for name in GUARD_KINDS:
            figures = [stats[f"guard_{name}"] for stats in recent if f"guard_{name}" in stats]
            if figures:
                usual[name] = Usual(float(statistics.median(figures)), len(figures))
        return cls(usual)


NO_HISTORY = GuardHistory()


@dataclass(frozen=True)
class Threshold:
    """One share guard's threshold tonight: `at_least` is the smallest figure that holds the run."""

    name: str
    share: float  # the policy's share of the people in play
    people: int
    min_people: int
    multiple: float
    usual: Usual | None  # None: no comparable run
    uses_usual: bool  # enough comparable runs for the usual figure to count
    at_least: int

    def holds(self, figure: int) -> bool:
        return figure >= self.at_least

    def describe(self) -> str:
        """The usual figure and the threshold with its parts, for a held reason."""
        if self.usual is None:
            usual = "usual unknown (no comparable run yet)"
        else:
            runs = f"{self.usual.runs} run{'s' if self.usual.runs != 1 else ''}"
            unused = "" if self.uses_usual else "; too few runs to count"
            usual = f"usual {self.usual.median:g} (median of {runs}{unused})"
        parts = [f"above {self.share * 100:g}% of people"]
        if self.uses_usual:
            parts.append(f"above {self.multiple:g}x usual")
        parts.append(f"at least {self.min_people} people")
        return f"{usual}; threshold {self.at_least} ({', '.join(parts)})"


@dataclass(frozen=True)
class Trip:
    """A share guard that holds the run: tonight's figure and the threshold it reached."""

    figure: int
    threshold: Threshold

    @property
    def name(self) -> str:
        return self.threshold.name

    def reason(self) -> str:
        """The held reason: the guard's name before the first ':' (the report and the alerts split on it)."""
        people = self.threshold.people
        share = self.figure / max(people, 1)
        return f"{self.name}: {self.figure:,} of {people:,} people ({share:.1%}); {self.threshold.describe()}"


def thresholds(policy: GuardPolicy, people: int, history: GuardHistory = NO_HISTORY) -> dict[str, Threshold]:
    """Every share guard's threshold for a plan over `people` people in play, by guard name."""
    out = {}
    for name in GUARD_KINDS:
        share: float = getattr(policy, name)
        usual = history.usual.get(name)
        uses_usual = usual is not None and usual.runs >= policy.history_min_runs
        at_least = max(policy.min_people, _above(share * people))
        if uses_usual and usual is not None:
            at_least = max(at_least, _above(policy.median_multiple * usual.median))
        out[name] = Threshold(name, share, people, policy.min_people, policy.median_multiple, usual, uses_usual,
                              at_least)
    return out


def tripped(policy: GuardPolicy, stats: Mapping[str, int], history: GuardHistory = NO_HISTORY) -> tuple[Trip, ...]:
    """The share guards tonight's plan trips, in `GUARD_KINDS` order (`stats`: the merge stats, `people` and
    `guard_<name>`)."""
    limits = thresholds(policy, stats["people"], history)
    trips = (Trip(stats[f"guard_{name}"], limit) for name, limit in limits.items())
    return tuple(trip for trip in trips if trip.threshold.holds(trip.figure))


def _above(limit: float) -> int:
    """The smallest whole number above `limit` (float error below 1e-9 ignored)."""
    return math.floor(limit + _EPSILON) + 1


__all__ = ["NO_HISTORY", "GuardHistory", "Threshold", "Trip", "Usual", "thresholds", "tripped"]
