"""One run per location at a time: `location_lock` holds every location a run covers, or says who is busy; and one
deployment run per tenant at a time: `tenant_slot`.

Always an OS file lock per location under `<data_dir>/locks/` (flock), which the kernel releases the
moment the process dies, so a killed run never blocks the next one. With `use_global_limits` (several
machines share the work): also one slot of the Prefect global concurrency limit `recon-run:<location>`
(limit 1); a killed run's slot is freed when its lease (60 s, renewed while alive) runs out.

`tenant_slot` is what lets the nightly's per-tenant children run side by side on the work pool (the deployments
have no concurrency limit of their own) while two runs of one tenant never overlap, whatever locations each
covers (a tenant has one store): a deployment run holds one slot of the global concurrency limit
`recon-tenant:<tenant>` (limit 1; `recon-tenant:default` for the RECON_* settings) for its whole run; a later run
of that tenant waits for it up to `lock_wait_s`, as for a location, then stops with `LocationBusy`. A killed run's
slot is freed when its lease runs out. The location lock is still taken inside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from contact_recon.settings import Settings
from contact_recon.store.files import open_private

LOCK_PREFIX = "recon-run:"
TENANT_PREFIX = "recon-tenant:"


class LocationBusy(Exception):  # noqa: N818 - the name is the contract
    """Another run holds one of this run's locations."""


@contextlib.contextmanager
def location_lock(settings: Settings, locations: Sequence[str], wait_s: float) -> Iterator[None]:
    """Hold every location of the run exclusively, or raise LocationBusy after `wait_s`.

    Always: an OS file lock per location under `<data_dir>/locks/` (flock), which the kernel releases the
    moment the process dies, so a killed run never blocks the next one. With `use_global_limits` (several
    machines): also one slot of the Prefect global concurrency limit `recon-run:<location>` (limit 1); a
    killed run's slot is freed when its lease (60 s, renewed while alive) runs out.
    """
    names = sorted(set(locations))
    deadline = time.monotonic() + wait_s
    with contextlib.ExitStack() as held:
        for name in names:
            held.enter_context(_file_lock(Path(settings.data_dir) / "locks" / f"{_safe(name)}.lock", deadline, names))
        if settings.use_global_limits:
            held.enter_context(_global_lock(names, max(deadline - time.monotonic(), 1.0)))
        yield


@contextlib.contextmanager
def _file_lock(path: Path, deadline: float, names: list[str]) -> Iterator[None]:
    with open_private(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LocationBusy(_busy(names)) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _global_lock(names: list[str], wait_s: float) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    limits = [LOCK_PREFIX + name for name in names]
    with get_client(sync_client=True) as client:
        for limit in limits:
            client.upsert_global_concurrency_limit_by_name(limit, 1)
    try:
        with concurrency(limits, occupy=1, timeout_seconds=wait_s, strict=True, lease_duration=60):
            yield
    except TimeoutError as exc:
        raise LocationBusy(_busy(names)) from exc


def tenant_limit(tenant: str | None) -> str:
    """The global concurrency limit one tenant's deployment runs queue on."""
    return TENANT_PREFIX + (tenant or "default")


@contextlib.contextmanager
def tenant_slot(tenant: str | None, wait_s: float, lease_s: float = 60) -> Iterator[None]:
    """Hold the tenant's one slot (`recon-tenant:<tenant>`, limit 1) for the whole run, or raise LocationBusy after
    `wait_s` while another run of that tenant holds it."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    name = tenant_limit(tenant)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    try:
        with concurrency(name, occupy=1, timeout_seconds=max(wait_s, 1.0), strict=True, lease_duration=lease_s):
            yield
    except TimeoutError as exc:
        raise LocationBusy(f"another run is reconciling tenant {tenant or 'default'}; try again when it has "
                           "finished (`recon runs`), or raise lock_wait_s") from exc


def _busy(names: list[str]) -> str:
    return (f"another run is reconciling {', '.join(names)}; try again when it has finished (`recon runs`), or "
            "raise lock_wait_s")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
