"""A run on random or test-only weights says so, in the ingest's notes, the run's notes and the CLI.

Before, a run with random-weight CLIP and a random-weight captioner printed ``mode: full`` and
nothing else, as if its windows meant something.  The models are the suite's usual test models:
open_clip ViT-S-32 with ``clip_pretrained=none`` and the tiny random-weight Qwen2.5-VL of
:mod:`granalign.testing` (whose folder carries the test-weights marker), on a synthetic video.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from granalign.testing import build_tiny_vlm_random_weights
from graphs.context import Context
from graphs.ingest import ingest_video
from graphs.retrieval import graph
from tests.test_video import make_video
from tools.cli import app

QUERY = "a grey screen"
CLIP_NOTE = "CLIP ViT-S-32 has random weights (clip_pretrained=none): its scores are meaningless"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("random-notes")


@pytest.fixture(scope="module")
def vlm(work) -> Path:
    return build_tiny_vlm_random_weights(work / "tiny-qwen25vl-random-weights")


@pytest.fixture(scope="module")
def env(work, vlm) -> dict[str, str]:
    return {
        "GRANALIGN_STORE": str(work / "store"),
        "GRANALIGN_CLIP_MODEL": "local:ViT-S-32",
        "GRANALIGN_CLIP_PRETRAINED": "none",
        "GRANALIGN_CAPTIONER": f"local:{vlm}",
        "GRANALIGN_CAPTION_TOKENS": "4",
        "GRANALIGN_VIDEO_ROOTS": str(work),
        "GRANALIGN_REWRITER": "none",
    }


def _captioner_note(vlm: Path) -> str:
    return f"captioner local:{vlm.name} has test-only weights (random weights, built by granalign.testing)"


def _ctx(work: Path, vlm: Path) -> Context:
    return Context(
        store_dir=str(work / "store"),
        clip_model="local:ViT-S-32",
        clip_pretrained="none",
        captioner=f"local:{vlm}",
        caption_tokens=4,
        video_roots=str(work),
        rewriter="none",
    )


def test_random_weights_are_named_in_ingest_and_retrieval_notes_and_the_cli_output(work, vlm, env):
    ctx = _ctx(work, vlm)
    video = make_video(work / "grey.mp4", 4.0)
    ingested = ingest_video(ctx, str(video))
    assert any(n.startswith(CLIP_NOTE) for n in ingested["notes"]), ingested["notes"]
    assert any(n.startswith(_captioner_note(vlm)) for n in ingested["notes"]), ingested["notes"]

    out = graph.invoke({"video": str(video), "query": QUERY}, context=ctx)
    assert out["mode"] == "full"
    assert sum(n.startswith(CLIP_NOTE) for n in out["notes"]) == 1, out["notes"]
    assert sum(n.startswith(_captioner_note(vlm)) for n in out["notes"]) == 1, out["notes"]  # once

    shown = CliRunner().invoke(app, ["retrieve", out["video_id"], QUERY], env=env)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())  # the console wraps long notes
    assert f"note: {CLIP_NOTE}" in text and f"note: {_captioner_note(vlm)}" in text
