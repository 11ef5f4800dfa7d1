"""Researcher commands on bad input: one line naming the input (exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from granalign.errors import InputError
from granalign.io.jsonl import read_jsonl, write_jsonl
from granalign.io.store import StoreUnavailable
from granalign.rewrite import FileRewriter
from graphs import resources
from graphs.context import Context
from tools import bench
from tools.cli import app
from tools.demo_data import DEMO


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def _with_lone_surrogate(rows: list[dict[str, Any]], path: Path) -> Path:
    """``json.dumps`` writes a lone surrogate as the escape ``\\ud800``: valid JSON, no text."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "\\ud800" in path.read_text()
    return path


def test_bench_refuses_a_query_holding_a_lone_surrogate(tmp_path: Path) -> None:
    anns = read_jsonl(DEMO.annotations)[:2]
    anns[1]["query"] = "a man \ud800 chops onions"
    path = _with_lone_surrogate(anns, tmp_path / "ann.jsonl")
    got = _invoke("bench", "--annotations", str(path), "--captions", str(DEMO.captions),
                  "--rewriter", "none", "--store", str(tmp_path / "store"))  # fmt: skip
    assert got.exit_code == 2, got.output
    assert f"{path}:2: 'query' is not valid Unicode" in got.output
    assert got.exception is None or isinstance(got.exception, SystemExit)


def test_a_paraphrase_file_holding_a_lone_surrogate_is_refused_with_its_line(tmp_path: Path) -> None:
    rows = read_jsonl(DEMO.paraphrases)[:3]
    rows[2]["rephrased_query"][1] = "a lady \ud800 sits"
    path = _with_lone_surrogate(rows, tmp_path / "para.jsonl")
    with pytest.raises(InputError, match=r"para.jsonl:3: 'rephrased_query'\[1\] is not valid Unicode"):
        FileRewriter(path)


def test_a_bench_whose_store_was_lost_answers_every_query_when_re_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Chroma server lost mid-run fails every query with StoreUnavailable ("re-run once the
    server answers again"); the journal must not keep those failures, or the re-run replays them
    as its own answers (here: "no query could be answered" again, forever)."""
    anns = read_jsonl(DEMO.annotations)[:3]
    annotations = tmp_path / "ann.jsonl"
    write_jsonl(annotations, anns)
    caps = {c["vid"]: c for c in read_jsonl(DEMO.captions)}
    captions = tmp_path / "caps.jsonl"
    write_jsonl(captions, [caps[v] for v in dict.fromkeys(a["vid"] for a in anns)])
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter="none")
    journal = tmp_path / "journal.jsonl"
    real_batch = bench.graph.batch

    def lost(inputs: list[Any], **kwargs: Any) -> list[Any]:
        return [StoreUnavailable("lost the Chroma server at http://x (ConnectError)") for _ in inputs]

    monkeypatch.setattr(bench.graph, "batch", lost)
    with pytest.raises(InputError, match=r"no query .* could be answered"):
        bench.run_benchmark(annotations, captions, ctx, concurrency=1, journal_path=journal)
    monkeypatch.setattr(bench.graph, "batch", real_batch)
    again = bench.run_benchmark(annotations, captions, ctx, concurrency=1, journal_path=journal)
    assert (again.n, again.skipped, again.resumed) == (3, [], 0)


def _paraphrase_run_inputs(tmp_path: Path) -> tuple[Path, Path, Path, list[dict[str, Any]]]:
    anns = read_jsonl(DEMO.annotations)[:4]
    annotations, captions, paraphrases = (
        tmp_path / "ann.jsonl",
        tmp_path / "caps.jsonl",
        tmp_path / "para.jsonl",
    )
    write_jsonl(annotations, anns)
    caps = {c["vid"]: c for c in read_jsonl(DEMO.captions)}
    write_jsonl(captions, [caps[v] for v in dict.fromkeys(a["vid"] for a in anns)])
    qids = {a["qid"] for a in anns}
    return annotations, captions, paraphrases, [p for p in read_jsonl(DEMO.paraphrases) if p["qid"] in qids]


def test_a_bench_journal_of_another_paraphrase_file_is_not_resumed(tmp_path: Path) -> None:
    """Killed with paraphrase file A (its journal kept), re-run after A was edited: the re-run
    must answer with the new paraphrases, like an uninterrupted run, not replay A's rows."""
    annotations, captions, paraphrases, paras = _paraphrase_run_inputs(tmp_path)
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter=f"file:{paraphrases}")
    journal = tmp_path / "journal.jsonl"
    write_jsonl(paraphrases, [{**p, "rephrased_query": p["rephrased_query"][:1]} for p in paras])
    bench.run_benchmark(annotations, captions, ctx, concurrency=1, journal_path=journal, keep_journal=True)
    write_jsonl(paraphrases, paras)  # edited before the re-run
    again = bench.run_benchmark(annotations, captions, ctx, concurrency=1, journal_path=journal)
    fresh_ctx = Context(store_dir=str(tmp_path / "fresh"), rewriter=f"file:{paraphrases}")
    fresh = bench.run_benchmark(annotations, captions, fresh_ctx, concurrency=1)
    assert again.resumed == 0
    assert again.predictions == fresh.predictions


def test_an_experiment_paraphrase_row_runs_again_once_its_file_is_fixed_or_edited(tmp_path: Path) -> None:
    """A broken paraphrase file fails every query of its row; once the file is fixed the re-run
    must compute the row, not replay the failures from the row's journal (or, after an edit,
    load the row of the old file as cached)."""
    from granalign.io.captions_import import import_captions
    from tools.experiment import ablation_settings, run_setting

    annotations, captions, paraphrases, paras = _paraphrase_run_inputs(tmp_path)
    anns = bench.read_annotations(annotations)
    base = Context(store_dir=str(tmp_path / "store"), rewriter="none")
    import_captions(resources.store_for(base), resources.embedder_for(base), captions, source="caps")
    setting = next(s for s in ablation_settings(["core"], paraphrases) if "para" in s.name)
    out = tmp_path / "out"
    paraphrases.write_text('{"qid": 1, "query": "x", "rephrased_query": [}\n')  # malformed
    with pytest.raises(InputError, match=r"para\.jsonl:1: malformed JSON"):
        run_setting(base, setting, anns, out, concurrency=1)
    write_jsonl(paraphrases, [{**p, "rephrased_query": p["rephrased_query"][:1]} for p in paras])
    fixed = run_setting(base, setting, anns, out, concurrency=1)
    assert (fixed.n, fixed.skipped, fixed.cached) == (4, 0, False)
    write_jsonl(paraphrases, paras)
    edited = run_setting(base, setting, anns, out, concurrency=1)
    fresh = run_setting(base, setting, anns, tmp_path / "fresh-out", concurrency=1)
    assert not edited.cached
    assert edited.metrics == fresh.metrics


def test_a_damaged_experiment_row_is_computed_again(tmp_path: Path) -> None:
    """row.json cut short (or hand-edited) must not stop the experiment with a JSON traceback."""
    annotations, captions, _, _ = _paraphrase_run_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["experiment", "--annotations", str(annotations), "--captions", str(captions),
            "--store", str(tmp_path / "store"), "--only", "Q_r->C_agn", "--out-dir", str(out)]  # fmt: skip
    assert _invoke(*args).exit_code == 0
    row = out / "settings" / "Q_r-C_agn" / "row.json"
    good = row.read_text()
    row.write_text(good[: len(good) // 2])
    got = _invoke(*args)
    assert got.exit_code == 0, got.output
    assert "(cached)" not in got.output and json.loads(row.read_text())["key"] == json.loads(good)["key"]


def test_an_experiment_on_an_empty_captions_file_says_so_before_any_rewrite(tmp_path: Path) -> None:
    """It used to rewrite every query (minutes with a local LM) and then stop at its first
    setting with "video ... is not in the store", never naming the empty file."""
    annotations, _, _, _ = _paraphrase_run_inputs(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "out"
    args = ["experiment", "--annotations", str(annotations), "--captions", str(empty),
            "--store", str(tmp_path / "store"), "--out-dir", str(out)]  # fmt: skip
    got = _invoke(*args)
    assert got.exit_code != 0
    assert f"captions file {empty} is empty; no query could be answered" in " ".join(got.output.split())
    assert not (out / "settings").exists()


@pytest.mark.parametrize("how", ["--set", "env", "neither"])
def test_experiment_takes_the_rewriter_from_set_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """``--set rewriter=none`` (or GRANALIGN_REWRITER=none) was overridden by the --rewriter
    flag's default, local:smollm2: the run used another rewriter than asked, silently.  Now it
    is the rewriter, so a pair row is refused as for ``--rewriter none``; local:smollm2 (here a
    stand-in) stays the default when nothing names one."""
    from granalign.rewrite import Rewrite
    from prompts import PromptPair

    class StandIn:
        name, pairless, calls = "stand-in", False, 0

        def rewrite_batch(self, queries: list[str], pair: PromptPair) -> list[Rewrite]:
            StandIn.calls += len(queries)
            return [Rewrite(pair.id, q, q) for q in queries]

    real = resources.rewriter_for_spec
    monkeypatch.setattr(
        resources, "rewriter_for_spec", lambda spec: StandIn() if spec == "local:smollm2" else real(spec)
    )
    monkeypatch.delenv("GRANALIGN_REWRITER", raising=False)
    args = ["experiment", "--annotations", str(DEMO.annotations), "--captions", str(DEMO.captions),
            "--limit", "1", "--pairs", "core", "--only", "pair:core",
            "--store", str(tmp_path / "store"), "--out-dir", str(tmp_path / "exp")]  # fmt: skip
    env = {"COLUMNS": "400", "GRANALIGN_REWRITER": "none"} if how == "env" else {"COLUMNS": "400"}
    extra = ["--set", "rewriter=none"] if how == "--set" else []
    got = CliRunner().invoke(app, args + extra, env=env)
    if how == "neither":
        assert got.exit_code == 0 and StandIn.calls > 0, got.output
    else:
        assert got.exit_code == 2, got.output
        assert "rewriter 'none' gives no rewrites per prompt pair" in got.output
        assert StandIn.calls == 0


@pytest.mark.parametrize("item", ["prompt_pairs=visual", "m=2", "include_original=false"])
def test_experiment_refuses_a_set_of_what_each_row_sets_itself(tmp_path: Path, item: str) -> None:
    """The rows set prompt_pairs, m and include_original themselves: ``--set m=2`` was ignored
    without a word (the table then reads as if it had applied)."""
    got = _invoke("experiment", "--annotations", str(DEMO.annotations), "--captions", str(DEMO.captions),
                  "--limit", "1", "--rewriter", "none", "--only", "Q_r->C_agn", "--set", item,
                  "--store", str(tmp_path / "store"), "--out-dir", str(tmp_path / "exp"))  # fmt: skip
    assert got.exit_code == 2, got.output
    assert f"--set {item}: experiment sets {item.split('=')[0]} per row, so it would be ignored" in got.output
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("bad", ["pair", "rewriter file"])
def test_bench_refuses_a_bad_pair_or_rewriter_file_before_the_caption_import(
    tmp_path: Path, bad: str
) -> None:
    """A typo in ``--set prompt_pairs`` or a broken ``file:`` rewriter was reported only after
    the caption import (minutes on a full caption file, written to the store)."""
    annotations, captions, paraphrases, _ = _paraphrase_run_inputs(tmp_path)
    paraphrases.write_text('{"qid": 1, "query": "x", "rephrased_query": [}\n')  # malformed
    store = tmp_path / "store"
    chosen = ["--set", "prompt_pairs=core,nosuch"] if bad == "pair" else ["--rewriter", f"file:{paraphrases}"]
    got = _invoke("bench", "--annotations", str(annotations), "--captions", str(captions),
                  "--store", str(store), *chosen)  # fmt: skip
    assert got.exit_code == 2, got.output
    said = " ".join(got.output.split())
    expected = "prompt pair 'nosuch' not found" if bad == "pair" else "para.jsonl:1: malformed JSON"
    assert expected in said
    assert not store.exists()  # nothing imported


def test_experiment_refuses_a_bad_paraphrase_file_before_the_import_and_any_row(tmp_path: Path) -> None:
    """``--paraphrases`` was read only when its row started: after the caption import and the
    rows planned before it."""
    annotations, captions, paraphrases, _ = _paraphrase_run_inputs(tmp_path)
    paraphrases.write_text('{"qid": 1, "query": "x", "rephrased_query": [}\n')  # malformed
    store, out = tmp_path / "store", tmp_path / "exp"
    got = _invoke("experiment", "--annotations", str(annotations), "--captions", str(captions),
                  "--rewriter", "none", "--only", "Q_r->C_agn,Q_r+para->C_agn", "--paraphrases",
                  str(paraphrases), "--store", str(store), "--out-dir", str(out))  # fmt: skip
    assert got.exit_code == 2, got.output
    assert "para.jsonl:1: malformed JSON" in " ".join(got.output.split())
    assert not store.exists() and not out.exists()


@pytest.mark.parametrize(
    ("pairs", "said"),
    [
        (" ", "--pairs ' ': no pair id given"),
        ("", "--pairs '': no pair id given"),
        ("core,,plain", "--pairs 'core,,plain': item 2 is empty"),
        ("core,plain,", "--pairs 'core,plain,': item 3 is empty"),
    ],
)
def test_experiment_refuses_an_empty_pair_id(tmp_path: Path, pairs: str, said: str) -> None:
    """An empty item was looked up as a pair: "prompt pair '' not found" (and ``--pairs ""``
    ran every pair); an unset variable in ``--pairs "$A,$B"`` must not shrink the experiment."""
    got = _invoke("experiment", "--annotations", str(DEMO.annotations), "--captions", str(DEMO.captions),
                  "--limit", "1", "--pairs", pairs, "--store", str(tmp_path / "store"),
                  "--out-dir", str(tmp_path / "exp"))  # fmt: skip
    assert got.exit_code == 2, got.output
    assert said in got.output
    assert not (tmp_path / "store").exists() and not (tmp_path / "exp").exists()


def test_experiment_reports_keep_the_rows_of_earlier_only_runs_in_the_folder(tmp_path: Path) -> None:
    """Each ``--only`` run rewrote results.md/csv with its own rows alone, dropping the finished
    (still valid) rows of earlier runs in the same --out-dir; rows of other queries stay out."""
    annotations, captions, paraphrases, paras = _paraphrase_run_inputs(tmp_path)
    write_jsonl(paraphrases, paras)
    out = tmp_path / "exp"
    args = ["experiment", "--annotations", str(annotations), "--captions", str(captions),
            "--rewriter", "none", "--paraphrases", str(paraphrases), "--store", str(tmp_path / "store"),
            "--out-dir", str(out), "--only"]  # fmt: skip
    assert _invoke(*args, "Q_r->C_agn").exit_code == 0
    got = _invoke(*args, "Q_r+para->C_agn")
    assert got.exit_code == 0, got.output
    said = " ".join(got.output.split())
    assert "the reports also hold row(s) Q_r->C_agn, finished earlier" in said
    assert "not in the reports (no result" in said and "pair:core" in said
    rows = [line.split(",")[0] for line in (out / "results.csv").read_text().splitlines()[1:]]
    assert rows == ["Q_r->C_agn", "Q_r+para->C_agn"]
    fewer = _invoke(*args, "Q_r+para->C_agn", "--limit", "2")  # other queries: the row is not valid
    assert fewer.exit_code == 0, fewer.output
    rows = [line.split(",")[0] for line in (out / "results.csv").read_text().splitlines()[1:]]
    assert rows == ["Q_r+para->C_agn"]
