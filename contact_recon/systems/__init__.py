"""The systems we talk to, one folder each (`ghl/`, `tinyemail/`: client, models, contract, mapping, writer),
over what they share: one request engine (`http.py`, transport injected), credentials (`auth.py`), the rate
budget (`budget.py`, `concurrency.py`), typed errors (`errors.py`), secret masking (`redaction.py`), the API
model base (`models.py`) and the writer protocols (`writer.py`). A system never imports another."""
