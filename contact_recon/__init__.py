"""contact-recon: keeps a HighLevel (GHL) CRM and a TinyEmail audience consistent.

This package holds what ties the product together: typed settings and the `recon` command line.
The work itself lives in the top-level packages named by the design: connectors/, tasks/, flows/,
checks/ and sandbox/.
"""

__version__ = "0.1.0"
