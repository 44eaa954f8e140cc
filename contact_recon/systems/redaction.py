"""Keeping secrets out of every message: a process-wide registry of secret values plus patterns.

Every credential the connectors load is registered here; `redact()` replaces each registered value
(and anything that looks like a bearer token, an API key header or a secret form field) with `***`.
Errors, log records and reports pass through it, so no token, key or client secret reaches them.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
_MIN_SECRET_LEN = 6  # shorter values would mask ordinary words
_secrets: set[str] = set()
_lock = threading.Lock()

_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)(x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
    re.compile(r"(?i)(\b(?:access_token|refresh_token|client_secret|code|api_key|token)[\"']?\s*[:=]\s*[\"']?)"
               r"[^\s\"'&,}]+"),
]


def register_secret(value: str | None) -> None:
    """Mask `value` wherever it appears from now on."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    out = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        out = out.replace(secret, MASK)
    for pattern in _PATTERNS:
        out = pattern.sub(lambda m: m.group(1) + MASK, out)
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (and drops the raw args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Redact records of these loggers (and of the root logger's handlers)."""
    flt = RedactingFilter()
    for name in logger_names or ("", "httpx", "httpcore", "connectors", "prefect"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(flt)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
