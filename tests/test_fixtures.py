"""The committed test data: present, unchanged, and a missing file fails instead of skipping."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.conftest import FIXTURES, VIDEO_NAMES, fixture_path

CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)$", re.MULTILINE)


def _listed() -> list[tuple[str, str]]:
    """(sha256, relative path) of every data file, as tests/fixtures/README.md records them."""
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    return [(m[1], m[2]) for m in CHECKSUM_LINE.finditer(readme)]


def test_a_missing_fixture_fails_the_test_with_its_path() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"test fixture .*nope\.mp4 is missing"):
        fixture_path("videos", "nope.mp4")


def test_every_fixture_is_listed_with_its_checksum_and_unchanged() -> None:
    """README.md says where each file comes from; a file added without a line there fails."""
    listed = _listed()
    on_disk = {
        p.relative_to(FIXTURES).as_posix()
        for p in FIXTURES.rglob("*")
        if p.is_file() and p.suffix in {".mp4", ".jsonl", ".json"}
    }
    assert {path for _, path in listed} == on_disk >= {f"videos/{name}" for name in VIDEO_NAMES}
    changed = [
        path
        for digest, path in listed
        if hashlib.sha256(fixture_path(*path.split("/")).read_bytes()).hexdigest() != digest
    ]
    assert not changed


def test_every_data_file_has_its_licence_next_to_it() -> None:
    folders = {path.split("/")[0] for _, path in _listed()}
    assert folders == {"videos", "qvhighlights"}
    assert all(any((FIXTURES / folder).glob("*LICENSE")) for folder in folders)
