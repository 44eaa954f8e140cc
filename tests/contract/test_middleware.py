"""The machinery both sandboxes share, on a tiny counter app served over real HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.routing import Route

from contact_recon.sandbox.common import json_response
from contact_recon.sandbox.middleware import wrap_sandbox
from contact_recon.sandbox.ratelimit import Decision, SlidingWindowLimiter


class CounterStore:
    def __init__(self) -> None:
        self.count = 0

    def to_fixture(self) -> dict[str, Any]:
        return {"count": self.count}

    def reset(self) -> None:
        self.count = 0


def make_app(faults: str | None = None, limit: int = 5, seed: int = 0):
    store = CounterStore()

    async def bump(request: Request):
        store.count += 1
        return json_response({"count": store.count}, 201)

    async def read(request: Request):
        return json_response({"count": store.count})

    def rate_key(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") or None

    def rate_headers(d: Decision) -> dict[str, str]:
        return {"X-RateLimit-Remaining": str(d.remaining), "X-RateLimit-Max": str(d.limit)}

    return store, wrap_sandbox(
        [Route("/bump", bump, methods=["POST"]), Route("/read", read, methods=["GET"])],
        name="toy", store=store, rate_key=rate_key, rate_headers=rate_headers,
        limiter=SlidingWindowLimiter(limit, 10.0), too_many_body={"message": "Too many requests"},
        faults=faults, seed=seed,
    )


AUTH = {"Authorization": "Bearer secret-token-123"}


def test_rate_headers_on_every_answer_and_429_beyond(serve):
    _, app = make_app(limit=5)
    base = serve(app).base_url
    answers = [httpx.get(f"{base}/read?token=secret-token-123", headers=AUTH) for _ in range(7)]
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 2
    assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["4", "3", "2", "1", "0", "0", "0"]
    assert answers[5].json() == {"message": "Too many requests"}
    assert 1 <= int(answers[5].headers["retry-after"]) <= 10
    # no credentials, no budget: the route answers, without rate headers
    assert "x-ratelimit-remaining" not in httpx.get(f"{base}/read").headers


def test_request_log_never_holds_tokens(serve):
    _, app = make_app()
    base = serve(app).base_url
    httpx.post(f"{base}/bump?api_key=secret-token-123", headers=AUTH)
    log = httpx.get(f"{base}/__sandbox/requests").json()
    assert log["total"] == 1
    assert log["requests"][0]["method"] == "POST" and log["requests"][0]["path"] == "/bump"
    assert log["requests"][0]["status"] == 201
    assert "secret-token-123" not in httpx.get(f"{base}/__sandbox/requests").text


def test_5xx_applied_anyway_changes_state(serve):
    store, app = make_app(faults="5xx=1,applied_5xx=1")
    base = serve(app).base_url
    answer = httpx.post(f"{base}/bump", headers=AUTH)
    assert answer.status_code in (500, 502, 503)
    assert store.count == 1  # the failed write landed: a client must re-read, never assume
    assert httpx.get(f"{base}/__sandbox/state").json() == {"count": 1}


def test_5xx_not_applied_leaves_state(serve):
    store, app = make_app(faults="5xx=1,applied_5xx=0")
    base = serve(app).base_url
    assert httpx.post(f"{base}/bump", headers=AUTH).status_code >= 500
    assert store.count == 0


def test_reset_fault_cuts_the_connection(serve):
    store, app = make_app(faults="reset=1,applied_5xx=1")
    base = serve(app).base_url
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{base}/bump", headers=AUTH)
    assert store.count == 1
    assert httpx.get(f"{base}/__sandbox/requests").json()["requests"][0]["fault"] == "reset+applied"


def test_timeout_fault_holds_then_drops(serve):
    _, app = make_app(faults="timeout=1,timeout_hold=0.5s")
    base = serve(app).base_url
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{base}/read", timeout=0.2)


def test_latency_is_added(serve):
    _, app = make_app(faults="latency=150ms")
    base = serve(app).base_url
    started = time.monotonic()
    assert httpx.get(f"{base}/read").status_code == 200
    assert time.monotonic() - started >= 0.15


def test_admin_faults_and_reset(serve):
    store, app = make_app()
    base = serve(app).base_url
    httpx.post(f"{base}/bump", headers=AUTH)
    assert httpx.post(f"{base}/__sandbox/faults", json={"faults": "429=1", "seed": 5}).json() == \
        {"faults": "429=1", "seed": 5}
    assert httpx.get(f"{base}/read", headers=AUTH).status_code == 429
    assert httpx.post(f"{base}/__sandbox/faults", json={"faults": "bogus=1"}).status_code == 400
    httpx.post(f"{base}/__sandbox/faults", json={"faults": ""})
    assert httpx.post(f"{base}/__sandbox/reset").json() == {"reset": True}
    assert store.count == 0
    assert httpx.get(f"{base}/__sandbox/requests").json() == {"requests": [], "total": 0}


async def _call(app, method: str, path: str, client_host: str) -> int:
    """One request straight into the ASGI app, from a chosen client address."""
    scope = {"type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
             "root_path": "", "scheme": "http", "query_string": b"", "headers": [],
             "client": (client_host, 40000), "server": ("127.0.0.1", 80)}
    statuses = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


def test_admin_routes_refuse_non_loopback_clients():
    _, app = make_app()
    for method, path in (("GET", "/__sandbox/state"), ("GET", "/__sandbox/requests"),
                         ("POST", "/__sandbox/reset"), ("POST", "/__sandbox/faults")):
        assert asyncio.run(_call(app, method, path, "10.1.2.3")) == 403
        assert asyncio.run(_call(app, method, path, "192.168.0.7")) == 403
    assert asyncio.run(_call(app, "GET", "/__sandbox/state", "127.0.0.1")) == 200
    assert asyncio.run(_call(app, "GET", "/__sandbox/state", "::1")) == 200
