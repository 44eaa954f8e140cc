"""flows: filled by later issues."""
