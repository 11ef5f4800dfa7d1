"""Rewrite-drift check and over-imitation guard, on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from granalign.errors import InputError
from granalign.validation import ImitationGuard, copied_word_share, drifted, rewrite_similarity


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
