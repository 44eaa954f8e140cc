"""Sandbox servers of the GHL Contacts API v2 and of TinyEmail, and the fixture tools.

The sandboxes follow ../shared/specs (rate limits, errors and faults included) so that the product, its
tests, its demo and its benchmarks can run here while the same code points at the real APIs by
configuration alone.
"""
