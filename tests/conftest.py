"""Test-wide settings: offline hubs, a private store per test session, the committed fixtures.

The real data the tests read (three short videos, the QVHighlights val annotations, the
official evaluator's parity pair, the Baichuan2 paraphrases) is committed under
``tests/fixtures`` with its licences (``tests/fixtures/README.md``), so a fresh clone runs
every test.  The tests never read ``../shared/data`` or ``GRANALIGN_SHARED_DATA`` (the full
data set is for the benchmarks).  A fixture file that is missing fails the test: it never
skips silently.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
os.environ.pop("CHROMA_URL", None)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VIDEOS = FIXTURES / "videos"
VIDEO_NAMES = ("bikes.mp4", "bigbuckbunny.mp4", "charades_univtg_example.mp4")

ANSWER_TOL = 1e-4 + 1e-9
"""Two processes may round a value on either side of the graph's 4th decimal (``rounded_answer``)."""


def fixture_path(*parts: str) -> Path:
    """``tests/fixtures/<parts>``; fails the calling test with a clear message when it is missing."""
    path = FIXTURES.joinpath(*parts)
    if not path.is_file():
        pytest.fail(
            f"test fixture {path} is missing: it is committed under tests/fixtures "
            "(see tests/fixtures/README.md); restore it from git",
            pytrace=False,
        )
    return path


@pytest.fixture
def real_videos() -> Path:
    """The folder of the committed real videos, after checking that every one is there."""
    for name in VIDEO_NAMES:
        fixture_path("videos", name)
    return VIDEOS


needs_videos = pytest.mark.usefixtures("real_videos")
"""Mark for tests that read ``VIDEOS``: a missing video fails them at setup."""


def approx_moments(moments: Sequence[Sequence[float]]) -> list[Any]:
    """Moments from another process, equal up to the last rounded digit (``ANSWER_TOL``).

    Rows become lists: ``pytest.approx`` of a tuple never equals a list.
    """
    return [pytest.approx(list(row), abs=ANSWER_TOL) for row in moments]


@pytest.fixture(scope="session", autouse=True)
def _private_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No test touches the user's real store."""
    path = tmp_path_factory.mktemp("store")
    os.environ["GRANALIGN_STORE"] = str(path)
    return path
