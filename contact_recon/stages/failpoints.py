"""Crash injection for the crash-resume tests: a real SIGKILL of this process at a named point of the apply stage.

`RECON_FAILPOINT=<point>[:<kind>][:<n>]` kills the process the n-th time (default 1st) the apply stage passes
`<point>` (for an op of `<kind>`, when given: `create`, or `ghl.create` for that target's only). Points:
`journaled` (the plan is journaled, nothing sent yet), `sending` (an op is committed as `sending`, its request not
yet sent), `answered` (the API answered, the journal not yet updated: the write landed but the journal does not
know). Unset (always, outside the tests), `hit` is a
dictionary lookup and nothing else. The same idea as FoundationDB's BUGGIFY or TiKV's fail points.

`RECON_RENDEZVOUS=<point>:<dir>:<n>:<timeout_s>` (the concurrency tests) makes each process that passes
`<point>` leave a mark in `<dir>` and wait until `n` processes (itself included) have been there while it has (still
there, or left after it came) or `timeout_s` has passed; its mark then records when it arrived, when it left and
whether it met the others. `n` runs that all meet were inside `<point>`
at once (they overlapped); a run that met nobody was there alone. Unset, `rendezvous` is a dictionary lookup.

`RECON_FAILPOINT_HOLD=<file>` holds the process there instead of killing it, so that a test can kill something
else at a known point (the multi-worker test SIGKILLs the worker that runs the flow run): the first process of any
that reaches the point creates `<file>` (exclusively) with its pid and sleeps until it is killed; a process that
finds the file already there goes on (the point fires once for all the processes sharing the setting).
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
HOLD_ENV = "RECON_FAILPOINT_HOLD"
_passed: Counter[str] = Counter()


def hit(point: str, kind: str | None = None, target: str | None = None) -> None:
    """Kill this process with SIGKILL if `RECON_FAILPOINT` names this point (and kind) for the n-th time."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    parts = spec.split(":")
    wanted_kind = parts[1] if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()) else None
    nth = int(parts[-1]) if parts[-1].isdigit() and len(parts) > 1 else 1
    if parts[0] != point or (wanted_kind and wanted_kind not in (kind, f"{target}.{kind}")):
        return
    _passed[spec] += 1
    if _passed[spec] != nth:
        return
    hold = os.environ.get(HOLD_ENV)
    if hold:
        _hold(hold)
    else:
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


def _hold(path: str) -> None:
    """Sleep here until killed, once `path` says this process is the one held (module docstring)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # another process was held here already: go on
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    while True:
        time.sleep(3600)
