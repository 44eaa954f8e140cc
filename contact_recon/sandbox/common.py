"""Small helpers shared by both sandbox servers: clocks, ids, ISO dates and JSON answers."""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

Clock = Callable[[], float]
DAY_S = 86_400

_ALNUM = string.ascii_letters + string.digits


def iso_from_epoch(t: float) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`, as both APIs write dates."""
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def now_iso(clock: Clock = time.time) -> str:
    return iso_from_epoch(clock())


def epoch_ms(iso: str) -> int:
    """Epoch milliseconds of an ISO 8601 date (a `Z` suffix or an offset)."""
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def new_id(rng: random.Random | None = None, n: int = 20) -> str:
    """An alphanumeric id of `n` characters (GHL ids are 20)."""
    r = rng or random
    return "".join(r.choice(_ALNUM) for _ in range(n))


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    payload = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
    return Response(payload, status_code=status, headers=headers, media_type="application/json")


async def read_json(request: Request) -> tuple[Any, Response | None]:
    """The request's JSON body, or a 400 answer when it is not JSON."""
    raw = await request.body()
    if not raw:
        return None, None
    try:
        return json.loads(raw), None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, json_response({"statusCode": 400, "message": f"Malformed JSON body: {exc}"}, 400)
