"""What the GHL side of the product and its sandbox agree on, beyond the OpenAPI files (`shared/specs/ghl/`).

The sandbox (`contact_recon/sandbox/`) may import this module; nothing here imports the sandbox.
"""

from __future__ import annotations

# The scopes a location token needs (docs: scopes of the Contacts API v2 operations we call).
REQUIRED_SCOPES = ("contacts.readonly", "contacts.write", "locations/tasks.readonly")
# The header of the legacy RSA webhook signature (base64 over the raw body).
SIGNATURE_HEADER = "x-wh-signature"

# The public half of the sandbox's TEST signing key pair (the private half lives in
# contact_recon/sandbox/ghl_webhooks.py). `ghl_webhook_public_key = "sandbox"` selects it; it must never
# verify real traffic.
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
