"""`granalign bench` on a caption grid other than QVHighlights' 2 s: the run scores and plots
(the submission's saliency is averaged onto the evaluator's 2-s clips) and its windows lie on
the file's grid.  Real MiniLM and Chroma on two videos of the shipped subset, captioned every 4 s
(every second caption kept).  That the priors keep their seconds is tests/test_clip_grid_priors.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from granalign.errors import InputError
from granalign.evaluation.metrics import saliency_on_official_grid
from granalign.io.jsonl import read_jsonl, write_jsonl
from tests.test_cli_first_run import DASH_VID, PLAIN_VID
from tools.cli import app
from tools.demo_data import DEMO


@pytest.mark.parametrize(
    ("saliency", "clip_len", "duration", "expected"),
    [
        ([0.1, 0.5, 0.9], 4.0, 12.0, [0.1, 0.1, 0.5, 0.5, 0.9, 0.9]),  # each 4-s clip twice
        ([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 1.0, 6.0, [0.05, 0.25, 0.45]),  # the mean of two 1-s clips
        ([0.2, 0.4, 0.6], 3.0, 9.0, [0.2, 0.3, 0.4, 0.6]),  # 1 s of 0.2 and 1 s of 0.4; int(9 / 2) = 4
        ([0.3, 0.7], 2.0, 4.0, [0.3, 0.7]),  # the official grid: unchanged
        ([0.3, 0.7], 4.0, 11.0, [0.3, 0.3, 0.7, 0.7, 0.7]),  # past the last clip: its score
        ([0.3, 0.7], 600.0, 5.0, [0.3, 0.3]),  # one clip longer than the video
    ],
)
def test_saliency_is_averaged_over_each_official_clip(
    saliency: list[float], clip_len: float, duration: float, expected: list[float]
) -> None:
    assert saliency_on_official_grid(saliency, clip_len, duration) == pytest.approx(expected)


def test_a_bad_saliency_grid_is_named() -> None:
    with pytest.raises(InputError, match="non-empty list"):
        saliency_on_official_grid([], 4.0, 10.0)
    with pytest.raises(InputError, match="finite clip scores"):
        saliency_on_official_grid([0.5, float("nan")], 4.0, 10.0)
    with pytest.raises(InputError, match=r"clip_len must be a number of seconds in \[0\.001"):
        saliency_on_official_grid([0.5], 0.0, 10.0)
    with pytest.raises(InputError, match="duration must be a positive number of seconds, got 'ten'"):
        saliency_on_official_grid([0.5], 2.0, "ten")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="duration must be a number of seconds"):
        saliency_on_official_grid([0.5], 2.0, float("inf"))


def test_bench_scores_a_four_second_caption_grid(tmp_path: Path) -> None:
    vids = {DASH_VID, PLAIN_VID}
    captions, annotations = tmp_path / "captions.jsonl", tmp_path / "annotations.jsonl"
    rows = [r for r in read_jsonl(DEMO.captions) if r["vid"] in vids]
    write_jsonl(captions, [{**r, "captions": r["captions"][::2], "clip_len_s": 4.0} for r in rows])
    write_jsonl(annotations, [a for a in read_jsonl(DEMO.annotations) if a["vid"] in vids])
    out, metrics = tmp_path / "preds.jsonl", tmp_path / "metrics.json"
    args = ["bench", "--annotations", str(annotations), "--captions", str(captions),
            "--store", str(tmp_path / "store"), "--concurrency", "1",
            "--out", str(out), "--metrics", str(metrics), "--plot", str(tmp_path / "first.png")]  # fmt: skip
    got = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert got.exit_code == 0, got.output
    truth = {a["qid"]: a for a in read_jsonl(annotations)}
    predictions = read_jsonl(out)
    assert len(predictions) == len(truth) >= 2
    for p in predictions:
        duration = truth[p["qid"]]["duration"]
        assert len(p["pred_saliency_scores"]) == int(duration / 2)  # the evaluator's grid
        windows = p["pred_relevant_windows"]
        assert all(end <= duration and (start / 4.0).is_integer() for start, end, _ in windows)
    assert "MR-full-R1@0.5" in json.loads(metrics.read_text())["brief"]
    assert (tmp_path / "first.png").stat().st_size > 0
