"""GHL webhook signatures: the configured public keys, and whether a request carries a valid signature.

GHL signs the raw body two ways (NOTES.md): `X-GHL-Signature`, Ed25519 (base64 of 64 bytes), the only one it
sends from 2026-07-01; and the legacy `x-wh-signature`, RSA PKCS#1 v1.5 over SHA-256 (Node's
`crypto.createVerify('SHA256')`, docs/oauth/WebhookAuthentication.md). `RECON_GHL_WEBHOOK_PUBLIC_KEY`
(`ghl_webhook_public_key`) holds one or more PEM public keys: concatenated PEM blocks inline, a path to a
file of them, or `sandbox` (the sandbox's two test keys); unset, GHL's published RSA key (GHL's Ed25519 key
is not in our copy of its docs: set it, `recon doctor` warns while none is configured). A key that is
neither Ed25519 nor RSA is refused at start (`WebhookKeyError`, a ValueError, naming its type).

A request is verified when an Ed25519 key verifies its `X-GHL-Signature` or an RSA key verifies its
`x-wh-signature`. A header for which no key of its type is configured verifies nothing, and a missing header is
never "nothing to verify": a request with no valid signature under a configured key is refused (401).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x448, x25519

from contact_recon.systems.ghl.contract import (
    ED25519_SIGNATURE_HEADER,
    RSA_SIGNATURE_HEADER,
    SANDBOX_ED25519_PUBLIC_KEY_PEM,
    SANDBOX_RSA_PUBLIC_KEY_PEM,
)

SANDBOX_KEY = "sandbox"  # ghl_webhook_public_key value naming the sandbox's test keys (sandbox/ghl_webhooks.py)
PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)
ED25519, RSA = "Ed25519", "RSA"

# GHL's published RSA webhook key (docs/oauth/WebhookAuthentication.md); GHL announces rotations by email.
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


class WebhookKeyError(ValueError):
    """The configured webhook key text is not one or more Ed25519 or RSA PEM public keys."""


@dataclass(frozen=True)
class WebhookKeys:
    """The verification keys, by type."""

    ed25519: tuple[ed25519.Ed25519PublicKey, ...] = ()
    rsa: tuple[rsa.RSAPublicKey, ...] = ()

    @property
    def types(self) -> list[str]:
        """The key types configured, e.g. ["Ed25519", "RSA"]."""
        return [name for name, keys in ((ED25519, self.ed25519), (RSA, self.rsa)) if keys]

    def describe(self) -> str:
        """`2 keys: Ed25519, RSA`-like, for the start-up line and `recon doctor` (never the keys)."""
        count = len(self.ed25519) + len(self.rsa)
        parts = [f"{len(keys)} {name}" for name, keys in ((ED25519, self.ed25519), (RSA, self.rsa)) if keys]
        return f"{count} key{'s' if count != 1 else ''} ({', '.join(parts)})"

    def verified(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """Whether a configured key verifies the signature of its type's header (module docstring)."""
        ed_sig = _decoded(headers.get(ED25519_SIGNATURE_HEADER))
        if ed_sig is not None and any(_ed25519_ok(key, body, ed_sig) for key in self.ed25519):
            return True
        rsa_sig = _decoded(headers.get(RSA_SIGNATURE_HEADER))
        return rsa_sig is not None and any(_rsa_ok(key, body, rsa_sig) for key in self.rsa)

    def refusal(self) -> str:
        """The 401 message: which header each configured key type needs."""
        wanted = [f"{ED25519_SIGNATURE_HEADER} (Ed25519)"] if self.ed25519 else []
        wanted += [f"{RSA_SIGNATURE_HEADER} (RSA)"] if self.rsa else []
        return f"missing or invalid signature: a valid {' or '.join(wanted)} is required"


def _decoded(signature: str | None) -> bytes | None:
    if not signature or not signature.strip():
        return None
    try:
        return base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _ed25519_ok(key: ed25519.Ed25519PublicKey, body: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, body)
    except InvalidSignature:
        return False
    return True


def _rsa_ok(key: rsa.RSAPublicKey, body: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def key_text(value: str | None) -> str:
    """The PEM text a setting names: None -> GHL's published key; "sandbox" -> both test keys; PEM; a path."""
    if value is None or not value.strip():
        return GHL_PUBLIC_KEY_PEM
    if value.strip() == SANDBOX_KEY:
        return SANDBOX_ED25519_PUBLIC_KEY_PEM + SANDBOX_RSA_PUBLIC_KEY_PEM
    if "-----BEGIN" in value:
        return value
    return Path(value).expanduser().read_text()


def load_keys(value: str | None) -> WebhookKeys:
    """The verification keys the setting names; WebhookKeyError for none, or one neither Ed25519 nor RSA.
    OSError when a key file cannot be read."""
    blocks = PEM_BLOCK.findall(key_text(value))
    if not blocks:
        raise WebhookKeyError("no PEM public key (-----BEGIN PUBLIC KEY-----) in the webhook key setting")
    ed_keys: list[ed25519.Ed25519PublicKey] = []
    rsa_keys: list[rsa.RSAPublicKey] = []
    for n, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_public_key(block.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise WebhookKeyError(f"webhook key {n} is not a readable PEM public key: {exc}") from None
        if isinstance(key, ed25519.Ed25519PublicKey):  # verifies X-GHL-Signature
            ed_keys.append(key)
        elif isinstance(key, rsa.RSAPublicKey):  # verifies the legacy x-wh-signature
            rsa_keys.append(key)
        else:  # EC, DSA, Ed448...: GHL signs with neither
            raise WebhookKeyError(f"webhook key {n} is {_kind(key)} key: only Ed25519 "
                                  f"({ED25519_SIGNATURE_HEADER}) and RSA ({RSA_SIGNATURE_HEADER}) keys verify GHL "
                                  "webhooks")
    return WebhookKeys(tuple(ed_keys), tuple(rsa_keys))


def _kind(key: object) -> str:
    kinds = ((ec.EllipticCurvePublicKey, "an EC"), (dsa.DSAPublicKey, "a DSA"), (ed448.Ed448PublicKey, "an Ed448"),
             (x25519.X25519PublicKey, "an X25519"), (x448.X448PublicKey, "an X448"))
    return next((name for cls, name in kinds if isinstance(key, cls)), "another kind of")


def key_source(value: str | None) -> str:
    """How the keys were configured, for the start-up line (never the keys themselves)."""
    if value is None or not value.strip():
        return "GHL's published RSA key"
    if value.strip() == SANDBOX_KEY:
        return "the sandbox test keys"
    return "PEM from settings" if "-----BEGIN" in value else f"key file {value}"
