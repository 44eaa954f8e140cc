"""checks: filled by later issues."""
