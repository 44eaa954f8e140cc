"""What the GHL side of the product and its sandbox agree on, beyond the OpenAPI files (`shared/specs/ghl/`).

The sandbox (`contact_recon/sandbox/`) may import this module; nothing here imports the sandbox.
"""

from __future__ import annotations

# The scopes a location token needs (docs: scopes of the Contacts API v2 operations we call).
REQUIRED_SCOPES = ("contacts.readonly", "contacts.write", "locations/tasks.readonly")
# The webhook signature headers (NOTES.md), each base64 over the raw body: the Ed25519 one GHL sends since
# 2026 (the only one from 2026-07-01), and the legacy RSA (PKCS#1 v1.5, SHA-256) one.
ED25519_SIGNATURE_HEADER = "X-GHL-Signature"
RSA_SIGNATURE_HEADER = "x-wh-signature"
SIGNATURE_HEADER = RSA_SIGNATURE_HEADER  # the legacy name, kept for callers of the RSA header

# The public halves of the sandbox's TEST signing key pairs (the private halves live in
# contact_recon/sandbox/ghl_webhooks.py). `ghl_webhook_public_key = "sandbox"` selects both; they must never
# verify real traffic.
SANDBOX_ED25519_PUBLIC_KEY_PEM = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAaYUtJjXh/2zgmY2tCDpRjpoKrUcdKefdkD3PbxBdocg=
-----END PUBLIC KEY-----
"""
SANDBOX_PUBLIC_KEY_PEM = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA7kDcOYnF1/2dsqUZbnaF
+rcpzemm2+1gC4iG9YQFufytnoixwxb6aezeYfvnDLdhDeM8gtGU8mJcwFmAxT01
SPU4Es3JSwUOSS8ACsbDjY/8Q1Knfk+aQe+bQd4pvI5+TuQIrjR2c0t7u+5a9GFm
RRewdrlu//ugLFE+iLSazADM4eceCq+nSNbYINO+u/k8bLKbLMmg+Y+m4pmXT3ev
QLW9D/rca751egxxIddqE+Gg6MDYKEhwjK13yxca+r53xYjhe3IiHuwQddMpHXY6
ijgFDZuFCxJHLHfL0Wv6pRWBoolZSg22R9/VyQh/iXJX+IyDo2Qx1Sh//IZTR/F+
LwIDAQAB
-----END PUBLIC KEY-----
"""
SANDBOX_RSA_PUBLIC_KEY_PEM = SANDBOX_PUBLIC_KEY_PEM  # the legacy RSA one
