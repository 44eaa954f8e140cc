"""Fault injection for the sandboxes, deterministic under a seed.

A spec such as ``5xx=0.02,applied_5xx=0.5,timeout=0.01,reset=0.01,latency=20ms,429=0.01`` says:
- ``5xx``: share of requests answered 500/502/503;
- ``timeout``: share held for ``timeout_hold`` (default 30s) and then dropped without an answer;
- ``reset``: share whose connection is cut after the status line, before the body;
- ``429``: share answered 429 whatever the rate budget says;
- ``applied_5xx``: share of the *writes* hit by 5xx, timeout or reset that were applied anyway, as with
  real servers: a client can never assume that a failed write changed nothing;
- ``latency``: added to every request (``20ms``, ``1.5s``);
- ``te_reject``: share of the members TinyEmail refuses (`PUT /account/customer` `updateMembers`, the
  `assignMembers` and `members` of the audience calls): a refused member makes its whole call answer 400
  naming its index, as a batch API does (`updateMembers[3] ...`). The draw hangs on the member's email and the
  seed only (`FaultInjector.refuses_member`), so a member is always or never refused;
- ``te_reject_unnamed``: share of those refused members whose 400 names no member (`the batch was refused`),
  as some APIs answer, so a client must find the member itself (also drawn on the email).

Determinism: the draw for a request depends only on the seed, the request itself (method, path, query
and body) and how many times that same request was seen before. So a given workload meets the same
faults in every run, however its concurrent requests interleave, and a retry gets a fresh draw.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, fields

_PROBABILITIES = ("p_5xx", "applied_5xx", "timeout", "reset", "p_429")
_KEYS = {"5xx": "p_5xx", "applied_5xx": "applied_5xx", "timeout": "timeout", "reset": "reset",
         "429": "p_429", "latency": "latency_s", "timeout_hold": "timeout_hold_s", "te_reject": "te_reject",
         "te_reject_unnamed": "te_reject_unnamed"}


@dataclass(frozen=True)
class FaultSpec:
    p_5xx: float = 0.0
    applied_5xx: float = 0.0
    timeout: float = 0.0
    reset: float = 0.0
    p_429: float = 0.0
    latency_s: float = 0.0
    timeout_hold_s: float = 30.0
    te_reject: float = 0.0
    te_reject_unnamed: float = 0.0

    @classmethod
    def parse(cls, spec: str | None) -> FaultSpec:
        """Parse ``key=value,...``; an empty spec or ``none`` means no faults. Raises ValueError."""
        if spec is None or spec.strip().lower() in ("", "none"):
            return cls()
        values: dict[str, float] = {}
        for part in spec.split(","):
            key, sep, raw = part.strip().partition("=")
            if not sep or key not in _KEYS:
                raise ValueError(f"unknown fault {part.strip()!r}; known: {', '.join(_KEYS)}")
            values[_KEYS[key]] = _parse_value(key, raw.strip())
        if values.get("p_5xx", 0) + values.get("timeout", 0) + values.get("reset", 0) + values.get("p_429", 0) > 1:
            raise ValueError("fault shares 5xx + timeout + reset + 429 add up to more than 1")
        return cls(**values)

    def __str__(self) -> str:
        names = {v: k for k, v in _KEYS.items()}
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                shown = f"{value * 1000:g}ms" if f.name.endswith("_s") else f"{value:g}"
                parts.append(f"{names[f.name]}={shown}")
        return ",".join(parts) or "none"


def _parse_value(key: str, raw: str) -> float:
    try:
        if key in ("latency", "timeout_hold"):
            if raw.endswith("ms"):
                return float(raw[:-2]) / 1000
            return float(raw[:-1] if raw.endswith("s") else raw)
        value = float(raw)
    except ValueError:
        raise ValueError(f"fault {key!r} needs a number, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fault {key!r} is a share between 0 and 1, got {raw!r}")
    return value


@dataclass(frozen=True)
class FaultDecision:
    kind: str | None  # None | "5xx" | "timeout" | "reset" | "429"
    status: int  # the 5xx status to answer, when kind == "5xx"
    apply_write: bool  # for 5xx/timeout/reset on a write: was it applied anyway?
    latency_s: float


class FaultInjector:
    """Draws the fault, if any, for each request (thread-safe)."""

    def __init__(self, spec: FaultSpec, seed: int = 0):
        self.spec, self.seed = spec, seed
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()

    def draw(self, method: str, path: str, query: str = "", body: bytes = b"") -> FaultDecision:
        request_key = f"{method}|{path}|{query}|{hashlib.sha256(body).hexdigest()}"
        with self._lock:
            n = self._seen[request_key]
            self._seen[request_key] += 1
        u_kind, u_applied, u_status = _uniforms(f"{self.seed}|{request_key}|{n}")
        return FaultDecision(
            kind=self._kind(u_kind),
            status=(500, 502, 503)[int(u_status * 3) % 3],
            apply_write=u_applied < self.spec.applied_5xx,
            latency_s=self.spec.latency_s,
        )

    def refuses_member(self, email: str) -> bool:
        """Whether the `te_reject` fault refuses this member: a draw on the seed and the email alone (trimmed and
        lower-cased, as TinyEmail keys a customer), so the same member is refused in every call and every run."""
        if self.spec.te_reject <= 0:
            return False
        u, _, _ = _uniforms(f"{self.seed}|te_reject|{email.strip().lower()}")
        return u < self.spec.te_reject

    def names_refused_member(self, email: str) -> bool:
        """Whether the 400 refusing this member names it (`te_reject_unnamed` is the share that do not)."""
        u, _, _ = _uniforms(f"{self.seed}|te_reject_unnamed|{email.strip().lower()}")
        return u >= self.spec.te_reject_unnamed

    def _kind(self, u: float) -> str | None:
        s = self.spec
        for kind, share in (("5xx", s.p_5xx), ("timeout", s.timeout), ("reset", s.reset), ("429", s.p_429)):
            if u < share:
                return kind
            u -= share
        return None


def _uniforms(text: str) -> tuple[float, float, float]:
    digest = hashlib.sha256(text.encode()).digest()
    return tuple(int.from_bytes(digest[i : i + 8], "big") / 2**64 for i in (0, 8, 16))  # type: ignore[return-value]
