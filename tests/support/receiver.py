"""`recon webhooks serve` as a real process (so it can be killed with SIGKILL), and reading its spool state.

`start_receiver(data_dir, api_url)` starts it with the sandbox's test keys, waits for `/healthz`, and keeps
reading its output in a thread (so a long stream of log lines never blocks it on a full pipe).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from contact_recon.sandbox.server import free_port

RECON = [sys.executable, "-m", "contact_recon.cli.main"]


class ReceiverProcess:
    def __init__(self, proc: subprocess.Popen[str], port: int):
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}/webhooks/ghl"
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).json())

    def kill(self) -> None:
        """SIGKILL: no handler, no flush, no goodbye."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(20)
        self.stop()  # the pipe's end: nothing more to read

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return "".join(self.lines)


def start_receiver(data_dir: Path, api_url: str, *, port: int | None = None, timeout: float = 60.0,
                   **env: str) -> ReceiverProcess:
    port = port or free_port()
    environ = {**os.environ, "PREFECT_API_URL": api_url, "RECON_GHL_WEBHOOK_PUBLIC_KEY": "sandbox",
               "RECON_DATA_DIR": str(data_dir), "COLUMNS": "200", **env}
    proc = subprocess.Popen([*RECON, "webhooks", "serve", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=environ)
    running = ReceiverProcess(proc, port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return running
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            out = running.stop()
            raise AssertionError(f"the receiver did not start:\n{out}")
        time.sleep(0.1)
