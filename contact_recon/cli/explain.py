"""`recon explain EMAIL|CONTACT_ID [--json]`: one person's story across runs (contact_recon/store/history.py).

The text form reads top to bottom in time: who the person is (emails, contact ids, keys, the GHL link), then
each run that saw or touched them: a snapshot shows both sides' values the first time and afterwards only what
changed; a plan shows every op for the person (planned, done, failed, stale, quarantined, and why) and the
conflicts it left; then the base now, the id_map links, identity reviews and the data team's decisions.
Every value is printed as text, never as rich markup (contact fields come from web forms).
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape

from contact_recon.cli.report import EXIT_FAILED, EXIT_OK, _error, _open
from contact_recon.model.context import ghl_url
from contact_recon.settings import Settings
from contact_recon.store.history import PERSON_FIELDS, PersonNotFound, person_history

_STATUS = {"done": "green", "failed": "red", "stale": "yellow", "quarantined": "yellow", "planned": "cyan",
           "held": "yellow", "rejected": "red"}


def run_explain_command(settings: Settings, query: str, as_json: bool, console: Console, err: Console) -> int:
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        try:
            story = person_history(store, settings.data_dir, query)
        except PersonNotFound as exc:
            _error(err, str(exc))
            return EXIT_FAILED
    if as_json:
        print(json.dumps(story, indent=2, ensure_ascii=False, default=str))
    else:
        print_story(console, story)
    return EXIT_OK


def print_story(console: Console, story: dict[str, Any]) -> None:
    say = _say(console)
    say(f"[bold]{escape(story['query'])}[/]: email {_list(story['emails'])} · contact {_list(story['contact_ids'])}"
        f" · keys {_list(story['keys'])}")
    links = {ghl_url(r.get("location_id"), r.get("contact_id")) for run in story["runs"] for r in run["ghl"]}
    for link in sorted(u for u in links if u):
        say(f"  GHL: {escape(str(link))}")
    last: dict[str, dict[str, Any]] = {}
    for run in story["runs"]:
        _print_run(say, run, last)
    _print_now(say, story)


def _say(console: Console) -> Any:
    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)
    return say


def _print_run(say: Any, run: dict[str, Any], last: dict[str, dict[str, Any]]) -> None:
    policy = f" · policy {escape(str(run['policy_version']))}" if run.get("policy_version") else ""
    say(f"\n[bold]{escape(str(run['started_at'] or '')[:19])}[/] {escape(run['kind'])} run {escape(run['run_id'])}: "
        f"{escape(run['status'])}{policy}")
    for side, label in (("ghl", "GHL"), ("tinyemail", "TinyEmail")):
        for row in run[side]:
            say(f"  {label}: {_values(row, last.get(side))}")
            last[side] = row
    for op in run["ops"]:
        say("  " + _op_line(op))
    for c in run["conflicts"]:
        say(f"  [yellow]conflict[/] {escape(str(c.get('field') or '(presence)'))}: base {_v(c.get('base'))}, "
            f"TinyEmail {_v(c.get('tinyemail'))}, GHL {_v(c.get('ghl'))} ({escape(str(c.get('reason')))})")


def _values(row: dict[str, Any], before: dict[str, Any] | None) -> str:
    if before is None:
        # the first sighting: every field it holds
        return ", ".join(f"{name} {_v(row.get(name))}" for name in PERSON_FIELDS if row.get(name) not in (None, []))
    changed = [name for name in PERSON_FIELDS if row.get(name) != before.get(name)]
    # later sightings: only what changed since the previous snapshot of this side
    return ", ".join(f"{name} {_v(before.get(name))} → {_v(row.get(name))}" for name in changed) or "unchanged"


def _op_line(op: dict[str, Any]) -> str:
    status = str(op.get("status") or "planned")
    why = f" by {escape(str(op['quarantined_by']))}" if op.get("quarantined_by") else ""
    error = f": {escape(str(op['last_error']))}" if op.get("last_error") else ""
    field = f" {escape(str(op['field']))}" if op.get("field") else ""
    return (f"→ {escape(str(op['target']))} {escape(str(op['kind']))}{field} {_v(op.get('expected'))} → "
            f"{_v(op.get('new'))} ({escape(str(op['reason']))}) [{_STATUS.get(status, '')}]{escape(status)}"
            f"{why}{error}[/]")


def _print_now(say: Any, story: dict[str, Any]) -> None:
    say("\n[bold]now[/]")
    for row in story["base"]:
        say(f"  base {escape(row['key'])} (since {escape(str(row.get('updated_at'))[:19])}): "
            f"{_values(row, None) or '(empty)'}")
    if not story["base"]:
        say("  base: none (never reconciled)")
    for link in story["id_map"]:
        say(f"  linked: contact {escape(link['contact_id'])} ↔ {escape(link['email'])} "
            f"({escape(link['matched_by'])}, {escape(str(link['matched_at'])[:19])})")
    for review in story["identity_reviews"]:
        say(f"  identity review {escape(review['kind'])}: {escape(str(review.get('detail') or ''))} "
            f"(run {escape(review['run_id'])})")
    for d in story["decisions"]:
        used = f"used by run {d['used_by_run']}" if d.get("used_by_run") else "pending"
        say(f"  decision {escape(d['field'])}: {escape(d['choice'])} {_v(d.get('value'))} "
            f"({escape(used)}, imported {escape(str(d['imported_at'])[:19])})")


def _v(value: Any) -> str:
    if value is None or value == []:
        return "∅"
    if isinstance(value, list):
        return escape("[" + ", ".join(str(v) for v in value) + "]")
    return escape(repr(value) if isinstance(value, str) else str(value))


def _list(values: list[str]) -> str:
    return escape(", ".join(values)) if values else "-"
