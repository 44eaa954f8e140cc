"""Table tests of the merge engine: one test per branch of the decision tables in contact_recon/engine/merge.py.

Each case is named in the comment above it, in the words of the tables (A presence, B fields, C tags and
lists, D consent, E tasks and notes, F guards), plus op ids and the policy file.
"""

from __future__ import annotations

import datetime as dt
import json
import random

import polars as pl
import pytest

from contact_recon.engine.guards import GuardHistory, Usual
from contact_recon.engine.merge import CREATED_SCHEMA, plan
from contact_recon.model.ops import Op, op_id
from contact_recon.model.policy import Policy, describe_mapping, load_policy
from contact_recon.model.records import GHL_TASKS
from tests.support.merge import frame, rec

TODAY = dt.date(2026, 3, 1)


def run(base, te, ghl, policy=None, **kw):
    return plan(frame(base, base=True), frame(te), frame(ghl), policy or Policy(), today=TODAY, **kw)


def ops(result, *kinds) -> list[tuple]:
    return [(o.target, o.kind, o.key, o.field, o.expected, o.new, o.reason) for o in result.op_list()
            if not kinds or o.kind in kinds]


def conflicts(result) -> list[tuple]:
    return [(c["key"], c["field"], c["reason"]) for c in result.conflicts.to_dicts()]


def field_case(b, t, g, field="city", policy=None, *, base=True):
    """One matched person c1; `field` is b at the base (or no base), t on TinyEmail, g on GHL."""
    bases = [rec("c1", **{field: b})] if base else []
    return run(bases, [rec("c1", **{field: t})], [rec("c1", **{field: g})], policy)


# --- B. fields -----------------------------------------------------------------------------------

# B: shared, valid base, neither side changed -> nothing
def test_shared_untouched_is_nothing():
    assert ops(field_case("Oslo", "Oslo", "Oslo")) == []


# B: shared, valid base, only TinyEmail changed -> GHL := t, expecting GHL's current value
def test_shared_changed_on_tinyemail_propagates_to_ghl():
    assert ops(field_case("Oslo", "Rome", "Oslo")) == [
        ("ghl", "update", "c1", "city", "Oslo", "Rome", "tinyemail_changed")]


# B: shared, valid base, only GHL changed -> TinyEmail := g
def test_shared_changed_on_ghl_propagates_to_tinyemail():
    assert ops(field_case("Oslo", "Oslo", "Rome")) == [
        ("tinyemail", "update", "c1", "city", "Oslo", "Rome", "ghl_changed")]


# B: shared, valid base, TinyEmail cleared the value -> a clear is a change, GHL is cleared
def test_shared_clear_is_a_change():
    assert ops(field_case("Oslo", "", "Oslo")) == [("ghl", "update", "c1", "city", "Oslo", None, "tinyemail_changed")]


# B: blank and "" and whitespace are one value; text is compared trimmed -> nothing
@pytest.mark.parametrize(("b", "t", "g"), [("Oslo", " Oslo ", "Oslo"), (None, "", None), ("", "  ", None)])
def test_blank_and_whitespace_are_not_changes(b, t, g):
    assert ops(field_case(b, t, g)) == []


# B: shared, both changed the same way -> nothing, and not a conflict
def test_same_change_on_both_sides_is_nothing():
    result = field_case("Oslo", "Rome", "Rome")
    assert ops(result) == [] and conflicts(result) == []


# B: shared, both changed differently, tie-break ghl (the default for city) -> TinyEmail := g
def test_both_changed_tie_break_ghl():
    assert ops(field_case("Oslo", "Rome", "Paris")) == [
        ("tinyemail", "update", "c1", "city", "Rome", "Paris", "both_changed_ghl_wins")]


# B: shared, both changed differently, tie-break tinyemail -> GHL := t
def test_both_changed_tie_break_tinyemail():
    policy = Policy(fields={"city": {"tie_break": "tinyemail"}})
    assert ops(field_case("Oslo", "Rome", "Paris", policy=policy)) == [
        ("ghl", "update", "c1", "city", "Paris", "Rome", "both_changed_tinyemail_wins")]


# B: shared, both changed differently, tie-break manual (default for first_name) -> conflict row, no op
def test_both_changed_manual_goes_to_conflict_table():
    result = field_case("Ann", "Anne", "Annie", field="first_name")
    assert ops(result) == []
    assert result.conflicts.to_dicts() == [{"key": "c1", "field": "first_name", "base": "Ann", "tinyemail": "Anne",
                                            "ghl": "Annie", "reason": "both_changed_manual"}]


# B: owned by GHL, TinyEmail changed it -> the owner wins anyway: TinyEmail := g
def test_owned_by_ghl_wins_over_a_tinyemail_change():
    assert ops(field_case("web", "ads", "web", field="source")) == [
        ("tinyemail", "update", "c1", "source", "ads", "web", "owned_by_ghl")]


# B: owned by GHL with a blank value -> the owner's blank clears TinyEmail
def test_owned_blank_clears_the_other_side():
    assert ops(field_case(None, "ads", None, field="source", base=False)) == [
        ("tinyemail", "update", "c1", "source", "ads", None, "owned_by_ghl")]


# B: owned by TinyEmail -> GHL := t
def test_owned_by_tinyemail():
    policy = Policy(fields={"phone": {"owner": "tinyemail"}})
    assert ops(field_case("1", "1", "2", field="phone", policy=policy)) == [
        ("ghl", "update", "c1", "phone", "2", "1", "owned_by_tinyemail")]


# B: a disabled field is never synced
def test_disabled_field_is_ignored():
    assert ops(field_case("Oslo", "Rome", "Oslo", policy=Policy(fields={"city": {"enabled": False}}))) == []


# B: no base, values agree -> nothing
def test_no_base_equal_values():
    assert ops(field_case(None, "Oslo", "Oslo", base=False)) == []


# B: no base, GHL blank -> fill GHL
def test_no_base_fills_ghl_blank():
    assert ops(field_case(None, "Oslo", None, base=False)) == [
        ("ghl", "update", "c1", "city", None, "Oslo", "initial_fill_ghl")]


# B: no base, TinyEmail blank -> fill TinyEmail
def test_no_base_fills_tinyemail_blank():
    assert ops(field_case(None, "", "Oslo", base=False)) == [
        ("tinyemail", "update", "c1", "city", None, "Oslo", "initial_fill_tinyemail")]


# B: no base, two non-blank values, fill_blanks and tie manual -> conflict table
def test_no_base_disagreement_manual_is_a_conflict():
    result = field_case(None, "Ann", "Anne", field="first_name", base=False)
    assert ops(result) == [] and conflicts(result) == [("c1", "first_name", "initial_conflict")]


# B: no base, two non-blank values, fill_blanks and tie ghl -> GHL wins
def test_no_base_disagreement_follows_tie_break():
    assert ops(field_case(None, "Rome", "Oslo", base=False)) == [
        ("tinyemail", "update", "c1", "city", "Rome", "Oslo", "initial_ghl_preferred")]


# B: no base, two non-blank values, strategy prefer_tinyemail -> TinyEmail wins even a manual field
def test_no_base_prefer_tinyemail():
    policy = Policy(initial={"strategy": "prefer_tinyemail"})
    assert ops(field_case(None, "Ann", "Anne", field="first_name", policy=policy, base=False)) == [
        ("ghl", "update", "c1", "first_name", "Anne", "Ann", "initial_tinyemail_preferred")]


# B: newly on TinyEmail (base knew the person in GHL only) -> initial rules, not three-way
def test_newly_matched_person_uses_initial_rules():
    base = [rec("c1", city="Oslo", in_ghl=True, in_tinyemail=False)]
    result = run(base, [rec("c1", city="Rome")], [rec("c1", city="Oslo")])
    assert ops(result, "update") == [("tinyemail", "update", "c1", "city", "Rome", "Oslo", "initial_ghl_preferred")]


# --- A. presence -----------------------------------------------------------------------------------

# A: new on TinyEmail -> create the GHL contact with its tags, lists as list tags, DND when tight
def test_new_on_tinyemail_creates_ghl_contact():
    te = [rec("te:n@x.com", first_name=" Nia ", tags=["vip", "list:junk"], lists=["news"], consent="bounced")]
    result = run([], te, [])
    [(target, kind, key, _, _, new, reason)] = ops(result, "create")
    assert (target, kind, key, reason) == ("ghl", "create", "te:n@x.com", "new_on_tinyemail")
    assert json.loads(new) == {"email": "n@x.com", "first_name": "Nia", "tags": ["list:news", "vip"], "consent": "dnd"}


# A: new on TinyEmail, creates to GHL switched off -> nothing
def test_new_on_tinyemail_not_created_when_switched_off():
    assert ops(run([], [rec("te:n@x.com")], [], Policy(create={"tinyemail_to_ghl": False}))) == []


# A: new on GHL with an email -> create the TinyEmail customer, list tags as lists, Unsubscribed on DND
def test_new_on_ghl_creates_tinyemail_customer():
    result = run([], [], [rec("c9", tags=["list:news", "hot", "ghl:x"], consent="dnd")])
    [(target, _, key, _, _, new, reason)] = ops(result, "create")
    assert (target, key, reason) == ("tinyemail", "c9", "new_on_ghl")
    assert json.loads(new) == {"email": "c9@x.com", "tags": ["ghl:x", "hot"], "lists": ["news"],
                               "consent": "unsubscribed"}


# A: a GHL contact without email -> nothing: it cannot exist in TinyEmail
def test_ghl_contact_without_email_is_not_sent():
    result = run([], [], [rec("c9", email=None)])
    assert ops(result) == [] and result.stats["case_ghl_without_email"] == 1


# A: deleted in GHL, TinyEmail unedited, policy report (default) -> a conflict row, no op
def test_deleted_in_ghl_is_reported():
    result = run([rec("c1")], [rec("c1")], [rec("c2")])
    assert ops(result) == [("tinyemail", "create", "c2", None, None, '{"email":"c2@x.com","tags":[]}', "new_on_ghl")]
    assert conflicts(result) == [("c1", None, "deleted_in_ghl")]


# A: deleted in GHL but edited in TinyEmail since the base -> an edit beats a delete: GHL contact re-created
@pytest.mark.parametrize("edit", [{"city": "Rome"}, {"tags": ["new"]}, {"lists": ["news"]}, {"consent": "spam"}])
def test_edit_beats_delete(edit):
    result = run([rec("c1")], [rec("c1", **edit)], [rec("c2", email=None)])
    assert [(o[1], o[2], o[6]) for o in ops(result, "create")] == [("create", "c1", "edit_beats_delete")]
    assert conflicts(result) == []


# A: deleted in GHL, policy unsubscribe -> TinyEmail set Unsubscribed (an inactivation), still reported
def test_deleted_in_ghl_policy_unsubscribe():
    result = run([rec("c1")], [rec("c1")], [rec("c2", email=None)], Policy(delete={"on_ghl_delete": "unsubscribe"}))
    assert ops(result) == [("tinyemail", "consent_tighten", "c1", "consent", "subscribed", "unsubscribed",
                            "deleted_in_ghl")]
    assert conflicts(result) == [("c1", None, "deleted_in_ghl")]


# A: a TinyEmail customer missing from its snapshot -> an anomaly, never a delete
def test_tinyemail_missing_is_an_anomaly():
    result = run([rec("c1")], [rec("c2")], [rec("c1")])
    assert ops(result, "create", "update", "consent_tighten") == [
        ("ghl", "create", "c2", None, None, '{"email":"c2@x.com","tags":[]}', "new_on_tinyemail")]
    assert conflicts(result) == [("c1", None, "tinyemail_missing")]


# A: gone from both sides -> nothing
def test_gone_from_both_is_nothing():
    result = run([rec("c1"), rec("c2")], [rec("c2")], [rec("c2")])
    assert ops(result) == [] and result.stats["case_gone"] == 1


# A: GHL email changed -> identity_review op; the customer under the old email is not a new person
def test_ghl_email_change_is_an_identity_operation():
    te = [rec("c1", email="new@x.com"), rec("te:c1@x.com"), rec("c2")]
    result = run([rec("c1"), rec("c2")], te, [rec("c1", email="new@x.com"), rec("c2")])
    assert ops(result) == [("tinyemail", "identity_review", "c1", "email", "c1@x.com", "new@x.com",
                            "ghl_email_changed")]
    assert result.stats["case_identity_pending"] == 1


# A: GHL email changed and the old customer arrives as te:<old email> -> re-keyed to the person, identity op
def test_ghl_email_change_with_the_old_customer_unmatched():
    result = run([rec("c1"), rec("c2")], [rec("te:c1@x.com"), rec("c2")], [rec("c1", email="new@x.com"), rec("c2")])
    assert ops(result) == [("tinyemail", "identity_review", "c1", "email", "c1@x.com", "new@x.com",
                            "ghl_email_changed")]


# A: GHL email removed -> identity_review with a null new email
def test_ghl_email_removed():
    result = run([rec("c1")], [rec("c1")], [rec("c1", email=None)])
    assert ops(result, "identity_review") == [("tinyemail", "identity_review", "c1", "email", "c1@x.com", None,
                                               "ghl_email_removed")]


# A: re-key: the TinyEmail row arrives as te:<email> but is the base person whose GHL contact is gone
def test_te_key_of_a_deleted_contact_is_rekeyed_to_the_base_person():
    result = run([rec("c1")], [rec("te:c1@x.com")], [rec("c2", email=None)])
    assert ops(result) == [] and conflicts(result) == [("c1", None, "deleted_in_ghl")]


# --- C. tags and lists ----------------------------------------------------------------------------

def tag_case(b, t, g, policy=None, *, base=True, b_lists=(), t_lists=(), **kw):
    bases = [rec("c1", tags=b, lists=list(b_lists))] if base else []
    return run(bases, [rec("c1", tags=t, lists=list(t_lists))], [rec("c1", tags=g)], policy, **kw)


# C: shared tag added on TinyEmail -> added on GHL
def test_tag_added_on_tinyemail():
    assert ops(tag_case(["a"], ["a", "b"], ["a"])) == [("ghl", "tag_add", "c1", "tags", None, "b",
                                                        "tag_added_on_tinyemail")]


# C: shared tag removed on GHL -> removed from TinyEmail
def test_tag_removed_on_ghl():
    assert ops(tag_case(["a", "b"], ["a", "b"], ["a"])) == [("tinyemail", "tag_remove", "c1", "tags", "b", None,
                                                             "tag_removed_on_ghl")]


# C: the same tag added on both / removed on both -> nothing
def test_same_tag_change_on_both_is_nothing():
    assert ops(tag_case(["a", "x"], ["a", "b"], ["a", "b"])) == []


# C: no base -> the union: each side gets what it lacks, nothing is removed
def test_no_base_tags_are_united():
    assert ops(tag_case([], ["a"], ["b"], base=False)) == [
        ("ghl", "tag_add", "c1", "tags", None, "a", "tag_initial_union"),
        ("tinyemail", "tag_add", "c1", "tags", None, "b", "tag_initial_union")]


# C: GHL-owned namespace -> TinyEmail follows GHL (added and removed), GHL never changed
def test_ghl_owned_namespace():
    assert ops(tag_case(["ghl:old"], ["ghl:old", "ghl:te-made"], ["ghl:new"])) == [
        ("tinyemail", "tag_add", "c1", "tags", None, "ghl:new", "tag_owned_by_ghl"),
        ("tinyemail", "tag_remove", "c1", "tags", "ghl:old", None, "tag_owned_by_ghl"),
        ("tinyemail", "tag_remove", "c1", "tags", "ghl:te-made", None, "tag_owned_by_ghl")]


# C: TinyEmail-owned namespace -> GHL follows TinyEmail
def test_tinyemail_owned_namespace():
    assert ops(tag_case([], ["te:a"], ["te:b"])) == [
        ("ghl", "tag_add", "c1", "tags", None, "te:a", "tag_owned_by_tinyemail"),
        ("ghl", "tag_remove", "c1", "tags", "te:b", None, "tag_owned_by_tinyemail")]


# C: a TinyEmail list joined -> GHL list tag added; a GHL list tag added -> TinyEmail list_add
def test_lists_merge_both_ways():
    assert ops(tag_case([], [], ["list:b"], t_lists=["a"])) == [
        ("ghl", "tag_add", "c1", "tags", None, "list:a", "list_added_on_tinyemail"),
        ("tinyemail", "list_add", "c1", "lists", None, "b", "list_added_on_ghl")]


# C: a GHL list tag removed since the base -> TinyEmail list_remove
def test_list_tag_removed_on_ghl_leaves_the_list():
    assert ops(tag_case(["list:a"], [], [], b_lists=["a"], t_lists=["a"])) == [
        ("tinyemail", "list_remove", "c1", "lists", "a", None, "list_removed_on_ghl")]


# C: list_sync tinyemail_to_ghl -> GHL list tags mirror TinyEmail's lists
def test_lists_follow_tinyemail():
    policy = Policy(tags={"list_sync": "tinyemail_to_ghl"})
    assert ops(tag_case([], [], ["list:b"], policy, t_lists=["a"])) == [
        ("ghl", "tag_add", "c1", "tags", None, "list:a", "list_owned_by_tinyemail"),
        ("ghl", "tag_remove", "c1", "tags", "list:b", None, "list_owned_by_tinyemail")]


# C: list_sync off -> lists and list tags are left alone
def test_lists_off():
    assert ops(tag_case([], [], ["list:b"], Policy(tags={"list_sync": "off"}), t_lists=["a"])) == []


# C: a tag in the list namespace on TinyEmail is ignored (TinyEmail's lists are its truth)
def test_list_namespace_tag_on_tinyemail_is_ignored():
    assert ops(tag_case([], ["list:zz"], [])) == []


# C, by tag key (issue 21): one tag on both sides in two spellings, no base -> nothing (each keeps its own)
def test_case_variants_on_both_sides_are_one_tag():
    assert ops(tag_case([], ["vip", "Big  Deal"], ["VIP", " big deal"], base=False)) == []


# C, by tag key: a change of case alone on one side since the base -> not a change
def test_a_change_of_case_alone_is_nothing():
    assert ops(tag_case(["vip"], ["vip"], ["VIP"])) == []


# C, by tag key: a tag new to a side is written in the spelling of the side it came from
def test_an_added_tag_keeps_its_source_spelling():
    assert ops(tag_case([], ["Gold Member"], [], base=False)) == [
        ("ghl", "tag_add", "c1", "tags", None, "Gold Member", "tag_initial_union")]


# C, by tag key: removed on one side -> removed from the other in that side's own spelling
def test_a_removal_names_the_targets_spelling():
    assert ops(tag_case(["vip"], ["VIP"], [])) == [("tinyemail", "tag_remove", "c1", "tags", "VIP", None,
                                                    "tag_removed_on_ghl")]


# C, by tag key: a namespace prefix in another case is the namespace (GHL-owned here; a list tag on GHL)
def test_namespaces_by_key():
    assert ops(tag_case([], ["GHL:Hot"], ["ghl:hot"])) == []
    assert ops(tag_case([], [], ["LIST:a"], t_lists=["a"], base=False)) == []


# C, by tag key: a fact tag TinyEmail holds in another spelling is the fact (not added again)
def test_fact_tag_by_key():
    result = tag_case([], ["GHL:Open-Task"], [], ghl_tasks=tasks_frame(("t1", "c1", False, "2026-04-01")))
    assert ops(result, "tag_add", "tag_remove") == []


def tasks_frame(*rows):
    return pl.DataFrame([dict(zip(("task_id", "contact_id", "completed", "due_date"), r, strict=True)) for r in rows],
                        schema={k: GHL_TASKS[k] for k in ("task_id", "contact_id", "completed", "due_date")})


# C: GHL facts -> TinyEmail tags: an open task and an overdue task set their tags
def test_open_and_overdue_tasks_become_tinyemail_tags():
    result = tag_case([], [], [], ghl_tasks=tasks_frame(("t1", "c1", False, "2026-02-01T10:00:00Z")))
    assert ops(result) == [("tinyemail", "tag_add", "c1", "tags", None, "ghl:open-task", "ghl_task_fact"),
                           ("tinyemail", "tag_add", "c1", "tags", None, "ghl:overdue-task", "ghl_task_fact")]


# C: the task completed -> the fact tags are cleared; a GHL-side fact tag is ignored
def test_fact_tags_cleared_when_task_done():
    result = tag_case([], ["ghl:open-task"], ["ghl:open-task"], ghl_tasks=tasks_frame(("t1", "c1", True, None)))
    assert ops(result) == [("tinyemail", "tag_remove", "c1", "tags", "ghl:open-task", None, "ghl_task_fact")]


# C: no GHL tasks given -> fact tags are left alone
def test_fact_tags_untouched_without_tasks():
    assert ops(tag_case([], ["ghl:open-task"], [])) == []


# --- D. consent -----------------------------------------------------------------------------------

def consent_case(b, t, g, *, base=True, policy=None):
    bases = [rec("c1", consent=b)] if base else []
    return run(bases, [rec("c1", consent=t)], [rec("c1", consent=g)], policy)


# D: TinyEmail unsubscribed, GHL not -> GHL DND on, plus a dated note
def test_tinyemail_unsubscribe_sets_ghl_dnd_and_note():
    assert ops(consent_case("subscribed", "unsubscribed", "subscribed")) == [
        ("ghl", "consent_tighten", "c1", "consent", "subscribed", "dnd", "tinyemail_unsubscribed"),
        ("ghl", "note_create", "c1", "unsubscribe_note", None,
         "TinyEmail: unsubscribed on 2026-03-01; email DND is on.", "tinyemail_unsubscribed")]


# D: TinyEmail bounced -> GHL DND on, plus the bounce note
def test_tinyemail_bounce_sets_dnd_and_bounce_note():
    assert [o[1:4] for o in ops(consent_case("subscribed", "bounced", "subscribed"))] == [
        ("consent_tighten", "c1", "consent"), ("note_create", "c1", "bounce_note")]


# D: GHL DND on, TinyEmail subscribed -> TinyEmail Unsubscribed
def test_ghl_dnd_unsubscribes_tinyemail():
    assert ops(consent_case("subscribed", "subscribed", "dnd")) == [
        ("tinyemail", "consent_tighten", "c1", "consent", "subscribed", "unsubscribed", "ghl_dnd")]


# D: both tight (in different words) -> nothing; TinyEmail inactive is not a consent withdrawal -> nothing
@pytest.mark.parametrize(("t", "g"), [("spam", "dnd"), ("inactive", "subscribed"), (None, None)])
def test_equal_tightness_is_nothing(t, g):
    assert ops(consent_case(t, t, g)) == []


# D: tight at the base, loosened on TinyEmail -> re-tightened (tight wins), reported for a human
def test_loosened_on_tinyemail_is_retightened_and_reported():
    result = consent_case("unsubscribed", "subscribed", "dnd")
    assert ops(result) == [("tinyemail", "consent_tighten", "c1", "consent", "subscribed", "unsubscribed", "ghl_dnd")]
    assert conflicts(result) == [("c1", "consent", "consent_loosened_on_tinyemail")]


# D: tight at the base, loosened on GHL -> GHL DND back on, reported
def test_loosened_on_ghl_is_retightened_and_reported():
    result = consent_case("unsubscribed", "unsubscribed", "subscribed")
    assert ops(result, "consent_tighten") == [
        ("ghl", "consent_tighten", "c1", "consent", "subscribed", "dnd", "tinyemail_unsubscribed")]
    assert ops(result, "note_create") == []  # not a new unsubscribe
    assert conflicts(result) == [("c1", "consent", "consent_loosened_on_ghl")]


# D: tight at the base, loose on both now -> never re-subscribed by us, never undone: reported only
def test_loosened_on_both_is_reported_only():
    result = consent_case("unsubscribed", "subscribed", "subscribed")
    assert ops(result) == [] and conflicts(result) == [("c1", "consent", "consent_loosened_on_both")]


# D + E: first run (empty base) -> consent tightened, but no event notes
def test_first_run_tightens_without_notes():
    assert [o[1] for o in ops(consent_case(None, "unsubscribed", "subscribed", base=False))] == ["consent_tighten"]


# --- E. tasks and notes ---------------------------------------------------------------------------

# E: a new TinyEmail subscriber matched to a known GHL contact -> a follow-up task due in 2 days
def test_new_subscriber_task():
    result = run([rec("c1", in_ghl=True, in_tinyemail=False)], [rec("c1")], [rec("c1")])
    [(target, kind, key, field, _, new, reason)] = ops(result, "task_create")
    assert (target, key, field, reason) == ("ghl", "c1", "new_subscriber", "new_tinyemail_subscriber")
    assert json.loads(new)["due_date"] == "2026-03-03"


# E: a new TinyEmail customer created in GHL -> its task rides on the same person key
def test_new_subscriber_task_for_a_created_contact():
    result = run([rec("zz")], [rec("te:n@x.com")], [])
    assert [(o[1], o[2]) for o in ops(result)] == [("create", "te:n@x.com"), ("task_create", "te:n@x.com")]


# E: the task was created before (and maybe deleted or completed since) -> never created again
def test_created_task_is_never_recreated():
    created = pl.DataFrame([{"key": "c1", "rule": "new_subscriber", "object_id": "T1", "kind": "task"}],
                           schema=CREATED_SCHEMA)
    result = run([rec("c1", in_ghl=True, in_tinyemail=False)], [rec("c1")], [rec("c1")], created=created)
    assert ops(result, "task_create") == []


# E: first run -> no event tasks
def test_first_run_makes_no_tasks():
    assert ops(run([], [rec("c1")], [rec("c1")]), "task_create") == []


# E: a rule switched off -> no task
def test_switched_off_rule():
    policy = Policy(tasks={"new_subscriber": {"enabled": False, "title": "x"}})
    assert ops(run([rec("zz")], [rec("c1")], [rec("c1")], policy), "task_create") == []


# E: a configured TinyEmail tag appears -> its note (or task); already there at the base -> nothing
def test_tag_trigger_note_and_task():
    policy = Policy(tasks={"tag_triggers": [{"tag": "webinar"}, {"tag": "demo", "action": "task", "text": "Call"}]})
    result = run([rec("c1", tags=["webinar"])], [rec("c1", tags=["demo", "webinar"])], [rec("c1", tags=["demo"])],
                 policy)
    assert [(o[1], o[3]) for o in ops(result, "note_create", "task_create")] == [("task_create", "tag:demo")]
    assert json.loads(ops(result, "task_create")[0][5])["title"] == "Call"


# E, by tag key: a trigger fires on its tag in any spelling, named by the trigger's own; a case change since
# the base is not an appearance
def test_tag_trigger_by_key():
    policy = Policy(tasks={"tag_triggers": [{"tag": "Webinar"}]})
    result = run([rec("zz")], [rec("c1", tags=[" WEBINAR "])], [rec("c1")], policy)
    assert [(o[1], o[3]) for o in ops(result, "note_create")] == [("note_create", "tag:Webinar")]
    assert ops(result, "note_create")[0][5].startswith("TinyEmail tag Webinar added on")
    again = run([rec("c1", tags=["webinar"])], [rec("c1", tags=["WEBINAR"])], [rec("c1", tags=["webinar"])], policy)
    assert ops(again, "note_create", "task_create") == []


# --- op ids and order --------------------------------------------------------------------------------

# 7: op id is the hash of the content: the same plan twice (inputs in any row order) -> the same ids
def test_op_ids_are_stable_across_replanning_and_row_order():
    base = [rec(f"c{i}", city="Oslo") for i in range(20)]
    te = [rec(f"c{i}", city="Rome" if i % 3 else "Oslo", tags=["t"] if i % 2 else []) for i in range(20)]
    ghl = [rec(f"c{i}", city="Oslo", consent="dnd" if i % 5 == 0 else "subscribed") for i in range(20)]
    first = run(base, te, ghl)
    random.Random(1).shuffle(te)
    random.Random(2).shuffle(ghl)
    again = run(list(reversed(base)), te, ghl)
    assert first.ops["op_id"].to_list() == again.ops["op_id"].to_list() and first.ops.height > 20
    assert first.ops["op_id"].n_unique() == first.ops.height


# 7: the id covers every content field, and equals the dataclass's
def test_op_id_covers_content():
    op = Op("ghl", "update", "c1", "city", "Oslo", "Rome", "tinyemail_changed")
    assert op.id == op_id(*["ghl", "update", "c1", "city", "Oslo", "Rome", "tinyemail_changed"])
    assert op.id != Op("ghl", "update", "c1", "city", None, "Rome", "tinyemail_changed").id
    assert len(op.id) == 64


# --- F. guards ------------------------------------------------------------------------------------

def many(n, **values):
    return [rec(f"c{i:03}", **values) for i in range(n)]


# F: field updates on more than 20% of people -> held, with the figure and the threshold in the reason
def test_guard_field_updates():
    te = many(30, city="Rome")[:10] + many(30)[10:]
    result = run(many(30), te, many(30))
    assert result.held and result.held_reasons[0] == (
        "field_updates: 10 of 30 people (33.3%); usual unknown (no comparable run yet); "
        "threshold 7 (above 20% of people, at least 5 people)")


# F: consent tightened (inactivations) for more than 5% -> held
def test_guard_inactivations():
    result = run(many(200), many(200), many(15, consent="dnd") + many(200)[15:])
    assert [r.split(":")[0] for r in result.held_reasons] == ["deletes_or_inactivations"]


# F: an ordinary day's few inactivations (2.5%, held by the former 1% share) pass
def test_guard_inactivations_of_an_ordinary_day_pass():
    result = run(many(200), many(200), many(5, consent="dnd") + many(200)[5:])
    assert result.stats["guard_deletes_or_inactivations"] == 5 and not result.held


# F: the location's history reaches the guards: a figure within 3x the usual one passes, a mass change holds
def test_guard_history_lets_a_usual_figure_through():
    usual = GuardHistory({"field_updates": Usual(10.0, 5)})
    te = many(30, city="Rome")[:10] + many(30)[10:]
    assert not run(many(30), te, many(30), guard_history=usual).held
    te = many(40, city="Rome")[:35] + many(40)[35:]
    held = run(many(40), te, many(40), guard_history=usual).held_reasons
    assert held == ("field_updates: 35 of 40 people (87.5%); usual 10 (median of 5 runs); "
                    "threshold 31 (above 20% of people, above 3x usual, at least 5 people)",)


# F: tag removals on more than 10% -> held
def test_guard_tag_removals():
    result = run(many(40, tags=["a"]), many(40, tags=["a"]), many(6) + many(40, tags=["a"])[6:])
    assert [r.split(":")[0] for r in result.held_reasons] == ["tag_removals"]


# F: a side came back empty while the base is not -> held
def test_guard_side_empty():
    result = run(many(3), [], many(3))
    assert any(r.startswith("tinyemail_empty") for r in result.held_reasons)


# F: below min_people a share never trips (a small sandbox is not a mass change)
def test_guard_min_people():
    assert not run(many(4), many(4, city="Rome"), many(4)).held
    assert run(many(5), many(5, city="Rome"), many(5)).held


# --- policy ----------------------------------------------------------------------------------------

# policy: a TOML file overrides one field at a time; unknown fields are refused
def test_policy_file_overrides(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[fields.phone]\nowner = "ghl"\n[guards]\nfield_updates = 0.3\n[tags]\nlist_prefix = "L:"\n')
    policy = load_policy(path)
    assert policy.fields["phone"].owner == "ghl" and policy.fields["phone"].tinyemail == "phone"
    assert policy.fields["city"].tie_break == "ghl" and policy.guards.field_updates == 0.3
    path.write_text('[fields.shoe_size]\nowner = "ghl"\n')
    with pytest.raises(ValueError, match="unknown field"):
        load_policy(path)


# mapping: every field and rule has a row that says how data moves
def test_describe_mapping_rows():
    rows = describe_mapping(Policy(fields={"city": {"enabled": False}}))
    by_field = {r["field"]: r for r in rows}
    assert by_field["company"]["ghl"] == "companyName" and by_field["state"]["tinyemail"] == "province"
    assert by_field["source"]["flow"].startswith("GHL -> TinyEmail")
    assert by_field["first_name"]["first_run"].endswith("conflict table")
    assert by_field["city"]["flow"] == "not synced"
    assert {"email", "tags", "lists", "consent", "new subscriber"} <= set(by_field)
    assert all(set(r) == {"field", "ghl", "tinyemail", "rule", "tie_break", "first_run", "flow"} for r in rows)
