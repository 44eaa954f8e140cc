"""The request engine both connectors share: budget, credentials, safe retries and typed errors.

Each request:
1. books a send time in the shared `RateBudget` of its (system, location or key) and waits for it;
2. asks the credentials for a token (refreshing OAuth tokens shortly before expiry);
3. is sent; the answer's rate headers are fed back to the budget.

What is retried, and what is not (a write is never resent blindly):
- 429: nothing was done, so reads and writes wait (`Retry-After`, through the budget) and retry;
- 401 once, when the credentials could be refreshed: nothing was done;
- a connection that was never made (connect error or timeout): nothing was sent, so any method retries;
- 5xx, read timeouts and resets: reads retry with bounded exponential backoff and jitter (tenacity);
  a write gets `UnknownOutcome`, and the caller re-reads before deciding to try again;
- other 4xx become typed errors straight away (the system's `classify` hook names them).
When retries run out: `RateLimited` for 429s, `Unavailable` for a read that kept failing.

Reading a 2xx answer (`read_json`, `member`, `parse`): a body that is not JSON, a field that is missing,
of the wrong type or null where a list belongs, and text with a lone UTF-16 surrogate (`"\\ud800"`, which
no store can hold) become `MalformedResponse` naming the endpoint and the field, never the value;
merely odd text (NUL, RTL marks, emoji, combining marks) is kept as sent.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import httpx
import pydantic
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from contact_recon.systems.auth import Credentials
from contact_recon.systems.budget import RateBudget
from contact_recon.systems.errors import (
    AuthError,
    ConnectorError,
    MalformedResponse,
    NotFound,
    RateLimited,
    ScopeError,
    Unavailable,
    UnknownOutcome,
    Validation,
)

log = logging.getLogger("connectors")
M = TypeVar("M", bound=pydantic.BaseModel)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # only a \uD800-\uDFFF escape can give a lone surrogate
_MAX_ERRORS_SHOWN = 5

Classifier = Callable[[httpx.Response, dict[str, Any]], ConnectorError | None]


@dataclass
class RequestStats:
    used: int = 0  # requests sent
    rate_limited: int = 0  # 429 answers
    retried: int = 0  # attempts after the first
    unknown_outcomes: int = 0


class _Retry(Exception):
    """Internal: this attempt failed in a retryable way; `final` is raised when retries run out."""

    def __init__(self, final: ConnectorError, rate_limited: bool = False):
        super().__init__(str(final))
        self.final, self.rate_limited = final, rate_limited


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's roots), made once per process: loading the roots takes ~0.2 s, which a
    long-running process making two clients per one-person sync (the sync service) would pay every time."""
    return httpx.create_ssl_context()


class ApiClient:
    """An async HTTP client for one system and one budget (one location or key)."""

    def __init__(self, *, system: str, base_url: str, credentials: Credentials, budget: RateBudget,
                 auth_header: Callable[[str], dict[str, str]], headers: dict[str, str] | None = None,
                 classify: Classifier | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 30.0, max_attempts: int = 6, backoff_max_s: float = 30.0,
                 sleep: Callable[[float], Awaitable[None]] | None = None):
        self.system, self.credentials, self.budget = system, credentials, budget
        self.auth_header, self.classify = auth_header, classify or (lambda response, body: None)
        self.max_attempts, self.backoff_max_s = max_attempts, backoff_max_s
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers or {}, transport=transport,
                                      timeout=timeout, verify=tls_context())
        self.stats = RequestStats()
        self._sleep = sleep

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, *, write: bool | None = None, **kwargs: Any) -> httpx.Response:
        """Send with budget, credentials and the retry rules above; return a 2xx answer or raise."""
        is_write = method != "GET" if write is None else write
        where: dict[str, Any] = {"system": self.system, "method": method, "path": path}
        refreshed: list[bool] = []  # a refused token is refreshed and retried once per request
        options: dict[str, Any] = {"sleep": self._sleep} if self._sleep else {}
        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                                 retry=retry_if_exception_type(_Retry), reraise=True, **options)
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.stats.retried += 1
                    return await self._attempt(where, is_write, refreshed, kwargs)
        except _Retry as exc:
            raise exc.final from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retry) and exc.rate_limited:
            return 0.0  # the budget holds every request back for the Retry-After
        return wait_exponential_jitter(multiplier=0.5, max=self.backoff_max_s, jitter=0.5)(state)

    async def _attempt(self, where: dict[str, Any], is_write: bool, refreshed: list[bool],
                       kwargs: dict[str, Any]) -> httpx.Response:
        method, path = where["method"], where["path"]
        slot = await self.budget.acquire()
        token = await self.credentials.token()
        self.stats.used += 1
        try:
            response = await self.http.request(method, path, headers=self.auth_header(token), **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _Retry(Unavailable(f"cannot connect: {type(exc).__name__}", **where)) from None
        except httpx.TransportError as exc:  # read timeout, reset, protocol error: the request was sent
            return self._lost(exc, is_write, where)
        finally:
            self.budget.settle(slot)  # the server counted it by now (contact_recon/systems/budget.py)
        log.debug("%s %s %s -> %s", self.system, method, path, response.status_code)
        self.budget.observe(response.headers)
        return await self._judge(response, token, is_write, refreshed, where)

    def _lost(self, exc: Exception, is_write: bool, where: dict[str, Any]) -> httpx.Response:
        message = f"no answer ({type(exc).__name__})"
        if is_write:
            self.stats.unknown_outcomes += 1
            raise UnknownOutcome(message + ": the write may have landed; re-read before retrying", **where)
        raise _Retry(Unavailable(message, **where))

    async def _judge(self, response: httpx.Response, token: str, is_write: bool, refreshed: list[bool],
                     where: dict[str, Any]) -> httpx.Response:
        status = response.status_code
        if status < 400:
            return response
        body = _json(response)
        if status == 429:
            self.stats.rate_limited += 1
            retry_after = _retry_after(response)
            self.budget.pause(retry_after)
            raise _Retry(RateLimited("rate limited (429)", retry_after_s=retry_after, status=429, **where),
                         rate_limited=True)
        known = self.classify(response, body)
        if isinstance(known, ScopeError):
            raise known  # a missing scope is not cured by a fresh token
        if status == 401 and not refreshed and await self.credentials.rejected(token):
            refreshed.append(True)
            raise _Retry(AuthError("token refused after refresh", status=401, **where))
        if status >= 500:
            message = f"server error {status}: {_message(body)}"
            if is_write:
                self.stats.unknown_outcomes += 1
                raise UnknownOutcome(message + "; the write may have landed: re-read before retrying",
                                     status=status, **where)
            raise _Retry(Unavailable(message, status=status, **where))
        raise known or default_error(response, body, where)


class ApiBacked:
    """What every connector built on one `ApiClient` (`self.api`) shares: stats, budget, closing."""

    api: ApiClient

    @property
    def stats(self) -> RequestStats:
        return self.api.stats

    @property
    def budget(self) -> RateBudget:
        return self.api.budget

    async def aclose(self) -> None:
        await self.api.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def default_error(response: httpx.Response, body: dict[str, Any], where: dict[str, Any]) -> ConnectorError:
    status, message = response.status_code, _message(body)
    if status == 401:
        return AuthError(f"unauthorized: {message}", status=status, **where)
    if status == 403:
        return ScopeError(f"forbidden: {message}", status=status, **where)
    if status == 404:
        return NotFound(f"not found: {message}", status=status, **where)
    return Validation(f"rejected ({status}): {message}", messages=_messages(body), status=status, **where)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text[:500]}
    return body if isinstance(body, dict) else {"message": str(body)[:500]}


def _messages(body: dict[str, Any]) -> list[str]:
    message = body.get("message", body.get("error", ""))
    return [str(m) for m in message] if isinstance(message, list) else [str(message)]


def _message(body: dict[str, Any]) -> str:
    return "; ".join(_messages(body))


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


# ------------------------------------------------------------------------------------------ answers


def where_of(system: str, response: httpx.Response) -> dict[str, Any]:
    """The endpoint an answer came from, as the keyword arguments of a `ConnectorError`."""
    return {"system": system, "method": response.request.method, "path": response.request.url.path,
            "status": response.status_code}


def read_json(system: str, response: httpx.Response, *, empty: Any = None) -> Any:
    """The answer's JSON (`empty` for an empty body); `MalformedResponse` for anything else (module docstring)."""
    if not response.content:
        return empty
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bytes that are not UTF-8, absurd nesting
        kind = response.headers.get("content-type", "no content type")
        raise MalformedResponse(f"the answer is not JSON ({kind}, {len(response.content):,} bytes): "
                                f"{_reason(exc)}", **where_of(system, response)) from None
    if _SURROGATE_ESCAPE.search(response.content):
        try:
            bad = _lone_surrogate(body, "$")
        except RecursionError:
            bad = "$ (nested too deeply to check)"
        if bad is not None:
            raise MalformedResponse(f"{bad} holds a lone UTF-16 surrogate (not valid Unicode text)",
                                    **where_of(system, response))
    return body


def json_object(system: str, response: httpx.Response, *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The answer's JSON, which must be an object (`empty` for an empty body, when given)."""
    body = read_json(system, response, empty=empty)
    if not isinstance(body, dict):
        raise MalformedResponse(f"the answer must be a JSON object, got {_json_type(body)}",
                                **where_of(system, response))
    return body


def member(system: str, response: httpx.Response, body: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    """`body[key]`, which must be present and of `kind`; else `MalformedResponse` naming the field."""
    if not isinstance(body, dict):
        raise MalformedResponse(f"the answer must be a JSON object, got {_json_type(body)}",
                                **where_of(system, response))
    if key not in body:
        raise MalformedResponse(f"the answer has no `{key}`", **where_of(system, response))
    value = body[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _kinds(kind):
        expected = " or ".join(_json_type_name(k) for k in _kinds(kind))
        raise MalformedResponse(f"`{key}` must be {expected}, got {_json_type(value)}", **where_of(system, response))
    return value


def parse(system: str, response: httpx.Response, model: type[M], data: Any, what: str) -> M:
    """`model` validated from `data` (the answer's `what`); `MalformedResponse` listing the bad fields, no values."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = [f"{'.'.join([what, *map(str, e['loc'])])}: {e['msg']}" for e in exc.errors()]
        more = f" (and {len(problems) - _MAX_ERRORS_SHOWN} more)" if len(problems) > _MAX_ERRORS_SHOWN else ""
        raise MalformedResponse("; ".join(problems[:_MAX_ERRORS_SHOWN]) + more,
                                **where_of(system, response)) from None


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The JSON path of the first string (or key) holding a lone surrogate, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := _lone_surrogate(v, f"{path}[{i}]"))), None)
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, f"{path} (a key)") or _lone_surrogate(item, f"{path}.{key}")
            if found:
                return found.encode("utf-8", "backslashreplace").decode()
    return None


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    return type(exc).__name__


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "true or false", int: "a number",
               float: "a number", type(None): "null"}


def _json_type_name(kind: type) -> str:
    return _JSON_NAMES.get(kind, kind.__name__)


def _json_type(value: Any) -> str:
    return _json_type_name(type(value))
