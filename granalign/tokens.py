"""Words of a text: the one tokeniser and stopword module of the library.

Three callers look at words, and each needs a slightly different notion of "a word that
carries no content"; the lists are built here from one shared core so the differences are
visible and deliberate (each one is what the caller measured with; changing one would change
its predictions):

* :data:`FOCUS_STOPWORDS` (query focus from keywords, ``backends/captioner.py``): the words
  dropped before the remaining ones steer the query-aware captioner.  Widest list: modal verbs,
  pronouns, numbers and video vocabulary ("video", "scene", "shows") are no focus for a frame.
* :data:`GENERIC_WORDS` (rewrite output checks, ``rewrite.py``): words a rewrite may share
  with the prompt or lack from the query without being a copy or a drift.  It keeps modal
  verbs (a rewrite that answers "can he ..." copies them) but holds person nouns ("man",
  "woman", "people") and ordinals, because every rewrite prompt uses them.
* :data:`IMITATION_STOPWORDS` (the imitation guard, ``validation.py``): the words not counted
  when measuring how much of an aware caption was copied from the query.  Only words of 3+
  letters reach it, so its short words never matter.

Tokenisers: :func:`alnum_words` (lower-case runs of letters and digits, for n-gram and stem
comparisons), :func:`letter_words` (words starting with a letter, keeping ``'`` and ``-``,
for terms shown to a model) and :func:`content_words` (3+ letters, stopwords out, plurals
folded).
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = [
    "FOCUS_STOPWORDS",
    "FUNCTION_WORDS",
    "GENERIC_WORDS",
    "IMITATION_STOPWORDS",
    "alnum_words",
    "content_words",
    "letter_words",
]


def _words_of(text: str) -> frozenset[str]:
    return frozenset(text.split())


FUNCTION_WORDS = _words_of(
    "a an the and or of in on at to with by for from into onto up down out over under is are was "
    "were be been being it its this that these those his her their them they he she some while "
    "then as after before"
)
"""Articles, prepositions, pronouns and auxiliaries every list below drops."""

FOCUS_STOPWORDS = FUNCTION_WORDS | _words_of(
    "but near about am there here than so when during our my your we you i him us who which what "
    "where any all each every one two three very just also not no do does did has have had can "
    "could will would should may might shall video clip scene camera shows showing shown someone "
    "something"
)

GENERIC_WORDS = FUNCTION_WORDS | _words_of(
    "him first next near one two man men woman women person people someone something video camera"
)

IMITATION_STOPWORDS = FUNCTION_WORDS | _words_of("off about during there very just than we you i")

_ALNUM = re.compile(r"[a-z0-9]+")
_LETTER_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_LONG_WORD = re.compile(r"[a-z]{3,}")


def alnum_words(text: str) -> list[str]:
    """Lower-case runs of letters and digits, in order ("Rides a BMX-2" → rides, a, bmx, 2)."""
    return _ALNUM.findall(text.lower())


def letter_words(text: str) -> list[str]:
    """Words that start with a letter and may hold ``'`` or ``-`` ("don't", "t-shirt"), in order."""
    return _LETTER_WORD.findall(text)


def content_words(text: str, stopwords: Collection[str] = IMITATION_STOPWORDS) -> set[str]:
    """Lower-cased words of 3+ letters that are not stopwords (crude plural folding)."""
    words = _LONG_WORD.findall(text.lower())
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words if w not in stopwords}
