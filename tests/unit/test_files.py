"""Owner-only files (`contact_recon/store/files.py`): whatever the umask, what we create under the data dir is 0700
(folders) and 0600 (files), and an older, looser file or folder of ours is tightened when we write it again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from contact_recon.store.files import atomic_text, atomic_write, open_private, private_dir, private_tree
from tests.support.modes import loose_modes, mode


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_every_folder_a_private_dir_makes_is_0700_and_an_existing_one_is_tightened(tmp_path: Path) -> None:
    private_dir(tmp_path / "data" / "runs" / "r1")
    assert loose_modes(tmp_path / "data") == []
    (tmp_path / "old").mkdir(mode=0o755)
    private_dir(tmp_path / "old")
    assert mode(tmp_path / "old") == 0o700


def test_appended_files_are_0600_and_a_loose_one_is_tightened(tmp_path: Path) -> None:
    log = tmp_path / "data" / "echo" / "ghl_writes.jsonl"
    with open_private(log, "a", encoding="utf-8") as out:
        out.write("one\n")
    log.chmod(0o644)  # as an older version left it
    with open_private(log, "a", encoding="utf-8") as out:
        out.write("two\n")
    with open_private(tmp_path / "data" / "locks" / "L1.lock", "a+") as lock:
        lock.seek(0)
        assert lock.read() == ""
    assert log.read_text() == "one\ntwo\n" and loose_modes(tmp_path / "data") == []


def test_atomic_writes_are_0600_even_when_the_writer_replaces_the_file(tmp_path: Path) -> None:
    def replacing(tmp: Path) -> None:  # a writer that makes a new file of its own and moves it over ours
        other = tmp.with_name("other")
        other.write_text("x")
        os.replace(other, tmp)

    atomic_write(tmp_path / "data" / "runs" / "r1" / "plan.parquet", replacing)
    atomic_text(tmp_path / "data" / "runs" / "r1" / "summary.json", "{}")
    assert loose_modes(tmp_path / "data") == []


def test_a_tree_a_library_wrote_is_made_private(tmp_path: Path) -> None:
    (tmp_path / "gx" / "uncommitted" / "data_docs").mkdir(parents=True)
    (tmp_path / "gx" / "great_expectations.yml").write_text("x")
    (tmp_path / "gx" / "uncommitted" / "data_docs" / "index.html").write_text("x")
    assert loose_modes(tmp_path / "gx") != []
    private_tree(tmp_path / "gx")
    assert loose_modes(tmp_path / "gx") == []
