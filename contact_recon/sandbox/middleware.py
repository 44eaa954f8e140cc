"""What both sandbox servers share around their own routes: rate limits, faults, a request log and
the loopback-only inspection routes.

`wrap_sandbox` turns a list of routes into the served app. For each request to a non-admin route:
1. added latency (faults);
2. the rate budget of the caller's key (`rate_key`): over budget -> 429 with the app's body and a
   `Retry-After`; the app's rate headers (`rate_headers`) go on every answer, 429s included;
3. a fault draw: 429, 5xx, a timeout (held, then dropped) or a reset (cut after the status line). For
   a write (`is_write`), a 5xx/timeout/reset is applied anyway with the `applied_5xx` share;
4. the route itself.
Every request is logged as (method, path, status, time, fault); tokens never are (no headers, no
query string). Admin routes (`/__sandbox/...`) answer only to loopback clients and bypass 1-3.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contact_recon.sandbox.common import iso_from_epoch, json_response, read_json
from contact_recon.sandbox.faults import FaultInjector, FaultSpec
from contact_recon.sandbox.ratelimit import Decision, SlidingWindowLimiter

ADMIN_PREFIX = "/__sandbox/"
LOG_CAPACITY = 200_000


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8 or ::1 (also IPv4-mapped, ::ffff:127.x), judged as an address: a text prefix would let
    `::1:2` through. A client that is not an IP address (a unix socket, a test client) is not loopback."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


class Store(Protocol):
    def to_fixture(self) -> dict[str, Any]: ...
    def reset(self) -> None: ...


class DroppedConnection(Exception):
    """Raised inside the server to cut a connection (a reset or a timeout fault)."""


@dataclass
class SandboxControl:
    """The mutable sandbox machinery that the admin routes inspect and change."""

    name: str
    store: Store
    limiter: SlidingWindowLimiter
    injector: FaultInjector
    clock: Callable[[], float]
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_CAPACITY))
    total_requests: int = 0


def wrap_sandbox(
    routes: list[Route],
    *,
    name: str,
    store: Store,
    rate_key: Callable[[Request], str | None],
    rate_headers: Callable[[Decision], dict[str, str]],
    limiter: SlidingWindowLimiter,
    too_many_body: dict[str, Any],
    fault_body: Callable[[int, str], dict[str, Any]] = lambda status, message: {"statusCode": status,
                                                                                 "message": message},
    faults: str | FaultSpec | None = None,
    seed: int = 0,
    is_write: Callable[[str, str], bool] = lambda method, path: method in ("POST", "PUT", "PATCH", "DELETE"),
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the served app of one sandbox from its own routes (see the module docstring)."""
    spec = faults if isinstance(faults, FaultSpec) else FaultSpec.parse(faults)
    control = SandboxControl(name, store, limiter, FaultInjector(spec, seed), clock)
    app = Starlette(routes=[*admin_routes(control), *routes])
    app.state.control = control
    app.add_middleware(
        SandboxMiddleware, control=control, rate_key=rate_key, rate_headers=rate_headers,
        too_many_body=too_many_body, fault_body=fault_body, is_write=is_write,
    )
    return app


class SandboxMiddleware:
    """Pure ASGI middleware applying latency, rate limits and faults, and logging every request."""

    def __init__(self, app: ASGIApp, *, control: SandboxControl, rate_key: Callable[[Request], str | None],
                 rate_headers: Callable[[Decision], dict[str, str]], too_many_body: dict[str, Any],
                 fault_body: Callable[[int, str], dict[str, Any]], is_write: Callable[[str, str], bool]):
        self.app, self.control = app, control
        self.rate_key, self.rate_headers = rate_key, rate_headers
        self.too_many_body, self.fault_body, self.is_write = too_many_body, fault_body, is_write

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        started = self.control.clock()
        record: dict[str, Any] = {"method": scope["method"], "path": scope["path"], "status": None,
                                  "time": iso_from_epoch(started), "fault": None}
        self.control.total_requests += 1
        self.control.log.append(record)
        body = await _read_body(receive)
        try:
            await self._handle(scope, body, send, record)
        finally:
            record["duration_ms"] = round((self.control.clock() - started) * 1000, 3)

    async def _handle(self, scope: Scope, body: bytes, send: Send, record: dict[str, Any]) -> None:
        method, path = scope["method"], scope["path"]
        decision = self.control.injector.draw(method, path, scope.get("query_string", b"").decode(), body)
        if decision.latency_s:
            await asyncio.sleep(decision.latency_s)
        key = self.rate_key(Request(scope))
        budget = self.control.limiter.hit(key) if key is not None else None
        extra = self.rate_headers(budget) if budget is not None else {}
        if budget is not None and not budget.allowed:
            return await self._answer_429(scope, send, record, extra, budget.retry_after_s, "rate_limit")
        if decision.kind == "429":
            return await self._answer_429(scope, send, record, extra, 1, "429")
        if decision.kind is None:
            return await self._run_app(scope, body, send, record, extra)
        record["fault"] = decision.kind
        if self.is_write(method, path) and decision.apply_write:
            record["fault"] += "+applied"
            await self._run_app(scope, body, _discard, {}, {})
        if decision.kind == "5xx":
            record["status"] = decision.status
            body_5xx = self.fault_body(decision.status, "Internal server error (sandbox fault)")
            await json_response(body_5xx, decision.status, extra)(scope, _empty_receive, send)
            return
        if decision.kind == "timeout":
            await asyncio.sleep(self.control.injector.spec.timeout_hold_s)
        await _drop(send, record)

    async def _answer_429(self, scope: Scope, send: Send, record: dict[str, Any], headers: dict[str, str],
                          retry_after: int, fault: str) -> None:
        record["status"], record["fault"] = 429, (None if fault == "rate_limit" else fault)
        response = json_response(self.too_many_body, 429, {**headers, "Retry-After": str(retry_after)})
        await response(scope, _empty_receive, send)

    async def _run_app(self, scope: Scope, body: bytes, send: Send, record: dict[str, Any],
                       extra: dict[str, str]) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                message = dict(message)
                message["headers"] = [*message.get("headers", []),
                                      *((k.lower().encode(), v.encode()) for k, v in extra.items())]
            await send(message)

        await self.app(scope, _replay(body), send_with_headers)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # a disconnect never comes before the answer here
        return {"type": "http.disconnect"}

    return receive


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    return None


async def _drop(send: Send, record: dict[str, Any]) -> None:
    """Send a status line promising a body, then cut the connection: the client sees a reset."""
    record["status"] = 0
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1024")]})
    raise DroppedConnection("sandbox fault: connection dropped")


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


# --- admin routes -------------------------------------------------------------------------------

def admin_routes(control: SandboxControl) -> list[Route]:
    def loopback_only(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def guarded(request: Request) -> Response:
            if not is_loopback(request.client.host if request.client else None):
                return json_response({"message": "sandbox admin routes answer loopback clients only"}, 403)
            return await handler(request)
        return guarded

    async def state(request: Request) -> Response:
        return json_response(control.store.to_fixture())

    async def requests_log(request: Request) -> Response:
        offset = int(request.query_params.get("offset", 0))
        items = list(control.log)[offset:]
        return json_response({"requests": items, "total": control.total_requests})

    async def reset(request: Request) -> Response:
        control.store.reset()
        control.limiter.reset()
        control.injector.reset()
        control.log.clear()
        control.total_requests = 0
        return json_response({"reset": True})

    async def set_faults(request: Request) -> Response:
        body, error = await read_json(request)
        if error is not None:
            return error
        body = body or {}
        try:
            spec = FaultSpec.parse(body.get("faults"))
        except ValueError as exc:
            return json_response({"message": str(exc)}, 400)
        control.injector = FaultInjector(spec, int(body.get("seed", control.injector.seed)))
        return json_response({"faults": str(spec), "seed": control.injector.seed})

    async def rename_list(request: Request) -> Response:
        # a TinyEmail list renamed in the app (the API has no rename); the GHL sandbox has no lists
        body, error = await read_json(request)
        if error is not None:
            return error
        rename = getattr(control.store, "rename_list", None)
        name = (body or {}).get("name")
        if rename is None or not isinstance(name, str):
            return json_response({"message": "only the TinyEmail sandbox renames lists, given a name"}, 400)
        item = rename(request.path_params["list_id"], name)
        if item is None:
            return json_response({"message": "no such list"}, 404)
        return json_response({"id": item["id"], "name": item["name"]})

    async def get_faults(request: Request) -> Response:
        return json_response({"faults": str(control.injector.spec), "seed": control.injector.seed})

    return [
        Route("/__sandbox/state", loopback_only(state), methods=["GET"]),
        Route("/__sandbox/requests", loopback_only(requests_log), methods=["GET"]),
        Route("/__sandbox/reset", loopback_only(reset), methods=["POST"]),
        Route("/__sandbox/faults", loopback_only(set_faults), methods=["POST"]),
        Route("/__sandbox/faults", loopback_only(get_faults), methods=["GET"]),
        Route("/__sandbox/lists/{list_id}", loopback_only(rename_list), methods=["PATCH"]),
    ]
