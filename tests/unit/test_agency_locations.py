"""The locations a run of an agency install covers (`agency_locations`): the installed list, the INSTALL-webhook
additions of that company, less the retired ones."""

from __future__ import annotations

from contact_recon.systems.ghl.agency import agency_locations


def entry(state: str, company: str = "C1") -> dict[str, str]:
    return {"company_id": company, "state": state, "at": "2026-12-02T00:00:00+00:00"}


def test_installed_plus_webhook_additions_less_retired() -> None:
    installs = {"L2": entry("retired"), "L4": entry("installed"), "L5": entry("installed", "C2"),
                "L1": entry("installed")}
    assert agency_locations(["L1", "L2", "L3"], installs, "C1") == ["L1", "L3", "L4"]


def test_no_webhooks_keeps_the_listed_order_without_repeats() -> None:
    assert agency_locations(["L3", "L1", "L3"], {}, "C1") == ["L3", "L1"]


def test_a_retired_location_stays_out_even_when_listed_and_nothing_else_is_left() -> None:
    assert agency_locations(["L1"], {"L1": entry("retired")}, "C1") == []


def test_an_agency_tenant_without_ids_owns_what_its_data_dir_knows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Webhook routing (`owner_of_location`): explicit ids first; an agency tenant that sets none owns the locations
    its last run covered and every INSTALL since, less the retired ones; any other location is unowned."""
    from contact_recon.settings import Settings
    from contact_recon.store.installs import record_covered, record_install
    from contact_recon.tenants import owner_of_location

    agency = Settings(_env_file=None, data_dir=tmp_path / "agency", ghl_company_id="C1")
    plain = Settings(_env_file=None, data_dir=tmp_path / "plain", ghl_location_ids=["L9"])
    tenants = {"agency": agency, "plain": plain}
    assert owner_of_location(tenants, "L1") is None  # nothing covered yet: unowned
    record_covered(agency.data_dir, ["L1", "L2"])
    record_install(agency.data_dir, installed=True, location_id="L3", company_id="C1", at="2026-12-02T00:00:00Z")
    record_install(agency.data_dir, installed=False, location_id="L2", company_id="C1", at="2026-12-02T00:00:00Z")
    assert {loc: owner_of_location(tenants, loc) for loc in ("L1", "L2", "L3", "L9", "L7")} == {
        "L1": "agency", "L2": None, "L3": "agency", "L9": "plain", "L7": None}
