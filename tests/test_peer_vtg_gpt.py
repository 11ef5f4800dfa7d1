"""The vtg-gpt proposal mode: VTG-GPT's ``get_span`` + ``nms`` on given score curves.

Expected values are computed by hand from VTG-GPT's published rule (``infer_qvhighlights.py``:
10 bins over [0, 1], top-k 8, gap 6, score 0.5·len share + 0.5·mean of the above-threshold
clips, NMS at IoU ≥ 0.95 on clip indices), so the embedder plays no part.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from granalign.backends.embedder import make_embedder
from granalign.core.peer import vtg_gpt_nms, vtg_gpt_spans, vtg_gpt_windows
from granalign.errors import ConfigError, InputError
from granalign.io.captions_import import import_captions
from graphs import resources
from graphs.context import Context
from graphs.retrieval import nms, propose


def _three_runs_curve() -> np.ndarray:
    """30 clips; 7 clips clearly above 0.6 and one exactly at 0.5 (clip 27).

    Bins ≥ 0.6 hold 7 clips (< 8), bin [0.5, 0.6) brings 8: threshold 0.5.  Clip 27 is *at*
    the threshold, not above, so it is no member (else it would join clips 24–25).
    """
    curve = np.zeros(30)
    curve[[3, 4, 5, 12, 15, 24, 25, 27]] = [1.0, 0.95, 0.65, 0.85, 0.75, 0.62, 0.66, 0.5]
    return curve


def test_spans_follow_the_published_rule_by_hand() -> None:
    spans = vtg_gpt_spans(_three_runs_curve())
    # members 3,4,5 | 12,15 (13,14 bridged, gap 3 <= 6) | 24,25; 5->12 and 15->24 exceed the gap.
    # score = 0.5·len/7 + 0.5·mean over members only (bridged clips 13, 14 count for neither).
    expected = [
        [3, 5, 0.5 * 3 / 7 + 0.5 * (1.0 + 0.95 + 0.65) / 3],
        [12, 15, 0.5 * 2 / 7 + 0.5 * (0.85 + 0.75) / 2],
        [24, 25, 0.5 * 2 / 7 + 0.5 * (0.62 + 0.66) / 2],
    ]
    np.testing.assert_allclose(spans, expected)


def test_gap_of_exactly_six_clips_merges_seven_does_not() -> None:
    merged = np.zeros(20)
    merged[[0, 6]] = 1.0
    split = np.zeros(20)
    split[[0, 7]] = 1.0
    # fewer than 8 clips above any bin: threshold 0, the two 1.0 clips are the members
    np.testing.assert_allclose(vtg_gpt_spans(merged), [[0, 6, 0.5 * 1.0 + 0.5 * 1.0]])
    np.testing.assert_allclose(vtg_gpt_spans(split), [[0, 0, 0.75], [7, 7, 0.75]])  # tie: clip order


def test_short_curve_uses_threshold_zero_and_zero_clips_are_not_members() -> None:
    spans = vtg_gpt_spans([0.0, 0.2, 1.0, 0.4, 0.0])
    np.testing.assert_allclose(spans, [[1, 3, 0.5 * 1.0 + 0.5 * (0.2 + 1.0 + 0.4) / 3]])


@pytest.mark.parametrize("curve", [[0.3] * 12, [0.5] * 8 + [0.0, 0.0]])
def test_curves_their_code_cannot_handle_propose_nothing(curve: list[float]) -> None:
    # constant: their min-max gives NaN; top clips exactly on the threshold: their IndexError
    assert vtg_gpt_spans(curve).shape == (0, 3)


def test_nms_uses_clip_index_iou_with_their_zero_length_single_clips() -> None:
    pooled = np.array(
        [
            [0, 19, 0.9],  # kept
            [0, 18, 0.8],  # IoU 18/19 = 0.947 < 0.95 on clip indices: kept (in seconds 0.95)
            [0, 19, 0.85],  # identical extent: suppressed
            [5, 5, 0.7],  # one clip = length 0: IoU 0 with everything, kept ...
            [5, 5, 0.6],  # ... and so is its duplicate (their quirk)
        ]
    )
    np.testing.assert_allclose(vtg_gpt_nms(pooled), pooled[[0, 1, 3, 4]])


def test_nms_ties_keep_pooled_order() -> None:
    pooled = np.array([[10, 12, 0.5], [0, 4, 0.5], [10, 12, 0.5]])
    np.testing.assert_allclose(vtg_gpt_nms(pooled), pooled[[0, 1]])


def test_windows_pool_variants_normalise_and_convert_to_seconds() -> None:
    first = _three_runs_curve()
    second = np.zeros(30)
    second[[20, 21]] = [1.0, 0.8]  # < 8 clips: threshold 0, one run 20..21
    # half-weighted rows (as fusion.variant_scores gives in caption-only mode) are min–max'd first
    got = vtg_gpt_windows(np.stack([0.5 * first, 0.5 * second]), clip_len=2.0, duration=60.0)
    second_score = 0.5 * 1.0 + 0.5 * 0.9
    assert got[0] == pytest.approx([40.0, 44.0, second_score])  # clips 20..21 -> [40, 44] s
    assert [w[:2] for w in got[1:]] == [[6.0, 12.0], [24.0, 32.0], [48.0, 52.0]]
    assert got == vtg_gpt_windows(np.stack([first, second]), clip_len=2.0, duration=60.0)
    assert len(vtg_gpt_windows(np.stack([first, second]), clip_len=2.0, duration=60.0, top_n=2)) == 2


def test_windows_are_clamped_to_the_duration() -> None:
    curve = np.zeros(10)
    curve[9] = 1.0
    assert vtg_gpt_windows(curve[None, :], clip_len=2.0, duration=19.0) == [[18.0, 19.0, 1.0]]


def test_windows_never_end_after_a_duration_with_more_decimals() -> None:
    """A video of 14.91666 s (a 0.25-s grid, 60 clips): a window ending in the last clip was
    rounded to 14.9167 s, past the video's end, which the answer's contract forbids."""
    curve = np.zeros(60)
    curve[[50, 59]] = [0.9, 1.0]
    duration = 60 * 0.25 - 0.25 / 3
    got = vtg_gpt_windows(curve[None, :], clip_len=0.25, duration=duration)
    assert got and all(0 <= start < end <= duration for start, end, _ in got), got
    assert max(end for _, end, _ in got) == 14.9166


def test_bad_shapes_are_input_errors() -> None:
    with pytest.raises(InputError, match="variant_scores"):
        vtg_gpt_windows(np.zeros(5), clip_len=2.0, duration=10.0)
    with pytest.raises(InputError, match="spans"):
        vtg_gpt_nms(np.zeros((2, 2)))


def test_context_accepts_the_peer_mode_and_rejects_others() -> None:
    assert Context(proposal_mode="vtg-gpt").moment_settings().proposal_mode == "vtg-gpt"
    with pytest.raises(ConfigError, match="proposal_mode"):
        Context(proposal_mode="vtg")


@pytest.fixture(scope="module")
def peer_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("peerstore")
    caps = path / "caps.jsonl"
    captions = [f"caption number {i}" for i in range(30)]
    caps.write_text(json.dumps({"vid": "thirty", "clip_len_s": 2, "captions": captions}) + "\n")
    ctx = Context(store_dir=str(path / "store"))
    import_captions(resources.store_for(ctx), make_embedder(ctx.embedder), caps, source="test")
    return path / "store"


def _nodes(store: Path, variant_scores: np.ndarray, fused: np.ndarray, **settings: object) -> dict:
    ctx = Context(store_dir=str(store), **settings)  # type: ignore[arg-type]
    runtime = SimpleNamespace(context=ctx)
    state = {
        "video_id": "thirty",
        "mode": "caption-only",
        "n_clips": 30,
        "clip_len_s": 2.0,
        "variant_scores": variant_scores.tolist(),
        "fused": fused.tolist(),
    }
    state.update(propose(state, runtime))  # type: ignore[arg-type]
    return {**state, **nms(state, runtime)}  # type: ignore[arg-type]


def test_graph_nodes_in_peer_mode_return_the_peer_ranking(peer_store: Path) -> None:
    curves = np.stack([0.5 * _three_runs_curve(), np.zeros(30)])
    curves[1, [0, 1]] = [0.5, 0.4]
    fused = curves.mean(axis=0)
    out = _nodes(peer_store, curves, fused, proposal_mode="vtg-gpt", top_n=3)
    expected = vtg_gpt_windows(curves, clip_len=2.0, duration=60.0, top_n=3)
    assert out["moments"] == expected
    assert out["saliency"] == pytest.approx(fused.tolist(), abs=1e-4)  # S_f, not smoothed
    ours = _nodes(peer_store, curves, fused, proposal_mode="pooled", top_n=3)
    assert ours["moments"] != out["moments"]


def test_graph_nodes_in_peer_mode_fall_back_to_the_whole_video(peer_store: Path) -> None:
    flat = np.zeros((1, 30))
    out = _nodes(peer_store, flat, flat[0], proposal_mode="vtg-gpt")
    assert [m[:2] for m in out["moments"]] == [[0.0, 60.0]]


@pytest.mark.parametrize("distinct_nms_iou", [0.95, 1.0])
def test_distinct_profile_has_no_duplicate_peer_windows_at_any_iou(
    peer_store: Path, distinct_nms_iou: float
) -> None:
    """The peer's NMS never suppresses with a one-clip window, so two variants that both
    propose clip 9 give the same window twice.  The distinct profile thinned the peer's windows
    only below its own IoU 0.95: at distinct_nms_iou 0.95 or 1.0 (both allowed) the answer
    repeated [18, 20].  The benchmark profile keeps the peer's published duplicates."""
    curves = np.zeros((2, 30))
    curves[:, 9] = 0.5
    fused = curves.mean(axis=0)
    out = _nodes(
        peer_store, curves, fused, proposal_mode="vtg-gpt",
        answer_profile="distinct", distinct_nms_iou=distinct_nms_iou,
    )  # fmt: skip
    assert out["moments"] == [[18.0, 20.0, 1.0]]
    bench = _nodes(peer_store, curves, fused, proposal_mode="vtg-gpt", answer_profile="benchmark")
    assert bench["moments"] == [[18.0, 20.0, 1.0]] * 2


# -- the NMS step against the quadratic loop it replaced ------------------------------------


def _reference_nms(spans: np.ndarray, iou_threshold: float = 0.95) -> np.ndarray:
    """The peer's NMS before it went sub-quadratic, kept verbatim as the reference: a greedy
    ``argmax`` round per survivor, each masking the windows at IoU ≥ threshold, no ``top_n``."""
    rows = np.asarray(spans, dtype=np.float64)
    if rows.size == 0:
        return np.empty((0, 3))
    starts, ends = rows[:, 0], rows[:, 1]
    work = rows[:, 2].copy()
    kept: list[int] = []
    while len(kept) < rows.shape[0] and work.size:
        best = int(np.argmax(work))
        if work[best] == -np.inf:
            break
        kept.append(best)
        inter = np.clip(np.minimum(ends[best], ends) - np.maximum(starts[best], starts), 0.0, None)
        union = (ends[best] - starts[best]) + (ends - starts) - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        work[iou >= iou_threshold] = -np.inf
        work[best] = -np.inf
    return rows[np.asarray(kept, dtype=np.int64)]


def _random_curves(rng: np.random.Generator, v: int, n: int, kind: str) -> np.ndarray:
    if kind == "noise":
        return rng.random((v, n))
    if kind == "ties":  # few distinct values: equal scores, equal spans across variants
        return rng.integers(0, 5, size=(v, n)) / 4.0
    if kind == "flat":
        return np.full((v, n), 0.3)
    if kind == "spikes":
        curves = np.zeros((v, n))
        for row in curves:
            row[rng.integers(0, n, size=max(1, n // 20))] = rng.random(max(1, n // 20))
        return curves
    if kind == "copies":  # every variant the same curve: every window pooled v times
        return np.repeat(rng.random((1, n)), v, axis=0)
    if kind == "steps":  # long plateaus: long runs, nested and shifted windows
        return np.repeat(rng.random((v, max(1, n // 50))), 50, axis=1)[:, :n]
    raise AssertionError(kind)


def _pooled(curves: np.ndarray) -> np.ndarray:
    from granalign.core.similarity import minmax_normalise

    return np.concatenate([vtg_gpt_spans(c) for c in minmax_normalise(curves)], axis=0)


KINDS = ["noise", "ties", "flat", "spikes", "copies", "steps"]


@pytest.mark.parametrize("kind", KINDS)
def test_nms_equals_the_quadratic_reference_on_random_curves(kind: str) -> None:
    rng = np.random.default_rng(KINDS.index(kind))
    for n in [1, 2, 3, 7, 9, 30, 31, 200, 1000]:
        for v in [1, 2, 6, 17]:
            pooled = _pooled(_random_curves(rng, v, n, kind))
            np.testing.assert_array_equal(vtg_gpt_nms(pooled), _reference_nms(pooled))


@pytest.mark.parametrize(("kind", "v"), [("noise", 6), ("noise", 17), ("ties", 6), ("steps", 6)])
def test_nms_equals_the_quadratic_reference_on_18000_clip_curves(kind: str, v: int) -> None:
    curves = _random_curves(np.random.default_rng(v), v, 18_000, kind)
    pooled = _pooled(curves)
    assert pooled.shape[0] > 100
    np.testing.assert_array_equal(vtg_gpt_nms(pooled), _reference_nms(pooled))


def test_windows_equal_those_of_the_quadratic_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    import granalign.core.peer as peer

    rng = np.random.default_rng(7)
    cases = [_random_curves(rng, v, n, kind) for kind in KINDS for v, n in [(1, 1), (6, 500), (17, 3000)]]
    new = [vtg_gpt_windows(c, clip_len=2.0, duration=2.0 * c.shape[1]) for c in cases]
    monkeypatch.setattr(peer, "vtg_gpt_nms", lambda spans, rule=peer.VTG_GPT: _reference_nms(spans))
    old = [vtg_gpt_windows(c, clip_len=2.0, duration=2.0 * c.shape[1]) for c in cases]
    assert new == old


@pytest.mark.parametrize("iou", [0.95, 1.0, 0.5, 0.1, 1e-9, 1e-40])
def test_nms_equals_the_reference_on_arbitrary_windows(iou: float) -> None:
    """Windows no curve gives (fractional, tiny, huge, negative, zero-length, near-duplicate)
    at any threshold: the same survivors, in the same order."""
    from granalign.core.nms import greedy_nms_all_indices

    rng = np.random.default_rng(int(iou * 1000))
    for trial in range(60):
        k = int(rng.integers(1, 400))
        scale = [1.0, 1e-3, 1e6, 1e-80, 1e80, 1e-200, 1e200][trial % 7]  # the last two: beyond the grid
        if trial % 3 == 0:  # integer clip indices with many repeats
            starts = rng.integers(0, 50, size=k).astype(np.float64)
            lengths = rng.integers(0, 30, size=k).astype(np.float64)
        elif trial % 3 == 1:  # near-duplicates of a few windows
            base = rng.random((5, 2)) * [100.0, 40.0]
            pick = rng.integers(0, 5, size=k)
            starts = base[pick, 0] + rng.normal(0, 0.3, size=k)
            lengths = np.abs(base[pick, 1] + rng.normal(0, 0.3, size=k))
        else:  # lengths over many orders of magnitude
            starts = rng.normal(0, 100, size=k)
            lengths = 10.0 ** rng.uniform(-3, 3, size=k) * (rng.random(k) > 0.1)
        scores = np.round(rng.random(k), int(rng.integers(1, 4)))  # ties
        spans = np.column_stack([starts * scale, (starts + lengths) * scale, scores])
        spans = spans[spans[:, 1] >= spans[:, 0]]
        kept = greedy_nms_all_indices(spans[:, :2], spans[:, 2], iou)
        np.testing.assert_array_equal(spans[kept], _reference_nms(spans, iou))
