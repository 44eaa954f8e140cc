"""`python -m contact_recon.cli`: the `recon` command."""

from contact_recon.cli.main import app

app()
