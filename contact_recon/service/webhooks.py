"""The GHL webhook receiver (`recon webhooks serve`): verified webhooks in, durable Prefect events out.

GHL signs each webhook (NOTES.md; contact_recon/service/signatures.py): `X-GHL-Signature`, Ed25519 over the
raw body (the only signature from 2026-07-01), or the legacy RSA `x-wh-signature`; the body carries a
`timestamp` and a `webhookId` against replays. GHL retries a delivery only when it is answered 429 (up to 6
times, ~10 min apart, with the original payload and timestamp) and never after a 5xx. For each
`POST /webhooks/ghl` the receiver decides, in this order:

1. a body over `MAX_BODY_BYTES` -> 413;
2. no valid signature under a configured key (checked on the raw bytes, before any parsing) -> 401; a
   sustained share of 401s emits `recon.webhooks.unauthorized` (`UnauthorizedWatch`: a rotated key must not
   fail silently);
3. a body that is not a JSON object with ids `type`, `webhookId`, `locationId`, a readable `timestamp`
   and, for a synced type, the contact id (`id` for Contact* types, `contactId` for Note*/Task*; a Task*
   webhook without `contactId` is about the location's tasks) -> 400;
4. a timestamp further than `webhook_max_age_s` (default 75 min, either way) from now -> 400 (stale): GHL's
   retries of a 429, carrying their first timestamp, all fall inside it;
5. a `webhookId` already accepted -> 200 `duplicate`, not spooled again (ids are remembered for
   `webhook_dedupe_window_s`, default 90 min, past their timestamp, never less than the age window);
   a contact webhook (not a delete) for a contact the apply stage wrote moments ago -> 200 `echo`, not
   emitted: our own write coming back (contact_recon/stages/echo.py);
5c. an `INSTALL` / `UNINSTALL` (an agency install adding or retiring a location; it names no contact, and an
   agency `UNINSTALL` only its `companyId`) -> recorded in `data_dir/agency/installs.json`
   (contact_recon/store/installs.py, replaced whole before the 200), 200 `installed` / `retired`;
5d. with tenants (`RECON_TENANTS_FILE`, contact_recon/tenants.py), a webhook whose location no tenant owns ->
   403 (GHL retries only a 429: the refusal is final), counted (`unowned` in `/healthz`); an owned one carries
   its `tenant` in the event's payload (the sync service routes it again by its location: tenants.route_change);
6. a type contact-recon does not sync (contact_recon/events.py `GHL_WEBHOOK_EVENTS`) -> 200 `ignored`;
7. otherwise the Prefect event (its id derived from the webhookId) is appended to the durable spool and
   fsynced (contact_recon/service/spool.py), the id remembered -> 200 `accepted`; the forwarder thread
   (contact_recon/service/forwarder.py) hands it to Prefect and confirms it on the server. When the spool
   cannot take it (over `webhook_spool_max_bytes`, or the disk refuses the write) -> 429 with `Retry-After`,
   so GHL delivers it again later; never a 5xx, which GHL would not retry.

So the receiver starts and keeps accepting while the Prefect API is unreachable: the spool grows and drains
when Prefect is back, and after a crash (even SIGKILL) the events not yet confirmed are forwarded at start.
Accepted ids live in memory and in a small append-only file under `data_dir/webhooks/` until their window has
passed, so a restart within the window still dedupes. The receiver never opens DuckDB (the flow holds its
single writer). `recon webhooks serve` also beats (`start_heartbeat`, service/heartbeat.py) through the spool.
Logs name the type, the webhookId and the contact id, never the payload.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contact_recon.events import (
    GHL_TASK_TYPES,
    GHL_WEBHOOK_EVENTS,
    SERVICE_WEBHOOKS,
    WEBHOOKS_RESOURCE,
    WEBHOOKS_UNAUTHORIZED,
    ghl_contact_resource,
    ghl_location_resource,
)
from contact_recon.service.forwarder import Courier, Forwarder
from contact_recon.service.heartbeat import Heartbeat
from contact_recon.service.signatures import WebhookKeys, load_keys
from contact_recon.service.spool import Spool, SpoolFull, SpoolItem, spool_path
from contact_recon.settings import Settings
from contact_recon.stages.echo import EchoFilter
from contact_recon.store.expiring import COMPACT_SLACK, compaction_due, rewrite_rows
from contact_recon.store.files import open_private
from contact_recon.store.installs import record_install
from contact_recon.systems.ghl.contract import ED25519_SIGNATURE_HEADER, RSA_SIGNATURE_HEADER
from contact_recon.tenants import owner_of_location, tenants_of

PATH = "/webhooks/ghl"
MAX_BODY_BYTES = 1_000_000
RETRY_AFTER_S = 600  # GHL retries a 429 about every 10 minutes whatever it is told; say so anyway
ID_PATTERN = re.compile(r"[!-~]{1,128}")
EVENT_NAMESPACE = uuid.UUID("6f1c3d52-8a57-4c55-9d7e-3f6a0c2b9e10")  # uuid5(namespace, webhookId) -> event id
SIGNATURE_HEADERS = (ED25519_SIGNATURE_HEADER, RSA_SIGNATURE_HEADER)
INSTALL_TYPES = frozenset({"INSTALL", "UNINSTALL"})
log = logging.getLogger("contact_recon.service.webhooks")


class MalformedWebhook(ValueError):
    """The body is not a webhook contact-recon can read (answered 400)."""


# --------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Webhook:
    type: str
    webhook_id: str
    location_id: str
    contact_id: str | None  # None for a type contact-recon does not sync, and a task webhook naming no contact
    object_id: str | None  # the note or task id of Note*/Task* webhooks
    timestamp: datetime
    email: str | None = None  # a Contact* webhook's email (echo detection of our own creates)
    company_id: str | None = None  # INSTALL / UNINSTALL: the agency's company

    @property
    def location_tasks(self) -> bool:
        """A task webhook without a contact: it marks the location's tasks dirty (real TaskCreate may lack it)."""
        return self.type in GHL_TASK_TYPES and self.contact_id is None


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


def _optional_id(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) and ID_PATTERN.fullmatch(value) else None


def parse_webhook(raw: bytes) -> Webhook:
    """The fields contact-recon needs from a webhook body; MalformedWebhook for anything else.

    Every webhook needs `type`, `webhookId`, `locationId` and `timestamp` (an INSTALL / UNINSTALL: `locationId`
    or `companyId`, its `location_id` then ""); a synced type also needs its
    contact id (`id` for Contact* types, `contactId` for Note*/Task*), except a Task* webhook, whose missing
    `contactId` leaves `contact_id` None (`location_tasks`). Other types keep `contact_id` None.
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
    elif kind in GHL_TASK_TYPES and body.get("contactId") is None:  # a task without a contact: the location's
        object_id = _optional_id(body, "id")
    elif kind in GHL_WEBHOOK_EVENTS:  # a note or task: it names its contact
        contact_id = _id(body, "contactId")
        object_id = _optional_id(body, "id")
    email = body.get("email") if isinstance(body.get("email"), str) else None
    company_id = _optional_id(body, "companyId")
    if kind in INSTALL_TYPES and company_id is not None and body.get("locationId") is None:
        location_id = ""  # an agency (Company) uninstall: every location of the company
    else:  # every other webhook names its location
        location_id = _id(body, "locationId")
    return Webhook(type=kind, webhook_id=_id(body, "webhookId"), location_id=location_id,
                   contact_id=contact_id, object_id=object_id, timestamp=parse_timestamp(body.get("timestamp")),
                   email=email, company_id=company_id)


def staleness_s(webhook: Webhook, now: float) -> float:
    """How far (seconds, either way) the webhook's timestamp is from now."""
    return abs(now - webhook.timestamp.timestamp())


def event_for(webhook: Webhook, now: float, tenant: str | None = None) -> SpoolItem | None:
    """The Prefect event of a webhook, as a spool item, or None for a type contact-recon does not sync.

    Its id is uuid5 of the webhookId (a re-emission is the same event); it occurred at the webhook's timestamp,
    or now when the sender's clock is ahead of ours.
    """
    name = GHL_WEBHOOK_EVENTS.get(webhook.type)
    if name is None or (webhook.contact_id is None and not webhook.location_tasks):
        return None
    payload = {"location_id": webhook.location_id, "webhook_type": webhook.type, "webhook_id": webhook.webhook_id}
    if webhook.contact_id is not None:  # the contact's event, which the sync-contact trigger matches
        payload["contact_id"] = webhook.contact_id
        resource = ghl_contact_resource(webhook.contact_id, webhook.location_id)
    else:  # a task with no contact: the location's event (its tasks are read again by the next snapshot)
        resource = ghl_location_resource(webhook.location_id)
    if webhook.object_id:
        payload["object_id"] = webhook.object_id
    if tenant is not None:  # routed: the tenant that owns the location
        payload["tenant"] = tenant
    occurred = min(webhook.timestamp, datetime.fromtimestamp(now, tz=UTC))
    return SpoolItem(str(uuid.uuid5(EVENT_NAMESPACE, webhook.webhook_id)), name, resource, payload,
                     occurred.isoformat(), now)


# ------------------------------------------------------------------------------------ seen ids


class SeenIds:
    """Accepted webhookIds until their window passes, in memory and in an append-only JSON-lines file.

    Each line is `{"id": ..., "until": epoch}`. Loading drops expired lines, and each `add` drops expired
    ids from memory; the file is compacted as store/expiring.py says (rewritten atomically once it holds more
    than twice the live ids plus `COMPACT_SLACK` lines), so both stay the size of one window of webhooks.
    """

    COMPACT_SLACK = COMPACT_SLACK

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
        if compaction_due(self._lines, len(self._until), self.COMPACT_SLACK):
            self._rewrite()

    def _rewrite(self) -> None:
        now = self.clock()
        self._until = {k: v for k, v in self._until.items() if v > now}
        self._lines = rewrite_rows(self.path, ({"id": k, "until": v} for k, v in self._until.items()))


def seen_ids_path(settings: Settings) -> Path:
    return settings.data_dir / "webhooks" / "seen_ids.jsonl"


# -------------------------------------------------------------------------------- refused signatures


@dataclass
class UnauthorizedWatch:
    """The 401 alert: over the last `window_s`, at least `minimum` requests refused with 401 and at least `share`
    of all requests checked. `record` returns the alert payload when it is due, at most once per window (so a
    key rotated and not configured alerts every `window_s` until it is fixed, not on every request)."""

    share: float
    minimum: int
    window_s: float
    clock: Callable[[], float] = time.time
    _seen: deque[tuple[float, bool]] = field(default_factory=deque)
    _alerted_at: float | None = None

    def record(self, refused: bool) -> dict[str, Any] | None:
        now = self.clock()
        self._seen.append((now, refused))
        while self._seen and self._seen[0][0] <= now - self.window_s:
            self._seen.popleft()
        count = sum(1 for _, r in self._seen if r)
        total = len(self._seen)
        if not refused or count < self.minimum or count < self.share * total:
            return None
        if self._alerted_at is not None and now - self._alerted_at < self.window_s:
            return None
        self._alerted_at = now
        return {"refused": count, "requests": total, "share": round(count / total, 3), "window_s": self.window_s}


def unauthorized_event(details: dict[str, Any], keys: WebhookKeys, now: float) -> SpoolItem:
    payload = {**details, "key_types": keys.types}
    resource = {"prefect.resource.id": WEBHOOKS_RESOURCE, "prefect.resource.name": "recon webhooks serve"}
    return SpoolItem(str(uuid.uuid4()), WEBHOOKS_UNAUTHORIZED, resource, payload,
                     datetime.fromtimestamp(now, tz=UTC).isoformat(), now)


# ---------------------------------------------------------------------------------------- the app


@dataclass
class Receiver:
    """What the endpoint needs: the keys, the windows, the seen ids, the spool and its forwarder, the clock."""

    keys: WebhookKeys
    max_age_s: float
    dedupe_s: float
    seen: SeenIds
    spool: Spool
    watch: UnauthorizedWatch
    forwarder: Forwarder | None = None  # woken after each append; None: nothing forwards (a test's spool only)
    clock: Callable[[], float] = time.time
    echo: EchoFilter | None = None  # our own recent writes (contact_recon/stages/echo.py)
    data_dir: Path = Path("data")  # where INSTALL / UNINSTALL are recorded (contact_recon/store/installs.py)
    tenants: dict[str, Settings] | None = None  # RECON_TENANTS_FILE: who owns each location; None: single tenant
    unowned: int = 0  # webhooks refused because no tenant owns their location

    def handle(self, raw: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The status and JSON answer for one webhook (the module docstring's decision order)."""
        if len(raw) > MAX_BODY_BYTES:  # 1. too big to be a webhook: not even verified
            return 413, {"error": f"body over {MAX_BODY_BYTES} bytes"}
        verified = self.keys.verified(raw, headers)
        self._watch(refused=not verified)
        if not verified:  # 2. not from GHL, altered on the way, or signed with a key we do not have
            return 401, {"error": self.keys.refusal()}
        try:
            webhook = parse_webhook(raw)
        except MalformedWebhook as exc:  # 3. signed, but not a webhook we can read
            return 400, {"error": f"malformed webhook: {exc}"}
        now = self.clock()
        age = staleness_s(webhook, now)
        if age > self.max_age_s:  # 4. a replay of an old webhook, or a sender clock far off
            return 400, {"error": f"stale timestamp: {age:.0f} s from now, window {self.max_age_s:.0f} s"}
        if webhook.webhook_id in self.seen:  # 5. a redelivery: GHL gets its 200, the flow no second event
            return 200, {"status": "duplicate", "webhookId": webhook.webhook_id}
        # remembered until the timestamp leaves the dedupe window (longer than the age window): a later replay is
        # stale, so no need to remember it
        until = max(now, webhook.timestamp.timestamp()) + self.dedupe_s
        echo = self.echo is not None and self.echo.is_echo(webhook.contact_id, webhook.email)
        if echo and not webhook.type.endswith("Delete"):
            # 5b. our own write coming back (contact_recon/stages/echo.py): acknowledged, no sync run queued for it
            self.seen.add(webhook.webhook_id, until)
            return 200, {"status": "echo", "webhookId": webhook.webhook_id}
        if webhook.type in INSTALL_TYPES:  # 5c. the app installed on or removed from a location: kept durably
            return self._install(webhook, until)
        tenant = None
        if self.tenants is not None:  # 5d. routed to the tenant that owns the location, or refused
            tenant = owner_of_location(self.tenants, webhook.location_id)
            if tenant is None:
                self.unowned += 1
                log.warning("webhook %s (%s) refused: no tenant owns location %s (%d refused so far)",
                            webhook.webhook_id, webhook.type, webhook.location_id, self.unowned)
                return 403, {"error": f"no tenant owns location {webhook.location_id}"}
        return self._accept(webhook, now, until, tenant)  # 6. and 7.

    def _install(self, webhook: Webhook, until: float) -> tuple[int, dict[str, Any]]:
        installed = webhook.type == "INSTALL"
        changed = record_install(self.data_dir, installed=installed, location_id=webhook.location_id or None,
                                 company_id=webhook.company_id, at=webhook.timestamp.isoformat())
        self.seen.add(webhook.webhook_id, until)
        log.info("webhook %s %s: locations %s %s", webhook.webhook_id, webhook.type, changed,
                 "installed" if installed else "retired")
        return 200, {"status": "installed" if installed else "retired", "locations": changed}

    def _accept(self, webhook: Webhook, now: float, until: float,
                tenant: str | None = None) -> tuple[int, dict[str, Any]]:
        item = event_for(webhook, now, tenant)
        if item is None:  # 6. a type we do not sync: acknowledged so GHL does not deliver it again
            self.seen.add(webhook.webhook_id, until)
            return 200, {"status": "ignored", "reason": f"type {webhook.type} is not synced"}
        try:
            self.spool.append(item)  # 7. on disk (fsynced) before the 200
        except SpoolFull as exc:  # GHL retries a 429 (and only a 429): it comes back when there is room
            log.error("webhook %s (%s) refused with 429: %s", webhook.webhook_id, webhook.type, exc)
            return 429, {"error": f"the receiver cannot keep the webhook now ({exc}); deliver it again later"}
        self.seen.add(webhook.webhook_id, until)
        if self.forwarder is not None:
            self.forwarder.wake()
        log.info("webhook %s %s %s -> %s", webhook.webhook_id, webhook.type,
                 f"contact {webhook.contact_id}" if webhook.contact_id else f"location {webhook.location_id} tasks",
                 item.event)
        return 200, {"status": "accepted", "event": item.event, "eventId": item.id}

    def _watch(self, *, refused: bool) -> None:
        details = self.watch.record(refused)
        if details is None:
            return
        log.error("%d of the last %d webhooks were refused with 401 (keys configured: %s): GHL may have rotated its "
                  "key; alerting", details["refused"], details["requests"], self.keys.describe())
        try:
            self.spool.append(unauthorized_event(details, self.keys, self.clock()))
        except SpoolFull as exc:
            log.error("the 401 alert could not be spooled: %s", exc)
            return
        if self.forwarder is not None:
            self.forwarder.wake()


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit + 1` bytes (enough for `handle` to answer 413)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def create_app(settings: Settings, *, courier: Courier | None = None, clock: Callable[[], float] = time.time,
               forward: bool = True) -> Starlette:
    """The receiver app: `POST /webhooks/ghl` (the module docstring) and `GET /healthz`; its forwarder runs.

    Args:
        settings: `ghl_webhook_public_key` (service/signatures.py), `webhook_max_age_s`,
            `webhook_dedupe_window_s`, `webhook_spool_max_bytes`, the `webhook_401_alert_*` rule and
            `data_dir` (where the spool and the accepted ids are kept).
        courier: how the forwarder hands events over (default: `forwarder.PrefectCourier`, the configured server).
        clock: epoch seconds (the staleness check, the seen-id expiry, the 401 window).
        forward: False starts no forwarder (the spool only fills: a test of what was spooled).
    Raises WebhookKeyError (a ValueError) or OSError when the keys cannot be loaded.
    """
    keys = load_keys(settings.ghl_webhook_public_key)
    spool = Spool(spool_path(settings.data_dir), max_bytes=settings.webhook_spool_max_bytes, clock=clock)
    forwarder = Forwarder(spool, courier).start() if forward else None
    watch = UnauthorizedWatch(settings.webhook_401_alert_share, settings.webhook_401_alert_min,
                              settings.webhook_401_alert_window_s, clock)
    receiver = Receiver(keys, settings.webhook_max_age_s, settings.webhook_dedupe_window_s,
                        SeenIds(seen_ids_path(settings), clock), spool, watch, forwarder, clock,
                        EchoFilter(settings.data_dir, clock=clock), Path(settings.data_dir),
                        tenants_of(settings) if settings.tenants_file is not None else None)

    async def ghl_webhook(request: Request) -> JSONResponse:
        raw = await read_capped(request, MAX_BODY_BYTES)
        headers = {name: value for name in SIGNATURE_HEADERS if (value := request.headers.get(name)) is not None}
        status, answer = receiver.handle(raw, headers)
        if status >= 400:
            log.warning("webhook refused (%s): %s", status, answer["error"])
        extra = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else None
        return JSONResponse(answer, status_code=status, headers=extra)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "remembered_ids": len(receiver.seen), "spooled": len(spool),
                             "unowned": receiver.unowned,
                             "prefect_reachable": forwarder.reachable if forwarder else None})

    app = Starlette(routes=[Route(PATH, ghl_webhook, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])])
    app.state.receiver = receiver
    app.state.forwarder = forwarder
    return app


def heartbeat_item(event: str, resource: dict[str, str], payload: dict[str, Any]) -> SpoolItem:
    """A heartbeat (service/heartbeat.py) as a spool item: the receiver's beats go through its spool."""
    now = time.time()
    return SpoolItem(str(uuid.uuid4()), event, resource, payload, datetime.fromtimestamp(now, tz=UTC).isoformat(), now)


def start_heartbeat(app: Starlette, settings: Settings) -> Heartbeat:
    """Beat every `service_heartbeat_s` through the receiver's spool (`recon webhooks serve` starts it)."""
    receiver: Receiver = app.state.receiver

    def beat(event: str, resource: dict[str, str], payload: dict[str, Any]) -> bool:
        receiver.spool.append(heartbeat_item(event, resource, payload))
        if receiver.forwarder is not None:
            receiver.forwarder.wake()
        return True

    def details() -> dict[str, Any]:
        return {"spooled": len(receiver.spool), "unowned": receiver.unowned,
                "prefect_reachable": receiver.forwarder.reachable if receiver.forwarder else None}

    return Heartbeat(SERVICE_WEBHOOKS, settings.service_heartbeat_s, beat, details).start()
