"""Where a run's policy comes from (contact_recon/systems/policy_source.py) and the policy as a Prefect block
(contact_recon/systems/policy_block.py), without a Prefect server: the block's stored data is handed in by a fake
`read_block_data` (the real one is exercised against the session's server in tests/e2e/test_policy_block.py).

Laws: the version is the policy's, not its source's; the block holds every part of `Policy` and renders as a form
(no open object, every Literal a choice); an invalid value is refused with its field path named, by the run
(block data, files) and by the block itself when it is built or assigned.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

from contact_recon.model.policy import CustomFieldRule, FieldRule, Policy, load_policy
from contact_recon.settings import Settings
from contact_recon.systems import policy_block
from contact_recon.systems.policy_block import (
    CustomFieldForm,
    FieldRuleForm,
    FieldRules,
    ReconPolicy,
    policy_from_block_data,
)
from contact_recon.systems.policy_source import (
    DEFAULTS,
    GIVEN,
    LoadedPolicy,
    PolicyInvalid,
    PolicyMissing,
    policy_version,
    resolve_policy,
)

CHANGED = Policy(fields={"phone": {"owner": "ghl"}, "city": {"enabled": False}},
                 guards={"field_updates": 0.5}, tags={"list_prefix": "L:"},
                 tasks={"tag_triggers": [{"tag": "vip", "action": "task", "text": "Call the VIP"}]})


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


@pytest.fixture
def blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, Any]]]:
    """Stored block documents by name, read by the resolver instead of a Prefect server."""
    stored: dict[str, dict[str, Any]] = {}

    def read(name: str) -> dict[str, Any]:
        if name not in stored:
            raise ObjectNotFound(http_exc=RuntimeError("404"))
        return stored[name]

    monkeypatch.setattr(policy_block, "read_block_data", read)
    yield stored


def stored_data(policy: Policy) -> dict[str, Any]:
    """What `ReconPolicy.save` stores for `policy` (the block document's data)."""
    return ReconPolicy.from_policy(policy).model_dump(mode="json", by_alias=True, exclude={"block_type_slug"})


# ------------------------------------------------------------------------------------------- versions


def test_the_version_is_the_policys_whatever_its_source(tmp_path: Path, blocks: dict[str, Any]) -> None:
    default = policy_version(Policy())
    assert re.fullmatch(r"[0-9a-f]{12}", default)
    # the defaults written out in a file (in another order), and as a block: the same policy, the same version
    restated = tmp_path / "same.toml"
    restated.write_text('[guards]\nmin_ops = 5\nfield_updates = 0.20\n[fields.source]\nowner = "ghl"\n')
    blocks["nightly"] = stored_data(Policy())
    versions = {resolve_policy(settings(tmp_path)).version,
                resolve_policy(settings(tmp_path, policy_file=restated)).version,
                resolve_policy(settings(tmp_path, policy_block="nightly")).version,
                resolve_policy(settings(tmp_path), Policy()).version}
    assert versions == {default}
    # any change is a new version, and the same change from a file or a block is the same version again
    changed = tmp_path / "changed.toml"
    changed.write_text('[fields.phone]\nowner = "ghl"\n[fields.city]\nenabled = false\n[guards]\nfield_updates = 0.5\n'
                       '[tags]\nlist_prefix = "L:"\n[[tasks.tag_triggers]]\ntag = "vip"\naction = "task"\n'
                       'text = "Call the VIP"\n')
    blocks["edited"] = stored_data(CHANGED)
    from_file = resolve_policy(settings(tmp_path, policy_file=changed))
    from_block = resolve_policy(settings(tmp_path, policy_block="edited"))
    assert from_file.policy == from_block.policy == CHANGED
    assert from_file.version == from_block.version == policy_version(CHANGED) != default
    assert policy_version(Policy(guards={"field_updates": 0.2000001})) != default


def test_the_block_wins_over_the_file_and_the_file_over_the_defaults(tmp_path: Path,
                                                                     blocks: dict[str, Any]) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[fields.phone]\nowner = "tinyemail"\n')
    blocks["nightly"] = stored_data(CHANGED)
    both = resolve_policy(settings(tmp_path, policy_file=path, policy_block="nightly"))
    assert both.source == "block recon-policy/nightly" and both.policy == CHANGED
    # a block reference with the type's slug names the same block
    assert resolve_policy(settings(tmp_path, policy_block="recon-policy/nightly")) == both
    file_only = resolve_policy(settings(tmp_path, policy_file=path))
    assert file_only.source == f"file {path}" and file_only.policy.fields["phone"].owner == "tinyemail"
    assert resolve_policy(settings(tmp_path)) == LoadedPolicy(Policy(), DEFAULTS)
    # a caller's policy is used as given, a resolved one as it is
    assert resolve_policy(settings(tmp_path, policy_block="nightly"), Policy()).source == GIVEN
    assert resolve_policy(settings(tmp_path), file_only) is file_only


# ------------------------------------------------------------------------------------ refusals, named


def test_an_invalid_block_is_refused_with_every_field_named(tmp_path: Path, blocks: dict[str, Any]) -> None:
    data = stored_data(Policy())
    data["guards"]["field_updates"] = "lots"
    data["fields"]["phone"]["owner"] = "nobody"
    data["delete"]["on_ghl_delete"] = "erase"
    data["gaurds"] = {}
    blocks["nightly"] = data
    with pytest.raises(PolicyInvalid) as refused:
        resolve_policy(settings(tmp_path, policy_block="nightly"))
    message = str(refused.value)
    assert message.startswith("policy block recon-policy/nightly is invalid, refused: ")
    assert "guards.field_updates: Input should be a valid number" in message
    assert "fields.phone.owner: Input should be 'ghl', 'tinyemail' or 'shared'" in message
    assert "delete.on_ghl_delete: Input should be 'report' or 'unsubscribe'" in message
    assert "gaurds: Extra inputs are not permitted" in message
    assert "lots" not in message and "nobody" not in message and "\n" not in message  # one line, no inputs
    # a field the policy does not know is named too
    blocks["nightly"] = {"fields": {"nickname": {"owner": "ghl"}}}
    with pytest.raises(PolicyInvalid, match=r"fields\.nickname: Extra inputs are not permitted"):
        resolve_policy(settings(tmp_path, policy_block="nightly"))


def test_a_missing_block_is_named_and_never_replaced_by_the_file(tmp_path: Path, blocks: dict[str, Any]) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("")
    with pytest.raises(PolicyMissing, match=r"policy block recon-policy/nightly not found .*recon policy push "
                                            r"--name nightly"):
        resolve_policy(settings(tmp_path, policy_block="nightly", policy_file=path))


def test_an_invalid_file_is_refused_with_the_file_and_the_field_named(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[guards]\nfield_updates = "lots"\n[fields.phone]\ntie_break = "coin"\n')
    with pytest.raises(PolicyInvalid) as refused:
        resolve_policy(settings(tmp_path, policy_file=path))
    message = str(refused.value)
    assert message.startswith(f"policy file {path} is invalid: ")
    assert "guards.field_updates: Input should be a valid number" in message
    assert "fields.phone.tie_break: Input should be 'ghl', 'tinyemail' or 'manual'" in message


def test_a_rule_given_in_part_takes_the_rest_from_its_fields_default(tmp_path: Path) -> None:
    """As in a file: block data that names only `owner` keeps phone's own tie-break and names."""
    policy = policy_from_block_data({"fields": {"phone": {"owner": "ghl"}}, "guards": {"field_updates": 0.5}})
    path = tmp_path / "policy.toml"
    path.write_text('[fields.phone]\nowner = "ghl"\n[guards]\nfield_updates = 0.5\n')
    assert policy == load_policy(path)
    assert policy.fields["phone"] == FieldRule(canonical="phone", ghl="phone", tinyemail="phone", owner="ghl",
                                               tie_break="manual")


def test_the_block_refuses_an_invalid_value_when_built_or_assigned() -> None:
    with pytest.raises(ValidationError) as built:
        ReconPolicy(guards={"field_updates": "lots"})  # type: ignore[arg-type]
    assert [e["loc"] for e in built.value.errors()] == [("guards", "field_updates")]
    block = ReconPolicy.from_policy(Policy())
    with pytest.raises(ValidationError) as assigned:
        block.guards = {"field_updates": "lots"}  # type: ignore[assignment]
    assert [e["loc"] for e in assigned.value.errors()] == [("guards", "field_updates")]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ReconPolicy(gaurds={})  # type: ignore[call-arg]
    assert block.to_policy() == Policy()  # nothing of the refused values was kept


# ------------------------------------------------------------------------------------------ the block


def test_the_block_is_made_of_the_policys_own_parts() -> None:
    """Every part of Policy is a property of the block (by its data key) with the part's own model, so a knob added
    to a part reaches the form; a part added to Policy and not to the block fails here."""
    keys = {info.alias or name: info for name, info in ReconPolicy.model_fields.items()}
    assert set(keys) == set(Policy.model_fields)
    for name, info in Policy.model_fields.items():
        if name not in ("fields", "custom_fields"):
            assert keys[name].annotation is info.annotation, name
    # custom fields by fieldKey: a list of the rule's own fields plus `field_key`, both ways
    assert set(CustomFieldForm.model_fields) == {"field_key", *CustomFieldRule.model_fields}
    custom = Policy.model_validate({"custom_fields": {"contact.plan": {"tag_pattern": "plan:{value}",
                                                                      "owner": "tinyemail"}}})
    assert ReconPolicy.from_policy(custom).to_policy() == custom
    assert set(FieldRules.model_fields) == set(Policy().fields)
    assert set(FieldRuleForm.model_fields) == set(FieldRule.model_fields) - {"canonical"}
    assert ReconPolicy.from_policy(CHANGED).to_policy() == CHANGED
    assert ReconPolicy().to_policy() == Policy()
    assert ReconPolicy.get_block_type_slug() == "recon-policy"


def _walk(schema: dict[str, Any], node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    if "$ref" in node:
        node = {**schema["definitions"][node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(schema, sub, f"{path}.{name}" if path else name)
    for option in node.get("anyOf") or []:
        yield from _walk(schema, option, path)
    if isinstance(node.get("items"), dict):
        yield from _walk(schema, node["items"], f"{path}[]")


def test_the_block_schema_renders_as_a_form() -> None:
    """Prefect's UI renders an object with properties as a nested form but an open object (a dict) as raw JSON,
    and an enum as a choice: every object in the block's schema has properties, every Literal is an enum."""
    schema = ReconPolicy.model_json_schema()
    nodes = dict(_walk(schema, schema, ""))
    open_objects = [path for path, node in nodes.items() if node.get("type") == "object" and not node.get("properties")]
    assert open_objects == []
    assert nodes["fields.phone.owner"]["enum"] == ["ghl", "tinyemail", "shared"]
    assert nodes["fields.phone"]["default"]["tie_break"] == "manual"
    assert nodes["delete.on_ghl_delete"]["enum"] == ["report", "unsubscribe"]
    assert nodes["guards.field_updates"]["type"] == "number"
    assert nodes["tasks.tag_triggers[].action"]["enum"] == ["note", "task"]
    assert [p for p in schema["properties"]] == ["fields", "tags", "consent", "create", "delete", "tasks", "guards",
                                                 "initial", "custom_fields"]
    assert nodes["custom_fields[].owner"]["enum"] == ["ghl", "tinyemail", "shared"]
    assert schema["secret_fields"] == []  # the policy holds no secret
