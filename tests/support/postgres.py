"""A throwaway PostgreSQL cluster, and a Prefect server on it, for the multi-worker test (docs/scale-out.md).

`postgres_bin()` finds Debian's `postgresql` binaries (/usr/lib/postgresql/<version>/bin), installing the package
with apt-get when they are missing and we are root (as the Makefile installs chromium for the report tests), else
a clear error. `cluster(root)` initialises a cluster under `root` (trust authentication, listening on 127.0.0.1
only, its socket in its own folder), starts it with pg_ctl, creates the `prefect` database and yields its
SQLAlchemy URL; it stops the cluster (fast shutdown) afterwards. initdb refuses to run as root: as root, the
cluster's folder belongs to `nobody` and every PostgreSQL command runs as that user (`runuser`).

`prefect_server(url, home)` is `prefect server start` as a child process on that database (its own PREFECT_HOME,
no UI, no telemetry), yielding its API URL once /api/health answers.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from contact_recon.sandbox.server import free_port

USER = "nobody"  # who runs PostgreSQL when we are root (initdb refuses root)
DB_USER = "recon"


def postgres_bin() -> Path:
    """The folder of Debian's PostgreSQL binaries, installing `postgresql` with apt-get when root and missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env, capture_output=True,
                       timeout=900)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is missing and cannot be installed here: sudo apt-get install -y postgresql")
    return Path(found[-1]).parent


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", USER, "--", *command] if os.geteuid() == 0 else command


@contextmanager
def cluster(root: Path) -> Iterator[str]:
    """A running cluster under `root` with a `prefect` database; its postgresql+asyncpg URL (module docstring)."""
    binaries, data, port = postgres_bin(), root / "pg", free_port()
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(root, USER)
        shutil.chown(data, USER)
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run(_as_owner([str(binaries / "initdb"), "-D", str(data), "-U", DB_USER, "--auth=trust",
                              "-E", "UTF8", "--no-sync"]), **run)  # type: ignore[call-overload]
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data} -c fsync=off -c synchronous_commit=off"
    subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "log"),
                              "-w", "-t", "60", "start"]), **run)  # type: ignore[call-overload]
    try:
        subprocess.run(_as_owner([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER,
                                  "prefect"]), **run)  # type: ignore[call-overload]
        yield f"postgresql+asyncpg://{DB_USER}@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=120)


@contextmanager
def prefect_server(database_url: str, home: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """`prefect server start` on `database_url` as a child process; its API URL once it answers."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    with (home / "server.log").open("w") as log:  # the child keeps its own descriptor
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server on PostgreSQL did not start:\n"
                                   f"{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
