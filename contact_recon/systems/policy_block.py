"""The reconciliation policy as a Prefect block (`ReconPolicy`, block type `recon-policy`): a form in the Prefect UI.

A data lead edits the policy under Blocks -> Recon Policy -> <name> -> Edit; `RECON_POLICY_BLOCK=<name>` makes every
run use it (`contact_recon/systems/policy_source.py` resolves it, validates it and versions it). The block holds no
secret: it is plain configuration, readable by anyone who can read the Prefect workspace.

The block is made from `contact_recon.model.policy.Policy` itself, so it follows the policy as it grows:

- every part of `Policy` (tags, consent, create, delete, tasks, guards, initial) is a property of the block with the
  part's own model as its type, so a knob added to a part (say `GuardPolicy`) appears in the form with its default,
  and is validated the same way. `delete` is the property's name (its alias): `Block.delete` is a Prefect method.
- `fields`, a `dict[str, FieldRule]` in `Policy`, becomes `FieldRules`: one property per canonical field, generated
  from the default policy's fields, each a `FieldRule` without `canonical` (the property's name is the field).
  Prefect's UI renders a model with properties as a nested form, but an open object (a dict) only as raw JSON,
  so the field rules are a form of dropdowns (owner, tie-break) and switches (enabled) rather than a JSON box.
  Literals become dropdowns (`enum`), tuples lists.
- `custom_fields`, a `dict[str, CustomFieldRule]` by fieldKey in `Policy` (none by default), has no fixed names
  to make properties of: it becomes a list of `CustomFieldForm` (a `CustomFieldRule` plus its `field_key`), which
  the form renders as rows, as it does `tasks.tag_triggers`.

What the form can save is checked where it is used, not where it is saved: Prefect's server stores a block
document's data without validating it against the block schema, and the UI saves a form that its own checks
flagged. So `policy_from_block_data` validates the stored data into the block (the same part models, extra keys
refused) before a run plans; an invalid edit is refused there with the field path named
(`policy_source.PolicyInvalid`). In Python, the block refuses an invalid value already when it is built or assigned
(`validate_assignment`), so `ReconPolicy.save` never stores one.

`prefect block register -m contact_recon.systems.policy_block` registers the block type; `recon policy push` does too,
and saves a policy (a file's, or the defaults) into a named block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, create_model

from contact_recon.model.policy import (
    ConsentPolicy,
    CreatePolicy,
    CustomFieldRule,
    DeletePolicy,
    FieldRule,
    GuardPolicy,
    InitialPolicy,
    Policy,
    TagPolicy,
    TaskPolicy,
)

BLOCK_TYPE_SLUG = "recon-policy"
_FORM = ConfigDict(frozen=True, extra="forbid")

# One field's rule in the form: FieldRule's own fields (and defaults, validation) but `canonical`, the property name.
_RULE_PARTS: dict[str, Any] = {name: (info.annotation, info) for name, info in FieldRule.model_fields.items()
                               if name != "canonical"}
FieldRuleForm = create_model("FieldRuleForm", __config__=_FORM, __doc__=FieldRule.__doc__, **_RULE_PARTS)

# Every canonical field of the default policy, each with its default rule.
_FIELD_PARTS: dict[str, Any] = {name: (FieldRuleForm, FieldRuleForm(**rule.model_dump(exclude={"canonical"})))
                                for name, rule in Policy().fields.items()}
FieldRules = create_model(
    "FieldRules", __config__=_FORM,
    __doc__="Who decides each text field, its name in GHL and in TinyEmail, and whether it is synced at all.",
    **_FIELD_PARTS)


# One custom field in the form: its fieldKey as a property (a list of forms renders; an open object would not).
_CUSTOM_PARTS: dict[str, Any] = {
    "field_key": (str, Field(description="the GHL custom field's fieldKey, e.g. contact.plan")),
    **{name: (info.annotation, info) for name, info in CustomFieldRule.model_fields.items()}}
CustomFieldForm = create_model("CustomFieldForm", __config__=_FORM, __doc__=CustomFieldRule.__doc__, **_CUSTOM_PARTS)


class ReconPolicy(Block):
    """The contact-recon reconciliation policy: field owners and tie-breaks, tags and lists, consent, creates,
    deletes, tasks and notes, guards, and the first run. Every part defaults to the shipped policy."""

    _block_type_name = "Recon Policy"
    _block_type_slug = BLOCK_TYPE_SLUG
    _description = ("The contact-recon reconciliation policy (field owners and tie-breaks, tags and lists, consent, "
                    "creates, deletes, rules, guards). Runs use the block named by RECON_POLICY_BLOCK; an invalid "
                    "edit is refused by the next run with the field named. Holds no secret.")

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    fields: FieldRules = Field(default=FieldRules(), description=FieldRules.__doc__)  # type: ignore[valid-type]
    tags: TagPolicy = Field(default=TagPolicy(), description=TagPolicy.__doc__)
    consent: ConsentPolicy = Field(default=ConsentPolicy(), description=ConsentPolicy.__doc__)
    create: CreatePolicy = Field(default=CreatePolicy(),
                                 description="Whether a person new on one side is created on the other.")
    delete_: DeletePolicy = Field(default=DeletePolicy(), alias="delete",
                                  description="What a contact deleted in GHL does to its TinyEmail customer.")
    tasks: TaskPolicy = Field(default=TaskPolicy(), description="GHL tasks and notes made from TinyEmail events, "
                              "and GHL task facts sent to TinyEmail as tags.")
    guards: GuardPolicy = Field(default=GuardPolicy(), description=GuardPolicy.__doc__)
    initial: InitialPolicy = Field(default=InitialPolicy(), description=(InitialPolicy.__doc__ or "").split("\n")[0])
    custom_fields: tuple[CustomFieldForm, ...] = Field(  # type: ignore[valid-type]
        default=(), description="GHL custom fields, each by its field_key (e.g. contact.plan) to a TinyEmail field "
        "(te_field) or a tag pattern (tag_pattern, e.g. plan:{value}), with owner and tie_break.")

    @classmethod
    def from_policy(cls, policy: Policy) -> ReconPolicy:
        """The block holding `policy` (ready to `save`)."""
        data = policy.model_dump(mode="json")
        data["fields"] = {name: {k: v for k, v in rule.items() if k != "canonical"}
                          for name, rule in data["fields"].items()}
        data["custom_fields"] = [{"field_key": key, **rule} for key, rule in data["custom_fields"].items()]
        return cls.model_validate(data)

    def to_policy(self) -> Policy:
        """The policy this block holds (each field rule laid over its default, as a policy file's would be)."""
        data = self.model_dump(mode="json", by_alias=True, exclude={"block_type_slug"})
        data["custom_fields"] = {item.pop("field_key"): item for item in data["custom_fields"]}
        return Policy.model_validate(data)


def policy_from_block_data(data: Mapping[str, Any]) -> Policy:
    """Validate a stored block document's data (whatever the UI or the API saved) into a `Policy`.

    A part or a field rule given in part takes the rest from its default, as in a policy file. Raises pydantic's
    ValidationError, whose locations are the form's paths (`guards.field_updates`, `fields.phone.owner`,
    `delete.on_ghl_delete`; an unknown key, e.g. `fields.nickname`, is refused).
    """
    given = {key: value for key, value in data.items() if key != "block_type_slug"}  # Prefect's own marker
    if isinstance(given.get("fields"), Mapping):  # a rule given in part is laid over its field's default
        defaults = FieldRules().model_dump(mode="json")
        given["fields"] = {name: {**defaults[name], **rule} if name in defaults and isinstance(rule, Mapping)
                           else rule for name, rule in given["fields"].items()}
    return ReconPolicy.model_validate(given).to_policy()


def read_block_data(name: str) -> dict[str, Any]:
    """The stored data of the `recon-policy` block named `name`, as saved (not validated: the caller does).

    Raises prefect.exceptions.ObjectNotFound when there is no such block (or the block type was never registered).
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(name=name, block_type_slug=BLOCK_TYPE_SLUG)
    return dict(document.data)


def register() -> None:
    """Register the block type and its schema on the current Prefect server (idempotent)."""
    ReconPolicy.register_type_and_schema(_sync=True)  # type: ignore[call-arg]


def save_policy(name: str, policy: Policy, *, overwrite: bool) -> None:
    """Save `policy` into the block `name` (registering the block type first). Raises ValueError when the block
    exists and `overwrite` is False (Prefect's own refusal)."""
    ReconPolicy.from_policy(policy).save(name, overwrite=overwrite, _sync=True)  # type: ignore[call-arg]
