"""The retrieval graph in caption-only mode over a real store (real MiniLM, real Chroma)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from granalign.backends.embedder import make_embedder
from granalign.errors import ConfigError, InputError
from granalign.io.captions_import import import_captions
from graphs import resources
from graphs.context import Context
from graphs.retrieval import graph

CAPTIONS = [
    "a man stands in an empty kitchen",
    "a man stands in an empty kitchen",
    "a man pours water into a pot on the stove",
    "a man cuts carrots on a wooden board",
    "a man cuts carrots on a wooden board",
    "a man cuts onions on a wooden board",
    "a dog sleeps on a sofa",
    "a dog sleeps on a sofa",
    "a red car drives down a street",
    "a red car drives down a street",
]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("graphstore")
    caps = path / "caps.jsonl"
    caps.write_text(json.dumps({"vid": "kitchen", "clip_len_s": 2, "captions": CAPTIONS}) + "\n")
    ctx = Context(store_dir=str(path / "store"))
    import_captions(resources.store_for(ctx), make_embedder(ctx.embedder), caps, source="test")
    return path / "store"


def _run(store_dir: Path, query: str, **ctx_kw) -> dict:
    ctx = Context(store_dir=str(store_dir), **ctx_kw)
    return graph.invoke({"video": "kitchen", "query": query}, context=ctx)


def test_caption_only_run_finds_the_matching_clips(store_dir):
    out = _run(store_dir, "a man is chopping vegetables")
    assert out["mode"] == "caption-only"
    assert any("caption-only" in n for n in out["notes"])
    assert len(out["saliency"]) == len(CAPTIONS)
    start, end, _score = out["moments"][0]
    assert 0 <= start < end <= 20
    # the top window overlaps the cutting clips (6 s .. 12 s)
    assert min(end, 12) - max(start, 6) > 0
    scores = [m[2] for m in out["moments"]]
    assert scores == sorted(scores, reverse=True)


def test_output_is_deterministic_and_json_serialisable(store_dir):
    a = _run(store_dir, "a dog sleeping")
    b = _run(store_dir, "a dog sleeping")
    assert a == b
    json.dumps(a)


def test_duration_override_pads_saliency(store_dir):
    ctx = Context(store_dir=str(store_dir))
    out = graph.invoke({"video": "kitchen", "query": "a red car", "duration": 24.0}, context=ctx)
    assert len(out["saliency"]) == 12
    assert all(0 <= s < e <= 24.0 for s, e, _ in out["moments"])


def test_file_rewriter_variants_are_scored(store_dir, tmp_path):
    para = tmp_path / "para.jsonl"
    para.write_text(
        json.dumps(
            {
                "qid": 1,
                "query": "a dog sleeping",
                "rephrased_query": ["a puppy naps on a couch", "a sleeping dog"],
            }
        )
        + "\n"
    )
    out = _run(store_dir, "a dog sleeping", rewriter=f"file:{para}")
    texts = [v["simplified"] for v in out["variants"]]
    assert texts[0] == "a dog sleeping" and "a puppy naps on a couch" in texts and len(texts) == 3


def test_a_query_the_paraphrase_file_lacks_is_said_in_the_notes(store_dir, tmp_path):
    para = tmp_path / "para.jsonl"
    row = {"qid": 1, "query": "a dog sleeping", "rephrased_query": ["a puppy naps"]}
    para.write_text(json.dumps(row) + "\n")
    out = _run(store_dir, "a dog sleepnig", rewriter=f"file:{para}")  # a typo: not in the file
    assert [v["simplified"] for v in out["variants"]] == ["a dog sleepnig"]
    assert any("has no rewrites for this query; only the original query was used" in n for n in out["notes"])
    found = _run(store_dir, "a dog sleeping", rewriter=f"file:{para}")
    assert not any("has no rewrites" in n for n in found["notes"])


def test_an_edited_paraphrase_file_is_read_again(store_dir, tmp_path):
    """A long-running server keeps its rewriters cached; editing the file must not leave it
    answering from the old content."""
    para = tmp_path / "para.jsonl"
    row = {"qid": 1, "query": "a dog sleeping", "rephrased_query": ["a puppy naps"]}
    para.write_text(json.dumps(row) + "\n")
    assert len(_run(store_dir, "a dog sleeping", rewriter=f"file:{para}")["variants"]) == 2
    row["rephrased_query"] = ["a puppy naps on a couch", "a sleeping dog", "a dog rests"]
    para.write_text(json.dumps(row) + "\n")
    assert len(_run(store_dir, "a dog sleeping", rewriter=f"file:{para}")["variants"]) == 4


def test_streams_custom_progress_events(store_dir):
    ctx = Context(store_dir=str(store_dir))
    stages = [
        chunk["stage"]
        for chunk in graph.stream({"video": "kitchen", "query": "a car"}, context=ctx, stream_mode="custom")
    ]
    assert stages[0] == "load_video" and stages[-1] == "nms" and "fuse" in stages


@pytest.mark.parametrize(
    ("inp", "needle"),
    [
        ({"video": "kitchen", "query": "   "}, "query is empty"),
        ({"video": "kitchen", "query": "x" * 5000}, "at most"),
        ({"video": "unknown-video", "query": "a car"}, "not in the store"),
        ({"video": "", "query": "a car"}, "video must be"),
        ({"video": "kitchen", "query": "a car", "duration": -3}, "duration"),
    ],
)
def test_bad_input_gets_a_clear_error(store_dir, inp, needle):
    with pytest.raises(InputError, match=needle):
        graph.invoke(inp, context=Context(store_dir=str(store_dir)))


def test_context_validation_lists_what_is_allowed():
    with pytest.raises(ConfigError, match=r"allowed: \[0.0, 1.0\]"):
        Context(nms_iou=1.5)
    with pytest.raises(ConfigError, match="choose one of"):
        Context(proposal_mode="other")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown setting"):
        Context.from_env({}, not_a_field=1)
    with pytest.raises(ConfigError, match="GRANALIGN_TOP_N"):
        Context.from_env({"GRANALIGN_TOP_N": "many"})
    assert Context.from_env({"GRANALIGN_LAM": "0.5"}).lam == 0.5


GRID_CAPTIONS = [
    "a red car drives down a street",
    "a red car drives down a street",
    "a dog sleeps on a sofa",
    "a dog sleeps on a sofa",
    "a man cuts carrots on a wooden board",
    "a man cuts carrots on a wooden board",
    "a man cuts carrots on a wooden board",
    "a dog sleeps on a sofa",
    "a red car drives down a street",
    "a red car drives down a street",
    "a dog sleeps on a sofa",
    "a red car drives down a street",
]


@pytest.mark.parametrize(("clip_len_s", "top_k"), [(1, 1), (3, 4)])
def test_caption_only_windows_use_the_caption_files_clip_length(tmp_path, clip_len_s, top_k):
    """A caption file on a 1-s or 3-s grid: windows and saliency follow its grid, not Context.clip_len."""
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"vid": "grid", "clip_len_s": clip_len_s, "captions": GRID_CAPTIONS}) + "\n")
    # 12 clips: the threshold rule alone, counting the top 2 (1-s grid) or 3 (3-s grid) clips:
    # top_k and gap count 2-s clips and are converted to the file's grid (top_k 1 → 2 clips,
    # 4 → 2.67 → 3; gap 1 → 2 and 0.67 → 1 clips)
    ctx = Context(store_dir=str(tmp_path / "store"), contrast=False, top_k=top_k, gap=1)
    assert ctx.clip_len == 2.0
    import_captions(resources.store_for(ctx), make_embedder(ctx.embedder), caps, source="grid")
    out = graph.invoke({"video": "grid", "query": "a man cuts carrots"}, context=ctx)
    duration = len(GRID_CAPTIONS) * clip_len_s
    assert len(out["saliency"]) == len(GRID_CAPTIONS)
    assert all(0 <= s < e <= duration for s, e, _ in out["moments"])
    assert all(s % clip_len_s == 0 and e % clip_len_s == 0 for s, e, _ in out["moments"])
    start, end, _ = out["moments"][0]
    truth = (4 * clip_len_s, 7 * clip_len_s)  # the carrot clips 4..6
    overlap = min(end, truth[1]) - max(start, truth[0])
    assert overlap / (max(end, truth[1]) - min(start, truth[0])) >= 0.5, out["moments"][0]
    longer = graph.invoke(
        {"video": "grid", "query": "a red car", "duration": duration + 2.5 * clip_len_s}, context=ctx
    )
    assert len(longer["saliency"]) == len(GRID_CAPTIONS) + 3  # one value per clip of the given duration
    assert out["clip_len_s"] == longer["clip_len_s"] == clip_len_s  # front ends plot on this grid
    from tools.langchain_tool import MomentRetriever, ToolSettings

    tool_out = MomentRetriever(ToolSettings(context=ctx)).run("grid", "a man cuts carrots")
    assert tool_out.artifact["clip_len_s"] == clip_len_s


def test_context_takes_proposal_defaults_and_bounds_from_the_library():
    """One source: every proposal/NMS/saliency setting's default and range is the library's."""
    from dataclasses import fields

    from granalign.core.moments import MOMENT_BOUNDS, MomentSettings
    from granalign.core.proposals import ProposalParams

    ctx, lib = Context(), MomentSettings()
    meta = {f.name: f.metadata for f in fields(Context)}
    for f in fields(MomentSettings):
        assert getattr(ctx, f.name) == getattr(lib, f.name), f.name
    for name, (lo, hi) in MOMENT_BOUNDS.items():
        assert (meta[name]["lo"], meta[name]["hi"]) == (lo, hi), name
        for edge in (lo, hi):
            if name == "nms_iou" and edge == 0.0:
                continue
            settings = Context(**{name: edge}).moment_settings()  # accepted by both, not just the graph
            assert getattr(settings, name) == edge
    ProposalParams(**Context(gap=1, num_bins=1, drop_pct=100.0).proposal_kwargs())


def test_the_context_schema_studio_renders_shows_the_ranges_and_choices_the_run_checks():
    """Studio's form is the graph's context JSON schema: a setting's bounds and choices are
    there (from the same numbers the Context checks), not only found out by a failed run."""
    from dataclasses import fields

    from graphs.context import _literal_choices
    from graphs.retrieval import graph

    schema = graph.get_context_jsonschema()
    assert schema is not None
    props = schema["properties"]
    ranged = [f for f in fields(Context) if "lo" in f.metadata]
    assert {"m", "nms_iou", "top_k", "drift_threshold"} <= {f.name for f in ranged}
    for f in ranged:
        lo, hi, prop = f.metadata["lo"], f.metadata["hi"], props[f.name]
        assert prop["maximum"] == hi, f.name
        Context(**{f.name: hi})  # the schema's edge is one the Context accepts
        with pytest.raises(ConfigError, match=f.name):
            Context(**{f.name: hi + 1})
        try:
            Context(**{f.name: lo})
        except ConfigError:  # nms_iou=0: a lower edge every run refuses is not offered as one
            assert prop.get("exclusiveMinimum") == lo and "minimum" not in prop, f.name
        else:
            assert prop["minimum"] == lo, f.name
    chosen = [f for f in fields(Context) if _literal_choices(f.type)]
    assert {"checkpointer", "proposal_mode", "answer_profile", "aware_missing"} <= {f.name for f in chosen}
    for f in chosen:
        assert props[f.name]["enum"] == list(_literal_choices(f.type)), f.name


@pytest.mark.parametrize(("field", "value"), [("gap", 0), ("nms_iou", 0.0)])
def test_context_refuses_what_the_proposal_rule_refuses(field, value):
    with pytest.raises(ConfigError, match=field):
        Context(**{field: value})


def test_a_reimported_video_is_answered_from_its_new_captions(tmp_path):
    """The process's caption cache follows the store: after an edited file is imported again (here,
    or by another process sharing the store), the next query reads the new captions."""
    caps = tmp_path / "caps.jsonl"
    ctx = Context(store_dir=str(tmp_path / "store"))
    store, embedder = resources.store_for(ctx), make_embedder(ctx.embedder)
    query = {"video": "kitchen", "query": "a red car drives down a street"}
    for captions in (CAPTIONS, CAPTIONS[::-1]):
        caps.write_text(json.dumps({"vid": "kitchen", "clip_len_s": 2, "captions": captions}) + "\n")
        assert import_captions(store, embedder, caps, source="test").imported == 1
        out = graph.invoke(query, context=ctx)
    saliency = out["saliency"]
    assert saliency.index(max(saliency)) in (0, 1)  # the car clips now open the video


def test_a_query_on_a_stored_id_reads_its_record_once(store_dir, monkeypatch):
    """load_video resolved the id (one record read) and then checked the caption cache against a
    second read of the same record: two HTTP round trips per query with a Chroma server."""
    from granalign.io.store import Store

    ctx = Context(store_dir=str(store_dir))
    query = {"video": "kitchen", "query": "a man cuts carrots"}
    graph.invoke(query, context=ctx)  # captions cached
    reads: list[str] = []
    real = Store.video

    def counted(self: Store, video_id: str):  # type: ignore[no-untyped-def]
        reads.append(video_id)
        return real(self, video_id)

    monkeypatch.setattr(Store, "video", counted)
    out = graph.invoke(query, context=ctx)
    assert out["moments"] and reads == ["kitchen"]


def test_caption_rows_past_an_imported_videos_clips_are_refused_not_read(tmp_path):
    """Rows an older version's re-import left past a video's last clip were read into its curve
    (only ingested videos' counts were checked), so the moments fell past the video's end."""
    import numpy as np

    from granalign.io.store import caption_id

    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"vid": "kitchen", "clip_len_s": 2, "captions": CAPTIONS}) + "\n")
    ctx = Context(store_dir=str(tmp_path / "store"))
    store = resources.store_for(ctx)
    import_captions(store, make_embedder(ctx.embedder), caps, source="test")
    record = store.video("kitchen")
    assert record is not None and record.n_clips == len(CAPTIONS)
    extra = [len(CAPTIONS), len(CAPTIONS) + 1]
    store._collection(f"captions.{make_embedder(ctx.embedder).name}").upsert(
        ids=[caption_id("kitchen", c, "test", "imported") for c in extra],
        embeddings=np.ones((2, 384), dtype=np.float32),
        documents=["a red car drives down a street"] * 2,
        metadatas=[
            {"video_id": "kitchen", "clip": c, "source": "test", "prompt_hash": "imported"} for c in extra
        ],
    )
    with pytest.raises(InputError) as err:
        graph.invoke({"video": "kitchen", "query": "a red car"}, context=ctx)
    assert f"video 'kitchen' has 12 caption rows for its {len(CAPTIONS)} clips" in str(err.value)
    assert "rebuild it: granalign videos rm -- kitchen, then re-run its import or ingest" in str(err.value)


def test_every_input_field_has_a_description_for_the_studio_form():
    """Studio builds the run form from the input schema; `qid` and `duration` came without a
    word on what they are (the context settings had descriptions, the inputs none)."""
    from graphs.ingest import graph as ingest_graph

    for schema in (graph.get_input_jsonschema(), ingest_graph.get_input_jsonschema()):
        undescribed = [name for name, field in schema["properties"].items() if not field.get("description")]
        assert not undescribed, f"{schema['title']}: {undescribed}"
    assert "file: rewriter" in graph.get_input_jsonschema()["properties"]["qid"]["description"]


def test_prompt_pairs_are_checked_even_for_a_rewriter_that_reads_none(store_dir):
    """``prompt_pairs=nosuch`` with rewriter ``none`` ran, and failed only on the day the rewriter
    changed; ``bench`` already refused it before its run.  So is an m beyond the prompt folder."""
    with pytest.raises(InputError, match="nosuch"):
        _run(store_dir, "a dog sleeping", rewriter="none", prompt_pairs="core,nosuch")
    with pytest.raises(InputError, match="m=16 prompt pairs asked for"):
        _run(store_dir, "a dog sleeping", rewriter="none", m=16)


class _PairRewriter:
    """A model rewriter stand-in (reads prompt pairs, loads no model)."""

    name, pairless = "pair-stand-in", False

    def rewrite_batch(self, queries: list[str], pair: object) -> list[object]:
        from granalign.rewrite import Rewrite

        return [Rewrite(getattr(pair, "id", ""), q, f"{q} indoors") for q in queries]


def test_a_run_whose_prompt_pairs_override_m_says_so_in_its_notes(store_dir, monkeypatch):
    """``prompt_pairs=core, m=3`` ran one pair without a word; named pairs still win (as
    ``experiment --pairs`` has them), and the notes say m did not apply."""
    fake = _PairRewriter()
    real = resources.rewriter_for_spec
    monkeypatch.setattr(resources, "rewriter_for_spec", lambda s: fake if s == "local:pairs" else real(s))
    out = _run(store_dir, "a dog sleeping", rewriter="local:pairs", prompt_pairs="core", m=3)
    assert {v["pair_id"] for v in out["variants"]} == {"original", "core"}
    assert (
        "prompt_pairs names 1 pair(s) (core), so those were used and m=3 did not apply "
        "(m only counts the default pairs when prompt_pairs is empty)"
    ) in out["notes"]
    agreeing = _run(store_dir, "a dog sleeping", rewriter="local:pairs", prompt_pairs="core", m=1)
    pairless = _run(store_dir, "a dog sleeping", rewriter="none", prompt_pairs="core", m=3)
    for quiet in (agreeing, pairless):
        assert not any("did not apply" in n for n in quiet["notes"])
