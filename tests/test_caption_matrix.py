"""A video's caption embeddings are converted and checked once for all of its queries.

``similarity.CaptionMatrix`` carries them as float64 with their norms; every function that reads
captions accepts it in place of the array and must give the very same numbers (the published
tables were computed through the array path), and the graph's video cache builds it once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from granalign.core.feedback import feedback_queries
from granalign.core.match import caption_match
from granalign.core.similarity import CaptionMatrix, caption_matrix, cosine_similarity
from granalign.core.smoothing import smoothed_similarity
from granalign.errors import InputError
from granalign.io.captions_import import import_captions
from granalign.stages.fusion import FusionSettings, fuse
from graphs import resources
from graphs.context import Context


def _captions(n: int = 60, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    captions = rng.standard_normal((n, d)).astype(np.float32)
    captions[3] = 0.0  # a zero row: similar to nothing
    return captions


def _queries(d: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, d)).astype(np.float32)


def test_every_reader_gives_the_same_numbers_from_the_checked_matrix() -> None:
    captions, queries = _captions(), _queries()
    checked = caption_matrix(captions)
    assert np.array_equal(cosine_similarity(queries, checked), cosine_similarity(queries, captions))
    assert np.array_equal(feedback_queries(queries, checked), feedback_queries(queries, captions))
    assert np.array_equal(
        smoothed_similarity(queries, checked, 1.0), smoothed_similarity(queries, captions, 1.0)
    )
    assert caption_match(queries[0], checked) == caption_match(queries[0], captions)


def test_huge_and_tiny_rows_take_the_exact_path_through_the_checked_matrix_too() -> None:
    captions = _captions().astype(np.float64)
    captions[5] *= 1e200  # its squared norm overflows
    captions[7] *= 1e-200  # and this one's underflows
    checked = caption_matrix(captions)
    assert not checked.plain_norms
    sims = cosine_similarity(_queries(), checked)
    assert np.array_equal(sims, cosine_similarity(_queries(), captions))
    assert np.all(np.isfinite(sims)) and np.all(np.abs(sims[:, [5, 7]]) > 0)


@pytest.mark.parametrize("missing", ["zero", "agnostic"])
def test_fuse_from_the_checked_matrix_equals_fuse_from_the_array(missing: str) -> None:
    captions, q_s, q_d = _captions(), _queries(seed=1), _queries(seed=2)
    settings = FusionSettings.of(Context(aware_missing=missing))
    from_array = fuse(q_s, q_d, captions, settings, query_emb=q_s[0])
    from_matrix = fuse(q_s, q_d, caption_matrix(captions), settings, query_emb=q_s[0])
    assert from_matrix == from_array


def test_caption_matrix_names_a_bad_input_and_passes_a_built_one_through() -> None:
    captions = _captions()
    captions[2, 1] = np.nan
    with pytest.raises(InputError, match=r"^caption embeddings of 'v' contains 1 NaN"):
        caption_matrix(captions, "caption embeddings of 'v'")
    with pytest.raises(InputError, match="captions must be a 2-D array"):
        caption_matrix(np.ones(3))
    built = caption_matrix(_captions())
    assert caption_matrix(built) is built
    assert built.values.dtype == np.float64 and built.norms.shape == (60,)


def test_the_video_cache_checks_the_embeddings_once_and_counts_both_copies(tmp_path: Path) -> None:
    ctx = Context(store_dir=str(tmp_path / "store"))
    texts = ["a man cuts carrots on a wooden board", "a dog sleeps on a sofa", "a dog runs on a beach"]
    path = tmp_path / "caps.jsonl"
    path.write_text(json.dumps({"vid": "v1", "clip_len_s": 2, "captions": texts}) + "\n")
    import_captions(resources.store_for(ctx), resources.embedder_for(ctx), path, source="t")
    resources.clear_caches()
    first = resources.video_captions(ctx, "v1", check=True)
    assert isinstance(first.checked, CaptionMatrix)
    assert np.array_equal(first.checked.values, first.embeddings.astype(np.float64))
    assert first.nbytes == first.embeddings.nbytes + first.checked.values.nbytes + first.checked.norms.nbytes
    again = resources.video_captions(ctx, "v1", check=True)  # the next query of the video
    assert again is first and again.checked is first.checked
