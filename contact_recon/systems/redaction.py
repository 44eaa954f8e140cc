"""Keeping secrets out of every message: a process-wide registry of secret values plus patterns.

Every credential the connectors load is registered here; `redact()` replaces each registered value
(and anything that looks like a bearer token, an API key header or a secret form field) with `***`.
Errors, log records and reports pass through it, so no token, key or client secret reaches them: errors when
they are made (`systems/errors.py`), reports when they are written, and every log record of the process as it is
made, once `install_log_redaction()` has run (each process entry calls it: `contact_recon.stages.process`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

MASK = "***"
_MIN_SECRET_LEN = 6  # shorter values would mask ordinary words
_secrets: set[str] = set()
_lock = threading.Lock()

_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)(x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
    # a value shorter than a secret can be is left alone: "exit code: 1" is no credential
    re.compile(r"(?i)(\b(?:access_token|refresh_token|client_secret|code|api_key|token)[\"']?\s*[:=]\s*[\"']?)"
               r"[^\s\"'&,}]{" + str(_MIN_SECRET_LEN) + ",}"),
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


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask secrets in a log record: its message (formatted, the args dropped, when it held one), its traceback
    and its stack; a record without a secret keeps its args (formatters such as uvicorn's read them)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: logging's own report of it would print the args
        message = f"{record.msg} (arguments that do not fit it: {record.args!r})"
        record.msg, record.args = message, None
    if (masked := redact(message)) != message:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[1] is not None:
        text = record.exc_text or logging.Formatter().formatException(record.exc_info)
        if (masked := redact(text)) != text:  # the traceback as text, masked; the exception object is dropped
            record.exc_info, record.exc_text = None, masked  # so no formatter can render it again
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class _RedactingFactory:
    """A log record factory that masks every record as it is made, whatever logger made it and whichever
    handlers (Prefect's API handler, the console, pytest's caplog, a handler added later) will see it."""

    def __init__(self, make: Callable[..., logging.LogRecord]):
        self.make = make

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(self.make(*args, **kwargs))


def install_log_redaction() -> None:
    """Mask secrets in every log record of this process, from now on; safe to call any number of times.

    A record factory rather than a handler filter: a filter sits on the handlers that exist when it is installed,
    and Prefect (`setup_logging`: `logging.yml` applied again), pytest and users add handlers later, while a
    logger's filters do not see the records its children propagate. The factory makes every record, so no
    handler can receive one that was not masked.
    """
    current = logging.getLogRecordFactory()
    if not isinstance(current, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(current))
