"""A straightforward pure-Python implementation of the merge rules, one dict per record: the benchmark's
baseline and the property tests' second opinion.

It follows the decision tables of `contact_recon/engine/merge.py` branch by branch, person by person, and must give the
same plan (the same op ids in the same order) and the same conflict rows. It shares only the pieces
that define the output format: `Op`/`op_id`, `canonical_json`, `Reason` and the policy; the tag namespaces and
the create payloads are its own copies (`_namespace`, `_create_record`), so a bug in the engine's cannot hide
behind the comparison. Tags
are compared by key (case-folded, trimmed, inner spaces collapsed), with its own `_key`: a set of tags is a
dict key -> the first spelling met, an add is spelled as its source, a removal as its target.

    plan_baseline(base_rows, te_rows, ghl_rows, policy, ghl_tasks=..., created=..., today=...)
        -> (ops: list[Op] in plan order, conflicts: list[dict] sorted by key, field, reason)

Rows are the dicts of `records.MERGE_SIDE` frames (`frame.to_dicts()`); base rows may carry
`in_ghl` / `in_tinyemail`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from contact_recon.engine.merge import (
    BOUNCE_NOTE,
    NEW_SUBSCRIBER,
    UNSUBSCRIBE_NOTE,
    Reason,
)
from contact_recon.model.keys import TE_KEY_PREFIX
from contact_recon.model.ops import KIND_ORDER, Op, canonical_json
from contact_recon.model.policy import Policy
from contact_recon.model.records import MERGE_SIDE

Row = dict[str, Any]
TEXT = [name for name, dtype in MERGE_SIDE.items() if str(dtype) == "String" and name not in ("key", "contact_id")]


def _key(tag: str) -> str:
    """A tag's comparison key: case-folded, trimmed, inner whitespace runs as one space."""
    return " ".join(tag.split()).casefold()


def _namespace(tag: str, policy: Policy) -> str:
    """fact | list | ghl | tinyemail | tag: which part of the merge owns the tag (by its key)."""
    key, t = _key(tag), policy.tasks
    if key in {_key(f) for f in (t.open_task_tag, t.overdue_task_tag) if f}:
        return "fact"
    if key.startswith(_key(policy.tags.list_prefix)):
        return "list"
    for namespace, prefixes in (("ghl", policy.tags.ghl_owned_prefixes),
                                ("tinyemail", policy.tags.tinyemail_owned_prefixes)):
        if any(key.startswith(_key(p)) for p in prefixes):
            return namespace
    return "tag"


def _create_record(row: Row, target: str, policy: Policy, facts: list[str] | None = None) -> str:
    """The payload a create writes on `target` from the other side's row: the email and the active fields that
    are set, the tags (one spelling per key, the first met) but list and fact tags, plus the facts for a new
    TinyEmail customer; GHL's list tags as TinyEmail lists or TinyEmail's lists as GHL list tags; the tight
    consent value of `target` when the source is tight."""
    first: dict[str, str] = {}
    for tag in row["tags"] or []:
        first.setdefault(_key(tag), tag)
    own = {tag: _namespace(tag, policy) for tag in first.values()}
    record: dict[str, Any] = {"email": row["email"]}
    record.update({r.canonical: row[r.canonical] for r in policy.active_fields() if row[r.canonical] is not None})
    record = {k: v for k, v in record.items() if v is not None}
    prefix, c = policy.tags.list_prefix, policy.consent
    tags = [tag for tag, ns in own.items() if ns not in ("list", "fact")]
    lists: list[str] = []
    if target == "ghl":
        if policy.tags.list_sync != "off":
            tags += [prefix + name for name in row["lists"] or []]
        tight = c.ghl_tight_value if row["consent"] in c.tinyemail_tight else None
    else:
        tags += list(facts or [])
        if policy.tags.list_sync != "off":
            lists = [tag[len(prefix):] for tag, ns in own.items() if ns == "list"]
        tight = c.tinyemail_tight_value if row["consent"] in c.ghl_tight else None
    record["tags"] = sorted(set(tags))
    if lists:
        record["lists"] = sorted(set(lists))
    if tight is not None:
        record["consent"] = tight
    return canonical_json(record)


def _norm(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _prep(row: Row, *, base: bool = False) -> Row:
    out = dict(row)
    for name in TEXT:
        out[name] = _norm(row.get(name))
    out["tags"] = list(row.get("tags") or [])
    out["lists"] = list(row.get("lists") or [])
    if base:
        in_ghl = row.get("in_ghl")
        in_te = row.get("in_tinyemail")
        out["in_ghl"] = bool(in_ghl) if "in_ghl" in row else not row["key"].startswith(TE_KEY_PREFIX)
        out["in_tinyemail"] = bool(in_te) if "in_tinyemail" in row else out["email"] is not None
    return out


def _rekey(te: dict[str, Row], base: dict[str, Row]) -> dict[str, Row]:
    if not base:
        return te
    by_email: dict[str, list[str]] = {}
    for key, b in base.items():
        if b["in_tinyemail"] and b["email"] is not None and key not in te:
            by_email.setdefault(b["email"], []).append(key)
    out = {}
    for key, t in te.items():
        keys = by_email.get(t["email"], []) if key.startswith(TE_KEY_PREFIX) else []
        new_key = keys[0] if len(keys) == 1 else key
        out[new_key] = {**t, "key": new_key}
    return out


class Baseline:
    def __init__(self, policy: Policy, first_run: bool, today: dt.date | None, ghl_tasks: list[Row] | None):
        self.p = policy
        self.fields = policy.active_fields()
        self.first_run = first_run
        self.today = today
        t = policy.tasks
        self.fact_tags = {tag for tag in (t.open_task_tag, t.overdue_task_tag) if tag}
        self.active_facts = set() if ghl_tasks is None else {
            tag for tag in (t.open_task_tag, t.overdue_task_tag if today else None) if tag}
        self.ops: list[Op] = []
        self.conflicts: list[Row] = []

    # --- helpers ---
    def op(self, target: str, kind: str, key: str, field: str | None, expected: str | None, new: str | None,
           reason: str) -> None:
        self.ops.append(Op(target, kind, key, field, expected, new, reason))

    def conflict(self, key: str, field: str | None, base: Any, te: Any, ghl: Any, reason: str) -> None:
        self.conflicts.append({"key": key, "field": field, "base": base, "tinyemail": te, "ghl": ghl,
                               "reason": reason})

    def tight_t(self, t: Row | None) -> bool:
        return t is not None and t["consent"] in self.p.consent.tinyemail_tight

    def tight_g(self, g: Row | None) -> bool:
        return g is not None and g["consent"] in self.p.consent.ghl_tight

    def tight_b(self, b: Row | None, valid: bool) -> bool:
        c = self.p.consent
        return valid and b is not None and b["consent"] in (*c.tinyemail_tight, *c.ghl_tight)

    # --- B. fields ---
    def field_reason(self, rule: Any, t: Any, g: Any, b: Any, valid: bool) -> str | None:
        if rule.owner != "shared":
            if t == g:
                return None
            return Reason.OWNED_BY_GHL if rule.owner == "ghl" else Reason.OWNED_BY_TINYEMAIL
        if valid:
            ct, cg = t != b, g != b
            if not ct and not cg:
                return None
            if ct and not cg:
                return Reason.TINYEMAIL_CHANGED
            if cg and not ct:
                return Reason.GHL_CHANGED
            if t == g:
                return None
            return {"ghl": Reason.BOTH_CHANGED_GHL_WINS, "tinyemail": Reason.BOTH_CHANGED_TINYEMAIL_WINS,
                    "manual": Reason.BOTH_CHANGED_MANUAL}[rule.tie_break]
        if t == g:
            return None
        if g is None:
            return Reason.INITIAL_FILL_GHL
        if t is None:
            return Reason.INITIAL_FILL_TINYEMAIL
        side = {"prefer_ghl": "ghl", "prefer_tinyemail": "tinyemail"}.get(self.p.initial.strategy, rule.tie_break)
        return {"ghl": Reason.INITIAL_GHL_PREFERRED, "tinyemail": Reason.INITIAL_TINYEMAIL_PREFERRED,
                "manual": Reason.INITIAL_CONFLICT}[side]

    def fields_of(self, key: str, t: Row, g: Row, b: Row | None, valid: bool) -> None:
        to_ghl = {Reason.TINYEMAIL_CHANGED, Reason.BOTH_CHANGED_TINYEMAIL_WINS, Reason.OWNED_BY_TINYEMAIL,
                  Reason.INITIAL_FILL_GHL, Reason.INITIAL_TINYEMAIL_PREFERRED}
        for rule in self.fields:
            f = rule.canonical
            tv, gv, bv = t[f], g[f], (b[f] if b is not None else None)
            reason = self.field_reason(rule, tv, gv, bv, valid)
            if reason is None:
                continue
            if reason in (Reason.BOTH_CHANGED_MANUAL, Reason.INITIAL_CONFLICT):
                self.conflict(key, f, bv, tv, gv, reason.value)
            elif reason in to_ghl:
                self.op("ghl", "update", key, f, gv, tv, reason.value)
            else:
                self.op("tinyemail", "update", key, f, tv, gv, reason.value)

    # --- D. consent ---
    def consent_of(self, key: str, t: Row, g: Row, b: Row | None, valid: bool) -> None:
        c = self.p.consent
        tt, tg, tb = self.tight_t(t), self.tight_g(g), self.tight_b(b, valid)
        if tt and not tg:
            self.op("ghl", "consent_tighten", key, "consent", g["consent"], c.ghl_tight_value,
                    "tinyemail_" + t["consent"])
        if tg and not tt:
            self.op("tinyemail", "consent_tighten", key, "consent", t["consent"], c.tinyemail_tight_value,
                    Reason.GHL_DND.value)
        if tb and not (tt and tg):
            reason = (Reason.CONSENT_LOOSENED_ON_BOTH if not tt and not tg else
                      Reason.CONSENT_LOOSENED_ON_TINYEMAIL if not tt else Reason.CONSENT_LOOSENED_ON_GHL)
            self.conflict(key, "consent", b["consent"], t["consent"], g["consent"], reason.value)

    # --- C. tags and lists ---
    def tag_set(self, row: Row, drop: tuple[str, ...]) -> dict[str, str]:
        """key -> spelling (the first met) of a row's tags outside `drop`."""
        out: dict[str, str] = {}
        active = {_key(f) for f in self.active_facts}
        for tag in row["tags"]:
            if tag is None:
                continue
            ns = _namespace(tag, self.p)
            if ns in drop or (ns == "fact" and _key(tag) not in active):
                continue
            out.setdefault(_key(tag), tag)
        return out

    def list_set(self, row: Row) -> dict[str, str]:
        tags = [self.p.tags.list_prefix + name for name in row["lists"] if name is not None]
        return {_key(tag): tag for tag in reversed(tags)}

    @staticmethod
    def joined(*parts: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in parts:
            for key, tag in part.items():
                out.setdefault(key, tag)
        return out

    def memberships_of(self, key: str, t: Row, g: Row, b: Row | None, valid: bool, facts: set[str]) -> None:
        lists_on = self.p.tags.list_sync != "off"
        follow_te = self.p.tags.list_sync == "tinyemail_to_ghl"
        g_drop = ("fact",) if lists_on else ("fact", "list")
        T = self.joined(self.tag_set(t, ("list",)), self.list_set(t) if lists_on else {})
        G = self.joined(self.tag_set(g, g_drop), {_key(f): f for f in sorted(facts)})
        B = self.joined(self.tag_set(b, g_drop), self.list_set(b) if lists_on else {}) if (valid and b) else {}
        prefix = self.p.tags.list_prefix
        for tk in T.keys() | G.keys():
            it, ig, ib = tk in T, tk in G, tk in B
            tag = T.get(tk) or G[tk]
            ns = _namespace(tag, self.p)
            if ns in ("ghl", "fact"):
                r = ig
            elif ns == "tinyemail" or (ns == "list" and follow_te):
                r = it
            else:
                r = (it and ig) or ((it or ig) and not ib)
            ghl_change = r != ig and ns not in ("ghl", "fact")
            te_change = r != it and ns != "tinyemail"
            if not ghl_change and not te_change:
                continue
            target = "ghl" if ghl_change else "tinyemail"
            source = "tinyemail" if target == "ghl" else "ghl"
            if ns == "fact":
                reason = Reason.GHL_TASK_FACT.value
            elif ns in ("ghl", "tinyemail") or (ns == "list" and follow_te):
                reason = ("list" if ns == "list" else "tag") + "_owned_by_" + source
            elif not valid:
                reason = ns + "_initial_union"
            else:
                reason = ns + ("_added_on_" if r else "_removed_on_") + source
            is_list = ns == "list" and target == "tinyemail"
            # added: the source's spelling; removed: the target's own
            spelled = (T if target == "ghl" else G)[tk] if r else (G if target == "ghl" else T)[tk]
            value = spelled[len(prefix):] if is_list else spelled
            kind = ("list_" if is_list else "tag_") + ("add" if r else "remove")
            self.op(target, kind, key, "lists" if is_list else "tags", None if r else value, value if r else None,
                    reason)

    # --- A. deletes ---
    def te_sets(self, row: Row) -> set[str]:
        lists_on = self.p.tags.list_sync != "off"
        return set(self.tag_set(row, ("list", "ghl", "fact"))) | set(self.list_set(row) if lists_on else {})

    def te_edited(self, t: Row, b: Row, valid: bool) -> bool:
        if any(t[r.canonical] != b[r.canonical] for r in self.fields):
            return True
        if self.tight_t(t) != self.tight_b(b, valid):
            return True
        return self.te_sets(t) != self.te_sets(b)

    # --- E. events ---
    def due(self, days: int) -> str | None:
        return (self.today + dt.timedelta(days=days)).isoformat() if self.today else None

    def events_of(self, key: str, t: Row, b: Row | None, in_bt: bool, created: set[tuple[str, str]]) -> None:
        tasks = self.p.tasks
        date = self.today.isoformat() if self.today else "an unknown date"
        events = []
        if tasks.new_subscriber.enabled and not in_bt and t["consent"] == "subscribed":
            rule = tasks.new_subscriber
            body = canonical_json({"title": rule.title, "body": rule.body, "due_date": self.due(rule.due_days)})
            events.append((NEW_SUBSCRIBER, "task_create", body, Reason.NEW_TINYEMAIL_SUBSCRIBER.value))
        base_tight = b is not None and b["consent"] in self.p.consent.tinyemail_tight
        if self.tight_t(t) and not (in_bt and base_tight):
            for name, rule, statuses in ((UNSUBSCRIBE_NOTE, tasks.unsubscribe_note, ("unsubscribed", "spam")),
                                         (BOUNCE_NOTE, tasks.bounce_note, ("bounced",))):
                if rule.enabled and t["consent"] in statuses:
                    body = rule.body.replace("{date}", date).replace("{status}", t["consent"])
                    events.append((name, "note_create", body, "tinyemail_" + t["consent"]))
        triggers: dict[str, Any] = {}
        for tr in tasks.tag_triggers:
            if tr.enabled:
                triggers.setdefault(_key(tr.tag), tr)
        then = {_key(x) for x in b["tags"] if x is not None} if (b is not None and b["in_tinyemail"]) else set()
        for tk in sorted({_key(x) for x in t["tags"] if x is not None} & set(triggers) - then):
            tr = triggers[tk]
            text = tr.text or f"TinyEmail tag {tr.tag} added on {date}"
            new = text if tr.action == "note" else canonical_json(
                {"title": text, "body": "", "due_date": self.due(tr.due_days)})
            events.append((f"tag:{tr.tag}", f"{tr.action}_create", new, Reason.TINYEMAIL_TAG_ADDED.value))
        for rule, kind, new, reason in events:
            if (key, rule) not in created:
                self.op("ghl", kind, key, rule, None, new, reason)


def _new_task_facts(bl: Baseline, te: dict[str, Row]) -> None:
    """A task created by the plan is open at once: its fact tag goes to TinyEmail in the same plan."""
    tag = bl.p.tasks.open_task_tag
    if not tag or tag not in bl.active_facts:
        return
    tasked = {op.key for op in bl.ops if op.kind == "task_create"}
    planned = {op.key for op in bl.ops if op.target == "tinyemail" and op.kind == "tag_add" and op.new == tag}
    for key in sorted(tasked - planned):
        if key in te and _key(tag) not in {_key(x) for x in te[key]["tags"] if x is not None}:
            bl.op("tinyemail", "tag_add", key, "tags", None, tag, Reason.GHL_TASK_FACT.value)


def _facts(ghl: dict[str, Row], ghl_tasks: list[Row] | None, bl: Baseline) -> dict[str, set[str]]:
    t = bl.p.tasks
    out: dict[str, set[str]] = {}
    if ghl_tasks is None or not bl.active_facts:
        return out
    key_of: dict[str, list[str]] = {}
    for key, g in ghl.items():
        if g.get("contact_id") is not None:
            key_of.setdefault(g["contact_id"], []).append(key)
    for task in ghl_tasks:
        if task.get("completed"):
            continue
        tags = [t.open_task_tag] if t.open_task_tag in bl.active_facts else []
        due = task.get("due_date")
        if (t.overdue_task_tag in bl.active_facts and bl.today is not None and due is not None
                and due[:10] < bl.today.isoformat()):
            tags.append(t.overdue_task_tag)
        for key in key_of.get(task.get("contact_id"), []):
            out.setdefault(key, set()).update(tags)
    return out


def _case(t: Row | None, g: Row | None, b: Row | None, email_changed: bool, moved: set[str]) -> str:
    bt = b is not None and b["in_tinyemail"]
    bg = b is not None and b["in_ghl"]
    if t and g:
        return "matched"
    if t and bg:
        return "deleted_in_ghl"
    if t and t["email"] is not None and t["email"] in moved:
        return "identity_pending"
    if t:
        return "new_on_tinyemail"
    if g and g["email"] is None and not email_changed:
        return "ghl_without_email"
    if g and email_changed:
        return "identity_pending"
    if g and bt:
        return "tinyemail_missing"
    if g:
        return "new_on_ghl"
    return "gone"


def plan_baseline(base_rows: list[Row], te_rows: list[Row], ghl_rows: list[Row], policy: Policy, *,
                  ghl_tasks: list[Row] | None = None, created: list[Row] | None = None,
                  today: dt.date | None = None) -> tuple[list[Op], list[Row]]:
    base = {r["key"]: _prep(r, base=True) for r in base_rows}
    te = _rekey({r["key"]: _prep(r) for r in te_rows}, base)
    ghl = {r["key"]: _prep(r) for r in ghl_rows}
    bl = Baseline(policy, not base_rows, today, ghl_tasks)
    done = {(c["key"], c["rule"]) for c in created or []}
    facts = _facts(ghl, ghl_tasks, bl)

    def email_changed(key: str) -> bool:
        b, g = base.get(key), ghl.get(key)
        return bool(g and b and b["in_ghl"] and b["in_tinyemail"] and b["email"] is not None
                    and g["email"] != b["email"])

    moved = {base[k]["email"] for k in ghl if email_changed(k)}
    ghl_creates: set[str] = set()
    pending_events = []
    for key in sorted(set(base) | set(te) | set(ghl)):
        t, g, b = te.get(key), ghl.get(key), base.get(key)
        valid = b is not None and b["in_ghl"] and b["in_tinyemail"]
        changed = email_changed(key)
        case = _case(t, g, b, changed, moved)
        if changed:
            bl.op("tinyemail", "identity_review", key, "email", b["email"], g["email"],
                  (Reason.GHL_EMAIL_REMOVED if g["email"] is None else Reason.GHL_EMAIL_CHANGED).value)
        if case == "matched":
            bl.fields_of(key, t, g, b, valid)
            bl.consent_of(key, t, g, b, valid)
            bl.memberships_of(key, t, g, b, valid, facts.get(key, set()))
            pending_events.append(key)
        elif case == "new_on_tinyemail" and policy.create.tinyemail_to_ghl:
            bl.op("ghl", "create", key, None, None, _create_record(t, "ghl", policy), Reason.NEW_ON_TINYEMAIL.value)
            ghl_creates.add(key)
        elif case == "new_on_ghl" and policy.create.ghl_to_tinyemail:
            bl.op("tinyemail", "create", key, None, None,
                  _create_record(g, "tinyemail", policy, sorted(facts.get(key, set()))), Reason.NEW_ON_GHL.value)
        elif case == "deleted_in_ghl":
            edited = bl.te_edited(t, b, valid)
            if edited and policy.delete.edit_beats_delete:
                bl.op("ghl", "create", key, None, None, _create_record(t, "ghl", policy),
                      Reason.EDIT_BEATS_DELETE.value)
                ghl_creates.add(key)
                continue
            if policy.delete.on_ghl_delete == "unsubscribe" and not bl.tight_t(t):
                bl.op("tinyemail", "consent_tighten", key, "consent", t["consent"],
                      policy.consent.tinyemail_tight_value, Reason.DELETED_IN_GHL.value)
            bl.conflict(key, None, b["email"], t["email"], None, case)
        elif case == "tinyemail_missing":
            bl.conflict(key, None, b["email"], None, g["email"], case)
    if not bl.first_run:
        for key in sorted(set(pending_events) | ghl_creates):
            b = base.get(key)
            bl.events_of(key, te[key], b, bool(b and b["in_tinyemail"]), done)
        _new_task_facts(bl, te)
    return _sorted(bl.ops), sorted(bl.conflicts, key=lambda c: (_nf(c["key"]), _nf(c["field"]), _nf(c["reason"])))


def _nf(value: str | None) -> tuple[bool, str]:
    """Nulls first, then by value (the order of polars' sort with nulls_last=False)."""
    return (value is not None, value or "")


def _sorted(ops: list[Op]) -> list[Op]:
    return sorted(ops, key=lambda o: (KIND_ORDER[o.kind], o.target, o.key, _nf(o.field), _nf(o.expected),
                                      _nf(o.new), o.reason))
