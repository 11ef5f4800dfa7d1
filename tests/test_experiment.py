"""granalign experiment: settings run through the graph, results survive, rewrites are cached."""

from __future__ import annotations

import json

import pytest

from granalign.rewrite import Rewrite
from graphs import resources
from graphs.context import Context
from prompts import PromptPair
from tools.bench import read_annotations
from tools.demo_data import DEMO
from tools.experiment import plan_settings, run_setting, write_reports


class CountingStandInRewriter:
    """A model stand-in: deterministic 'rewrites' and a call counter (no LLM involved)."""

    name = "stand-in-rewriter"
    pairless = False

    def __init__(self) -> None:
        self.calls = 0

    def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
        self.calls += len(queries)
        return [Rewrite(pair.id, " ".join(q.split()[:4]), f"{q} ({pair.id})") for q in queries]


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    fake = CountingStandInRewriter()
    real = resources.rewriter_for_spec
    monkeypatch.setattr(
        resources, "rewriter_for_spec", lambda spec: fake if spec == "local:stand-in" else real(spec)
    )
    monkeypatch.setenv("GRANALIGN_STORE", str(tmp_path / "store"))
    return fake


def _import_demo_captions(base: Context, vids: set[str]) -> None:
    """The demo captions of ``vids`` in ``base``'s store, as ``experiment`` imports them."""
    from granalign.io.captions_import import import_captions

    store, embedder = resources.store_for(base), resources.embedder_for(base)
    import_captions(store, embedder, DEMO.captions, source="demo", only=vids)


def test_experiment_rows_reports_and_resume_with_stand_in_rewriter(stand_in, tmp_path):
    anns = read_annotations(DEMO.annotations, limit=4)
    base = Context(rewriter="local:stand-in", store_dir=str(tmp_path / "store"))
    from granalign.io.captions_import import import_captions

    import_captions(
        resources.store_for(base),
        resources.embedder_for(base),
        DEMO.captions,
        source="demo",
        only={a.vid for a in anns},
    )
    settings = plan_settings(["core", "plain"], 2, True, DEMO.paraphrases)
    names = [s.name for s in settings]
    assert names == [
        "pair:core",
        "pair:plain",
        "m=2",
        "Q_r->C_agn",
        "Q_s->C_agn",
        "Q_d->C_agn",
        "Q_s+Q_d->C_agn",
        "Q_r+Q_s+Q_d->C_agn",
        "Q_r+para->C_agn",
    ]
    out = tmp_path / "exp"
    rows = [run_setting(base, s, anns, out) for s in settings]
    assert all(r.n == 4 and not r.cached for r in rows)
    calls_after_first = stand_in.calls
    assert calls_after_first == 4 * 2  # each (pair, query) rewritten exactly once
    paths = write_reports(rows, out)
    md = paths["md"].read_text()
    assert md.count("\n") == len(settings) + 2 and "Q_s->C_agn" in md
    assert paths["csv"].read_text().splitlines()[0].startswith("setting,description,n,MR-full-R1@0.5")
    assert paths["png"].stat().st_size > 10_000
    again = [run_setting(base, s, anns, out) for s in settings]
    assert all(r.cached for r in again) and stand_in.calls == calls_after_first
    assert [r.metrics for r in again] == [json.loads(json.dumps(r.metrics)) for r in rows]


def test_sides_change_what_is_scored(stand_in, tmp_path):
    anns = read_annotations(DEMO.annotations, limit=2)
    base = Context(rewriter="local:stand-in", store_dir=str(tmp_path / "store"))
    from granalign.io.captions_import import import_captions

    import_captions(
        resources.store_for(base),
        resources.embedder_for(base),
        DEMO.captions,
        source="demo",
        only={a.vid for a in anns},
    )
    settings = {s.name: s for s in plan_settings(["core"], 1, True, None)}
    out = tmp_path / "exp"
    preds = {}
    for name in ("Q_s->C_agn", "Q_d->C_agn"):
        run_setting(base, settings[name], anns, out)
        path = out / "settings" / name.replace(">", "") / "preds.jsonl"
        preds[name] = [json.loads(x) for x in path.read_text().splitlines()]
    assert preds["Q_s->C_agn"][0]["pred_saliency_scores"] != preds["Q_d->C_agn"][0]["pred_saliency_scores"]


def test_unknown_pair_is_a_clear_error():
    from granalign.errors import InputError

    with pytest.raises(InputError, match="no-such-pair"):
        plan_settings(["no-such-pair"], 1, False, None)


def test_max_m_beyond_the_pairs_is_refused_and_no_max_m_means_up_to_three():
    """--max-m 5 with two pairs used to run m = 2 only and say nothing."""
    from granalign.errors import InputError

    with pytest.raises(InputError, match=r"--max-m 5: only 2 prompt pairs \(core, plain\) are chosen"):
        plan_settings(["core", "plain"], 5, False, None)
    assert [s.name for s in plan_settings(["core", "plain"], None, False, None)] == [
        "pair:core",
        "pair:plain",
        "m=2",
    ]
    names = [s.name for s in plan_settings(None, None, False, None)]
    assert "m=3" in names and "m=4" not in names


def test_a_failed_query_counts_as_a_miss_in_an_experiment_row(tmp_path):
    """As in bench: every annotation is scored, so a query that fails lowers the row, never raises it."""
    from granalign.evaluation.metrics import evaluate_submission
    from granalign.io.captions_import import import_captions
    from tools.experiment import Setting

    anns = read_annotations(DEMO.annotations, limit=10)
    base = Context(store_dir=str(tmp_path / "store"))
    import_captions(
        resources.store_for(base),
        resources.embedder_for(base),
        DEMO.captions,
        source="demo",
        only={a.vid for a in anns[:-1]} - {anns[-1].vid},  # the last query's video is never imported
    )
    row = run_setting(base, Setting("Q_r", "original query"), anns, tmp_path / "out")
    assert row.n == 9 and row.skipped == 1
    preds = [json.loads(x) for x in (tmp_path / "out/settings/Q_r/preds.jsonl").read_text().splitlines()]
    answered_only = evaluate_submission(preds, [a.raw for a in anns[:-1]], allow_subset=True)["brief"]
    assert answered_only["MR-full-mAP"] > 0
    for key in ("MR-full-mAP", "MR-full-R1@0.5"):
        assert row.metrics["brief"][key] == pytest.approx(answered_only[key] * 9 / 10, abs=0.01), key


def test_a_row_of_other_captions_is_run_again_not_loaded(tmp_path):
    """An experiment row (and its journal) belongs to the captions it was answered from: after
    the captions file is edited and re-imported, the row is computed again, like a fresh run."""
    from granalign.io.captions_import import import_captions
    from granalign.io.jsonl import read_jsonl, write_jsonl
    from tools.experiment import Setting

    anns = read_annotations(DEMO.annotations, limit=4)
    caps = {c["vid"]: c for c in read_jsonl(DEMO.captions)}
    old = [caps[v] for v in dict.fromkeys(a.vid for a in anns)]
    captions = tmp_path / "caps.jsonl"

    def row_after_import(rows: list[dict], store: str, out: str):
        write_jsonl(captions, rows)
        base = Context(store_dir=str(tmp_path / store), rewriter="none")
        import_captions(resources.store_for(base), resources.embedder_for(base), captions, source="caps")
        return run_setting(base, Setting("Q_r", "original query"), anns, tmp_path / out)

    assert not row_after_import(old, "store", "out").cached
    new = [{**c, "captions": list(reversed(c["captions"]))} for c in old]
    again = row_after_import(new, "store", "out")
    fresh = row_after_import(new, "fresh", "fresh-out")
    assert not again.cached
    assert again.metrics == fresh.metrics


@pytest.mark.parametrize("pairless", ["none", "paraphrases"])
def test_a_pair_setting_with_a_pairless_rewriter_is_refused(tmp_path, pairless):
    """``none`` or a paraphrase file gives no rewrite per prompt pair: a 'pair:core' row would
    score the original query (and the paraphrases) under the pair's name, so it is refused,
    while the rows without pairs still run with such a rewriter."""
    from granalign.errors import InputError
    from tools.experiment import Setting

    spec = "none" if pairless == "none" else f"file:{DEMO.paraphrases}"
    anns = read_annotations(DEMO.annotations, limit=2)
    base = Context(rewriter=spec, store_dir=str(tmp_path / "store"))
    setting = Setting("pair:core", "prompt pair core alone", {"include_original": False}, pairs=("core",))
    with pytest.raises(InputError, match=r"no rewrites per prompt pair.*setting\(s\) pair:core"):
        run_setting(base, setting, anns, tmp_path / "out")
    assert not (tmp_path / "out" / "settings" / "pair:core").exists()


def test_a_pair_edited_while_its_row_runs_is_not_saved_under_the_old_text(monkeypatch, tmp_path):
    """The row's key holds its pairs' text as the row starts, but the graph reads the pair files
    for every query: an edit during the run (a researcher preparing the next experiment) gave a
    row of the new text saved under the old text's key, reused as the old text's result once the
    edit was undone.  Such a row is refused (and its journal dropped), and the re-run computes it."""
    import shutil

    import prompts
    from granalign.errors import InputError
    from tools.experiment import Setting

    pair_dir = tmp_path / "rewrite"
    shutil.copytree(prompts.PROMPT_DIR, pair_dir)
    monkeypatch.setattr(prompts, "PROMPT_DIR", pair_dir)
    original = (pair_dir / "core.yaml").read_text(encoding="utf-8")

    class EditingRewriter:
        name, pairless, edit = "editing-stand-in", False, True

        def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
            if self.edit:  # the researcher saves an edit while the rewrites are being made
                self.edit = False
                edited = original.replace("Shorten", "Summarise")
                (pair_dir / "core.yaml").write_text(edited, encoding="utf-8")
            verb = pair.simplify.split()[0]
            return [Rewrite(pair.id, " ".join(q.split()[:4]), f"{q} {verb}") for q in queries]

    fake = EditingRewriter()
    real = resources.rewriter_for_spec
    monkeypatch.setattr(resources, "rewriter_for_spec", lambda s: fake if s == "local:editing" else real(s))
    anns = read_annotations(DEMO.annotations, limit=3)
    base = Context(rewriter="local:editing", store_dir=str(tmp_path / "store"))
    _import_demo_captions(base, {a.vid for a in anns})
    setting = Setting("pair:core", "core alone", {"include_original": False}, pairs=("core",))
    out = tmp_path / "exp"
    with pytest.raises(InputError, match=r"pair:core.*changed while"):
        run_setting(base, setting, anns, out)
    assert not (out / "settings" / "pair:core" / "row.json").exists()
    (pair_dir / "core.yaml").write_text(original, encoding="utf-8")  # the edit is undone
    assert not run_setting(base, setting, anns, out).cached


def test_an_interrupted_ablation_row_keeps_the_rewrites_it_finished(monkeypatch, tmp_path):
    """A Q_s/Q_d row (``--only Q_s->C_agn`` on a fresh store) asked the LLM for every query of
    a pair in one call and stored the rewrites only at its end: Ctrl-C after most of an hour of
    CPU rewriting kept none.  Rewrites are now made and stored in batches first, as for the
    other rows, so the re-run starts where the interrupt stopped."""
    from tools.experiment import Setting

    class InterruptedRewriter:
        name, pairless, made = "interrupted-stand-in", False, 0

        def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
            self.made += len(queries)
            if self.made > 64:  # Ctrl-C while rewriting
                raise KeyboardInterrupt
            return [Rewrite(pair.id, " ".join(q.split()[:4]), f"{q} ({pair.id})") for q in queries]

    fake = InterruptedRewriter()
    real = resources.rewriter_for_spec
    monkeypatch.setattr(resources, "rewriter_for_spec", lambda s: fake if s == "local:stop" else real(s))
    anns = read_annotations(DEMO.annotations, limit=100)
    queries = sorted({resources.graph_query(a.query) for a in anns})
    assert len(queries) > 64
    base = Context(rewriter="local:stop", store_dir=str(tmp_path / "store"))
    setting = Setting("Q_s->C_agn", "simplified only", {"include_original": False}, "simplified", ("core",))
    with pytest.raises(KeyboardInterrupt):
        run_setting(base, setting, anns, tmp_path / "exp")
    (core,) = [p for p in resources.pairs_for(base.with_overrides(prompt_pairs="core"))]
    keys = [resources.rewrite_cache_key(fake, core, q) for q in queries]
    assert len(resources.store_for(base).get_rewrites(keys)) == 64


def test_a_pair_missing_from_a_rewrites_file_is_refused(tmp_path):
    """Rewrites computed elsewhere (``--rewriter file:gpu.jsonl``) for some pairs only: the rows
    of the other pairs fell back to the original query on every query and were reported as those
    pairs' results; they are now refused, naming the pairs the file lacks."""
    from granalign.errors import InputError
    from granalign.io.jsonl import write_jsonl
    from tools.experiment import Setting, check_rewriter

    anns = read_annotations(DEMO.annotations, limit=2)
    path = tmp_path / "gpu.jsonl"
    write_jsonl(path, [
        {"qid": a.qid, "query": a.query, "rewrites": [Rewrite("core", a.query, f"{a.query} now").to_dict()]}
        for a in anns
    ])  # fmt: skip
    base = Context(rewriter=f"file:{path}", store_dir=str(tmp_path / "store"))
    core = Setting("pair:core", "core alone", {"include_original": False}, pairs=("core",))
    both = Setting("m=2", "core, plain", {"include_original": False}, pairs=("core", "plain"))
    check_rewriter(base, [core])
    with pytest.raises(InputError, match=r"gpu\.jsonl.*no rewrites for prompt pair\(s\) plain"):
        run_setting(base, both, anns, tmp_path / "out")


def test_a_run_only_setting_changed_on_resume_keeps_the_finished_rows(tmp_path):
    """Resuming with a longer request_timeout (after timeouts of a rewriter server) or another
    concurrency changes how the run waits, not what it answers: the finished rows (hours of
    rewriting) were computed again and the interrupted row's journal dropped.  An answer setting
    still makes a new row."""
    from tools.experiment import Setting

    anns = read_annotations(DEMO.annotations, limit=2)
    base = Context(rewriter="none", store_dir=str(tmp_path / "store"))
    _import_demo_captions(base, {a.vid for a in anns})
    setting = Setting("Q_r", "original query")
    assert not run_setting(base, setting, anns, tmp_path / "out").cached
    patient = base.with_overrides(request_timeout=300.0, request_attempts=5, concurrency=2)
    assert run_setting(patient, setting, anns, tmp_path / "out").cached
    assert not run_setting(base.with_overrides(top_k=5), setting, anns, tmp_path / "out").cached


def test_a_query_with_a_double_space_is_rewritten_once_as_the_graph_asks_it(stand_in, tmp_path):
    """Dataset queries are raw text ("A large white ship  with ..."), and the graph rewrites the
    cleaned query: the warm-up before a row (and the Q_s/Q_d rows' rewrites) asked the LLM for
    the raw text under another cache key, so the graph asked again, one query at a time, and the
    ablation rows scored rewrites of another prompt than the pair rows."""
    from granalign.text import clean_query

    asked: list[str] = []
    real_batch = stand_in.rewrite_batch
    stand_in.rewrite_batch = lambda queries, pair: (asked.extend(queries), real_batch(queries, pair))[1]
    (ann,) = [a for a in read_annotations(DEMO.annotations) if "  " in a.query][:1]
    base = Context(rewriter="local:stand-in", store_dir=str(tmp_path / "store"))
    _import_demo_captions(base, {ann.vid})
    settings = {s.name: s for s in plan_settings(["core"], 1, True, None)}
    for name in ("pair:core", "Q_s->C_agn"):
        assert run_setting(base, settings[name], [ann], tmp_path / "exp").n == 1
    assert asked == [clean_query(ann.query)]


def test_pair_rows_that_score_no_detailed_rewrite_are_named_in_the_report(stand_in, tmp_path):
    from tools.experiment import detail_unscored_note

    settings = plan_settings(["core", "plain"], 2, True, None)
    note = detail_unscored_note(Context(), settings)
    assert note is not None and "rows pair:core, pair:plain, m=2 score only the simplified" in note
    assert "Q_s+Q_d->C_agn," not in note.split(" score ")[0]  # that row scores Q_d (agnostic)
    assert detail_unscored_note(Context(aware_missing="agnostic"), settings) is None
    assert all("Q_d" not in s.description for s in settings if s.name.startswith("pair:"))

    anns = read_annotations(DEMO.annotations, limit=1)
    base = Context(rewriter="local:stand-in", store_dir=str(tmp_path / "store"))
    _import_demo_captions(base, {a.vid for a in anns})
    row = run_setting(base, settings[0], anns, tmp_path / "exp")
    md = write_reports([row], tmp_path / "exp", note)["md"].read_text()
    assert md.endswith(f"\nNote: {note}\n")
