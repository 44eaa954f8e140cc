"""The reconciliation policy: how each field moves between GHL and TinyEmail, and when a run is held.

One typed object (pydantic, every part defaulted) that the merge engine (`contact_recon/engine/merge.py`) reads and
never changes. The default policy is what a first deployment runs with; a TOML or JSON file overrides
any part of it, field rules one field at a time:

    [fields.phone]
    owner = "ghl"              # ghl | tinyemail | shared
    [fields.first_name]
    tie_break = "tinyemail"    # ghl | tinyemail | manual (only for shared fields)
    [tags]
    ghl_owned_prefixes = ["ghl:", "pipeline:"]
    list_prefix = "list:"
    [guards]
    field_updates = 0.3
    [custom_fields."contact.plan"]    # a GHL custom field, by its fieldKey
    tag_pattern = "plan:{value}"      # ... to a TinyEmail tag (`gold` <-> `plan:gold`), or:
    [custom_fields."contact.score"]
    te_field = "currency"             # ... to a TinyEmail customer field (model/custom_fields.py TE_FIELDS)
    owner = "shared"                  # and owner / tie_break exactly as a standard field takes them
    tie_break = "ghl"

A custom field names exactly one TinyEmail target: `te_field` (a customer field no standard field maps:
TinyEmail has no custom-field object) or `tag_pattern` (one `{value}`, with fixed text around it). Unknown
keys, both targets or neither, and a pattern without `{value}` are refused (`PolicyError`). The fieldKey is
resolved to each location's field id at read and write time (`GET /locations/{locationId}/customFields`); a
location that does not define it gets none of that field's writes (the ops are held, with a warning). Several
tags of one pattern on one customer are a conflict (`custom_tags_ambiguous`): the field is not synced for that
person until a person leaves one tag (`model/custom_fields.py`).

`describe_mapping(policy)` turns the active policy into the rows that `recon mapping` and the run
report print, so the team can see how data moves.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from contact_recon.model.custom_fields import TE_FIELDS, check_pattern, column
from contact_recon.model.ops import Kind
from contact_recon.model.records import GHL_FIELD_NAMES, SHARED_TEXT_FIELDS, TINYEMAIL_FIELD_NAMES

Owner = Literal["ghl", "tinyemail", "shared"]
TieBreak = Literal["ghl", "tinyemail", "manual"]
SIDE_LABEL = {"ghl": "GHL", "tinyemail": "TinyEmail"}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldRule(_Model):
    """One canonical text field: its names in both systems and who decides its value."""

    canonical: str
    ghl: str
    tinyemail: str
    owner: Owner = "shared"
    tie_break: TieBreak = "ghl"
    enabled: bool = True


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the part (a pydantic error wraps it when loaded)."""


class CustomFieldRule(_Model):
    """One GHL custom field (by `fieldKey`, the table's name) and its TinyEmail target: `te_field` or
    `tag_pattern`, exactly one; `owner` and `tie_break` as a standard field's."""

    te_field: str | None = None
    tag_pattern: str | None = None
    owner: Owner = "shared"
    tie_break: TieBreak = "ghl"
    enabled: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> CustomFieldRule:
        if (self.te_field is None) == (self.tag_pattern is None):
            raise PolicyError("a custom field needs exactly one of te_field and tag_pattern")
        if self.te_field is not None and self.te_field not in TE_FIELDS:
            raise PolicyError(f"te_field {self.te_field!r} is not a free TinyEmail customer field; "
                              f"known: {', '.join(TE_FIELDS)}")
        if self.tag_pattern is not None:
            try:
                check_pattern(self.tag_pattern)
            except ValueError as exc:
                raise PolicyError(str(exc)) from None
        return self

    def target(self) -> str:
        """TinyEmail's side of the mapping, as `recon mapping` shows it."""
        return self.te_field if self.te_field else f"tags {self.tag_pattern}"


def _default_fields() -> dict[str, FieldRule]:
    # `email` is the identity (the join key), never merged as a field; `source` is attribution, which the
    # CRM keeps; names and phone are what people correct by hand, so a real disagreement goes to the data team.
    special: dict[str, dict[str, Any]] = {
        "source": {"owner": "ghl"},
        "first_name": {"tie_break": "manual"},
        "last_name": {"tie_break": "manual"},
        "phone": {"tie_break": "manual"},
    }
    return {
        name: FieldRule(canonical=name, ghl=GHL_FIELD_NAMES[name], tinyemail=TINYEMAIL_FIELD_NAMES[name],
                        **special.get(name, {}))
        for name in SHARED_TEXT_FIELDS if name != "email"
    }


class TagPolicy(_Model):
    """Tags are sets. A tag's namespace (its prefix) decides who may change it."""

    ghl_owned_prefixes: tuple[str, ...] = ("ghl:",)
    tinyemail_owned_prefixes: tuple[str, ...] = ("te:",)
    list_prefix: str = "list:"
    # both: a TinyEmail list membership and the GHL tag `<list_prefix><list>` merge three ways like tags;
    # tinyemail_to_ghl: TinyEmail's lists are the truth and GHL's list tags only mirror them; off: not synced.
    list_sync: Literal["both", "tinyemail_to_ghl", "off"] = "both"


class ConsentPolicy(_Model):
    """Consent only tightens. These are the canonical consent values that count as "do not email"."""

    tinyemail_tight: tuple[str, ...] = ("unsubscribed", "bounced", "spam")
    ghl_tight: tuple[str, ...] = ("dnd",)
    ghl_tight_value: str = "dnd"
    tinyemail_tight_value: str = "unsubscribed"


class CreatePolicy(_Model):
    tinyemail_to_ghl: bool = True  # a new TinyEmail customer becomes a GHL contact
    ghl_to_tinyemail: bool = True  # a new GHL contact with an email becomes a TinyEmail customer
    # TinyEmail customers can only be listed through lists, so every customer we create joins this list (made
    # when missing); its membership is ours, never synced as a GHL list tag
    tinyemail_list: str = "contact-recon"


class DeletePolicy(_Model):
    # report: the deletion is listed for the data team and nothing is written;
    # unsubscribe: the TinyEmail customer (which cannot be deleted) is set Unsubscribed (an inactivation).
    on_ghl_delete: Literal["report", "unsubscribe"] = "report"
    edit_beats_delete: bool = True  # edited in TinyEmail since the base -> the GHL contact is created again


class TaskRule(_Model):
    enabled: bool = True
    title: str
    body: str = ""
    due_days: int = 2


class NoteRule(_Model):
    enabled: bool = True
    body: str  # `{status}` and `{date}` are filled in


class TagTrigger(_Model):
    """A TinyEmail tag that, when it appears on a customer, makes a GHL note or task; `tag` is compared by tag key
    (model/tags.py: `VIP` fires on `vip` too, and a change of case alone is no appearance)."""

    tag: str
    action: Literal["note", "task"] = "note"
    text: str = ""  # the note body or the task title; default: "TinyEmail tag <tag> added on <date>"
    due_days: int = 2
    enabled: bool = True


class TaskPolicy(_Model):
    new_subscriber: TaskRule = TaskRule(title="Follow up: new TinyEmail subscriber", due_days=2)
    unsubscribe_note: NoteRule = NoteRule(body="TinyEmail: {status} on {date}; email DND is on.")
    bounce_note: NoteRule = NoteRule(body="TinyEmail: email bounced on {date}; email DND is on.")
    tag_triggers: tuple[TagTrigger, ...] = ()
    # GHL facts sent to TinyEmail as tags (None: not sent). Overdue needs the plan's `today`.
    open_task_tag: str | None = "ghl:open-task"
    overdue_task_tag: str | None = "ghl:overdue-task"


class GuardPolicy(_Model):
    """When a plan changes far more people than usual, the run is held until approved.

    Each share guard counts tonight's figure: the people with at least one op of its kinds (`GUARD_KINDS`), of
    all the people in play. It trips only when the figure is at least `min_people`, above its share of the
    people in play, and, once the location has `history_min_runs` comparable runs, above `median_multiple` times
    their median figure (the usual figure, over the last `history_runs` of them). A comparable run is a
    completed reconcile run of the same locations that was not a first fill (`Store.comparable_stats`). The
    decision is `contact_recon/engine/guards.py`'s; the guard expectation of checks/suites.py uses its thresholds.
    """

    # the shares, of the people in play: consent tightened (unsubscribe, DND), a field updated, a tag or list removed
    deletes_or_inactivations: float = Field(default=0.05, ge=0)
    field_updates: float = Field(default=0.20, ge=0)
    tag_removals: float = Field(default=0.10, ge=0)
    side_empty: bool = True  # a side that came back empty while the base has people on it holds the run
    # below this many people a share never trips (a 20-contact sandbox is not a mass change); `min_ops`, its
    # earlier name, is still read from policy files
    min_people: int = Field(default=5, ge=0, validation_alias=AliasChoices("min_people", "min_ops"))
    median_multiple: float = Field(default=3.0, ge=0)  # the figure must also exceed this many times the usual one
    history_runs: int = Field(default=14, ge=0)  # the usual figure is the median over this many recent runs
    history_min_runs: int = Field(default=3, ge=1)  # with fewer comparable runs the usual figure is not used


# The op kinds each share guard counts (people with at least one such op): the merge's stats and the guard
# expectation (checks/suites.py) count them alike.
GUARD_KINDS: dict[str, list[str]] = {
    "deletes_or_inactivations": [Kind.CONSENT_TIGHTEN.value],
    "field_updates": [Kind.UPDATE.value],
    "tag_removals": [Kind.TAG_REMOVE.value, Kind.LIST_REMOVE.value],
}


class InitialPolicy(_Model):
    """What a shared field does without a base (first run, or a person newly seen on a side).

    fill_blanks: a blank side takes the other side's value; two different non-blank values follow the
    field's tie-break (manual: the conflict table). prefer_ghl / prefer_tinyemail: blanks are filled the
    same way, and the preferred side wins every disagreement. Owned fields always follow their owner.
    """

    strategy: Literal["fill_blanks", "prefer_ghl", "prefer_tinyemail"] = "fill_blanks"


class Policy(_Model):
    fields: dict[str, FieldRule] = Field(default_factory=_default_fields)
    tags: TagPolicy = TagPolicy()
    consent: ConsentPolicy = ConsentPolicy()
    create: CreatePolicy = CreatePolicy()
    delete: DeletePolicy = DeletePolicy()
    tasks: TaskPolicy = TaskPolicy()
    guards: GuardPolicy = GuardPolicy()
    initial: InitialPolicy = InitialPolicy()
    # GHL custom fields by fieldKey (module docstring); none by default
    custom_fields: dict[str, CustomFieldRule] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _custom_targets_free(self) -> Policy:
        """Two custom fields never share a TinyEmail field or a tag pattern; a fieldKey is a GHL name."""
        seen: dict[str, str] = {}
        for name, rule in self.custom_fields.items():
            if not name.strip() or name != name.strip():
                raise PolicyError(f"custom field {name!r}: a fieldKey such as 'contact.plan' is needed")
            target = rule.target().casefold()
            if target in seen:
                raise PolicyError(f"custom fields {seen[target]!r} and {name!r} both map to {rule.target()}")
            seen[target] = name
        return self

    @model_validator(mode="before")
    @classmethod
    def _merge_field_overrides(cls, data: Any) -> Any:
        """`fields` in a file is a partial override per field, laid over the defaults."""
        if not isinstance(data, dict) or "fields" not in data:
            return data
        merged = {name: rule.model_dump() for name, rule in _default_fields().items()}
        for name, override in (data["fields"] or {}).items():
            if isinstance(override, FieldRule):
                override = override.model_dump()
            if name not in merged:
                raise ValueError(f"unknown field {name!r}; known: {', '.join(merged)}")
            merged[name] = {**merged[name], **override, "canonical": name}
        return {**data, "fields": merged}

    def active_fields(self) -> tuple[FieldRule, ...]:
        return tuple(rule for rule in self.fields.values() if rule.enabled)

    def active_custom(self) -> dict[str, CustomFieldRule]:
        """The enabled custom fields, by fieldKey."""
        return {name: rule for name, rule in self.custom_fields.items() if rule.enabled}

    def custom_as_fields(self) -> tuple[FieldRule, ...]:
        """The enabled custom fields as the merge's text field rules: `custom:<fieldKey>` on both sides."""
        return tuple(FieldRule(canonical=column(name), ghl=name, tinyemail=rule.target(), owner=rule.owner,
                               tie_break=rule.tie_break) for name, rule in self.active_custom().items())


def load_policy(path: str | Path | None = None) -> Policy:
    """The default policy, overridden by a `.toml` or `.json` file when one is given.

    The one file read in the model and engine layers: the operator's config, loaded by the stages and the CLI
    and handed to the pure engine as a `Policy`.
    """
    if path is None:
        return Policy()
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    return Policy.model_validate(data)


def _field_flow(rule: FieldRule) -> str:
    if rule.owner != "shared":
        other = "tinyemail" if rule.owner == "ghl" else "ghl"
        return f"{SIDE_LABEL[rule.owner]} -> {SIDE_LABEL[other]} (owner always wins)"
    tie = "conflict table" if rule.tie_break == "manual" else f"{SIDE_LABEL[rule.tie_break]} wins"
    return f"both ways; changed on both: {tie}"


def _first_run(rule: FieldRule, policy: Policy) -> str:
    if rule.owner != "shared":
        return f"{SIDE_LABEL[rule.owner]} value"
    if policy.initial.strategy == "fill_blanks":
        tie = "conflict table" if rule.tie_break == "manual" else f"{SIDE_LABEL[rule.tie_break]} wins"
        return f"fill blanks; differing -> {tie}"
    side = "ghl" if policy.initial.strategy == "prefer_ghl" else "tinyemail"
    return f"fill blanks; differing -> {SIDE_LABEL[side]} wins"


def describe_mapping(policy: Policy) -> list[dict[str, str]]:
    """The active field map and rules, one row per field or rule: the table of `recon mapping`.

    Each row has the keys `field, ghl, tinyemail, rule, tie_break, first_run, flow` (all strings).
    """
    rows = [{"field": "email", "ghl": "email", "tinyemail": "email", "rule": "identity", "tie_break": "-",
             "first_run": "join key", "flow": "a changed GHL email is an identity operation (reported)"}]
    for rule in policy.fields.values():
        rows.append({"field": rule.canonical, "ghl": rule.ghl, "tinyemail": rule.tinyemail,
                     "rule": rule.owner if rule.enabled else "disabled",
                     "tie_break": rule.tie_break if rule.owner == "shared" else "-",
                     "first_run": _first_run(rule, policy) if rule.enabled else "-",
                     "flow": _field_flow(rule) if rule.enabled else "not synced"})
    rows.extend(_custom_rows(policy))
    rows.extend(_set_rows(policy))
    rows.extend(_task_rows(policy))
    return rows


def _custom_rows(policy: Policy) -> list[dict[str, str]]:
    """One row per custom field: its fieldKey, its TinyEmail target, owner and tie-break."""
    rows = []
    for name, custom in policy.custom_fields.items():
        rule = FieldRule(canonical=column(name), ghl=name, tinyemail=custom.target(), owner=custom.owner,
                         tie_break=custom.tie_break, enabled=custom.enabled)
        rows.append({"field": rule.canonical, "ghl": f"customFields {name}", "tinyemail": rule.tinyemail,
                     "rule": rule.owner if rule.enabled else "disabled",
                     "tie_break": rule.tie_break if rule.owner == "shared" else "-",
                     "first_run": _first_run(rule, policy) if rule.enabled else "-",
                     "flow": _field_flow(rule) if rule.enabled else "not synced"})
    return rows


def _set_rows(policy: Policy) -> list[dict[str, str]]:
    tags, consent = policy.tags, policy.consent
    owned = ", ".join(tags.ghl_owned_prefixes) or "-"
    te_owned = ", ".join(tags.tinyemail_owned_prefixes) or "-"
    list_flow = {"both": "both ways, as sets", "tinyemail_to_ghl": "TinyEmail -> GHL", "off": "not synced"}
    return [
        {"field": "tags", "ghl": "tags", "tinyemail": "tags", "rule": "set", "tie_break": "-",
         "first_run": "union", "flow": "added on either side -> added on the other; removed -> removed"},
        {"field": f"tags {owned}", "ghl": "tags", "tinyemail": "tags", "rule": "ghl", "tie_break": "-",
         "first_run": "GHL set", "flow": "GHL -> TinyEmail"},
        {"field": f"tags {te_owned}", "ghl": "tags", "tinyemail": "tags", "rule": "tinyemail", "tie_break": "-",
         "first_run": "TinyEmail set", "flow": "TinyEmail -> GHL"},
        {"field": "lists", "ghl": f"tags {tags.list_prefix}<list>", "tinyemail": "list membership",
         "rule": "set" if tags.list_sync == "both" else tags.list_sync, "tie_break": "-", "first_run": "union",
         "flow": list_flow[tags.list_sync]},
        {"field": "consent", "ghl": "dndSettings.Email", "tinyemail": "status", "rule": "tighten only",
         "tie_break": "-", "first_run": "tighten only",
         "flow": f"TinyEmail {'/'.join(consent.tinyemail_tight)} -> GHL DND on; GHL DND -> TinyEmail "
                 f"{consent.tinyemail_tight_value}; never loosened (reported)"},
    ]


def _task_rows(policy: Policy) -> list[dict[str, str]]:
    t = policy.tasks
    rows = [
        ("new subscriber", t.new_subscriber.enabled, "GHL task", "new TinyEmail subscriber -> follow-up task"),
        ("unsubscribe", t.unsubscribe_note.enabled, "GHL note", "TinyEmail unsubscribe/spam -> note with date"),
        ("bounce", t.bounce_note.enabled, "GHL note", "TinyEmail bounce -> note with date"),
    ]
    rows += [(f"tag {tr.tag}", tr.enabled, f"GHL {tr.action}", f"TinyEmail tag {tr.tag} added -> {tr.action}")
             for tr in t.tag_triggers]
    for label, tag in (("open task", t.open_task_tag), ("overdue task", t.overdue_task_tag)):
        rows.append((label, tag is not None, f"TinyEmail tag {tag}", f"GHL {label} -> TinyEmail tag"))
    return [{"field": label, "ghl": "tasks/notes" if target.startswith("GHL") else "tasks",
             "tinyemail": target if not target.startswith("GHL") else "-",
             "rule": "on" if on else "off", "tie_break": "-", "first_run": "no events", "flow": flow}
            for label, on, target, flow in rows]
