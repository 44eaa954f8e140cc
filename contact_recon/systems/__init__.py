"""The systems we talk to, one folder each (`ghl/`, `tinyemail/`: client, models, contract, mapping, writer),
over what they share: one request engine (`http.py`, transport injected), credentials (`auth.py`), the rate
budget (`budget.py`, `concurrency.py`), typed errors (`errors.py`), secret masking (`redaction.py`), the API
model base (`models.py`), the writer protocols (`writer.py`), and the reconciliation policy as a Prefect block
(`policy_block.py`) with where a run's policy comes from (`policy_source.py`). A system never imports another."""
