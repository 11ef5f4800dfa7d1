"""Serving replicas: two ``granalign mcp --transport http`` servers sharing one ``chroma run`` store.

* Under load (benchmarks/load_test.py ``--replicas 2``, small: 8 callers for 3 s), the callers
  split across both replicas get no errors, and every answer equals a single replica's
  (windows and saliency within 1e-4: outputs are rounded to 4 decimals).
* The per-video ingest lock holds across replicas: the first query on a new video, sent to both
  replicas at once, ingests it once (the clips encoded, as the replicas report them in their
  progress notifications, add up to the video's clips), and both answer the same.  Models:
  random-weight open_clip ViT-S-32 and the tiny random-weight VLM, real MiniLM.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from benchmarks.load_test import main
from granalign.testing import build_tiny_vlm_random_weights
from tests.conftest import VIDEOS, approx_moments, needs_videos
from tests.servers import chroma_server, free_port, server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VIDEO = "bikes.mp4"  # 5 clips of 2 s
CLIPS = 5


def test_two_replicas_under_load_answer_as_one_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    argv = ["--target", "mcp", "--replicas", "2", "--callers", "8", "--duration", "3", "--videos", "2"]
    report = main([*argv, "--out", str(out)])
    (r,) = report["results"]
    assert r["errors"] == 0, r["error_messages"]
    assert r["servers"] == 2 and len(r["url"].split()) == 2 and "2 replicas" in r["server"]
    assert all(n > 0 for n in r["ok_per_server"]) and sum(r["ok_per_server"]) == r["ok"] >= 8
    assert r["answers_checked"] == r["ok"]  # every answer was compared with the single replica's


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm_random_weights(tmp_path_factory.mktemp("models") / "tiny-qwen25vl-random-weights")


def _replica_env(tmp: Path, chroma_url: str, vlm: Path, n: int) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GRANALIGN_")},
        "CHROMA_URL": chroma_url,
        "GRANALIGN_STORE": str(tmp / "unused"),
        "GRANALIGN_LOCK_DIR": str(tmp / "locks"),  # replicas on one host share the lock folder
        "GRANALIGN_CHECKPOINT_DB": str(tmp / f"checkpoints-{n}.sqlite"),
        "GRANALIGN_VIDEO_ROOTS": str(VIDEOS),
        "GRANALIGN_REWRITER": "none",
        "GRANALIGN_CLIP_MODEL": "local:ViT-S-32",
        "GRANALIGN_CLIP_PRETRAINED": "none",
        "GRANALIGN_CAPTIONER": f"local:{vlm}",
        "GRANALIGN_CAPTION_TOKENS": "8",
        "GRANALIGN_INGEST_BATCH": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def replicas(tmp_path: Path, vlm: Path) -> Iterator[list[str]]:
    """Two MCP replicas on loopback over one ``chroma run`` store (empty); yields their /mcp URLs."""
    with ExitStack() as stack:
        chroma = stack.enter_context(chroma_server(tmp_path))
        urls = []
        for n in (1, 2):
            port = free_port()
            cmd = [str(BIN / "granalign"), "mcp", "--transport", "http", "--port", str(port)]
            url = f"http://127.0.0.1:{port}"
            env = _replica_env(tmp_path, chroma, vlm, n)
            stack.enter_context(server(cmd, f"{url}/healthz", tmp_path / f"mcp-{n}.log", cwd=ROOT, env=env))
            urls.append(f"{url}/mcp")
        yield urls


async def _retrieve(url: str, video: str, query: str) -> tuple[dict[str, Any], list[str]]:
    """One ``retrieve_moments`` call; its result and its progress messages."""
    from datetime import timedelta

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    messages: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        res = await session.call_tool(
            "retrieve_moments",
            {"video": video, "query": query},
            read_timeout_seconds=timedelta(seconds=600),
            progress_callback=progress,
        )
    assert not res.isError and res.structuredContent is not None, res.content
    return res.structuredContent, messages


def _encoded(messages: list[str]) -> int:
    """Clips this call encoded, from its ``finalize encoded=N`` progress message (0 if none)."""
    found = [int(m.group(1)) for msg in messages if (m := re.match(r"finalize .*\bencoded=(\d+)", msg))]
    return sum(found)


@needs_videos
def test_first_query_on_a_new_video_sent_to_both_replicas_ingests_once_random_weights(
    replicas: list[str],
) -> None:
    video = str(VIDEOS / VIDEO)

    async def both() -> list[tuple[dict[str, Any], list[str]]]:
        return await asyncio.gather(*(_retrieve(url, video, "a person rides a bicycle") for url in replicas))

    (first, first_msgs), (second, second_msgs) = asyncio.run(both())
    assert _encoded(first_msgs) + _encoded(second_msgs) == CLIPS, (first_msgs, second_msgs)
    assert first["video_id"] == second["video_id"] and first["moments"]
    assert second["moments"] == approx_moments(first["moments"])  # two processes: 1e-4
    assert second["saliency"] == pytest.approx(first["saliency"], abs=1e-4 + 1e-9)
