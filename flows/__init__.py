"""The Prefect flows (`contact_recon.flows`), the deployments' entrypoints in prefect.yaml: `reconcile.py` (the
nightly and on-demand reconciliation) and `sync_contact.py` (one person between nights). Each reads the
settings and hands the work to `contact_recon.stages.run`."""
