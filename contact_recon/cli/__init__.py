"""The `recon` command line (typer): one module per command group; `main.py` wires them."""
