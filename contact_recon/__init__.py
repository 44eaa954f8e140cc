"""contact-recon: keeps a HighLevel (GHL) CRM and a TinyEmail audience consistent.

One package, in layers; every import points down:

- `settings`, `events`: typed settings and the Prefect event names (leaves);
- `model`: record schemas, ops, person keys, normalisation, the policy;
- `engine`: the pure merge, identity matching, decisions and next-base algorithms (no I/O);
- `checks`: great-expectations suites and quarantine;
- `systems`: the GHL and TinyEmail clients and what they share (HTTP, auth, rate budget, redaction);
- `store`: the DuckDB store, the journal, the decisions table and the run files (all SQL lives here);
- `report`: summary.json, report.html, charts and Prefect artifacts;
- `stages`: snapshot, plan, apply, advance, sync, and `stages.run.reconcile`, the one orchestration;
- `tasks`, `flows`: the Prefect tasks and flows over the stages;
- `service`: the webhook receiver, the TinyEmail watcher and alerts;
- `cli`: the `recon` command line.

`sandbox` holds local servers of both APIs for the tests, the demo and the benchmarks.
"""

__version__ = "0.1.0"
