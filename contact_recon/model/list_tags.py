"""List tags a GHL user can read: `list:<list name>` in GHL, the list id everywhere else.

A TinyEmail list membership is mirrored into GHL as a tag in the list namespace (`policy.tags.list_prefix`,
`list:`). The merge engine, the base and the state compare lists by their TinyEmail id (stable across renames),
as `L` in TinyEmail's lists and `list:L` among GHL's tags. A GHL user reads tags, though, and `list:6f1c2b1e-...`
says nothing; so GHL holds the list's *label* instead, and the id-to-label mapping is translated at the two
edges only:

- in: `with_list_ids` turns every GHL list tag the store knows (the current label of a list, any label it had
  before a rename, or its bare id, as earlier versions wrote) into `list:<id>` before the merge;
- out: `ListNames.spell` turns `list:<id>` into `list:<label>` when the GHL writer adds a tag or creates a
  contact; a removal removes every spelling the list has had (`ListNames.spellings`), so a list left on the
  night it was renamed leaves no old tag behind, and the GHL writer adds any other spelling of those the
  contact holds (by tag key: `list:newsletter` for `Newsletter`).

A label is the list's name (trimmed); lists that share a name, or have none, are told apart by the first 8
characters of their id (`Newsletter (6f1c2b1e)`). A tag that names no known list stays as it is. Spellings are
compared by tag key (`model/tags.py`: case-folded, trimmed, inner spaces collapsed), so `list:newsletter` in GHL
is the list labelled `Newsletter`, and is not respelled: a tag already on a side keeps that side's spelling.

`respelling_ops` plans, once, the tag changes that make GHL's spelling current: a contact tagged with an old
spelling (a bare id, or the label before a rename) gets `tag_remove` of that spelling and `tag_add` of the
label now, with reason `LIST_TAG_RESPELLED`. In the id space they change nothing, so the state's replay and the
guards leave them out; a member the merge already adds or removes is left to the merge. Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import polars as pl

from contact_recon.model.ops import CONTENT_COLUMNS, Kind
from contact_recon.model.tags import tag_key

LIST_TAG_RESPELLED = "list_tag_respelled"
ID_CHARS = 8  # of a list id, to tell apart two lists with one name


def labels(names: Mapping[str, str | None]) -> dict[str, str]:
    """list id -> its label (module docstring), for the lists TinyEmail has now."""
    clean = {list_id: (name or "").strip() for list_id, name in names.items()}
    shared = Counter(tag_key(name) for name in clean.values())
    out = {}
    for list_id, name in clean.items():
        if not name:
            out[list_id] = list_id  # no name: the id is all there is
        elif shared[tag_key(name)] > 1:
            out[list_id] = f"{name} ({list_id[:ID_CHARS]})"  # two lists, one name: told apart
        else:
            out[list_id] = name
    return out


@dataclass(frozen=True)
class ListNames:
    """How lists are spelled in GHL: `label` (list id -> label now) and `aliases` (every spelling a list's tag
    has had, its id included -> list id)."""

    label: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    prefix: str = "list:"

    @classmethod
    def build(cls, current: Mapping[str, str | None], seen: Iterable[tuple[str, str]] = (),
              prefix: str = "list:") -> ListNames:
        """From TinyEmail's lists now (id -> name) and the (id, label) pairs seen before (the store keeps them)."""
        now = labels(current)
        aliases: dict[str, str] = {}
        for list_id, label in seen:
            aliases.setdefault(label, list_id)  # an old label: the list it named first
        aliases.update({list_id: list_id for list_id in now})  # a bare id: how earlier versions wrote it
        aliases.update({label: list_id for list_id, label in now.items()})  # a label now wins over an old one
        return cls(now, aliases, prefix)

    def list_id(self, tag: str) -> str | None:
        """The list a GHL list tag names (compared by tag key), None when it is not a list tag of a known list."""
        if not tag_key(tag).startswith(tag_key(self.prefix)):
            return None
        return self._by_key.get(tag_key(tag[len(self.prefix):]))

    @cached_property
    def _by_key(self) -> dict[str, str]:
        """tag key of a spelling -> its list (an exact spelling's list first)."""
        out: dict[str, str] = {}
        for alias, list_id in self.aliases.items():
            out.setdefault(tag_key(alias), list_id)
        return out

    def to_id(self, tag: str) -> str:
        """A GHL tag as the merge compares it: `list:<id>` for a known list, else unchanged."""
        list_id = self.list_id(tag)
        return tag if list_id is None else self.prefix + list_id

    def spellings(self, tag: str) -> list[str]:
        """Every spelling of the list `list:<id>` names (its label now first), or just `tag` for any other tag."""
        if not tag.startswith(self.prefix) or (label := self.label.get(tag.removeprefix(self.prefix))) is None:
            return [tag]
        list_id = tag.removeprefix(self.prefix)
        others = sorted(a for a, i in self.aliases.items() if i == list_id and a != label)
        return [self.prefix + a for a in (label, *others)]

    def spell(self, tag: str) -> str:
        """`list:<id>` as GHL holds it, `list:<label>`; any other tag unchanged."""
        if tag.startswith(self.prefix) and (label := self.label.get(tag.removeprefix(self.prefix))) is not None:
            return self.prefix + label
        return tag


def with_list_ids(contacts: pl.DataFrame, names: ListNames) -> pl.DataFrame:
    """GHL contacts (records.GHL_CONTACTS) with their list tags as list ids (sorted, unique)."""
    if not names.aliases or contacts.height == 0:
        return contacts
    tags = pl.col("tags").list.eval(pl.element().replace(_tag_map(names, contacts))).list.unique().list.sort()
    return contacts.with_columns(tags=tags)


def _tag_map(names: ListNames, contacts: pl.DataFrame) -> dict[str, str]:
    """Every list tag the contacts hold (in any spelling of a known list) -> `list:<id>`."""
    held = contacts.select(pl.col("tags").explode().drop_nulls().unique())["tags"].to_list()
    return {tag: names.prefix + list_id for tag in held if (list_id := names.list_id(tag)) is not None}


def respelling_ops(contacts: pl.DataFrame, names: ListNames, keys: Iterable[str],
                   touched: pl.DataFrame) -> pl.DataFrame:
    """The ops (model/ops.CONTENT_COLUMNS) that respell old list tags of the GHL `contacts` (as GHL holds them,
    before `with_list_ids`) whose contact id is one of `keys` (the people in play); `touched` has the
    (key, tag) members the merge's GHL tag ops already add or remove, in the id space (left to the merge)."""
    wanted, busy = set(keys), {(k, t) for k, t in touched.select("key", "tag").iter_rows()}
    ops = []
    for contact_id, tags in contacts.select("contact_id", "tags").iter_rows():
        if contact_id not in wanted:
            continue  # held back by identity review, or out of this run
        held = set(tags or [])
        added: set[str] = set()
        for tag in sorted(held):
            spelled = names.spell(names.to_id(tag))
            if names.list_id(tag) is None or tag_key(spelled) == tag_key(tag):
                continue  # not a known list, or already spelled as the list is named now (case and spacing aside)
            if (contact_id, names.to_id(tag)) in busy:
                continue  # the merge removes this list tonight, in every spelling (`spellings`)
            ops.append(_op(Kind.TAG_REMOVE, contact_id, expected=tag, new=None))
            if spelled not in held and spelled not in added:
                # the label now, once, however many old spellings the contact had
                added.add(spelled)
                ops.append(_op(Kind.TAG_ADD, contact_id, expected=None, new=spelled))
    return pl.DataFrame(ops, schema={c: pl.String() for c in CONTENT_COLUMNS})


def _op(kind: Kind, key: str, *, expected: str | None, new: str | None) -> dict[str, str | None]:
    return {"target": "ghl", "kind": kind.value, "key": key, "field": "tags", "expected": expected, "new": new,
            "reason": LIST_TAG_RESPELLED}
