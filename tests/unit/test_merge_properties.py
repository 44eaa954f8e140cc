"""The merge laws, checked by Hypothesis on small generated snapshots (see contact_recon/engine/merge.py for the rules).

1. Reconciling an already-reconciled state gives an empty plan (and planning again after applying a plan
   gives an empty plan).
2. The same change on both sides gives no op and no conflict.
3. Swapping the sides mirrors the plan for shared fields.
4. No plan ever loosens consent.
5. Applying the plan to both sides makes every shared field agree (unless it is in the conflict table).
6. An op that did not land is planned again by the next run, with the base the state module
   (contact_recon/engine/state.py) leaves; never the opposite op, which would undo the side that did land.
7. Tags that differ only in case or spacing never multiply: after folding each side (model/tags.py) and
   applying the plan, every side holds one spelling per tag key, a tag a side had keeps its spelling, and
   reconciling twice plans nothing; a change of case alone on one side plans nothing.
Plus: the vectorised engine and the pure-Python baseline (bench/merge_baseline.py) plan the same ops; and the state
module advances the base a chunk of people at a time (engine/state.py `advanced`) exactly as all at once.
"""

from __future__ import annotations

import datetime as dt
import json
import sys

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contact_recon.engine.merge import Outside, plan, tag_namespace
from contact_recon.engine.state import Consent, advanced, blocked
from contact_recon.engine.state import next_base as state_next_base
from contact_recon.model.ops import Op
from contact_recon.model.policy import Policy
from contact_recon.model.tags import fold
from tests.support import REPO
from tests.support.merge import apply_plan, by_key, frame, keys_of, next_base, norm, rec, tag_key

sys.path.append(str(REPO / "bench"))
from merge_baseline import plan_baseline  # noqa: E402

FIELDS = ("first_name", "city", "phone", "source")
VALUES = st.sampled_from([None, "", " a", "a", "b", "c "])
TAGS = ["vip", "news", "ghl:hot", "te:lead", "list:l1", "list:l2", "ghl:open-task"]
TE_CONSENT = st.sampled_from(["subscribed", "unsubscribed", "bounced", "spam", "inactive", None])
GHL_CONSENT = st.sampled_from(["subscribed", "dnd", None])
KEYS = ["c1", "c2", "c3", "c4", "te:t1@x.com", "te:t2@x.com"]
TODAY = dt.date(2026, 3, 1)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

POLICIES = [
    Policy(),
    Policy(fields={"city": {"tie_break": "tinyemail"}, "phone": {"owner": "tinyemail"}},
           initial={"strategy": "prefer_ghl"}, delete={"on_ghl_delete": "unsubscribe"},
           tags={"list_sync": "tinyemail_to_ghl"}),
    Policy(initial={"strategy": "prefer_tinyemail"}, tags={"list_sync": "off"}, delete={"edit_beats_delete": False},
           tasks={"tag_triggers": [{"tag": "vip", "action": "task"}, {"tag": "news"}]}),
]


@st.composite
def person(draw, key: str, consent=TE_CONSENT, lists: bool = True) -> dict:
    row = rec(key, **{f: draw(VALUES) for f in FIELDS}, consent=draw(consent),
              tags=sorted(draw(st.sets(st.sampled_from(TAGS), max_size=4))))
    if lists:
        row["lists"] = sorted(draw(st.sets(st.sampled_from(["l1", "l2"]), max_size=2)))
    return row


@st.composite
def snapshots(draw):
    """(base, te, ghl) row lists over a few keys, each present on any combination of sides."""
    base, te, ghl = [], [], []
    first_run = draw(st.booleans())
    for key in KEYS:
        on_te, on_ghl = draw(st.booleans()), draw(st.booleans()) and not key.startswith("te:")
        if not first_run and draw(st.booleans()):
            b = draw(person(key))
            b |= {"in_ghl": not key.startswith("te:"), "in_tinyemail": draw(st.booleans()) or key.startswith("te:")}
            base.append(b)
        if on_te:
            te.append(draw(person(key)))
        if on_ghl:
            g = draw(person(key, consent=GHL_CONSENT, lists=False))
            g["email"] = draw(st.sampled_from([g["email"], g["email"], None, f"new-{key}@x.com"]))
            ghl.append(g)
    if not first_run and not base:
        base.append(rec("zz", in_ghl=True, in_tinyemail=True))
    return base, te, ghl


def run(base, te, ghl, policy=None, **kw):
    return plan(frame(base, base=True), frame(te), frame(ghl), policy or Policy(), today=TODAY, **kw)


def mirror(op: Op) -> tuple:
    swap = {"ghl": "tinyemail", "tinyemail": "ghl"}
    reason = op.reason.replace("tinyemail", "\0").replace("ghl", "tinyemail").replace("\0", "ghl")
    return (swap[op.target], op.kind, op.key, op.field, op.expected, op.new, reason)


@st.composite
def reconciled(draw):
    """A reconciled state: both sides agree on everything; the base is that state."""
    rows_te, rows_ghl = [], []
    for key in KEYS[:4]:
        t = draw(person(key, consent=st.sampled_from(["subscribed", "unsubscribed"])))
        t.update({f: norm(t[f]) for f in FIELDS})
        t["tags"] = sorted({tag for tag in t["tags"] if tag_namespace(tag, Policy()) != "list"})
        g = {**t, "tags": sorted({*t["tags"], *(f"list:{name}" for name in t["lists"])}), "lists": [],
             "consent": "dnd" if t["consent"] == "unsubscribed" else "subscribed"}
        rows_te.append(t)
        rows_ghl.append(g)
    base = [{**t, "tags": g["tags"]} for t, g in zip(rows_te, rows_ghl, strict=True)]
    return base, rows_te, rows_ghl


# Law 1: reconciling an already-reconciled state gives an empty plan.
@SETTINGS
@given(reconciled())
def test_reconciled_state_gives_empty_plan(state):
    base, te, ghl = state
    result = run(base, te, ghl)
    assert result.ops.height == 0, result.ops
    assert result.conflicts.height == 0


# Laws 1 and 5: after applying a plan, the shared fields agree, and planning again gives no op.
@SETTINGS
@given(snapshots(), st.sampled_from(POLICIES))
def test_apply_makes_shared_fields_agree_and_replan_is_empty(snaps, policy):
    base, te, ghl = snaps
    result = run(base, te, ghl, policy)
    te_after, ghl_after = apply_plan(by_key(te), by_key(ghl), result.op_list())
    conflicted = {(c["key"], c["field"]) for c in result.conflicts.to_dicts()}
    for key in set(te_after) & set(ghl_after):
        t, g = te_after[key], ghl_after[key]
        for rule in policy.active_fields():
            if (key, rule.canonical) not in conflicted:
                assert norm(t[rule.canonical]) == norm(g[rule.canonical]), (key, rule.canonical)
        shared = lambda tags: {x for x in tags if tag_namespace(x, policy) == "tag"}  # noqa: E731
        assert shared(t["tags"]) == shared(g["tags"])
        if policy.tags.list_sync != "off":
            assert {f"list:{x}" for x in t["lists"]} == {x for x in g["tags"] if x.startswith("list:")}
        assert (t["consent"] in policy.consent.tinyemail_tight) == (g["consent"] in policy.consent.ghl_tight)
    again = run(next_base(by_key(base), te_after, ghl_after, policy), list(te_after.values()),
                list(ghl_after.values()), policy)
    assert again.ops.height == 0, again.op_list()


# Law 2: the same change on both sides gives no op and no conflict.
@SETTINGS
@given(reconciled(), st.sampled_from(FIELDS), st.sampled_from(["x", "y", None]), st.data())
def test_same_change_on_both_sides_is_neither_op_nor_conflict(state, field, value, data):
    base, te, ghl = state
    i = data.draw(st.integers(0, len(te) - 1))
    te[i][field] = ghl[i][field] = value
    te[i]["tags"] = sorted({*te[i]["tags"], "both"})
    ghl[i]["tags"] = sorted({*ghl[i]["tags"], "both"})
    result = run(base, te, ghl)
    assert result.ops.height == 0, result.ops
    assert result.conflicts.height == 0


# Law 3: swapping the sides mirrors the plan for shared fields (a symmetric policy, shared namespaces only).
@SETTINGS
@given(snapshots())
def test_swapping_sides_mirrors_the_plan(snaps):
    base, te, ghl = snaps
    keys = {r["key"] for r in te} & {r["key"] for r in ghl}
    symmetric = Policy(fields={f: {"owner": "shared", "tie_break": "manual"} for f in FIELDS})

    def strip(rows):
        return [{**r, "consent": None, "lists": [], "email": f"{r['key']}@x.com",
                 "tags": [t for t in r["tags"] if tag_namespace(t, symmetric) == "tag"]}
                for r in rows if r["key"] in keys or r in base]
    base, te, ghl = strip(base), strip(te), strip(ghl)
    forward = run(base, te, ghl, symmetric)
    backward = run(base, ghl, te, symmetric)
    pick = ("update", "tag_add", "tag_remove")
    fwd = {mirror(op) for op in forward.op_list() if op.kind in pick}
    bwd = {(op.target, op.kind, op.key, op.field, op.expected, op.new, op.reason)
           for op in backward.op_list() if op.kind in pick}
    assert fwd == bwd
    swap = lambda c: (c["key"], c["field"], c["base"], c["ghl"], c["tinyemail"], c["reason"])  # noqa: E731
    assert {swap(c) for c in forward.conflicts.to_dicts()} == {
        (c["key"], c["field"], c["base"], c["tinyemail"], c["ghl"], c["reason"]) for c in backward.conflicts.to_dicts()}


# Law 4: no plan ever loosens consent.
@SETTINGS
@given(snapshots(), st.sampled_from(POLICIES))
def test_no_plan_loosens_consent(snaps, policy):
    base, te, ghl = snaps
    result = run(base, te, ghl, policy)
    tight = {*policy.consent.tinyemail_tight, *policy.consent.ghl_tight}
    for op in result.op_list():
        if op.field == "consent":
            assert op.kind == "consent_tighten" and op.new in tight, op
        if op.kind == "create":
            assert json.loads(op.new).get("consent", "dnd") in tight, op
    te_after, ghl_after = apply_plan(by_key(te), by_key(ghl), result.op_list())
    for before, after, tight_values in ((te, te_after, policy.consent.tinyemail_tight),
                                        (ghl, ghl_after, policy.consent.ghl_tight)):
        for row in before:
            if row["consent"] in tight_values:
                assert after[row["key"]]["consent"] == row["consent"]


# The vectorised engine and the straightforward baseline agree op for op (ids and order) and on conflicts.
@SETTINGS
@given(snapshots(), st.sampled_from(POLICIES), st.booleans(), st.booleans())
def test_engine_matches_the_pure_python_baseline(snaps, policy, with_tasks, with_created):
    base, te, ghl = snaps
    tasks = [{"task_id": "t1", "contact_id": "c1", "completed": False, "due_date": "2026-02-01T00:00:00Z"},
             {"task_id": "t2", "contact_id": "c2", "completed": False, "due_date": "2026-04-01"},
             {"task_id": "t3", "contact_id": "c3", "completed": True, "due_date": None}] if with_tasks else None
    created = [{"key": "c1", "rule": "new_subscriber", "object_id": "x", "kind": "task"}] if with_created else None
    import polars as pl

    from contact_recon.engine.merge import CREATED_SCHEMA
    from contact_recon.model.records import GHL_TASKS
    result = run(base, te, ghl, policy,
                 ghl_tasks=pl.DataFrame(tasks, schema={k: GHL_TASKS[k] for k in tasks[0]}) if tasks else None,
                 created=pl.DataFrame(created, schema=CREATED_SCHEMA) if created else None)
    ops, conflicts = plan_baseline(base, te, ghl, policy, ghl_tasks=tasks, created=created, today=TODAY)
    assert [op.id for op in ops] == result.ops["op_id"].to_list(), (ops, result.ops)
    assert conflicts == result.conflicts.to_dicts()


# Law 6: an op that did not land (failed, stale, quarantined) is planned again by the next run.
UNDONE_KINDS = ("update", "consent_tighten", "tag_add", "tag_remove", "list_add", "list_remove")


@SETTINGS
@given(snapshots(), st.sampled_from(POLICIES), st.data())
def test_an_op_that_did_not_land_is_planned_again(snaps, policy, data):
    base, te, ghl = snaps
    ops = run(base, te, ghl, policy).op_list()
    candidates = [o for o in ops if o.kind in UNDONE_KINDS]
    undone = data.draw(st.sets(st.sampled_from(candidates), max_size=4)) if candidates else set()
    done = [o for o in ops if o not in undone]
    te_after, ghl_after = apply_plan(by_key(te), by_key(ghl), done)
    journal = pl.DataFrame([{"target": o.target, "kind": o.kind, "key": o.key, "field": o.field,
                             "expected": o.expected, "new": o.new, "status": "failed" if o in undone else "done"}
                            for o in ops], schema={n: pl.String for n in ("target", "kind", "key", "field",
                                                                          "expected", "new", "status")})
    consent = Consent(tuple(policy.consent.tinyemail_tight), tuple(policy.consent.ghl_tight))
    next_rows = state_next_base(by_key(base), te_after, ghl_after, blocked(journal), consent,
                                policy.tags.list_prefix)
    again = {(o.target, o.kind, o.key, o.field, o.expected, o.new)
             for o in run(next_rows, list(te_after.values()), list(ghl_after.values()), policy).op_list()}
    for op in undone:
        assert (op.target, op.kind, op.key, op.field, op.expected, op.new) in again, (op, sorted(again))


# Law 7: tags that differ only in case or spacing never multiply, and reconciling twice plans nothing.
VARIANTS = ["vip", "VIP", " Vip ", "big deal", "Big  Deal", "news", "NEWS", "ghl:Hot", "GHL:hot", "te:Lead",
            "TE: lead", "list:l1", "LIST:l1", "Straße", "STRASSE"]


@st.composite
def spelled(draw, key: str, consent=TE_CONSENT, lists: bool = True) -> dict:
    """A person whose tags are drawn from case and spacing variants, in the order the system holds them,
    two spellings of one key allowed (as earlier runs left them)."""
    row = draw(person(key, consent=consent, lists=lists))
    row["tags"] = draw(st.lists(st.sampled_from(VARIANTS), unique=True, max_size=5))
    return row


def folded(rows: list[dict]) -> list[dict]:
    """Each row's tags folded as the plan stage folds a snapshot (the first spelling of each key stays)."""
    out = []
    for row in rows:
        kept, dropped = fold(row["tags"])
        assert len(set(keys_of(kept))) == len(kept) == len(set(keys_of(row["tags"])))
        assert all(tag_key(d) in keys_of(kept) and d not in kept for d in dropped)
        out.append({**row, "tags": sorted(kept)})
    return out


def one_spelling_per_key(rows: dict[str, dict]) -> None:
    for key, row in rows.items():
        assert len(set(keys_of(row["tags"]))) == len(row["tags"]), (key, row["tags"])


@SETTINGS
@given(st.data(), st.sampled_from(POLICIES))
def test_case_variants_never_multiply_and_reconciling_twice_plans_nothing(data, policy):
    base, te, ghl = [], [], []
    first_run = data.draw(st.booleans())
    for key in KEYS[:4]:
        if not first_run:
            base.append({**data.draw(spelled(key)), "in_ghl": True, "in_tinyemail": True})
        te.append(data.draw(spelled(key)))
        ghl.append(data.draw(spelled(key, consent=GHL_CONSENT, lists=False)))
    base, te, ghl = folded(base), folded(te), folded(ghl)
    result = run(base, te, ghl, policy)
    te_after, ghl_after = apply_plan(by_key(te), by_key(ghl), result.op_list())
    one_spelling_per_key(te_after)
    one_spelling_per_key(ghl_after)
    for before, after in ((te, te_after), (ghl, ghl_after)):
        for row in before:
            # a tag the side had keeps that side's spelling (unless the plan removed it)
            now = {tag_key(t): t for t in after[row["key"]]["tags"]}
            assert all(now.get(tag_key(t), t) == t for t in row["tags"]), (row["tags"], now)
    for key in te_after:
        shared = lambda tags: {tag_key(x) for x in tags if tag_namespace(x, policy) == "tag"}  # noqa: E731
        assert shared(te_after[key]["tags"]) == shared(ghl_after[key]["tags"]), key
    second = next_base(by_key(base), te_after, ghl_after, policy)
    again = run(second, list(te_after.values()), list(ghl_after.values()), policy)
    assert again.ops.height == 0, again.op_list()


@SETTINGS
@given(reconciled(), st.data())
def test_a_change_of_case_alone_is_not_a_change(state, data):
    base, te, ghl = state
    i = data.draw(st.integers(0, len(te) - 1))
    side = data.draw(st.sampled_from([te, ghl]))
    if not side[i]["tags"]:
        side[i]["tags"] = ["news"]
        (ghl if side is te else te)[i]["tags"] = sorted({*(ghl if side is te else te)[i]["tags"], "news"})
        base[i]["tags"] = sorted({*base[i]["tags"], "news"})
    recase = data.draw(st.sampled_from([str.upper, str.title, lambda t: f"  {t.upper()} "]))
    side[i]["tags"] = sorted(recase(t) for t in side[i]["tags"])
    result = run(base, te, ghl)
    assert result.ops.height == 0, result.op_list()


# The state module advances people in chunks (bounded memory): any chunk size gives the same Advance.
@SETTINGS
@given(snapshots(), st.sampled_from(POLICIES), st.data())
def test_advancing_in_chunks_equals_advancing_everyone_at_once(snaps, policy, data):
    base, te, ghl = snaps
    ops = run(base, te, ghl, policy).op_list()
    undone = data.draw(st.sets(st.sampled_from(ops), max_size=4)) if ops else set()
    journal = pl.DataFrame([{"target": o.target, "kind": o.kind, "key": o.key, "field": o.field,
                             "expected": o.expected, "new": o.new, "status": "failed" if o in undone else "done",
                             "reason": o.reason, "location_id": "loc",
                             "result_id": f"new-{o.key}" if o.kind == "create" and o.target == "ghl" else None}
                            for o in ops], schema={n: pl.String for n in (
                                "target", "kind", "key", "field", "expected", "new", "status", "reason",
                                "location_id", "result_id")})
    state = {"base": frame(base, base=True), "te_side": frame(te), "ghl_side": frame(ghl),
             "people": pl.DataFrame(schema={"key": pl.String, "email": pl.String, "contact_id": pl.String,
                                            "location_id": pl.String}),
             "rekeys": pl.DataFrame(schema={"old_key": pl.String, "new_key": pl.String}),
             "id_map_new": pl.DataFrame(schema={"contact_id": pl.String, "location_id": pl.String,
                                                "email": pl.String, "matched_by": pl.String})}
    consent = Consent(tuple(policy.consent.tinyemail_tight), tuple(policy.consent.ghl_tight))
    whole = advanced(state, journal, consent, policy.tags.list_prefix, chunk=10_000)
    assert whole.base.height == len({r["key"] for r in te} | {r["key"] for r in ghl})
    for chunk in (1, 2, 3):
        part = advanced(state, journal, consent, policy.tags.list_prefix, chunk=chunk)
        assert part.base.to_dicts() == whole.base.to_dicts(), chunk
        assert (part.gone_keys, part.recreated, part.created_contacts) == \
            (whole.gone_keys, whole.recreated, whole.created_contacts)
        assert part.id_map.sort("contact_id").to_dicts() == whole.id_map.sort("contact_id").to_dicts()


# Law 9: planning only the people who can have an op, their email neighbours and any others, with everyone else
# counted as settled (`Outside`), is planning everyone: the same ops, conflicts, stats and held reasons
# (stages/plan.py `in_play`: a settled person had a base row, nothing to do and has not changed since).
POOL = ["c1@x.com", "t1@x.com", "t2@x.com", "shared@x.com"]


@st.composite
def entangled(draw):
    """snapshots() where some emails are another person's, or shared (re-keys, moved emails, one email twice)."""
    base, te, ghl = draw(snapshots())
    for rows in (base, te, ghl):
        for row in rows:
            if not row["key"].startswith("te:") and draw(st.integers(0, 3)) == 0:
                row["email"] = draw(st.sampled_from(POOL))
    return base, te, ghl


def _email(value: str | None) -> str | None:
    return value.strip().lower() if value and value.strip() else None


def in_play_keys(base, te, ghl, busy: set[str], extra: set[str]) -> set[str]:
    """busy | extra, and the settled people sharing an email with them (their TinyEmail, GHL or base email is an
    email the people in play have on a side or in the base): stages/plan.py `_neighbours`."""
    emails = {}
    for side, rows in (("t", te), ("g", ghl), ("b", base)):
        for row in rows:
            emails.setdefault(row["key"], {})[side] = _email(row["email"])
    playing = busy | extra
    near = {e for key in playing for e in emails.get(key, {}).values() if e}
    return playing | {key for key, mine in emails.items() if set(mine.values()) & near}


@SETTINGS
@given(entangled(), st.sampled_from(POLICIES), st.data())
def test_planning_the_people_in_play_is_planning_everyone(snaps, policy, data):
    base, te, ghl = snaps
    whole = run(base, te, ghl, policy)
    busy = set(whole.ops["key"]) | set(whole.conflicts["key"])
    in_base = {r["key"] for r in base}
    others = sorted(({r["key"] for r in te} | {r["key"] for r in ghl} | in_base) - busy)
    extra = data.draw(st.sets(st.sampled_from(others), max_size=len(others))) if others else set()
    assert whole.cases is not None
    cases = dict(zip(whole.cases["key"], whole.cases["case"], strict=True))
    playing = in_play_keys(base, te, ghl, busy, extra)
    # only people with a base row and a record on a side are ever settled (the advance settles people it writes
    # a base row for, from their records)
    on_te, on_ghl = {r["key"] for r in te}, {r["key"] for r in ghl}
    playing |= {key for key in cases if key not in in_base or key not in on_te | on_ghl}
    settled = set(cases) - playing
    outside: dict[str, int] = {}
    for key in settled:
        outside[cases[key]] = outside.get(cases[key], 0) + 1
    part = run(*([r for r in rows if r["key"] in playing] for rows in (base, te, ghl)), policy,
               outside=Outside(outside, on_tinyemail=len(settled & on_te), on_ghl=len(settled & on_ghl)))

    assert part.ops.to_dicts() == whole.ops.to_dicts()
    assert part.conflicts.to_dicts() == whole.conflicts.to_dicts()
    assert part.stats == whole.stats
    assert part.held_reasons == whole.held_reasons
