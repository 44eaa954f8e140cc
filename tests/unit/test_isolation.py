"""Narrowing a refused batch down to its refused members (contact_recon/systems/writer.py): `named_member` and
`split_refused` are pure; simulated here against a refusing "API" to check the bound of extra calls."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from contact_recon.systems.writer import Split, named_member, split_refused


def test_named_member_reads_the_index_a_batch_refusal_names() -> None:
    assert named_member(["updateMembers[3].email was refused"], 10) == 3
    assert named_member(["tinyemail PUT /v1/account/customer: assignMembers[0].status must be ..."], 1) == 0
    assert named_member(["members[12] is not a customer"], 20) == 12
    # an index beyond the call, or none at all, names nobody
    assert named_member(["updateMembers[7].email"], 5) is None
    assert named_member(["the batch was refused"], 5) is None
    assert named_member(["updateMember[2] (a different key)"], 5) is None


def test_split_refused_leaves_a_named_member_out_and_halves_an_unnamed_refusal() -> None:
    assert split_refused(5, 2) == Split(2, ((0, 1, 3, 4),))
    assert split_refused(1, 0) == Split(0, ())
    assert split_refused(5, None) == Split(None, ((0, 1), (2, 3, 4)))
    assert split_refused(1, None) == Split(0, ())
    assert split_refused(0, None) == Split(None, ())


def isolate(size: int, refused: set[int], names: bool) -> tuple[set[int], int]:
    """Run split_refused against an API refusing the members `refused` (naming the first one when `names`):
    (the members found refused, the calls made)."""
    found, calls = set(), 0
    pending = [list(range(size))]
    while pending:
        part = pending.pop(0)
        calls += 1
        bad = [i for i, member in enumerate(part) if member in refused]
        if not bad:
            continue
        split = split_refused(len(part), bad[0] if names else None)
        if split.refused is not None:
            found.add(part[split.refused])
        pending += [[part[i] for i in indexes] for indexes in split.parts]
    return found, calls


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), max_size=5))),
       st.booleans())
def test_every_refused_member_and_only_those_are_found_within_the_bound(case: tuple[int, set[int]],
                                                                         names: bool) -> None:
    size, refused = case
    found, calls = isolate(size, refused, names)
    assert found == refused  # the others all went through
    extra = calls - 1
    if names:
        assert extra <= len(refused)  # at most one more call per refused member (none when it was alone)
    else:
        assert extra <= max(1, len(refused)) * 2 * math.ceil(math.log2(max(size, 2)))
