"""The fixture generator: determinism, counts, awkward kinds, referential integrity and FORMAT.md validity."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from contact_recon.sandbox.fixture import load_fixture, validate_fixture
from contact_recon.sandbox.generate import AWKWARD_KINDS, base_epoch, generate_fixture, iso, to_json, write_fixture

ID_RE = re.compile(r"^[A-Za-z0-9]{20}$")


def _norm(email: str) -> str:
    return email.strip().lower()


def _ghl_contacts(fx: dict) -> list[dict]:
    return [c for loc in fx["ghl"]["locations"].values() for c in loc["contacts"]]


@pytest.fixture(scope="module")
def big() -> dict:
    return generate_fixture(2000, seed=7, allow_duplicates=True, locations=2)


def test_same_seed_gives_identical_json() -> None:
    assert to_json(generate_fixture(300, seed=3)) == to_json(generate_fixture(300, seed=3))


def test_different_seed_differs() -> None:
    a, b = generate_fixture(300, seed=3), generate_fixture(300, seed=4)
    assert to_json(a) != to_json(b)
    assert a["ghl"]["tokens"][0]["token"] != b["ghl"]["tokens"][0]["token"]


def test_write_fixture_is_byte_identical_and_loadable(tmp_path) -> None:
    p1, p2 = tmp_path / "a.json", tmp_path / "b.json"
    write_fixture(generate_fixture(200, seed=11), p1)
    write_fixture(generate_fixture(200, seed=11), p2)
    assert p1.read_bytes() == p2.read_bytes()
    loaded = load_fixture(p1)
    assert len(loaded["tinyemail"]["customers"]) > 0


def test_output_passes_the_fixture_validator(big: dict) -> None:
    validated = validate_fixture(json.loads(to_json(big)))
    assert set(validated["ghl"]["locations"]) == set(big["ghl"]["locations"])
    assert "_meta" in validated


@pytest.mark.parametrize("overlap", [0.0, 0.4, 0.7, 1.0])
def test_counts_and_overlap(overlap: float) -> None:
    n = 1000
    fx = generate_fixture(n, seed=5, overlap=overlap, awkward=0.0)
    ghl = {c["email"] for c in _ghl_contacts(fx)}
    te = {c["email"] for c in fx["tinyemail"]["customers"]}
    both = ghl & te
    assert len(ghl | te) == n  # distinct people (no awkward kinds: every email is canonical and unique)
    assert abs(len(both) - n * overlap) <= 1
    rest = n - len(both)
    assert abs((len(ghl) - len(both)) - rest / 2) <= 1
    assert abs((len(te) - len(both)) - rest / 2) <= 1


def test_overlap_with_awkward_records_stays_within_tolerance(big: dict) -> None:
    ghl = {_norm(c["email"]) for c in _ghl_contacts(big) if "email" in c}
    te = {_norm(c["email"]) for c in big["tinyemail"]["customers"]}
    both = ghl & te
    assert abs(len(both) / 2000 - 0.7) < 0.02


def test_each_awkward_kind_is_present_and_real(big: dict) -> None:
    meta = big["_meta"]["awkward"]
    assert set(meta) == set(AWKWARD_KINDS)
    assert all(len(v) >= 5 for v in meta.values()), {k: len(v) for k, v in meta.items()}
    assert sum(len(v) for v in meta.values()) == round(2000 * 0.05)
    ghl_by_id = {c["id"]: c for c in _ghl_contacts(big)}
    te_by_email = {_norm(c["email"]): c for c in big["tinyemail"]["customers"]}
    for cid in meta["no_email"]:
        assert "email" not in ghl_by_id[cid]
    for cid in meta["dnd"]:
        c = ghl_by_id[cid]
        assert c["dnd"] is True or c["dndSettings"]["Email"]["status"] in ("active", "permanent")
    for kind, status in (("unsubscribed", "Unsubscribed"), ("bounced", "Bounced"), ("spam", "Spam")):
        assert {te_by_email[e]["status"] for e in meta[kind]} == {status}
    for cid in meta["ghl_duplicate"]:
        email = ghl_by_id[cid]["email"]
        assert sum(1 for c in ghl_by_id.values() if c.get("email") == email) == 2
    for bad in meta["invalid_email"]:
        assert not re.fullmatch(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+", bad)


def test_email_case_variants_differ_only_by_case_and_whitespace(big: dict) -> None:
    ghl = {}
    for c in _ghl_contacts(big):
        if "email" in c:
            ghl.setdefault(_norm(c["email"]), c["email"])
    te = {_norm(c["email"]): c["email"] for c in big["tinyemail"]["customers"]}
    for email in big["_meta"]["awkward"]["email_case_whitespace"]:
        assert ghl[email] != te[email]
        assert _norm(ghl[email]) == _norm(te[email]) == email


def test_non_latin_names_present(big: dict) -> None:
    names = [c["firstName"] + c["lastName"] for c in _ghl_contacts(big) + big["tinyemail"]["customers"]]
    assert any(re.search("[\u0400-\u04ff]", n) for n in names)  # Cyrillic
    assert any(re.search("[\u4e00-\u9fff]", n) for n in names) or any(
        re.search("[\u0600-\u06ff]", n) for n in names)  # CJK or Arabic


def test_phone_formats_are_mixed(big: dict) -> None:
    phones = {c["phone"] for c in _ghl_contacts(big) + big["tinyemail"]["customers"] if c.get("phone")}
    assert any(p.startswith("(") for p in phones) or any(p.startswith("1-") for p in phones)
    assert any(p.startswith(("0044", "07700")) for p in phones)


def test_tasks_and_notes_point_to_existing_contacts_and_ids_are_alnum(big: dict) -> None:
    for loc_id, loc in big["ghl"]["locations"].items():
        assert ID_RE.match(loc_id)
        ids = {c["id"] for c in loc["contacts"]}
        assert all(ID_RE.match(i) for i in ids) and len(ids) == len(loc["contacts"])
        assert loc["tasks"] and loc["notes"]
        for item in loc["tasks"] + loc["notes"]:
            assert item["contactId"] in ids
            assert ID_RE.match(item["id"])


def test_task_dates_and_completed_share(big: dict) -> None:
    base = base_epoch(7)
    tasks = [t for loc in big["ghl"]["locations"].values() for t in loc["tasks"]]
    lo, hi = iso(base - 30 * 86400), iso(base + 60 * 86400)
    assert all(lo <= t["dueDate"] <= hi for t in tasks)
    assert all(datetime.fromisoformat(t["dueDate"]) for t in tasks)
    share = sum(t["completed"] for t in tasks) / len(tasks)
    assert 0.2 < share < 0.4
    notes = [n for loc in big["ghl"]["locations"].values() for n in loc["notes"]]
    assert len(notes) == len(_ghl_contacts(big))
    assert max(len(n["body"]) for n in notes) > 1000
    assert max(len(n["body"]) for n in notes) <= 5000


def test_credentials_are_fake_looking_and_scoped(big: dict) -> None:
    tokens = big["ghl"]["tokens"]
    assert {t["locationId"] for t in tokens} == set(big["ghl"]["locations"])
    for t in tokens:
        assert t["token"].startswith("sbx-ghl-")
        assert t["scopes"] == ["contacts.readonly", "contacts.write", "locations/tasks.readonly"]
    assert big["tinyemail"]["apiKeys"][0].startswith("sbx-te-")
    assert len(big["ghl"]["oauthClients"]) == 1


def test_every_customer_is_in_a_list_and_members_exist(big: dict) -> None:
    emails = [c["email"] for c in big["tinyemail"]["customers"]]
    assert len(set(emails)) == len(emails)
    lists = big["tinyemail"]["lists"]
    assert len(lists) == 3 and len({lst["id"] for lst in lists}) == 3
    members = set().union(*(lst["members"] for lst in lists))
    assert members == set(emails)


def test_duplicates_only_when_allowed() -> None:
    fx = generate_fixture(2000, seed=7)
    assert "ghl_duplicate" not in fx["_meta"]["awkward"]
    emails = [c["email"] for c in _ghl_contacts(fx) if "email" in c]
    assert len(emails) == len(set(emails))
    assert all(loc["allowDuplicateContacts"] is False for loc in fx["ghl"]["locations"].values())


def test_ghl_phones_are_unique_without_duplicates() -> None:
    fx = generate_fixture(3000, seed=9)
    phones = [re.sub(r"\D", "", c["phone"]) for c in _ghl_contacts(fx) if c.get("phone")]
    assert len(phones) == len(set(phones))
