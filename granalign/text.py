"""Text a caller types or a model generates: one cleaner for queries on every front end.

The CLI, the library, the LangGraph graph (``langgraph dev``), the LangChain tool and the MCP
server all hand a query to this module, so a query means the same thing wherever it comes in:

* NFKC-normalised (full-width letters become ASCII, ligatures are split);
* control characters (TAB, newlines, escape sequences) become spaces, so "the\\tcamera" stays
  two words; format characters (zero-width spaces, bidi overrides that hide text from a human
  reviewer), private-use and unassigned code points are removed;
* whitespace runs collapse to one space and the ends are trimmed;
* at most :data:`MAX_QUERY_CHARS` characters after cleaning, and never empty.

Its content is never interpreted: "ignore previous instructions" is just text to rewrite.
"""

from __future__ import annotations

import re
import unicodedata

from granalign.errors import InputError

__all__ = ["MAX_QUERY_CHARS", "clean_query", "clean_text", "seconds_text", "without_markup"]

MAX_QUERY_CHARS = 500
"""A moment query is a sentence; 500 characters leave room for a long one, not for a document."""

_DROP_CATEGORIES = frozenset({"Cf", "Co", "Cs", "Cn"})
"""Format (zero-width, bidi), private-use, surrogate and unassigned code points: invisible."""


def clean_text(value: object, *, name: str, max_chars: int, allow_empty: bool = False) -> str:
    """NFKC text without control or invisible characters, whitespace collapsed, bounded.

    ``name`` is the input's name in error messages (``query``, ``video``, ``contains``).
    """
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {type(value).__name__}")
    kept: list[str] = []
    for ch in unicodedata.normalize("NFKC", value):
        category = unicodedata.category(ch)
        if category == "Cc":
            kept.append(" ")
        elif category not in _DROP_CATEGORIES:
            kept.append(ch)
    text = " ".join("".join(kept).split())
    if not text and not allow_empty:
        raise InputError(f"{name} is empty (after removing control characters)")
    if len(text) > max_chars:
        # NFKC expands some characters (U+FDFA is 18 letters): a schema that counted the typed
        # text let it through, so say why the count differs from what the caller sent
        grown = " once normalised (NFKC expands some characters)" if len(value) <= max_chars else ""
        raise InputError(f"{name} is {len(text)} characters long{grown}; at most {max_chars} are allowed")
    return text


def clean_query(value: object, *, max_chars: int = MAX_QUERY_CHARS) -> str:
    """A moment query fit to hand on (see the module docstring)."""
    return clean_text(value, name="query", max_chars=max_chars)


def seconds_text(x: float) -> str:
    """Seconds as answers hold them (4 decimals, trailing zeros dropped, at least one), for every
    front end that prints a window: a 0.25-s grid's 17.25 must not read 17.2 in a table or a
    citation and 17.25 in the JSON next to it."""
    text = f"{x:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


_MARKUP = re.compile(r"<[^>]*>")


def without_markup(text: str) -> str:
    """``text`` with its HTML tags as spaces: a proxy's or server's error page quoted in one of
    our messages should read as its words, not as ``<html><head><title>``."""
    return _MARKUP.sub(" ", text)
