"""Query rewriting: cleaning model output, fallbacks, the file/identity backends, real SmolLM2."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never download in tests

from granalign.backends.rewriter import make_rewriter
from granalign.errors import ConfigError, InputError
from granalign.rewrite import (
    ORIGINAL_ID,
    FileRewriter,
    IdentityRewriter,
    Rewrite,
    clean_rewrite,
    clean_rewrite_with_reason,
    max_words_for,
    rewrite_from_outputs,
    rewrite_queries,
)
from prompts import PromptPair, load_prompt_pairs
from tests.conftest import fixture_path

BAICHUAN = ("qvhighlights", "rephrased_queries_baichuan2_val.jsonl")

Q = "A young man in a blue hoodie opens the fridge and takes out a bottle of milk."
PAIR = PromptPair(
    "t",
    "test pair",
    'Shorten it. Example: "A chef julienning carrots." -> "A cook cuts carrots."\nQuery: "{query}"',
    'Keep every word. Query: "{query}"',
)


# ---------------------------------------------------------------------------------------------
# clean_rewrite
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A man takes milk from the fridge.", "A man takes milk from the fridge."),
        ('Simplified query: "A man takes milk from the fridge."', "A man takes milk from the fridge."),
        ("**Rewritten query:** A man takes milk.\n\nThis version drops the hoodie.", "A man takes milk."),
        ('Here is the simplified version:\n\n"A man takes milk." It keeps the core.', "A man takes milk."),
        ("A man takes milk. Note: I removed the colours.", "A man takes milk."),
        ("A man takes milk (removed the hoodie and the fridge)", "A man takes milk"),
        ('The query is: "A man takes milk from the fridge."', "A man takes milk from the fridge."),
        ('The event in the video is "A man takes out milk."', "A man takes out milk."),
        (f'Query: "{Q}"\nShort query: A man grabs milk.', "A man grabs milk."),
        (f'Query: "{Q}"\nA man grabs milk.', "A man grabs milk."),
        ('Query: "A man grabs the milk."', "A man grabs the milk."),
        ('"A man in a hoodie" -> "A man takes milk."', "A man takes milk."),
        ("- A man takes milk<|im_end|>", "A man takes milk"),
        ("`A man takes milk.`", "A man takes milk."),
        ("Sure! A man takes milk.", "A man takes milk."),
        ("A teenager grabs a carton of milk.", "A teenager grabs a carton of milk."),
        ('A man says "cheers" and drinks milk.', 'A man says "cheers" and drinks milk.'),
        (
            "A man opens the fridge. Then he takes out the milk.",
            "A man opens the fridge. Then he takes out the milk.",
        ),
    ],
)
def test_clean_rewrite_repairs_chat_artefacts(raw: str, expected: str) -> None:
    assert clean_rewrite(raw, Q) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty output"),
        ("  \n\n ", "empty output"),
        ("Milk.", "too short"),
        ("1234 5678 !!!", "not text"),
        ("x" * 80 + " milk", "not text"),
        ("I'm sorry, I can't help with that.", "refusal"),
        (" ".join(["milk"] * 200), "too long"),
        ("Rewrite the query as one precise sentence.", "repeats the prompt"),
        ("Keep the {query} as it is.", "repeats the prompt"),
        ("A man takes milk. A man takes milk. A man takes milk. A man takes milk.", "repetitive"),
        ("Awesome, I'm glad to see you're enjoying your meal.", "unrelated to the query"),
    ],
)
def test_clean_rewrite_rejects_unusable_output(raw: str, reason: str) -> None:
    cleaned, why = clean_rewrite_with_reason(raw, Q)
    assert cleaned is None
    assert reason in why
    assert clean_rewrite(raw, Q) is None


def test_clean_rewrite_rejects_non_strings() -> None:
    assert clean_rewrite_with_reason(None, Q) == (None, "not text")
    assert clean_rewrite_with_reason(42, Q) == (None, "not text")


def test_clean_rewrite_detects_copied_example_only_with_the_prompt() -> None:
    prompt = PAIR.render_simplify(Q)
    assert clean_rewrite_with_reason("A cook cuts carrots.", Q) == (None, "unrelated to the query")
    assert clean_rewrite_with_reason("A cook cuts carrots.", Q, prompt) == (None, "repeats the prompt")
    assert clean_rewrite_with_reason("A man cuts carrots with a chef.", Q, prompt)[1] == ("copies the prompt")
    # words the query itself contains are never "borrowed"
    assert clean_rewrite("A young man takes out the milk.", Q, prompt) == "A young man takes out the milk."


def test_too_long_keeps_leading_sentences_within_the_limit() -> None:
    filler = " ".join(["and then he keeps on talking"] * 10)
    cleaned = clean_rewrite(f"A man takes out the milk. He {filler}.", Q)
    assert cleaned == "A man takes out the milk."


def test_length_limits_are_documented_numbers() -> None:
    assert max_words_for("dog runs") == 22  # n + 20 for short queries
    assert max_words_for(" ".join(["w"] * 30)) == 90  # 3 n for long ones


# ---------------------------------------------------------------------------------------------
# Rewrite and fallbacks
# ---------------------------------------------------------------------------------------------


def test_fallback_is_recorded_per_side() -> None:
    ok = rewrite_from_outputs("p", Q, "A man takes milk.", "A young man in a blue hoodie takes milk.")
    assert ok == Rewrite("p", "A man takes milk.", "A young man in a blue hoodie takes milk.")
    assert not ok.fallback and ok.reason == ""

    half = rewrite_from_outputs("p", Q, "", "A young man takes milk from the fridge.")
    assert half.simplified == Q and half.detailed == "A young man takes milk from the fridge."
    assert half.fallback and half.reason == "simplified: empty output"

    both = rewrite_from_outputs("p", Q, None, "I'm sorry, I cannot.")
    assert (both.simplified, both.detailed) == (Q, Q)
    assert both.reason == "simplified: not text; detailed: refusal"


def test_rewrite_json_round_trip_and_validation() -> None:
    r = Rewrite("core", "a", "b", fallback=True, reason="simplified: empty output")
    assert Rewrite.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert Rewrite.from_dict({"pair_id": "x", "simplified": "a", "detailed": "b"}) == Rewrite("x", "a", "b")
    for bad in [
        [],
        {"pair_id": "x", "simplified": "a"},
        {"pair_id": "x", "simplified": "", "detailed": "b"},
        {"pair_id": "x", "simplified": "a", "detailed": "b", "fallback": "yes"},
    ]:
        with pytest.raises(InputError):
            Rewrite.from_dict(bad)


def test_identity_rewriter() -> None:
    rw = IdentityRewriter()
    out = rw.rewrite_batch(["q one", "q two"], PAIR)
    assert out == [Rewrite(ORIGINAL_ID, "q one", "q one"), Rewrite(ORIGINAL_ID, "q two", "q two")]
    assert rw.variants_for("q") == [Rewrite(ORIGINAL_ID, "q", "q")]
    assert rewrite_queries(rw, ["a", "b"], load_prompt_pairs()) == [
        [Rewrite(ORIGINAL_ID, "a", "a")],
        [Rewrite(ORIGINAL_ID, "b", "b")],
    ]


# ---------------------------------------------------------------------------------------------
# FileRewriter
# ---------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_file_rewriter_on_the_shared_baichuan_file() -> None:
    rw = FileRewriter(fixture_path(*BAICHUAN))
    assert rw.pairless and rw.name.startswith("file:rephrased_queries_baichuan2_val.jsonl@")
    query = "A girl and her mother cooked while talking with each other on facetime."
    variants = rw.variants_for(query)
    assert [v.pair_id for v in variants] == ["original", "para0", "para1", "para2", "para3", "para4"]
    assert variants[0] == Rewrite(ORIGINAL_ID, query, query)
    assert variants[1].simplified == variants[1].detailed
    assert variants[1].simplified.startswith("The girl was on a video call")
    assert rw.variants_for(query, qid=2579) == variants
    assert rw.missing == []


def test_file_rewriter_qid_disambiguates_repeated_query_text() -> None:
    path = fixture_path(*BAICHUAN)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    by_text: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_text.setdefault(str(row["query"]), []).append(row)
    text, dups = next((t, r) for t, r in by_text.items() if len(r) > 1)
    rw = FileRewriter(path)
    first, second = dups[0], dups[1]
    assert [v.simplified for v in rw.variants_for(text)[1:]] == first["rephrased_query"]
    assert [v.simplified for v in rw.variants_for(text, qid=str(second["qid"]))[1:]] == second[
        "rephrased_query"
    ]


def test_file_rewriter_tiny_file_and_unknown_query(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"qid": 1, "query": "a dog runs", "rephrased_query": ["a dog is running", "the dog sprints"]},
            {"qid": "b2", "query": "a cat sleeps ", "rephrased_query": []},
        ],
    )
    rw = make_rewriter(f"file:{path}")
    assert isinstance(rw, FileRewriter)
    assert [v.simplified for v in rw.variants_for("a dog runs")] == [
        "a dog runs",
        "a dog is running",
        "the dog sprints",
    ]
    assert rw.variants_for("a cat sleeps", qid="b2") == [Rewrite(ORIGINAL_ID, "a cat sleeps", "a cat sleeps")]
    # a qid whose row holds another text is not trusted: lookup falls back to the text
    assert len(rw.variants_for("a dog runs", qid="b2")) == 3
    assert rw.variants_for("a horse jumps") == [Rewrite(ORIGINAL_ID, "a horse jumps", "a horse jumps")]
    assert rw.variants_for("a horse jumps", qid=9) == [Rewrite(ORIGINAL_ID, "a horse jumps", "a horse jumps")]
    assert rw.missing == ["a horse jumps"]
    grouped = rewrite_queries(rw, ["a dog runs", "unknown"], load_prompt_pairs(), qids=[1, None])
    assert [len(g) for g in grouped] == [3, 1]


def test_file_rewriter_per_pair_rewrites(tmp_path: Path) -> None:
    stored = Rewrite("t", "dog runs", "a brown dog runs across the park")
    path = write_jsonl(
        tmp_path / "llm.jsonl",
        [{"qid": 7, "query": "a dog runs in the park", "rewrites": [stored.to_dict()]}],
    )
    rw = FileRewriter(path)
    assert not rw.pairless
    assert rw.rewrite_batch(["a dog runs in the park"], PAIR) == [stored]
    other = PromptPair("other", "d", "{query}", "{query}")
    got = rw.rewrite_batch(["a dog runs in the park", "nope"], other, qids=[7, None])
    assert got[0].fallback and "no rewrite for pair 'other'" in got[0].reason
    assert got[1] == Rewrite("other", "nope", "nope", fallback=True, reason="query not in file")
    assert rewrite_queries(rw, ["a dog runs in the park"], [PAIR, other]) == [[stored, got[0]]]


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        (['{"qid": 1, "query": "a", "rephrased_query": ["b"]}', "{not json"], 2, "malformed JSON"),
        (['{"qid": 1, "rephrased_query": ["b"]}'], 1, "'query'"),
        (["", '{"qid": 1, "query": "a", "rephrased_query": "b"}'], 2, "'rephrased_query'"),
        (['{"qid": 1, "query": "a", "rephrased_query": [""]}'], 1, "'rephrased_query'"),
        (['{"qid": [1], "query": "a", "rephrased_query": ["b"]}'], 1, "'qid'"),
        (['{"qid": 1, "query": "a"}'], 1, "needs a 'rephrased_query'"),
        (['{"query": "a", "rewrites": [{"pair_id": "x"}]}'], 1, "'rewrites'"),
        (
            [
                '{"qid": 1, "query": "a", "rephrased_query": ["b"]}',
                "",
                '{"qid": 1, "query": "c", "rephrased_query": ["d"]}',
            ],
            3,
            "qid 1 already used on line 1",
        ),
        (["[1, 2]"], 1, "expected a JSON object"),
    ],
)
def test_malformed_rewrite_file_names_file_and_line(
    tmp_path: Path, lines: list[str], line: int, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        FileRewriter(path)
    assert f"{path}:{line}:" in str(info.value)
    assert message in str(info.value)


def test_missing_or_empty_rewrite_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        make_rewriter(f"file:{tmp_path / 'absent.jsonl'}")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match="no rows"):
        FileRewriter(tmp_path / "empty.jsonl")


# ---------------------------------------------------------------------------------------------
# make_rewriter and rewrite_queries
# ---------------------------------------------------------------------------------------------


def test_make_rewriter_specs() -> None:
    assert isinstance(make_rewriter("none"), IdentityRewriter)
    with pytest.raises(ConfigError, match="unknown"):
        make_rewriter("vllm:x")
    with pytest.raises(ConfigError):
        make_rewriter("local:")


class FakeLLM:
    """A stand-in LLM rewriter: shows the per-pair batching contract of rewrite_queries."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
        self.calls.append((pair.id, len(queries)))
        return [rewrite_from_outputs(pair.id, q, f"{q} short", "") for q in queries]


def test_rewrite_queries_batches_per_pair() -> None:
    fake = FakeLLM()
    pairs = load_prompt_pairs()
    grouped = rewrite_queries(fake, ["a dog runs", "a cat sleeps", "a bird sings"], pairs)
    assert fake.calls == [(p.id, 3) for p in pairs]
    assert [[r.pair_id for r in g] for g in grouped] == [[p.id for p in pairs]] * 3
    assert grouped[1][0].simplified == "a cat sleeps short"
    assert grouped[1][0].detailed == "a cat sleeps" and grouped[1][0].fallback
    with pytest.raises(InputError):
        rewrite_queries(fake, ["a"], [])
    with pytest.raises(InputError):
        rewrite_queries(fake, ["a"], pairs, qids=[1, 2])


# ---------------------------------------------------------------------------------------------
# Local LLM backend
# ---------------------------------------------------------------------------------------------


def test_local_model_resolution(tmp_path: Path) -> None:
    from granalign.backends.llm_local import LocalLLMRewriter, _common_prefix_len, resolve_model

    src = resolve_model("smollm2")
    assert src.gguf_file and src.gguf_file.endswith(".gguf")
    assert (Path(src.location) / src.gguf_file).is_file()
    rw = make_rewriter("local:smollm2")
    assert isinstance(rw, LocalLLMRewriter)
    assert rw.name == f"local:smollm2/{src.gguf_file}"  # no machine-specific path in cache keys
    assert (
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").location == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    with pytest.raises(ConfigError, match="no such file"):
        resolve_model(str(tmp_path / "absent" / "model"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"\.gguf"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ConfigError):
        LocalLLMRewriter("smollm2", batch_size=0)
    assert _common_prefix_len([[*range(20), 1], [*range(20), 2, 3]]) == 20
    assert _common_prefix_len([[1, 2], [1, 3]]) == 0  # too short to be worth caching
    assert _common_prefix_len([list(range(10))]) == 9  # a lone prompt keeps one own token


def test_local_model_load_failure_is_a_config_error(tmp_path: Path) -> None:
    from granalign.backends.llm_local import LocalLLMRewriter

    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    rw = LocalLLMRewriter(str(folder))
    with pytest.raises(ConfigError, match="could not be loaded") as info:
        rw.rewrite_batch(["a dog runs"], PAIR)
    assert str(folder) in str(info.value)


VAL_QUERIES = [  # three real QVHighlights val queries
    "A girl and her mother cooked while talking with each other on facetime.",
    "Woman holds up a green bottle.",
    "Man in gray top walks from outside to inside.",
]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Generate on one thread, restored afterwards.

    On a 2-core machine shared with other processes, two OpenMP threads that keep waiting for
    each other made this test ~4× slower than one thread (measured: 1.34 vs 0.31 generations/s).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_local_smollm2_rewrites_real_model() -> None:
    rw = make_rewriter("local:smollm2")
    pairs = load_prompt_pairs(["core", "event"])
    first = rewrite_queries(rw, VAL_QUERIES, pairs)
    assert len(first) == len(VAL_QUERIES)
    for query, group in zip(VAL_QUERIES, first, strict=True):
        assert [r.pair_id for r in group] == ["core", "event"]
        for r in group:
            assert isinstance(r.simplified, str) and r.simplified.strip()
            assert isinstance(r.detailed, str) and r.detailed.strip()
            assert r.fallback == bool(r.reason)
            if r.fallback:  # a rejected side is the original query, never an invented string
                assert query in (r.simplified, r.detailed)
    assert rewrite_queries(rw, VAL_QUERIES, pairs) == first  # greedy decoding: deterministic


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_prefix_cached_generation_equals_plain_left_padding() -> None:
    import torch

    from granalign.backends.llm_local import LocalLLMRewriter, _load

    rw = LocalLLMRewriter("smollm2", max_new_tokens=16, batch_size=2)
    loaded = _load(rw.source, rw.device)
    tok = loaded.tokenizer
    pair = load_prompt_pairs(["core"])[0]
    prompts = [rw._chat(tok, pair.system, pair.render_simplify(q)) for q in VAL_QUERIES]
    cached = rw.generate(prompts)
    with torch.inference_mode():
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = loaded.model.generate(
            **enc,
            max_new_tokens=16,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            stop_strings=["\n"],
            tokenizer=tok,
        )
    plain = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [c.strip() for c in cached] == [p.strip() for p in plain]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_gguf_loads_the_same_without_accelerate(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 5 needs accelerate for ``from_pretrained(gguf_file=)``; the fallback must match."""
    import importlib.util

    import torch

    import granalign.backends.llm_local as llm_local

    source = llm_local.resolve_model("smollm2")
    reference = llm_local._load(source, "cpu").model
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "accelerate" else real_find_spec(name, *a),
    )
    fallback = llm_local._load_gguf_weights(source)
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.inference_mode():
        assert torch.equal(reference(tokens).logits, fallback(tokens).logits)


def test_file_rewriter_matches_the_query_as_every_front_end_cleans_it(tmp_path: Path) -> None:
    """Dataset rows keep raw text ("A massage  about …", double space); the graph hands the file
    rewriter the cleaned query (one space).  Both sides are compared cleaned, so the paraphrases
    still apply (16 QVHighlights val queries lost them before)."""
    from granalign.text import clean_query

    path = write_jsonl(
        tmp_path / "r.jsonl",
        [{"qid": 533, "query": "A massage  about mantel health", "rephrased_query": ["on mental health"]}],
    )
    rw = make_rewriter(f"file:{path}")
    for asked in ("A massage  about mantel health", clean_query("A massage\tabout  mantel health")):
        got = rw.variants_for(asked, qid=533)
        assert [v.simplified for v in got][1:] == ["on mental health"], asked
        assert len(rw.variants_for(asked)) == 2  # by text alone too
