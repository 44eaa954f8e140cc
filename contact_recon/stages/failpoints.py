"""Crash injection for the crash-resume tests: a real SIGKILL of this process at a named point of the apply stage.

`RECON_FAILPOINT=<point>[:<kind>][:<n>]` kills the process the n-th time (default 1st) the apply stage passes
`<point>` (for an op of `<kind>`, when given). Points: `journaled` (the plan is journaled, nothing sent yet),
`sending` (an op is committed as `sending`, its request not yet sent), `answered` (the API answered, the journal
not yet updated: the write landed but the journal does not know). Unset (always, outside the tests), `hit` is a
dictionary lookup and nothing else. The same idea as FoundationDB's BUGGIFY or TiKV's fail points.

`RECON_RENDEZVOUS=<point>:<dir>:<n>:<timeout_s>` (the concurrency tests) makes each process that passes
`<point>` leave a mark in `<dir>` and wait until `n` processes (itself included) have been there while it has (still
there, or left after it came) or `timeout_s` has passed; its mark then records when it arrived, when it left and
whether it met the others. `n` runs that all meet were inside `<point>`
at once (they overlapped); a run that met nobody was there alone. Unset, `rendezvous` is a dictionary lookup.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

ENV = "RECON_FAILPOINT"
RENDEZVOUS_ENV = "RECON_RENDEZVOUS"
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


def rendezvous(point: str, **about: str) -> None:
    """Wait at `point` for the others `RECON_RENDEZVOUS` names (module docstring); `about` goes into the mark."""
    spec = os.environ.get(RENDEZVOUS_ENV)
    if not spec:
        return
    wanted, rest = spec.split(":", 1)
    folder, n, timeout_s = rest.rsplit(":", 2)
    if wanted != point:
        return
    mark = Path(folder) / f"{os.getpid()}-{time.time_ns()}.json"
    arrived = time.time()
    _write(mark, {"arrived": arrived, **about})
    while _met(Path(folder), arrived) < int(n) and time.time() - arrived < float(timeout_s):
        time.sleep(0.05)
    _write(mark, {"arrived": arrived, "left": time.time(), "met": _met(Path(folder), arrived) >= int(n), **about})


def _met(folder: Path, arrived: float) -> int:
    """Marks of processes that were at the point while this one has been: still there, or left after it came."""
    return sum(1 for mark in folder.glob("*.json") if json.loads(mark.read_text()).get("left", arrived) >= arrived)


def _write(mark: Path, data: dict[str, object]) -> None:
    tmp = mark.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, mark)  # whole: a reader never sees half a mark
