"""The stages of a run, each over the systems and the store, and `run.py`'s orchestration (`reconcile`, `sync`).

`snapshot.py` reads both systems into the store, `plan.py` plans (identity, merge, checks, quarantine),
`apply.py` sends the ops through the journal, `advance.py` moves the base forward for the confirmed ones,
`sync.py` reads one person for the `sync-contact` flow; `lock.py`, `echo.py`, `progress.py` and
`failpoints.py` serve them. The Prefect tasks (`contact_recon.tasks`) wrap these functions.
"""
