"""The prompts the library uses, read from ``prompts/`` with the library's errors.

``prompts/`` is data with a loader that imports nothing from the library (it sits below it),
so its loader raises its own :class:`prompts.PromptError`; every library caller loads prompts
through this module, which turns that into an :class:`InputError` the CLI prints as one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import prompts
from granalign.errors import InputError
from prompts import PromptPair

__all__ = ["available_pair_ids", "load_prompt_pairs", "prompt_text"]

T = TypeVar("T")


def _wrapped(load: Callable[[], T]) -> T:
    try:
        return load()
    except prompts.PromptError as exc:
        raise InputError(str(exc)) from None


def load_prompt_pairs(
    ids: list[str] | None = None, directory: str | os.PathLike[str] | None = None
) -> list[PromptPair]:
    """:func:`prompts.load_prompt_pairs`, failing with an InputError."""
    return _wrapped(lambda: prompts.load_prompt_pairs(ids, directory))


def available_pair_ids(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """:func:`prompts.available_pair_ids`, failing with an InputError."""
    return _wrapped(lambda: prompts.available_pair_ids(directory))


def prompt_text(name: str) -> str:
    """:func:`prompts.load_text` (``captions/agnostic``, ``focus/template``), failing with an InputError."""
    return _wrapped(lambda: prompts.load_text(name))
