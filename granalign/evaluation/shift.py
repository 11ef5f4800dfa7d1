"""Duration-shifted benchmarks from any captioned split (issue 13 item 2).

Every QVHighlights video is 150 s long; users bring 20-s clips and hour-long recordings.
Two derived sets test the method away from that one length, from captions alone:

* ``cropL`` — each query gets its own ``L``-second cut of its video that holds *all* its
  ground-truth windows, at a random offset on the clip grid (so captions stay whole clips).
  GT windows and highlight clip ids (``relevant_clip_ids`` with their ``saliency_scores``)
  are shifted into the cut; highlight clips outside it are dropped.  A query whose GT span
  is longer than ``L`` (or whose video is shorter) cannot be cut and is dropped and counted.
  New vid: ``crop<L>:<vid>:<offset_s>``; queries with the same vid and offset share one cut.
* ``concatK`` — the videos are shuffled and joined ``K`` at a time into one pseudo-video of
  K×150 s (for QVHighlights); each query of a member video asks the whole recording, with its
  GT and highlight clips shifted by the member's start, and the other K−1 videos act as
  distractors, as the unrelated parts of one long video do.  A remainder of fewer than ``K``
  videos is dropped and counted.  New vid: ``concat<K>:<group>``.
* ``thinK`` — every video keeps every K-th caption on a K× longer clip grid (a 2-s grid
  becomes 4 s for K = 2), as a captioner that samples K times less often would give; the
  video's duration and every annotation (GT windows in seconds, highlight clips on the
  evaluator's 2-s grid) are unchanged.  It tests what depends on the caption grid, such as
  length priors counted in clips.  New vid: ``thin<K>:<vid>``.

Derived queries keep their qid (so paraphrase files keyed by qid still apply) and record
``source_vid`` and ``source_offset_s`` (a time t in the derived video is t + source_offset_s
in the source video; a set built from an already derived one keeps the original video and
adds the offsets, so ``--split`` still finds each query's half).  Everything is seeded: a
crop's offset comes from ``(seed, L, qid)`` and the concat grouping from ``(seed, K)``, so
adding a set or reordering the file does not move the others.  numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from granalign.errors import InputError
from granalign.evaluation.metrics import CLIP_SECONDS
from granalign.io.captions_import import CaptionedVideo, _check_vid

DEFAULT_SEED = 0
_TOL = 1e-9


@dataclass
class ShiftedSet:
    """One derived set: its annotation lines, caption lines and what was dropped and why."""

    name: str
    annotations: list[dict[str, Any]] = field(default_factory=list)
    captions: list[dict[str, Any]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


def _stable_int(*parts: object) -> int:
    """A seed from values, the same on every machine (Python's ``hash`` is salted per process)."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _grid(video: CaptionedVideo) -> int:
    """Clips of the video on its caption grid: never past its duration or its captions."""
    return min(len(video.captions), math.floor(video.duration_s / video.clip_len_s + _TOL))


def _covered(video: CaptionedVideo) -> int:
    """Captions that start inside the video, a partial last clip included (a 149-s video has 75
    2-s clips, as ``io.video.clip_count`` cuts a file): what a thinned grid samples from."""
    return min(len(video.captions), math.ceil(video.duration_s / video.clip_len_s - _TOL))


def _grid_step(clip_len: float) -> int:
    """Fewest caption clips spanning a whole number of the evaluator's 2-s clips, so that a
    shift on the caption grid moves ``relevant_clip_ids`` (2-s grid) by a whole number too."""
    return (Fraction(clip_len).limit_denominator(10**6) / CLIP_SECONDS).denominator


def _clips_for(seconds: float, clip_len: float, name: str) -> int:
    clips = seconds / clip_len
    if abs(clips - round(clips)) > 1e-6:
        raise InputError(f"{name} {seconds:g} s is not a whole number of {clip_len:g}-s clips")
    return round(clips)


def _gt_span(record: dict[str, Any]) -> tuple[float, float]:
    windows = record.get("relevant_windows")
    if not isinstance(windows, list) or not windows:
        raise InputError(f"qid {record.get('qid')!r}: 'relevant_windows' must be a non-empty list")
    return min(float(w[0]) for w in windows), max(float(w[1]) for w in windows)


def _provenance(record: dict[str, Any]) -> tuple[str, float]:
    """The original video of a query and the offset of its time 0 there: a set built from an
    already shifted one (``--thin 2`` on a crop's files) keeps naming the original video."""
    source = record.get("source_vid")
    if isinstance(source, str) and source:
        return source, float(record.get("source_offset_s", 0.0))
    return str(record["vid"]), 0.0


def _shifted_record(
    record: dict[str, Any],
    vid: str,
    duration: float,
    offset_clips: int,
    clip_len: float,
    source_s: float | None = None,
) -> dict[str, Any]:
    """The annotation line moved by ``offset_clips`` caption clips (negative for a crop) into a
    video of ``duration`` seconds; highlight clips (on the evaluator's 2-s grid) that fall
    outside are dropped with their ratings, and so are those past ``source_s``, the end of the
    part of the source that was moved (a concat member's captions: a clip past them would land
    in the next member)."""
    shift_s = offset_clips * clip_len
    id_shift = round(shift_s / CLIP_SECONDS)  # whole: offsets are multiples of _grid_step
    n_ids = int(duration / CLIP_SECONDS)
    out = dict(record)
    source_vid, source_offset = _provenance(record)
    out.update(vid=vid, duration=duration, source_vid=source_vid, source_offset_s=source_offset - shift_s)
    out["relevant_windows"] = [
        [float(a) + shift_s, float(b) + shift_s] for a, b in record["relevant_windows"]
    ]
    ids = record.get("relevant_clip_ids")
    if isinstance(ids, list):
        ratings = record.get("saliency_scores")
        end = n_ids if source_s is None else min(n_ids, round(source_s / CLIP_SECONDS) + id_shift)
        kept = [i for i, c in enumerate(ids) if 0 <= int(c) + id_shift < end]
        out["relevant_clip_ids"] = [int(ids[i]) + id_shift for i in kept]
        if isinstance(ratings, list) and len(ratings) == len(ids):
            out["saliency_scores"] = [ratings[i] for i in kept]
    return out


def _with_captions(
    annotations: Sequence[dict[str, Any]], videos: dict[str, CaptionedVideo], result: ShiftedSet
) -> Iterator[tuple[dict[str, Any], CaptionedVideo]]:
    """Each query with its video's captions; a query whose video has none is dropped and counted."""
    for record in annotations:
        video = videos.get(record["vid"])
        if video is None:
            result.drop("no captions for its video")
            continue
        yield record, video


def crop_set(
    annotations: Sequence[dict[str, Any]], videos: dict[str, CaptionedVideo], length_s: float, *, seed: int
) -> ShiftedSet:
    """``crop<L>``: one L-second cut per query holding all its GT windows (module docstring)."""
    result = ShiftedSet(f"crop{length_s:g}")
    seen: set[str] = set()
    for record, video in _with_captions(annotations, videos, result):
        clip_len = video.clip_len_s
        cut = _clips_for(length_s, clip_len, f"crop length for video {video.vid}:")
        n = _grid(video)
        step = _grid_step(clip_len)
        start, end = _gt_span(record)
        low = max(0, math.ceil((end - length_s) / clip_len - _TOL))
        high = min(math.floor(start / clip_len + _TOL), n - cut)
        low, high = -(-low // step), high // step  # in steps: offsets stay on the 2-s grid
        if n < cut:
            result.drop("video shorter than the crop")
            continue
        if end > n * clip_len + _TOL:  # no cut on the captions can hold it, whatever its span
            result.drop("ground truth past its video's captions")
            continue
        if low > high:
            result.drop("ground-truth span longer than the crop")
            continue
        rng = np.random.default_rng(_stable_int(seed, "crop", length_s, record["qid"]))
        offset = step * int(rng.integers(low, high + 1))
        vid = _check_vid(f"crop{length_s:g}:{video.vid}:{offset * clip_len:g}", f"{result.name} vid")
        result.annotations.append(_shifted_record(record, vid, cut * clip_len, -offset, clip_len))
        if vid not in seen:
            seen.add(vid)
            result.captions.append(
                {
                    "vid": vid,
                    "clip_len_s": clip_len,
                    "captions": list(video.captions[offset : offset + cut]),
                    "duration": cut * clip_len,
                }
            )
    return result


def concat_set(
    annotations: Sequence[dict[str, Any]], videos: dict[str, CaptionedVideo], k: int, *, seed: int
) -> ShiftedSet:
    """``concat<K>``: videos joined K at a time into pseudo-videos (module docstring)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"concat size must be a positive integer, got {k!r}")
    result = ShiftedSet(f"concat{k}")
    by_vid: dict[str, list[dict[str, Any]]] = {}
    for record in annotations:
        if record["vid"] not in videos:
            result.drop("no captions for its video")
            continue
        by_vid.setdefault(record["vid"], []).append(record)
    vids = sorted(by_vid)
    clip_lens = {videos[v].clip_len_s for v in vids}
    if len(clip_lens) > 1:
        raise InputError(f"concat needs one clip length for all videos, got {sorted(clip_lens)}")
    order = np.random.default_rng(_stable_int(seed, "concat", k)).permutation(len(vids))
    groups = [[vids[i] for i in order[g : g + k]] for g in range(0, len(order), k)]
    if groups and len(groups[-1]) < k:
        left = groups.pop()
        result.drop(f"in the last {len(left)} video(s), fewer than {k}", sum(len(by_vid[v]) for v in left))
    for index, group in enumerate(groups):
        _add_group(result, index, group, videos, by_vid)
    return result


def _add_group(
    result: ShiftedSet,
    index: int,
    group: list[str],
    videos: dict[str, CaptionedVideo],
    by_vid: dict[str, list[dict[str, Any]]],
) -> None:
    clip_len = videos[group[0]].clip_len_s
    vid = _check_vid(f"{result.name}:{index:05d}", f"{result.name} vid")
    step = _grid_step(clip_len)
    grids = [_grid(videos[v]) // step * step for v in group]  # members start on the 2-s grid
    total = sum(grids)
    captions: list[str] = []
    for member, n in zip(group, grids, strict=True):
        offset = len(captions)
        for record in by_vid[member]:
            if _gt_span(record)[1] > n * clip_len + _TOL:
                result.drop("ground truth past its video's captions")
                continue
            moved = _shifted_record(record, vid, total * clip_len, offset, clip_len, n * clip_len)
            result.annotations.append(moved)
        captions.extend(videos[member].captions[:n])
    result.captions.append(
        {
            "vid": vid,
            "clip_len_s": clip_len,
            "captions": captions,
            "duration": total * clip_len,
            "members": group,
        }
    )


def thin_set(annotations: Sequence[dict[str, Any]], videos: dict[str, CaptionedVideo], k: int) -> ShiftedSet:
    """``thin<K>``: every K-th caption on a K× longer clip grid (module docstring)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"thinning factor must be a positive integer, got {k!r}")
    result = ShiftedSet(f"thin{k}")
    seen: set[str] = set()
    for record, video in _with_captions(annotations, videos, result):
        vid = _check_vid(f"{result.name}:{video.vid}", f"{result.name} vid")
        source_vid, source_offset = _provenance(record)
        provenance = {"source_vid": source_vid, "source_offset_s": source_offset}
        result.annotations.append({**record, "vid": vid, **provenance})
        if vid not in seen:
            seen.add(vid)
            captions = list(video.captions[: _covered(video)][::k])
            line = {"vid": vid, "clip_len_s": video.clip_len_s * k, "captions": captions}
            result.captions.append({**line, "duration": video.duration_s})
    return result


def shift_sets(
    annotations: Iterable[dict[str, Any]],
    videos: Iterable[CaptionedVideo],
    *,
    crops: Sequence[float] = (),
    concats: Sequence[int] = (),
    thins: Sequence[int] = (),
    seed: int = DEFAULT_SEED,
) -> list[ShiftedSet]:
    """Every requested derived set, crops first, then concatenations and thinned grids, each
    in the order given."""
    anns = list(annotations)
    by_vid = {v.vid: v for v in videos}
    sets = [crop_set(anns, by_vid, float(length), seed=seed) for length in crops]
    sets += [concat_set(anns, by_vid, k, seed=seed) for k in concats]
    return sets + [thin_set(anns, by_vid, k) for k in thins]
