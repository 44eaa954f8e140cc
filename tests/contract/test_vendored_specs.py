"""The sandbox's vendored GHL spec files are byte-identical to the shared, authoritative ones."""

from __future__ import annotations

from tests.support import REPO, specs_dir

FILES = ("apps/contacts.json", "apps/locations.json", "apps/oauth.json", "common/common-schemas.json", "SOURCE.md")


def test_vendored_ghl_specs_match_shared():
    shared = specs_dir() / "ghl"
    vendored = REPO / "contact_recon" / "sandbox" / "specs" / "ghl"
    assert shared.is_dir(), f"the shared specs are missing at {shared}"
    for name in FILES:
        assert (vendored / name).read_bytes() == (shared / name).read_bytes(), f"{name} differs from {shared}"
