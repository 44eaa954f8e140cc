"""The shapes everything else shares: record schemas, ops, person keys, normalisation and the policy.

`records.py` (the frame schemas of snapshots and merge sides), `ops.py` (an op, its content id and plan
order), `keys.py` (person keys), `normalise.py` (emails, phones, dates as the snapshot stores them) and
`policy.py` (the typed reconciliation policy; `load_policy` reads its config file). Imports nothing of the
layers above.
"""
