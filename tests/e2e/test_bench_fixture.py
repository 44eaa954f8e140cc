"""bench/nightly.py's converged fixture is what a first reconciliation leaves: its base run writes (almost) nothing,
so the nightly after it sees only the day's drift as changed (issue 20: a fixture that spelled GHL's list tags
`list:<id>` had every contact's tags respelled by the base run, and night 2 read every contact as changed)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from contact_recon.model.list_tags import LIST_TAG_RESPELLED
from contact_recon.sandbox.fixture import validate_fixture
from tests.support.servers import Sandboxes
from tests.support.worlds import World, planning_world

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from nightly import converged_fixture  # noqa: E402

CONTACTS = 120


@pytest.fixture
def world(sandboxes: Sandboxes, tmp_path: Path) -> Iterator[World]:
    fixture: dict[str, Any] = validate_fixture(converged_fixture(CONTACTS, 1.5, 2.0, seed=11))
    yield from planning_world(sandboxes, tmp_path, fixture, {})


def test_the_converged_fixture_plans_no_list_tag_respelling_and_touches_few_contacts(world: World) -> None:
    planned = world.plan(approve=True).plan
    respelled = planned.filter(pl.col("reason") == LIST_TAG_RESPELLED)
    assert respelled.height == 0, respelled.head(5)
    ghl_people = planned.filter(pl.col("target") == "ghl")["key"].n_unique()
    assert ghl_people <= CONTACTS * 0.05, planned.group_by("target", "kind", "reason").len()
