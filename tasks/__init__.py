"""tasks: filled by later issues."""
