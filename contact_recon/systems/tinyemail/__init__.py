"""TinyEmail: `client.py`, `models.py`, `contract.py` (our assumptions about the API, shared with the sandbox),
`mapping.py` (API models -> canonical records) and `writer.py` (the apply stage's TinyEmail ops)."""
