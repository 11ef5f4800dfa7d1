"""The numbers that leave the retrieval graph are rounded in one place (``rounded_answer``).

Without it the library, CLI, LangChain tool, MCP server and a served ``langgraph dev`` graph
return saliency values that differ in the 9th decimal, because the last bits of a float sum
depend on the process (BLAS threads, summation order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from langgraph.runtime import Runtime

from granalign.core.moments import rounded_answer
from graphs.context import Context
from graphs.retrieval import nms

FUSED = [0.123456789, 1 / 3, 0.987654321, 2 / 3, 0.5, 0.25]
# an ingested video's state: one saliency value per stored clip, no store lookup needed
ONE_PER_CLIP: dict[str, Any] = {"mode": "full", "n_clips": len(FUSED), "clip_len_s": 2.0}
CANDIDATES = [[0.0, 4.0, 0.7654321], [6.0, 10.0, 0.55555555], [2.0, 8.0, 0.31415926]]


def _nms(fused: list[float]) -> dict[str, Any]:
    state: dict[str, Any] = {"candidates": CANDIDATES, "fused": fused, "duration": 12.0, **ONE_PER_CLIP}
    return nms(state, Runtime(context=Context(saliency_sigma=0.0)))  # type: ignore[arg-type]


def test_rounded_answer_rounds_moments_and_saliency_to_4_decimals() -> None:
    moments, curve = rounded_answer([[0.0, 4.00004, 0.76543], [6.0, 10.0, 0.55555555]], [1 / 3, 0.98766])
    assert moments == [[0.0, 4.0, 0.7654], [6.0, 10.0, 0.5556]]
    assert curve == [0.3333, 0.9877]
    assert all(type(v) is float for row in moments for v in row) and all(type(v) is float for v in curve)


def test_rounded_answer_of_no_moments_is_an_empty_list() -> None:
    assert rounded_answer([], [0.5]) == ([], [0.5])


def test_nms_node_returns_4_decimal_numbers() -> None:
    out = _nms(FUSED)
    assert out["saliency"] == [0.1235, 0.3333, 0.9877, 0.6667, 0.5, 0.25]
    assert all(v == round(v, 4) for row in out["moments"] for v in row)


def test_nms_node_gives_the_same_numbers_when_the_last_bits_of_s_f_differ() -> None:
    """Two processes that sum in another order: S_f differs by ~1e-9, the answer does not."""
    jitter = np.array([1e-9, -1e-9, 2e-9, -2e-9, 1e-9, -1e-9])
    assert _nms(FUSED) == _nms((np.array(FUSED) + jitter).tolist())


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_smoothed_saliency_is_rounded_too(sigma: float) -> None:
    state: dict[str, Any] = {"candidates": CANDIDATES, "fused": FUSED, "duration": 12.0, **ONE_PER_CLIP}
    out = nms(state, Runtime(context=Context(saliency_sigma=sigma)))  # type: ignore[arg-type]
    assert all(v == round(v, 4) for v in out["saliency"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rounded_answer_refuses_a_non_finite_number_naming_the_argument(bad: float) -> None:
    """np.round kept NaN, and the answer's JSON then held NaN (no JSON at all for a strict reader)."""
    from granalign.errors import InputError

    with pytest.raises(InputError, match=r"^moments contains 1 NaN"):
        rounded_answer([[0.0, 4.0, bad]], [0.5])
    with pytest.raises(InputError, match=r"^curve contains 1 NaN"):
        rounded_answer([[0.0, 4.0, 0.5]], [0.5, bad])
