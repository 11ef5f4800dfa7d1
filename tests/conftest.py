"""Test-wide settings: offline hubs, a private store per test session, shared data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
os.environ.pop("CHROMA_URL", None)

SHARED_DATA = Path(
    os.environ.get("GRANALIGN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


@pytest.fixture(scope="session", autouse=True)
def _private_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No test touches the user's real store."""
    path = tmp_path_factory.mktemp("store")
    os.environ["GRANALIGN_STORE"] = str(path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "qvhighlights").is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA} (set GRANALIGN_SHARED_DATA)")
    return SHARED_DATA
