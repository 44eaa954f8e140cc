"""Long-running services beside the flows: `webhooks.py` (the GHL webhook receiver: verify, deduplicate, emit
a Prefect event), `watch.py` (the TinyEmail watcher: poll, diff, emit) and `alerts.py` (the notification block
and automations that turn run events into alerts)."""
