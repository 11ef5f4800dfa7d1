"""The fixed tune/report split by video, and --split on bench and experiment."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from granalign.errors import ConfigError, InputError
from granalign.evaluation.split import SPLIT_SALT, in_half, split_of
from tools.bench import read_annotations


def _write_annotations(path: Path, vids: list[str]) -> Path:
    rows = [
        {
            "qid": i,
            "query": f"query {i}",
            "vid": vid,
            "duration": 150,
            "relevant_windows": [[0, 10]],
            "relevant_clip_ids": [0, 1],
            "saliency_scores": [[1, 2, 3], [2, 2, 2]],
        }
        for i, vid in enumerate(vids)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_side_is_the_documented_hash_of_the_vid() -> None:
    for vid in ("NUsG9BgSes0_210.0_360.0", "a", "video-3"):
        digest = hashlib.sha256((SPLIT_SALT + vid).encode()).digest()
        expected = "tune" if int.from_bytes(digest[:8], "big") % 2 == 0 else "report"
        assert split_of(vid) == expected


def test_halves_are_disjoint_cover_everything_and_are_roughly_even() -> None:
    vids = [f"vid{i}" for i in range(1000)]
    tune, report = in_half(vids, "tune", str), in_half(vids, "report", str)
    assert sorted(tune + report) == sorted(vids) and not set(tune) & set(report)
    assert 400 < len(tune) < 600


def test_read_annotations_keeps_every_query_of_a_video_on_one_side(tmp_path: Path) -> None:
    vids = [f"v{i % 40}" for i in range(120)]  # three queries per video
    path = _write_annotations(tmp_path / "ann.jsonl", vids)
    tune = read_annotations(path, split="tune")
    report = read_annotations(path, split="report")
    assert len(tune) + len(report) == 120
    assert {a.vid for a in tune}.isdisjoint({a.vid for a in report})
    assert all(split_of(a.vid) == "report" for a in report)
    assert [a.qid for a in read_annotations(path, limit=5, split="report")] == [a.qid for a in report[:5]]


def test_unknown_half_and_empty_half_are_clear_errors(tmp_path: Path) -> None:
    path = _write_annotations(tmp_path / "ann.jsonl", ["a"])
    with pytest.raises(ConfigError, match="split must be one of tune, report"):
        read_annotations(path, split="test")
    other = "report" if split_of("a") == "tune" else "tune"
    with pytest.raises(InputError, match=f"no annotations in the {other} half"):
        read_annotations(path, split=other)


def test_cli_bench_and_experiment_take_split() -> None:
    from typer.testing import CliRunner

    from tools.cli import app

    runner = CliRunner()
    for command in ("bench", "experiment"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--split" in result.output


def test_a_shifted_set_is_split_by_each_query_source_video(tmp_path: Path) -> None:
    """A derived vid (crop60:<vid>:<offset>) hashes to an unrelated side: ``--split tune`` on a
    shifted set must not bring in queries of report-half videos (nor drop its own)."""
    sources = [f"src{i}" for i in range(40)]
    derived = [f"crop60:{v}:{2 * i}" for i, v in enumerate(sources)]
    assert any(split_of(d) != split_of(s) for d, s in zip(derived, sources, strict=True))
    path = _write_annotations(tmp_path / "ann.jsonl", derived)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, source in zip(rows, sources, strict=True):
        row.update(source_vid=source, source_offset_s=0.0)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for half in ("tune", "report"):
        kept = read_annotations(path, split=half)
        expected = [d for d, s in zip(derived, sources, strict=True) if split_of(s) == half]
        assert [a.vid for a in kept] == expected
