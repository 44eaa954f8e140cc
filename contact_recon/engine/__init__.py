"""The pure engine: snapshots, base and policy in; plans, decisions' ops and the next base out.

No I/O here: no store, no files, no HTTP, no clock (callers pass `today`). `merge.py` is the three-way merge
(the decision tables), `guards.py` decides when a plan changes too many people against the location's own
history (the merge's table F), `identity.py` pairs GHL contacts with TinyEmail customers, `decisions.py` checks the
data team's decisions and turns them into ops, `state.py` works out the next base from a run's journal, and
`budget_plan.py` sizes a snapshot to the request budget. The stages (`contact_recon.stages`) read and write
what these functions take and give.
"""
