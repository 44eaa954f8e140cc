"""Running the sandbox apps: in a background thread (tests, demo) or in the foreground (`recon sandbox serve`).

Both servers listen on 127.0.0.1 only. The foreground runner serves both apps from one event loop and
stops cleanly on SIGINT or SIGTERM (uvicorn's own handlers, shared by both servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

HOST = "127.0.0.1"


@dataclass
class RunningServer:
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def app(self) -> Starlette:
        return self.server.config.app  # type: ignore[return-value]

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def _config(app: Starlette, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host=HOST, port=port, log_level="warning", access_log=False,
                          lifespan="off", timeout_graceful_shutdown=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serve_in_thread(app: Starlette, port: int = 0, ready_timeout: float = 10.0) -> RunningServer:
    """Serve `app` on 127.0.0.1 in a daemon thread; `port=0` picks a free port."""
    port = port or free_port()
    server = uvicorn.Server(_config(app, port))
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]  # not the main thread
    thread = threading.Thread(target=server.run, name=f"sandbox-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"sandbox server on port {port} did not start")
        time.sleep(0.01)
    return RunningServer(f"http://{HOST}:{port}", server, thread)


def serve_forever(apps: dict[str, tuple[Starlette, int]], on_ready: Callable[[dict[str, str]], None]) -> None:
    """Serve each named app on its port until SIGINT/SIGTERM, calling `on_ready` with the base URLs.

    The ports are bound first, so a taken port stops the start with SystemExit and a clear message
    before anything serves.
    """
    sockets = {name: _bind(name, port) for name, (_, port) in apps.items()}
    servers = {name: uvicorn.Server(_config(app, sockets[name].getsockname()[1])) for name, (app, _) in apps.items()}
    for s in servers.values():
        s.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # one handler for all
    asyncio.run(_serve_all(servers, sockets, on_ready))


def _bind(name: str, port: int) -> socket.socket:
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (an accepted socket inherits
    # the listening one's), and without it each answer's second write waits out the client's delayed ACK (~40 ms)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"{name} sandbox cannot listen on {HOST}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


async def _serve_all(servers: dict[str, uvicorn.Server], sockets: dict[str, socket.socket],
                     on_ready: Callable[[dict[str, str]], None]) -> None:
    def stop_all() -> None:
        for s in servers.values():
            s.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all)
    tasks = [asyncio.create_task(s.serve(sockets=[sockets[name]])) for name, s in servers.items()]
    # uvicorn exposes only a `started` flag, no event to wait on
    while not all(s.started for s in servers.values()) and not any(t.done() for t in tasks):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if all(s.started for s in servers.values()):
        on_ready({name: f"http://{HOST}:{s.config.port}" for name, s in servers.items()})
    else:
        stop_all()
    await asyncio.gather(*tasks)
