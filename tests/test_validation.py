"""Rewrite-drift check and over-imitation guard, on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from granalign.core.validation import ImitationGuard, copied_word_share, drifted, rewrite_similarity
from granalign.errors import InputError


def test_drifted_rewrites_are_flagged():
    q = np.array([1.0, 0.0, 0.0])
    rewrites = np.array([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    sims = rewrite_similarity(q, rewrites)
    assert sims[0] > 0.9 and abs(sims[1]) < 1e-9 and sims[2] == pytest.approx(-1.0)
    assert drifted(sims, 0.5).tolist() == [False, True, True]
    assert drifted(sims, -1.0).tolist() == [False, False, False]  # disabled
    with pytest.raises(InputError, match="threshold"):
        drifted(sims, 2.0)
    with pytest.raises(InputError, match="dimension"):
        rewrite_similarity(q, np.ones((1, 4)))


def test_a_side_equal_to_the_query_never_drifts_even_at_threshold_one(monkeypatch):
    """At the edge ``drift_threshold=1`` the query's cosine with itself can round to 1 - 1e-16
    (it depends on the BLAS kernel): the original query (and a rewrite identical to it) was then
    reported as drifted and 'replaced' by itself, and the notes counted those sides as drift."""
    from granalign.rewrite import Rewrite
    from granalign.stages import rewrite as stage

    real = stage.rewrite_similarity
    monkeypatch.setattr(stage, "rewrite_similarity", lambda q, r: real(q, r) - 1e-16)  # the rounding
    query = "a man cuts vegetables"
    emb = {query: np.array([0.6, 0.8, 0.0]), "stock prices fell": np.array([0.0, 0.0, 1.0])}
    variants = [Rewrite.original(query), Rewrite("core", query, "stock prices fell")]
    out, replaced = stage.replace_drifted(variants, query, emb, 1.0)
    assert replaced == 1
    assert out[0] == variants[0]
    assert (out[1].simplified, out[1].detailed) == (query, query) and "drifted" in out[1].reason


def test_copied_word_share_counts_only_unsupported_query_words():
    query = "a woman walks her dog on the beach"
    assert copied_word_share("a woman walks a dog on a beach", "a woman walks a dog on a beach", query) == 0.0
    share = copied_word_share("a woman walks a dog on a red towel", "a person on a red towel", query)
    assert share == pytest.approx(3 / 5)  # woman, walk, dog copied and unsupported; red, towel are not
    assert copied_word_share("", "anything", query) == 0.0


def test_guard_down_weights_a_caption_that_copies_the_query():
    guard = ImitationGuard()
    q = np.array([1.0, 0.0])
    aware = np.array([[1.0, 0.0], [0.6, 0.8]])
    agnostic = np.array([[0.0, 1.0], [0.6, 0.8]])
    w = guard.weights(
        ["a woman walks a dog on a beach", "a red car on a street"],
        ["a person on a sandy shore", "a red car on a street"],
        "a woman walks her dog on the beach",
        aware,
        agnostic,
        q,
    )
    assert w[0] == pytest.approx(0.5)  # copies the query beyond what C_agn supports: max penalty
    assert w[1] == pytest.approx(1.0)  # agrees with its agnostic caption: untouched
    assert np.all((w >= 0.5) & (w <= 1.0))


def test_guard_validates_inputs():
    with pytest.raises(InputError, match="max_penalty"):
        ImitationGuard(max_penalty=2)
    with pytest.raises(InputError, match="aware captions"):
        ImitationGuard().weights(["a"], [], "q", np.ones((1, 2)), np.ones((0, 2)), np.ones(2))


# -- wired into the retrieval graph ---------------------------------------------------------------


def test_graph_replaces_drifted_rewrite_sides_and_says_so(tmp_path):
    import json

    from granalign.backends.embedder import make_embedder
    from granalign.io.captions_import import import_captions
    from graphs import resources
    from graphs.context import Context
    from graphs.retrieval import graph
    from tests.test_graph import CAPTIONS

    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"vid": "kitchen", "clip_len_s": 2, "captions": CAPTIONS}) + "\n")
    base = Context(store_dir=str(tmp_path / "store"))
    import_captions(resources.store_for(base), make_embedder(base.embedder), caps, source="test")
    query = "a man cuts vegetables"
    rewrites = tmp_path / "rewrites.jsonl"
    rewrites.write_text(
        json.dumps(
            {
                "query": query,
                "rewrites": [
                    {
                        "pair_id": "core",
                        "simplified": "stock prices fell today",
                        "detailed": "a man chops carrots",
                    }
                ],
            }
        )
        + "\n"
    )
    ctx = base.with_overrides(rewriter=f"file:{rewrites}", include_original=False, prompt_pairs="core", m=1)
    off = graph.invoke({"video": "kitchen", "query": query}, context=ctx.with_overrides(drift_threshold=-1.0))
    on = graph.invoke({"video": "kitchen", "query": query}, context=ctx.with_overrides(drift_threshold=0.3))
    assert not any("drifted" in n for n in off["notes"])
    assert any("1 rewrite side(s) drifted" in n for n in on["notes"])
    (variant,) = on["variants"]
    assert variant["simplified"] == query and variant["detailed"] == "a man chops carrots"
    assert "drifted" in variant["reason"]
    assert on["saliency"] != off["saliency"]


def test_imitation_guard_damps_only_copied_aware_captions_in_full_mode():
    from dataclasses import replace

    from granalign.backends.embedder import make_embedder
    from granalign.stages.aware_captions import AwareCaptions
    from granalign.stages.fusion import FusionSettings, aware_channel
    from graphs.context import Context

    query = "a woman plays a red violin on stage"
    agnostic = ["a woman plays a red violin on a stage", "a person stands in a dark room", "a dog runs"]
    aware = ["a woman plays a red violin on a stage", "a woman plays a red violin on stage", "a dog runs"]
    emb = make_embedder("local:all-MiniLM-L6-v2")
    got = AwareCaptions(clips=[0, 1, 2], captions=aware, embeddings=emb.embed(aware), computed=0)
    q = emb.embed([query])
    settings = FusionSettings.of(Context())
    kw = {"agnostic_captions": agnostic, "agnostic_emb": emb.embed(agnostic), "query": query}
    kw["query_emb"] = q[0]
    on, _ = aware_channel(q, 3, got, settings, **kw)
    off, _ = aware_channel(q, 3, got, replace(settings, imitation_guard=False), **kw)
    assert on[0, 0] == off[0, 0]  # clip 0: the agnostic caption shows the same thing
    assert on[0, 1] < off[0, 1] and on[0, 1] >= 0.5 * off[0, 1]  # clip 1 copies the query: damped, not erased
    assert np.isclose(on[0, 2], off[0, 2])


@pytest.mark.parametrize("bad", [float("nan"), "0.4", True, np.array([0.4, 0.5])], ids=repr)
def test_a_drift_threshold_that_is_no_number_in_range_is_refused_where_it_is_applied(bad: object) -> None:
    """NaN compares false with every cosine: drifted flagged nothing and embed_variants's
    ``threshold > -1`` read it as "off"; a string or an array failed inside numpy."""
    from granalign.rewrite import Rewrite
    from granalign.stages.rewrite import embed_variants

    class NoEmbedder:
        def embed(self, texts: list[str]) -> np.ndarray:
            raise AssertionError("the threshold is checked before any model runs")

    with pytest.raises(InputError, match=r"^drift threshold must be"):
        drifted(np.array([0.5, 0.9]), bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^drift threshold must be"):
        embed_variants("a dog", [Rewrite.original("a dog")], NoEmbedder(), bad)  # type: ignore[arg-type]
