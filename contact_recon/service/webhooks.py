"""The GHL webhook receiver (`recon webhooks serve`): verified webhooks in, Prefect events out.

GHL signs each webhook (docs/oauth/WebhookAuthentication.md): `x-wh-signature` is the base64 RSA
signature of the raw body, PKCS#1 v1.5 over SHA-256 (Node's `crypto.createVerify('SHA256')`), made
with GHL's private key; the body carries a `timestamp` and a `webhookId` against replays. For each
`POST /webhooks/ghl` the receiver decides, in this order:

1. a body over `MAX_BODY_BYTES` -> 413;
2. a missing or wrong signature (checked on the raw bytes, before any parsing) -> 401;
3. a body that is not a JSON object with ids `type`, `webhookId`, `locationId`, a readable `timestamp`
   and, for a synced type, the contact id (`id` for Contact* types, `contactId` for Note*/Task*) -> 400;
4. a timestamp further than the window (default 5 min, either way) from now -> 400 (stale);
5. a `webhookId` already accepted within the window -> 200 `duplicate`, not emitted again;
   a contact webhook (not a delete) for a contact the apply stage wrote moments ago -> 200 `echo`, not
   emitted: our own write coming back (contact_recon/stages/echo.py);
6. a type contact-recon does not sync (contact_recon/events.py `GHL_WEBHOOK_EVENTS`) -> 200 `ignored`;
7. otherwise the Prefect event is emitted (its id derived from the webhookId, so the Prefect server also
   drops a re-emission) and the id remembered -> 200 `accepted`. When no event could be handed to Prefect
   -> 503, and GHL delivers again later.

Accepted ids live in memory and in a small append-only file under `data_dir/webhooks/` until their
window has passed, so a restart within the window still dedupes. The receiver never opens DuckDB (the
flow holds its single writer). Logs name the type, the webhookId and the contact id, never the payload.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contact_recon.events import GHL_WEBHOOK_EVENTS, ghl_contact_resource
from contact_recon.settings import Settings
from contact_recon.stages.echo import EchoFilter
from contact_recon.store.files import atomic_text, open_private
from contact_recon.systems.ghl.contract import SANDBOX_PUBLIC_KEY_PEM, SIGNATURE_HEADER

PATH = "/webhooks/ghl"
MAX_BODY_BYTES = 1_000_000
ID_PATTERN = re.compile(r"[!-~]{1,128}")
SANDBOX_KEY = "sandbox"  # ghl_webhook_public_key value naming the sandbox's test key (sandbox/ghl_webhooks.py)
EVENT_NAMESPACE = uuid.UUID("6f1c3d52-8a57-4c55-9d7e-3f6a0c2b9e10")  # uuid5(namespace, webhookId) -> event id
log = logging.getLogger("contact_recon.service.webhooks")

# GHL's published webhook key (docs/oauth/WebhookAuthentication.md); GHL announces rotations by email.
GHL_PUBLIC_KEY_PEM = """-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----
"""

Emit = Callable[..., Any]  # prefect.events.emit_event's signature; returns the event or None


class MalformedWebhook(ValueError):
    """The body is not a webhook contact-recon can read (answered 400)."""


# ------------------------------------------------------------------------------------ signatures


def load_public_key(value: str | None) -> rsa.RSAPublicKey:
    """The verification key: None -> GHL's published key; "sandbox" -> the sandbox test key; PEM text; a path."""
    if value is None or not value.strip():
        pem = GHL_PUBLIC_KEY_PEM
    elif value.strip() == SANDBOX_KEY:
        pem = SANDBOX_PUBLIC_KEY_PEM
    elif "-----BEGIN" in value:
        pem = value
    else:
        pem = Path(value).expanduser().read_text()
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the webhook public key must be an RSA key")
    return key


def key_source(value: str | None) -> str:
    """How the key was configured, for the start-up line (never the key itself)."""
    if value is None or not value.strip():
        return "GHL's published key"
    if value.strip() == SANDBOX_KEY:
        return "the sandbox test key"
    return "PEM from settings" if "-----BEGIN" in value else f"key file {value}"


def signature_ok(key: rsa.RSAPublicKey, body: bytes, signature: str | None) -> bool:
    """Whether `signature` (base64) is the PKCS#1 v1.5 SHA-256 signature of `body` under `key`."""
    if not signature:
        return False
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
        key.verify(raw, body, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Webhook:
    type: str
    webhook_id: str
    location_id: str
    contact_id: str | None  # None for a type contact-recon does not sync
    object_id: str | None  # the note or task id of Note*/Task* webhooks
    timestamp: datetime
    email: str | None = None  # a Contact* webhook's email (echo detection of our own creates)


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 string (a `Z` or an offset) or epoch milliseconds, as an aware UTC datetime."""
    try:
        if isinstance(value, bool):
            raise MalformedWebhook("timestamp is not a date")
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise MalformedWebhook(f"timestamp is not a date: {exc}") from None
    raise MalformedWebhook("timestamp is missing or not a date")


def _id(body: dict[str, Any], name: str) -> str:
    """An id field: 1 to 128 printable ASCII characters without spaces (GHL's are 20 alphanumerics)."""
    value = body.get(name)
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise MalformedWebhook(f"{name} is missing or not an id")
    return value


def parse_webhook(raw: bytes) -> Webhook:
    """The fields contact-recon needs from a webhook body; MalformedWebhook for anything else.

    Every webhook needs `type`, `webhookId`, `locationId` and `timestamp`; a synced type also needs its
    contact id (`id` for Contact* types, `contactId` for Note*/Task*). Other types keep `contact_id` None.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedWebhook(f"body is not JSON: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise MalformedWebhook("body is not a JSON object")
    kind = _id(body, "type")
    contact_id, object_id = None, None
    if kind in GHL_WEBHOOK_EVENTS and kind.startswith("Contact"):  # the contact is the object itself
        contact_id = _id(body, "id")
    elif kind in GHL_WEBHOOK_EVENTS:  # a note or task: it names its contact
        contact_id = _id(body, "contactId")
        object_id = body["id"] if isinstance(body.get("id"), str) and ID_PATTERN.fullmatch(body["id"]) else None
    email = body.get("email") if isinstance(body.get("email"), str) else None
    return Webhook(type=kind, webhook_id=_id(body, "webhookId"), location_id=_id(body, "locationId"),
                   contact_id=contact_id, object_id=object_id, timestamp=parse_timestamp(body.get("timestamp")),
                   email=email)


def staleness_s(webhook: Webhook, now: float) -> float:
    """How far (seconds, either way) the webhook's timestamp is from now."""
    return abs(now - webhook.timestamp.timestamp())


@dataclass(frozen=True)
class EventSpec:
    name: str
    resource: dict[str, str]
    payload: dict[str, Any]
    id: uuid.UUID
    occurred: datetime


def event_for(webhook: Webhook) -> EventSpec | None:
    """The Prefect event of a webhook, or None for a type contact-recon does not sync."""
    name = GHL_WEBHOOK_EVENTS.get(webhook.type)
    if name is None or webhook.contact_id is None:
        return None
    payload = {"contact_id": webhook.contact_id, "location_id": webhook.location_id,
               "webhook_type": webhook.type, "webhook_id": webhook.webhook_id}
    if webhook.object_id:
        payload["object_id"] = webhook.object_id
    return EventSpec(name, ghl_contact_resource(webhook.contact_id, webhook.location_id), payload,
                     uuid.uuid5(EVENT_NAMESPACE, webhook.webhook_id), webhook.timestamp)


# ------------------------------------------------------------------------------------ seen ids


class SeenIds:
    """Accepted webhookIds until their window passes, in memory and in an append-only JSON-lines file.

    Each line is `{"id": ..., "until": epoch}`. Loading drops expired lines, and each `add` drops expired
    ids from memory; the file is rewritten (atomically) once it holds more than twice the live ids plus
    `COMPACT_SLACK` lines, so both stay the size of one window of webhooks.
    """

    COMPACT_SLACK = 1000

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path, self.clock = path, clock
        self._until: dict[str, float] = {}
        self._lines = 0
        self._load()

    def _load(self) -> None:
        now = self.clock()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    if float(item["until"]) > now:
                        self._until[str(item["id"])] = float(item["until"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: that id is simply not remembered
        self._rewrite()

    def __contains__(self, webhook_id: str) -> bool:
        until = self._until.get(webhook_id)
        return until is not None and until > self.clock()

    def __len__(self) -> int:
        self._prune()
        return len(self._until)

    def _prune(self) -> None:
        """Drop expired ids from the front (ids arrive in about the order they expire)."""
        now = self.clock()
        while self._until:
            first = next(iter(self._until))
            if self._until[first] > now:
                break
            del self._until[first]

    def add(self, webhook_id: str, until: float) -> None:
        self._prune()
        self._until[webhook_id] = until
        with open_private(self.path, "a") as out:
            out.write(json.dumps({"id": webhook_id, "until": until}) + "\n")
        self._lines += 1
        if self._lines > 2 * len(self._until) + self.COMPACT_SLACK:
            self._rewrite()

    def _rewrite(self) -> None:
        now = self.clock()
        self._until = {k: v for k, v in self._until.items() if v > now}
        atomic_text(self.path, "".join(json.dumps({"id": k, "until": v}) + "\n" for k, v in self._until.items()))
        self._lines = len(self._until)


def seen_ids_path(settings: Settings) -> Path:
    return settings.data_dir / "webhooks" / "seen_ids.jsonl"


# ---------------------------------------------------------------------------------------- the app


@dataclass
class Receiver:
    """What the endpoint needs: the key, the window, the seen ids, the emitter and the clock."""

    key: rsa.RSAPublicKey
    window_s: float
    seen: SeenIds
    emit: Emit
    clock: Callable[[], float] = time.time
    echo: EchoFilter | None = None  # our own recent writes (contact_recon/stages/echo.py)

    def handle(self, raw: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        """The status and JSON answer for one webhook (the module docstring's decision order)."""
        if len(raw) > MAX_BODY_BYTES:  # 1. too big to be a webhook: not even verified
            return 413, {"error": f"body over {MAX_BODY_BYTES} bytes"}
        if not signature_ok(self.key, raw, signature):  # 2. not from GHL (or altered on the way)
            return 401, {"error": f"missing or invalid {SIGNATURE_HEADER} signature"}
        try:
            webhook = parse_webhook(raw)
        except MalformedWebhook as exc:  # 3. signed, but not a webhook we can read
            return 400, {"error": f"malformed webhook: {exc}"}
        now = self.clock()
        age = staleness_s(webhook, now)
        if age > self.window_s:  # 4. a replay of an old webhook, or a sender clock far off
            return 400, {"error": f"stale timestamp: {age:.0f} s from now, window {self.window_s:.0f} s"}
        if webhook.webhook_id in self.seen:  # 5. a redelivery: GHL gets its 200, the flow no second event
            return 200, {"status": "duplicate", "webhookId": webhook.webhook_id}
        echo = self.echo is not None and self.echo.is_echo(webhook.contact_id, webhook.email)
        if echo and not webhook.type.endswith("Delete"):
            # 5b. our own write coming back (contact_recon/stages/echo.py): acknowledged, no sync run queued for it
            self.seen.add(webhook.webhook_id, now + self.window_s)
            return 200, {"status": "echo", "webhookId": webhook.webhook_id}
        return self._accept(webhook, now)  # 6. and 7.

    def _accept(self, webhook: Webhook, now: float) -> tuple[int, dict[str, Any]]:
        spec = event_for(webhook)
        # remembered until the timestamp leaves the window: a later replay is stale, so no need to remember it
        until = max(now, webhook.timestamp.timestamp()) + self.window_s
        if spec is None:  # a type we do not sync: acknowledged so GHL does not deliver it again
            self.seen.add(webhook.webhook_id, until)
            return 200, {"status": "ignored", "reason": f"type {webhook.type} is not synced"}
        occurred = min(spec.occurred, datetime.fromtimestamp(now, tz=UTC))  # a clock ahead of ours: not future
        emitted = self.emit(spec.name, resource=spec.resource, payload=spec.payload, id=spec.id, occurred=occurred)
        if emitted is None:  # no Prefect API to hand it to: let GHL deliver again later
            log.error("webhook %s (%s) not emitted: no Prefect events client", webhook.webhook_id, webhook.type)
            return 503, {"error": "the event could not be handed to Prefect; try again later"}
        self.seen.add(webhook.webhook_id, until)
        log.info("webhook %s %s contact %s -> %s", webhook.webhook_id, webhook.type, webhook.contact_id, spec.name)
        return 200, {"status": "accepted", "event": spec.name, "eventId": str(spec.id)}


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit + 1` bytes (enough for `handle` to answer 413)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def _default_emit(*args: Any, **kwargs: Any) -> Any:
    from prefect.events import emit_event

    return emit_event(*args, **kwargs)


def create_app(settings: Settings, *, emit: Emit | None = None, clock: Callable[[], float] = time.time) -> Starlette:
    """The receiver app: `POST /webhooks/ghl` (the module docstring) and `GET /healthz`.

    Args:
        settings: `ghl_webhook_public_key` (PEM text, a path, "sandbox" or None for GHL's key),
            `webhook_max_age_s` (the replay window) and `data_dir` (where accepted ids are kept).
        emit: `prefect.events.emit_event` or a stand-in with its signature.
        clock: epoch seconds (the staleness check and the seen-id expiry).
    """
    receiver = Receiver(load_public_key(settings.ghl_webhook_public_key), settings.webhook_max_age_s,
                        SeenIds(seen_ids_path(settings), clock), emit or _default_emit, clock,
                        EchoFilter(settings.data_dir, clock=clock))

    async def ghl_webhook(request: Request) -> JSONResponse:
        raw = await read_capped(request, MAX_BODY_BYTES)
        status, answer = receiver.handle(raw, request.headers.get(SIGNATURE_HEADER))
        if status >= 400:
            log.warning("webhook refused (%s): %s", status, answer["error"])
        return JSONResponse(answer, status_code=status)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "remembered_ids": len(receiver.seen)})

    app = Starlette(routes=[Route(PATH, ghl_webhook, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])])
    app.state.receiver = receiver
    return app
