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
