"""HighLevel (GHL) Contacts API v2: `client.py`, `models.py`, `contract.py` (facts shared with the sandbox),
`mapping.py` (API models -> canonical records) and `writer.py` (the apply stage's GHL ops)."""
