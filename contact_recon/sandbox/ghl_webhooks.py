"""Signed GHL webhooks from the sandbox (`recon sandbox serve --webhook-url URL`), so the event path can be
tested for real.

`attach_webhooks(store, url)` wraps the store's mutating methods on that one instance (no change to the
store's code): each call compares the contact before and after and queues what GHL would send:
- `create_contact` -> ContactCreate; `delete_contact` -> ContactDelete (the contact as it was);
- `update_contact` -> ContactUpdate when a field other than the tags changed, ContactTagUpdate when the
  tags changed (both when both did); nothing when nothing changed;
- `add_tags` / `remove_tags` -> ContactTagUpdate when the tags changed;
- `create_item` -> NoteCreate or TaskCreate.
Upserts and bulk tag updates go through these methods, so they are covered too; so is a write the fault
injector applies before answering 5xx (GHL also sends the webhook of a write whose answer was lost).

Each payload follows docs/webhook events/*.md plus `timestamp` (ISO, the sandbox clock) and a random
`webhookId`, is serialised once and signed like GHL today (NOTES.md): by default Ed25519, base64 in
`X-GHL-Signature` (`signature="ed25519"`), or on request the legacy RSA PKCS#1 v1.5 SHA-256, base64 in
`x-wh-signature` (`signature="rsa"`, `recon sandbox serve --webhook-signature rsa`), with the sandbox *test*
keys below. Delivery runs on one worker thread, in order, never blocking the API answer; a delivery that
fails (connection error, 429, 5xx) is tried again up to `ATTEMPTS` times, then counted as failed. Real GHL
signs with its own keys: the receiver verifies with the configured keys, and
`RECON_GHL_WEBHOOK_PUBLIC_KEY=sandbox` points it at both test keys.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from contact_recon.sandbox.common import Clock, iso_from_epoch
from contact_recon.systems.ghl.contract import ED25519_SIGNATURE_HEADER, RSA_SIGNATURE_HEADER

ATTEMPTS = 3
SIGNATURES = ("ed25519", "rsa")  # how the sender signs: the first is the default (GHL today)
BACKOFF_S = (0.2, 1.0)
log = logging.getLogger("contact_recon.sandbox.ghl_webhooks")

# A TEST key pair, public on purpose: it signs sandbox webhooks only and must never verify real traffic.
SANDBOX_PRIVATE_KEY_PEM = """-----BEGIN PRIVATE KEY-----
MIIEuwIBADANBgkqhkiG9w0BAQEFAASCBKUwggShAgEAAoIBAQDuQNw5icXX/Z2y
pRludoX6tynN6abb7WALiIb1hAW5/K2eiLHDFvpp7N5h++cMt2EN4zyC0ZTyYlzA
WYDFPTVI9TgSzclLBQ5JLwAKxsONj/xDUqd+T5pB75tB3im8jn5O5AiuNHZzS3u7
7lr0YWZFF7B2uW7/+6AsUT6ItJrMAMzh5x4Kr6dI1tgg0767+TxsspssyaD5j6bi
mZdPd69Atb0P+txrvnV6DHEh12oT4aDowNgoSHCMrXfLFxr6vnfFiOF7ciIe7BB1
0ykddjqKOAUNm4ULEkcsd8vRa/qlFYGiiVlKDbZH39XJCH+Jclf4jIOjZDHVKH/8
hlNH8X4vAgMBAAECgf8YESNMmChzcL+MrXzzh8gLKi3CFOeDgwFAFIVkj1LRkGfk
6JgWkrFnFk4EWmi5+be6gVNtaKnlqTLyypKi85EC3QouTLoN1NYxE3S/jXMzjM2s
KEHDH1vhQvvr+DhdzpZunx90jfbZzWTqsJSytJSveocMBoZTxgfoC72SMFpT+VFf
ueoUVE89axzJ16b/8gPSukO0T6de4hRJrYS8mn7vr4vqEG3xIH9/5MqnX1iGiLyd
JMe089xJn9gAO8oOg3YW6PVui2CE+M5zpyoI3+qkrYdO1ROlEZ4LU+UfSq0HfTO3
y5AQQyUmRZyNwwl0DcqA+AM+SrHHgQWqKER9AaECgYEA/MDpyQOsPiunLo2XB8CK
KT7AwaouYt+dwnGN9W4yignntfTRMgmbiE47efV2rNhw51eAHsU865SL/0JsxKML
fyaOuzAOUkHHT/JwEct/nDpvjARc9j3DHWX3bOaJ9DhaV9fjEXuFA0Jp6rPXJ5Yy
PQCLhPywG9cm7/SoSnkiO+ECgYEA8VBEuVohz/oQQfV9pbxMR/VLdphtuTuiM+zR
XHCYLSLK1QOxpZJIi39zAf0ErZx0qXOMz9qBQBE6G20r61O2KLPaMSp+DpaSLo8S
8gW/qgNqHOn0EU4lKwgvASuPFg5waOFyM9KkVQ7LoygRKd3CvCe4kNha0JYTw2wO
OQ/PfA8CgYBceZCPtUJNtNcEF1XMxktGb+lCcitqjXpA7B8OTvU6wAkA78OiVRWM
t2LXalGzR7V3TvJXT77MSps2F22IPEc2jDrojdqPifWMcJ1ERXo5BMBPMEF67nn2
xZnTRD3xFrUnMpunh9PQr3nlH0t29mMHIq3pSDJ+3Scn4BG6vbsiwQKBgQCXUcZG
lIZvbFeVhONtck5DMUZI7/yeEw77kJ0YYmKKqy6VtONI+BoVn632qTqtw1ZEi/jY
viQekK7nU+YegzfO/jjsa8DwVOsF1yICMiil6842o14xG9eizFbtXOs04YkLu5Np
e8UgsU5w2UcqAa2DX0UVTxZjhjiOasvgbFGncQKBgEumtYVnXu4/mGqOAXsvrFQj
MFNeFuV7qXWXBdcww//dP57PE24cOGvpWqn4jiBcP+GONtRfRoNClj+tAzvzIOuh
K3uc1FRnjr4ZCrts1cNSdiJlh+YeqTi+/9DB8g/dYUqKDCiTGLVSPI8apvuSNJk1
FciIXqDQ5zaDBbl1sp2P
-----END PRIVATE KEY-----
"""

# The Ed25519 TEST key (X-GHL-Signature); its public half is contract.SANDBOX_ED25519_PUBLIC_KEY_PEM.
SANDBOX_ED25519_PRIVATE_KEY_PEM = """-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIIBlB35YeWHMkP4xuITzQsPCiCrBcx6iK4nAv/xsk4Qo
-----END PRIVATE KEY-----
"""

# docs/webhook events/ContactCreate.md: the contact fields a contact webhook carries
CONTACT_FIELDS = ("address1", "city", "companyName", "country", "source", "dateAdded", "dateOfBirth", "dnd",
                  "email", "name", "firstName", "lastName", "phone", "postalCode", "state", "tags", "website",
                  "attachments", "assignedTo", "customFields")
NOTE_FIELDS = ("body", "contactId", "dateAdded")
TASK_FIELDS = ("assignedTo", "body", "contactId", "title", "dateAdded", "dueDate", "completed")
UNCHANGED_ON_UPDATE = ("tags", "dateUpdated")  # not a ContactUpdate by themselves


SigningKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def private_key() -> rsa.RSAPrivateKey:
    """The sandbox's RSA test key (the legacy `x-wh-signature`)."""
    key = serialization.load_pem_private_key(SANDBOX_PRIVATE_KEY_PEM.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def ed25519_private_key() -> ed25519.Ed25519PrivateKey:
    """The sandbox's Ed25519 test key (`X-GHL-Signature`)."""
    key = serialization.load_pem_private_key(SANDBOX_ED25519_PRIVATE_KEY_PEM.encode(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


def sign(body: bytes, key: SigningKey) -> str:
    """The base64 signature of the raw body: Ed25519 (`X-GHL-Signature`) or RSA PKCS#1 v1.5 SHA-256
    (`x-wh-signature`), by the key's type."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return base64.b64encode(key.sign(body)).decode()
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()


def signature_header(key: SigningKey) -> str:
    """The header a signature by `key` travels in."""
    return ED25519_SIGNATURE_HEADER if isinstance(key, ed25519.Ed25519PrivateKey) else RSA_SIGNATURE_HEADER


def signing_key(signature: str = SIGNATURES[0]) -> SigningKey:
    """The sandbox test key of a signature kind ("ed25519" or "rsa")."""
    if signature not in SIGNATURES:
        raise ValueError(f"webhook signature must be one of {', '.join(SIGNATURES)}, got {signature!r}")
    return ed25519_private_key() if signature == "ed25519" else private_key()


def contact_payload(kind: str, contact: dict[str, Any]) -> dict[str, Any]:
    """The body of a Contact* webhook for a stored contact (without timestamp and webhookId)."""
    body = {"type": kind, "locationId": contact.get("locationId"), "id": contact["id"]}
    body |= {k: contact[k] for k in CONTACT_FIELDS if contact.get(k) is not None}
    name = " ".join(p for p in (contact.get("firstName"), contact.get("lastName")) if p)
    if name and "name" not in body:
        body["name"] = name
    return body


def item_payload(kind: str, location_id: str, item: dict[str, Any]) -> dict[str, Any]:
    """The body of a NoteCreate or TaskCreate webhook."""
    fields = NOTE_FIELDS if kind == "NoteCreate" else TASK_FIELDS
    return {"type": kind, "locationId": location_id, "id": item["id"],
            **{k: item[k] for k in fields if item.get(k) is not None}}


def update_kinds(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The webhooks an update sends: ContactUpdate for changed fields, ContactTagUpdate for changed tags."""
    kinds = []
    keys = (set(before) | set(after)) - set(UNCHANGED_ON_UPDATE)
    if any(before.get(k) != after.get(k) for k in keys):  # a field other than the tags changed
        kinds.append("ContactUpdate")
    if list(before.get("tags") or []) != list(after.get("tags") or []):  # the tags changed
        kinds.append("ContactTagUpdate")
    return kinds


@dataclass
class Delivery:
    body: bytes
    signature: str
    webhook_id: str
    kind: str


class WebhookEmitter:
    """Signs webhook bodies and POSTs them to `url` from one worker thread, in order."""

    def __init__(self, url: str, *, key: SigningKey | None = None, signature: str = SIGNATURES[0],
                 clock: Clock = time.time, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.url, self.key, self.clock, self.sleep = url, key or signing_key(signature), clock, sleep
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._client = httpx.Client(timeout=10, transport=transport)
        self._thread = threading.Thread(target=self._run, name="sandbox-webhooks", daemon=True)
        self._thread.start()

    def send(self, body: dict[str, Any]) -> str:
        """Queue one webhook (`timestamp` and `webhookId` added here); its webhookId."""
        webhook_id = str(uuid.uuid4())
        raw = json.dumps({**body, "timestamp": iso_from_epoch(self.clock()), "webhookId": webhook_id},
                         ensure_ascii=False).encode()
        with self._idle:
            self._pending += 1
        self._queue.put(Delivery(raw, sign(raw, self.key), webhook_id, str(body.get("type"))))
        return webhook_id

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every queued webhook was delivered or given up; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)
        self._client.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._deliver(item):
                self.delivered += 1
            else:
                self.failed += 1
                log.warning("webhook %s (%s) not delivered to %s", item.webhook_id, item.kind, self.url)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _deliver(self, item: Delivery) -> bool:
        headers = {"content-type": "application/json", signature_header(self.key): item.signature}
        for attempt in range(ATTEMPTS):
            try:
                status = self._client.post(self.url, content=item.body, headers=headers).status_code
            except httpx.HTTPError:
                status = 0  # connection refused, reset or timeout: try again
            if 200 <= status < 300:
                return True
            if 400 <= status < 500 and status != 429:  # refused by the receiver: sending again will not help
                return False
            if attempt + 1 < ATTEMPTS:
                self.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
        return False


def attach_webhooks(store: Any, url: str, *, clock: Clock = time.time, **options: Any) -> WebhookEmitter:
    """Make `store` (a GHLStore) send signed webhooks to `url` (the module docstring); the emitter."""
    emitter = WebhookEmitter(url, clock=clock, **options)
    _wrap_contacts(store, emitter)
    _wrap_tags(store, emitter)
    _wrap_items(store, emitter)
    return emitter


def _wrap_contacts(store: Any, emitter: WebhookEmitter) -> None:
    create, update, delete = store.create_contact, store.update_contact, store.delete_contact

    def create_contact(location_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        contact = create(location_id, fields)
        emitter.send(contact_payload("ContactCreate", contact))
        return contact

    def update_contact(contact: dict[str, Any], fields: dict[str, Any]) -> bool:
        before = copy.deepcopy(contact)
        changed = update(contact, fields)
        for kind in update_kinds(before, contact) if changed else []:
            emitter.send(contact_payload(kind, contact))
        return changed

    def delete_contact(contact_id: str) -> None:
        before = copy.deepcopy(store.contact(contact_id))
        delete(contact_id)
        emitter.send(contact_payload("ContactDelete", before))

    store.create_contact, store.update_contact, store.delete_contact = create_contact, update_contact, delete_contact


def _wrap_tags(store: Any, emitter: WebhookEmitter) -> None:
    add, remove = store.add_tags, store.remove_tags

    def tagging(method: Callable[[dict[str, Any], Any], list[str]]) -> Callable[[dict[str, Any], Any], list[str]]:
        def wrapped(contact: dict[str, Any], tags: Any) -> list[str]:
            before = list(contact.get("tags") or [])
            result = method(contact, tags)
            if list(contact.get("tags") or []) != before:
                emitter.send(contact_payload("ContactTagUpdate", contact))
            return result
        return wrapped

    store.add_tags, store.remove_tags = tagging(add), tagging(remove)


def _wrap_items(store: Any, emitter: WebhookEmitter) -> None:
    create = store.create_item

    def create_item(location_id: str, kind: str, contact_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        item = create(location_id, kind, contact_id, fields)
        emitter.send(item_payload("NoteCreate" if kind == "notes" else "TaskCreate", location_id, item))
        return item

    store.create_item = create_item
