"""Crash injection for the crash-resume tests: a real SIGKILL of this process at a named point of the apply stage.

`RECON_FAILPOINT=<point>[:<kind>][:<n>]` kills the process the n-th time (default 1st) the apply stage passes
`<point>` (for an op of `<kind>`, when given). Points: `journaled` (the plan is journaled, nothing sent yet),
`sending` (an op is committed as `sending`, its request not yet sent), `answered` (the API answered, the journal
not yet updated: the write landed but the journal does not know). Unset (always, outside the tests), `hit` is a
dictionary lookup and nothing else. The same idea as FoundationDB's BUGGIFY or TiKV's fail points.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "RECON_FAILPOINT"
_passed: Counter[str] = Counter()


def hit(point: str, kind: str | None = None) -> None:
    """Kill this process with SIGKILL if `RECON_FAILPOINT` names this point (and kind) for the n-th time."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    parts = spec.split(":")
    wanted_kind = parts[1] if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()) else None
    nth = int(parts[-1]) if parts[-1].isdigit() and len(parts) > 1 else 1
    if parts[0] != point or (wanted_kind and wanted_kind != kind):
        return
    _passed[spec] += 1
    if _passed[spec] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
