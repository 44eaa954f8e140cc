"""Typed connector errors. Every message is redacted when the error is made.

The caller decides per type: `RateLimited` and `Unavailable` on a read may be retried; an
`UnknownOutcome` (a write that timed out, was reset or got a 5xx) must be re-read before any retry,
because the write may have landed.
"""

from __future__ import annotations

from typing import Any

from contact_recon.systems.redaction import redact


class ConnectorError(Exception):
    """Base of all connector errors: system, HTTP method and path, status, and a redacted message."""

    def __init__(self, message: str, *, system: str = "", method: str = "", path: str = "",
                 status: int | None = None):
        self.system, self.method, self.path, self.status = system, method, redact(path), status
        where = f"{system} {method} {self.path}".strip()
        super().__init__(redact(f"{where}: {message}" if where else message))


class AuthError(ConnectorError):
    """The credentials are missing, invalid or expired beyond refresh (re-authorize)."""


class ScopeError(ConnectorError):
    """The credentials lack a scope, or access to this location."""


class NotFound(ConnectorError):
    """The record does not exist (GHL answers some of these as 400)."""


class Duplicate(ConnectorError):
    """GHL refused a create: a contact with the same email or phone exists."""

    def __init__(self, message: str, *, contact_id: str | None, matching_field: str | None, **kw: Any):
        super().__init__(message, **kw)
        self.contact_id, self.matching_field = contact_id, matching_field


class Validation(ConnectorError):
    """The API rejected the request's content (400/422); `messages` are the API's own."""

    def __init__(self, message: str, *, messages: list[str] | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.messages = [redact(m) for m in (messages or [message])]


class RateLimited(ConnectorError):
    """429 after the allowed retries; `retry_after_s` is the server's advice."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class Unavailable(ConnectorError):
    """The service failed (5xx, timeout, reset) on a read, after the allowed retries."""


class UnknownOutcome(ConnectorError):
    """A write whose fate is unknown (timeout, reset, 5xx): re-read before trying again."""


class MalformedResponse(ConnectorError):
    """A 2xx answer the client cannot read: not JSON, not the documented shape (a field missing, of the wrong
    type, null where a list belongs) or text that is not valid Unicode. Not retried: the server answered."""


class PagingStalled(ConnectorError):
    """A listing that would not end: the cursor did not move, a page brought no new record, or the listing ran
    well past the pages its own total announced. Stopping beats looping over the day's request budget (a
    search that ignores its cursor would spend GHL's 200,000 daily requests in about 5.5 hours)."""
