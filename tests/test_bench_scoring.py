"""bench scores every annotation: a query that fails counts as a miss and is listed (real MiniLM, Chroma)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from granalign.errors import InputError
from granalign.evaluation.metrics import evaluate_submission
from graphs.context import Context
from tools.bench import run_benchmark
from tools.demo_data import DEMO


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_failed_queries_count_as_misses_and_are_listed(tmp_path: Path) -> None:
    annotations = _lines(DEMO.annotations)[:10]
    lost = annotations[-1]["vid"]
    captions = [c for c in _lines(DEMO.captions) if c["vid"] in {a["vid"] for a in annotations} - {lost}]
    ann_path, cap_path = tmp_path / "ann.jsonl", tmp_path / "caps.jsonl"
    ann_path.write_text("".join(json.dumps(a) + "\n" for a in annotations))
    cap_path.write_text("".join(json.dumps(c) + "\n" for c in captions))
    ctx = Context(store_dir=str(tmp_path / "store"))
    result = run_benchmark(ann_path, cap_path, ctx, journal_path=tmp_path / "journal.jsonl")
    assert [qid for qid, _ in result.skipped] == [annotations[-1]["qid"]]
    assert "has no captions in" in result.skipped[0][1]
    assert [p["qid"] for p in result.predictions] == [a["qid"] for a in annotations[:-1]]
    answered_only = evaluate_submission(result.predictions, annotations[:-1], allow_subset=True)["brief"]
    brief = result.metrics["brief"]
    assert answered_only["MR-full-mAP"] > 0  # so the scaling below is a real check
    for key in ("MR-full-mAP", "MR-full-R1@0.5", "MR-full-R1@0.7", "HL-min-VeryGood-Hit1"):
        # the miss scores 0 on each of these, so the mean over 10 queries is 9/10 of the mean over 9
        assert brief[key] == pytest.approx(answered_only[key] * 9 / 10, abs=0.01), key
    miss = next(p for p in result.scored if p["qid"] == annotations[-1]["qid"])
    assert miss["pred_relevant_windows"] == []


@pytest.mark.parametrize("content", ["", "\n", "other split"])
def test_a_captions_file_without_the_annotations_videos_is_named_before_any_work(
    tmp_path: Path, content: str
) -> None:
    """An empty export or another split's captions used to end, after the whole run, in "no query
    could be answered (N skipped)", which named neither the file nor what is wrong with it."""
    annotations = _lines(DEMO.annotations)[:3]
    ann_path, cap_path = tmp_path / "ann.jsonl", tmp_path / "caps.jsonl"
    ann_path.write_text("".join(json.dumps(a) + "\n" for a in annotations))
    if content == "other split":
        other = next(c for c in _lines(DEMO.captions) if c["vid"] not in {a["vid"] for a in annotations})
        content = json.dumps(other) + "\n"
    cap_path.write_text(content)
    ctx = Context(store_dir=str(tmp_path / "store"))
    with pytest.raises(InputError) as err:
        run_benchmark(ann_path, cap_path, ctx, journal_path=tmp_path / "journal.jsonl")
    what = "is empty" if not content.strip() else f"holds none of the 3 video(s) of {ann_path}"
    assert str(err.value) == f"captions file {cap_path} {what}; no query could be answered"
    assert not (tmp_path / "journal.jsonl").exists()
