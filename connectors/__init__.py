"""connectors: filled by later issues."""
