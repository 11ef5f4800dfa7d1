"""The model cache shared by the local captioner and rewriter (granalign/backends/model_cache.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from granalign.backends.model_cache import ModelCache, pad_left
from granalign.errors import ConfigError


def test_loads_once_per_model_and_device() -> None:
    cache, calls = ModelCache("rewriter"), []

    def load() -> tuple[Any, Any]:
        calls.append(1)
        return f"tokenizer{len(calls)}", f"model{len(calls)}"

    first = cache.get("m", "cpu", load)
    assert cache.get("m", "cpu", load) is first
    assert (first.tokenizer, first.model) == ("tokenizer1", "model1")
    assert cache.get("m", "cuda", load).model == "model2"  # another device is another load
    cache.clear()
    assert cache.get("m", "cpu", load).model == "model3"


def _fail(exc: Exception) -> Any:
    def load() -> tuple[Any, Any]:
        raise exc

    return load


def test_load_failures_are_one_config_error_naming_role_and_model() -> None:
    cache = ModelCache("captioner")
    with pytest.raises(ConfigError, match=r"^captioner model 'vlm': a library is missing \(no torch\)$"):
        cache.get("vlm", "cpu", _fail(ImportError("no torch")))
    with pytest.raises(ConfigError, match=r"^captioner model 'vlm' could not be loaded: bad config$"):
        cache.get("vlm", "cpu", _fail(OSError("bad config\nsecond line")))
    with pytest.raises(ConfigError, match=r"^not in the cache; set HF_HUB_OFFLINE$"):  # ours: unchanged
        cache.get("vlm", "cpu", _fail(ConfigError("not in the cache; set HF_HUB_OFFLINE")))
    assert cache.get("vlm", "cpu", lambda: ("t", "m")).model == "m"  # a failure is not cached


def test_pad_left_keeps_a_pad_token_and_else_uses_eos() -> None:
    plain = SimpleNamespace(padding_side="right", pad_token=None, eos_token="</s>")
    pad_left(plain)
    assert (plain.padding_side, plain.pad_token) == ("left", "</s>")
    own = SimpleNamespace(padding_side="right", pad_token="<pad>", eos_token="</s>")
    pad_left(own)
    assert (own.padding_side, own.pad_token) == ("left", "<pad>")
