"""Duration-shifted sets (granalign shift): GT stays inside, captions line up, clip ids valid."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from granalign.errors import InputError
from granalign.evaluation.shift import concat_set, crop_set, thin_set
from granalign.io.captions_import import CaptionedVideo, read_captions_file
from tools.bench import read_annotations
from tools.cli import app

CLIP = 2.0


def _video(vid: str, n: int = 75) -> CaptionedVideo:
    return CaptionedVideo(vid, CLIP, tuple(f"{vid} caption {i}" for i in range(n)), n * CLIP)


def _query(qid: int, vid: str, windows: list[list[float]], duration: float = 150.0) -> dict[str, Any]:
    ids = sorted({c for a, b in windows for c in range(int(a // CLIP), int(b // CLIP))})
    return {
        "qid": qid,
        "query": f"query {qid}",
        "vid": vid,
        "duration": duration,
        "relevant_windows": windows,
        "relevant_clip_ids": ids,
        "saliency_scores": [[c % 5, 1, 2] for c in ids],
    }


VIDEOS = {v.vid: v for v in (_video("alpha"), _video("beta"), _video("gamma"), _video("delta"))}
QUERIES = [
    _query(1, "alpha", [[10, 20]]),
    _query(2, "alpha", [[100, 110], [120, 124]]),
    _query(3, "beta", [[0, 4]]),
    _query(4, "beta", [[146, 150]]),
    _query(5, "gamma", [[20, 70]]),  # 50-s span: longer than a 30-s crop
    _query(6, "delta", [[60, 88]]),
]


def _check_aligned(record: dict[str, Any], source: dict[str, Any], captions: list[str]) -> None:
    """GT inside the video, clip ids shifted with the GT, captions equal the source's."""
    offset = record["source_offset_s"]
    n = len(captions)
    assert record["duration"] == n * CLIP
    for (a, b), (sa, sb) in zip(record["relevant_windows"], source["relevant_windows"], strict=True):
        assert 0 <= a < b <= record["duration"]
        assert (a + offset, b + offset) == (sa, sb)
    assert all(0 <= c < n for c in record["relevant_clip_ids"])
    for c, rating in zip(record["relevant_clip_ids"], record["saliency_scores"], strict=True):
        original = int(c + offset / CLIP)
        assert rating == source["saliency_scores"][source["relevant_clip_ids"].index(original)]
    source_caps = VIDEOS[source["vid"]].captions
    start = int(offset / CLIP)
    for i in range(n):
        if 0 <= i + start < len(source_caps) and captions[i].startswith(source["vid"] + " "):
            assert captions[i] == source_caps[i + start]


def test_crop_holds_all_gt_and_captions_line_up() -> None:
    result = crop_set(QUERIES, VIDEOS, 30.0, seed=0)
    caps = {c["vid"]: c for c in result.captions}
    assert [r["qid"] for r in result.annotations] == [1, 2, 3, 4, 6]
    assert result.dropped == {"ground-truth span longer than the crop": 1}
    sources = {q["qid"]: q for q in QUERIES}
    for record in result.annotations:
        line = caps[record["vid"]]
        assert len(line["captions"]) == 15 and line["duration"] == 30.0
        assert record["vid"] == f"crop30:{record['source_vid']}:{record['source_offset_s']:g}"
        offset = int(record["source_offset_s"] / CLIP)
        assert line["captions"] == list(VIDEOS[record["source_vid"]].captions[offset : offset + 15])
        _check_aligned(record, sources[record["qid"]], line["captions"])


def test_crop_offsets_are_seeded_random_and_reach_the_edges() -> None:
    offsets = {
        seed: [r["source_offset_s"] for r in crop_set(QUERIES, VIDEOS, 60.0, seed=seed).annotations]
        for seed in range(12)
    }
    assert offsets[3] == [r["source_offset_s"] for r in crop_set(QUERIES, VIDEOS, 60.0, seed=3).annotations]
    assert len({tuple(o) for o in offsets.values()}) > 1  # the seed moves the cuts
    first = {o[0] for o in offsets.values()}  # qid 1, GT [10, 20] in a 60-s cut: offset 0..10 s
    assert first <= {0.0, 2.0, 4.0, 6.0, 8.0, 10.0} and len(first) > 2
    # qid 3 at the start and qid 4 at the end of their video can only be cut one way each
    assert {o[2] for o in offsets.values()} == {0.0}
    assert {o[3] for o in offsets.values()} == {90.0}


def test_crop_drops_highlight_clips_outside_the_cut() -> None:
    query = _query(7, "alpha", [[40, 50]])
    query["relevant_clip_ids"] = [0, 20, 21, 22, 23, 24, 74]  # highlights beyond the GT
    query["saliency_scores"] = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [3, 3, 3], [3, 3, 3], [4, 4, 4], [0, 0, 1]]
    (record,) = crop_set([query], VIDEOS, 30.0, seed=1).annotations
    shift = int(record["source_offset_s"] / CLIP)
    assert record["relevant_clip_ids"] == [c - shift for c in range(20, 25)]
    assert record["saliency_scores"] == query["saliency_scores"][1:6]


def test_concat_joins_k_videos_and_shifts_gt() -> None:
    result = concat_set(QUERIES, VIDEOS, 2, seed=0)
    assert len(result.captions) == 2 and not result.dropped
    sources = {q["qid"]: q for q in QUERIES}
    for line in result.captions:
        members = line["members"]
        assert len(line["captions"]) == sum(len(VIDEOS[m].captions) for m in members) == 150
        assert line["duration"] == 300.0
        starts = {m: 75 * i for i, m in enumerate(members)}
        for record in (r for r in result.annotations if r["vid"] == line["vid"]):
            assert record["source_offset_s"] == -starts[record["source_vid"]] * CLIP
            _check_aligned(record, sources[record["qid"]], line["captions"])
            i = record["relevant_clip_ids"][0]
            assert (
                line["captions"][i] == VIDEOS[record["source_vid"]].captions[i - starts[record["source_vid"]]]
            )
    assert sorted(r["qid"] for r in result.annotations) == [1, 2, 3, 4, 5, 6]


def test_concat_drops_a_short_last_group_and_is_seeded() -> None:
    result = concat_set(QUERIES, VIDEOS, 3, seed=5)
    assert len(result.captions) == 1 and sum(result.dropped.values()) == 6 - len(result.annotations)
    again = concat_set(QUERIES, VIDEOS, 3, seed=5)
    assert again.captions == result.captions and again.annotations == result.annotations
    members = {tuple(concat_set(QUERIES, VIDEOS, 2, seed=s).captions[0]["members"]) for s in range(10)}
    assert len(members) > 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_thin_keeps_every_kth_caption_on_a_longer_grid_and_the_annotations(k: int) -> None:
    result = thin_set(QUERIES, VIDEOS, k)
    assert result.name == f"thin{k}" and not result.dropped
    by_vid = {line["vid"]: line for line in result.captions}
    assert len(by_vid) == len(VIDEOS)
    for record, source in zip(result.annotations, QUERIES, strict=True):
        line = by_vid[record["vid"]]
        video = VIDEOS[source["vid"]]
        assert record["vid"] == f"thin{k}:{source['vid']}" and record["source_vid"] == source["vid"]
        assert line["clip_len_s"] == k * CLIP and line["duration"] == video.duration_s
        assert line["captions"] == list(video.captions[::k])
        # caption i of the thinned grid starts where caption k·i did: same time, same text
        assert all(line["captions"][i] == video.captions[k * i] for i in range(len(line["captions"])))
        # GT in seconds and highlight clips on the evaluator's grid: unchanged
        provenance = {"source_vid": source["vid"], "source_offset_s": 0.0}
        assert {**record, "vid": source["vid"]} == {**source, **provenance}


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(InputError, match="thinning factor"):
        thin_set(QUERIES, VIDEOS, 0)
    with pytest.raises(InputError, match="not a whole number of 2-s clips"):
        crop_set(QUERIES, VIDEOS, 31.0, seed=0)
    with pytest.raises(InputError, match="concat size"):
        concat_set(QUERIES, VIDEOS, 0, seed=0)
    mixed = {**VIDEOS, "beta": CaptionedVideo("beta", 1.0, ("x",) * 150, 150.0)}
    with pytest.raises(InputError, match="one clip length"):
        concat_set(QUERIES, mixed, 2, seed=0)


def test_cli_writes_readable_sets_and_a_manifest(tmp_path: Path) -> None:
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    caps = tmp_path / "caps.jsonl"
    caps.write_text(
        "".join(
            json.dumps({"vid": v.vid, "clip_len_s": CLIP, "captions": list(v.captions)}) + "\n"
            for v in VIDEOS.values()
        )
    )
    out = tmp_path / "shifted"
    args = ["shift", "--annotations", str(ann), "--captions", str(caps), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--crop", "30", "--concat", "2", "--thin", "2", "--seed", "4"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 4 and set(manifest["sets"]) == {"crop30", "concat2", "thin2"}
    assert "crop30" in (out / "README.md").read_text() and "thin2" in (out / "README.md").read_text()
    for name in ("crop30", "concat2", "thin2"):  # the project's own readers accept what was written
        anns = read_annotations(out / name / "annotations.jsonl")
        videos = {v.vid: v for v in read_captions_file(out / name / "captions.jsonl")}
        assert {a.vid for a in anns} <= set(videos)
        assert manifest["sets"][name]["queries"] == len(anns)
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "nothing to build" in bad.output


def test_queries_without_captions_are_dropped_and_counted() -> None:
    queries = [*QUERIES, _query(7, "epsilon", [[10, 20]])]  # no captions line for "epsilon"
    for result in (crop_set(queries, VIDEOS, 60.0, seed=0), thin_set(queries, VIDEOS, 2)):
        assert result.dropped.get("no captions for its video") == 1, result.name
        assert 7 not in {a["qid"] for a in result.annotations}


@pytest.mark.parametrize("clip_len", [1.0, 4.0])
def test_highlight_clip_ids_shift_on_the_evaluator_grid_whatever_the_caption_grid(clip_len: float) -> None:
    """relevant_clip_ids are on the evaluator's 2-s grid: a crop or concat on a 1-s or 4-s
    caption grid must move them by offset_s / 2, not by the offset in caption clips."""
    n = int(40 / clip_len)
    videos = {v: CaptionedVideo(v, clip_len, tuple(f"{v} {i}" for i in range(n)), 40.0) for v in ("p", "q")}
    source = _query(1, "p", [[24, 28]], duration=40.0)  # 2-s clips 12 and 13
    ratings = dict(zip(source["relevant_clip_ids"], source["saliency_scores"], strict=True))

    def check(record: dict[str, Any]) -> None:
        shift = record["source_offset_s"] / CLIP
        assert shift == int(shift)  # the crop/member start lies on the 2-s grid
        moved = {
            c + int(shift): r
            for c, r in zip(record["relevant_clip_ids"], record["saliency_scores"], strict=True)
        }
        assert moved == ratings  # every GT clip kept, with its own ratings
        assert all(0 <= c < int(record["duration"] / CLIP) for c in record["relevant_clip_ids"])

    for seed in range(8):
        (record,) = crop_set([source], videos, 20.0, seed=seed).annotations
        check(record)
    second = {**source, "qid": 2, "vid": "q"}
    for record in concat_set([source, second], videos, 2, seed=0).annotations:
        check(record)


def test_a_set_built_from_a_shifted_set_keeps_the_original_video_and_offset() -> None:
    """``shift --thin 2`` on a crop's files (the README's 4-s sets): provenance must still name
    the original video (``--split`` goes by it) with the offsets added up."""
    crop = crop_set(QUERIES, VIDEOS, 60.0, seed=2)
    cropped = {v["vid"]: CaptionedVideo(v["vid"], v["clip_len_s"], tuple(v["captions"]), v["duration"])
               for v in crop.captions}  # fmt: skip
    sources = {q["qid"]: q for q in QUERIES}
    for record in thin_set(crop.annotations, cropped, 2).annotations:
        first = next(r for r in crop.annotations if r["qid"] == record["qid"])
        assert record["source_vid"] == sources[record["qid"]]["vid"]
        assert record["source_offset_s"] == first["source_offset_s"]
    for record in crop_set(crop.annotations, cropped, 30.0, seed=3).annotations:
        source = sources[record["qid"]]
        assert record["source_vid"] == source["vid"]
        offset = record["source_offset_s"]
        assert [[a + offset, b + offset] for a, b in record["relevant_windows"]] == source["relevant_windows"]


def test_concat_drops_highlight_clips_past_the_member_captions() -> None:
    """A 150-s video captioned for its first 140 s only: a highlight clip at 144 s (GT ends at
    20 s, so the query is kept) has no caption in the member; shifted by the member's start it
    would land on the next member's third clip, a highlight of an unrelated video."""
    short = CaptionedVideo("short", CLIP, tuple(f"short caption {i}" for i in range(70)), 150.0)
    videos = {"short": short, "alpha": VIDEOS["alpha"]}
    query = _query(1, "short", [[10, 20]])
    query["relevant_clip_ids"] = [5, 6, 7, 8, 9, 72]
    query["saliency_scores"] = [[c % 5, 1, 2] for c in query["relevant_clip_ids"]]
    for seed in range(6):  # either order of the two members
        result = concat_set([query, _query(2, "alpha", [[0, 4]])], videos, 2, seed=seed)
        record = next(r for r in result.annotations if r["qid"] == 1)
        start = -int(record["source_offset_s"] / CLIP)
        assert record["relevant_clip_ids"] == [c + start for c in (5, 6, 7, 8, 9)]
        assert record["saliency_scores"] == query["saliency_scores"][:5]


def test_crop_counts_ground_truth_past_the_captions_as_such() -> None:
    """QVHighlights val qid 8661: GT up to 150 s, captions for 148 s, a 58-s span.  It cannot be
    cropped, but not because its span is longer than a 60-s crop: the manifest must say why."""
    videos = {"short": CaptionedVideo("short", CLIP, tuple(f"c{i}" for i in range(74)), 148.0)}
    query = _query(1, "short", [[92, 124], [138, 150]])
    for length in (60.0, 90.0):
        result = crop_set([query], videos, length, seed=0)
        assert not result.annotations
        assert result.dropped == {"ground truth past its video's captions": 1}, result.dropped
    both = {**videos, "alpha": VIDEOS["alpha"]}  # concat already says so
    concat = concat_set([query, _query(2, "alpha", [[0, 4]])], both, 2, seed=0)
    assert concat.dropped == {"ground truth past its video's captions": 1}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_thin_keeps_the_caption_of_a_partial_last_clip(k: int) -> None:
    """A 149-s video has 75 2-s clips, the last one 1 s long (as ingest cuts a file).  Thinning
    must sample from all 75: dropping the last left the video's final second without a caption
    (thin1 was not the source) and a 4-s grid one clip short of what a 4-s captioner gives."""
    video = CaptionedVideo("odd", CLIP, tuple(f"odd {i}" for i in range(75)), 149.0)
    (line,) = thin_set([_query(1, "odd", [[140, 149]], duration=149.0)], {"odd": video}, k).captions
    assert line["captions"] == list(video.captions[::k])
    assert len(line["captions"]) == math.ceil(149.0 / (k * CLIP)) and line["duration"] == 149.0
    # captions past the video's end (more lines than clips) are still left out
    longer = CaptionedVideo("odd", CLIP, (*video.captions, "past the end"), 149.0)
    (line,) = thin_set([_query(1, "odd", [[140, 149]], duration=149.0)], {"odd": longer}, k).captions
    assert line["captions"] == list(video.captions[::k])


def _shift_inputs(tmp_path: Path) -> list[str]:
    """``shift`` arguments up to the sets: QUERIES and VIDEOS as files, ``--out`` in tmp_path."""
    ann, caps = tmp_path / "ann.jsonl", tmp_path / "caps.jsonl"
    ann.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    lines = [{"vid": v.vid, "clip_len_s": CLIP, "captions": list(v.captions)} for v in VIDEOS.values()]
    caps.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ["shift", "--annotations", str(ann), "--captions", str(caps), "--out", str(tmp_path / "out")]


def test_a_setting_that_leaves_no_query_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """``--crop 1e9`` (longer than every video) wrote a set of 0 queries with exit status 0."""
    got = CliRunner().invoke(app, [*_shift_inputs(tmp_path), "--crop", "1e9"], env={"COLUMNS": "400"})
    assert got.exit_code == 2, got.output
    assert "--crop 1e+09: no query is left, dropped 6 (video shorter than the crop)" in got.output
    assert not (tmp_path / "out").exists()


def test_an_empty_set_among_others_is_named_and_not_written(tmp_path: Path) -> None:
    args = [*_shift_inputs(tmp_path), "--crop", "1e9,30", "--concat", "9"]  # 4 videos: no group of 9
    got = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert got.exit_code == 0, got.output
    assert "skipped --crop 1e+09: no query is left" in got.output
    said = "skipped --concat 9: no query is left, dropped 6 (in the last 4 video(s), fewer than 9)"
    assert said in got.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["crop30"]
    assert set(json.loads((out / "manifest.json").read_text())["sets"]) == {"crop30"}
