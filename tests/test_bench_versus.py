"""`granalign bench --versus MODE`: the peer rule in the same command (issue 13, item 3).

Real MiniLM, real Chroma, queries of the shipped QVHighlights subset.  The baseline pass must be
exactly what a separate ``--set proposal_mode=vtg-gpt`` run gives, and the Δ must be the one
``granalign eval --baseline`` prints for those two files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from granalign.evaluation.bootstrap import paired_bootstrap
from granalign.evaluation.metrics import per_query_metrics
from granalign.io.jsonl import read_jsonl, write_jsonl
from graphs.context import Context
from tests.test_cli_first_run import DASH_VID, PLAIN_VID, store_dir  # noqa: F401  (fixture)
from tools import bench
from tools.cli import app
from tools.demo_data import DEMO

VIDS = (PLAIN_VID, DASH_VID)  # the two videos the imported ``store_dir`` fixture holds


@pytest.fixture(scope="module")
def annotations_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [r for r in read_jsonl(DEMO.annotations) if r["vid"] in VIDS]
    assert len(rows) >= 2
    path = tmp_path_factory.mktemp("versus_ann") / "annotations.jsonl"
    write_jsonl(path, rows)
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _bench(annotations_file: Path, store: Path, out: Path, *extra: str) -> Any:
    data = ["--annotations", str(annotations_file), "--captions", str(DEMO.captions)]
    files = ["--out", str(out / "preds.jsonl"), "--metrics", str(out / "metrics.json")]
    return invoke("bench", *data, "--store", str(store), "--concurrency", "1", *files, *extra)


def test_versus_runs_the_peer_on_the_same_queries_and_reports_the_paired_delta(
    annotations_file: Path,
    store_dir: Path,  # noqa: F811  (the imported fixture)
    tmp_path: Path,
) -> None:
    both, alone = tmp_path / "both", tmp_path / "alone"
    both.mkdir()
    alone.mkdir()
    got = _bench(annotations_file, store_dir, both, "--versus", "vtg-gpt")
    assert got.exit_code == 0, got.output
    unwrapped = re.sub(r"\s+", "", got.output)
    for name in ("preds.jsonl", "metrics.json", "preds.vtg-gpt.jsonl", "metrics.vtg-gpt.json"):
        assert f"wrote{both / name}" in unwrapped, name  # our --metrics went unannounced
    assert "ours (pooled) − vtg-gpt" in got.output and "proposal_mode vtg-gpt" in got.output
    peer_got = _bench(annotations_file, store_dir, alone, "--set", "proposal_mode=vtg-gpt")
    assert peer_got.exit_code == 0, peer_got.output

    ours = read_jsonl(both / "preds.jsonl")
    peer = read_jsonl(both / "preds.vtg-gpt.jsonl")
    assert peer == read_jsonl(alone / "preds.jsonl")  # the same run as a separate --set one
    assert [p["qid"] for p in ours] == [p["qid"] for p in peer]
    assert ours != peer  # the two rules answer differently on these queries
    peer_metrics = json.loads((both / "metrics.vtg-gpt.json").read_text())
    assert peer_metrics == json.loads((alone / "metrics.json").read_text())

    delta = json.loads((both / "metrics.vtg-gpt.delta.json").read_text())
    truth = read_jsonl(annotations_file)
    assert delta["ours"] == "pooled" and delta["baseline"] == "vtg-gpt" and delta["queries"] == len(truth)
    a, b = per_query_metrics(ours, truth), per_query_metrics(peer, truth)
    for name in ("R1@0.5", "R1@0.7", "mAP"):
        interval = paired_bootstrap(a.metric(name), b.metric(name))
        assert delta["delta_pp"][name] == {
            "delta": round(100 * interval.mean_diff, 2),
            "low": round(100 * interval.low, 2),
            "high": round(100 * interval.high, 2),
        }
    mean_map = 100 * (a.metric("mAP").mean() - b.metric("mAP").mean())
    assert delta["delta_pp"]["mAP"]["delta"] == pytest.approx(mean_map, abs=0.006)

    # R1@0.5 by the longest ground-truth window: the bins partition the queries, and each is
    # the bootstrap over the queries whose longest window (read from the annotations) is in it
    bins = delta["by_longest_gt_window"]
    assert sum(row["queries"] for row in bins) == len(truth)
    assert "longest GT window" in got.output  # the bins table's first column
    longest = {str(r["qid"]): max(e - s for s, e in r["relevant_windows"]) for r in truth}
    lengths = np.array([longest[str(q)] for q in a.qids])
    for row in bins:
        low, high = row["longest_gt_s"]
        members = (lengths > low) & (lengths <= (np.inf if high is None else high))
        interval = paired_bootstrap(a.r1_05[members], b.r1_05[members])
        assert (row["queries"], row["delta"], row["low"], row["high"]) == (
            int(members.sum()),
            round(100 * interval.mean_diff, 2),
            round(100 * interval.low, 2),
            round(100 * interval.high, 2),
        )
        assert row["ours"] == round(100 * a.r1_05[members].mean(), 2)
        assert row["baseline"] == round(100 * b.r1_05[members].mean(), 2)


class _NoWork:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the benchmark started")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("vtg", "error: --versus 'vtg': expected one of pooled, fused, vtg-gpt"),
        ("pooled", "error: --versus pooled: the run itself uses proposal_mode=pooled; pick another"),
    ],
)
def test_a_bad_versus_is_refused_before_any_work(
    value: str, message: str, annotations_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "run_benchmark", _NoWork())
    got = invoke("bench", "--annotations", str(annotations_file), "--captions", str(DEMO.captions),
                 "--store", str(tmp_path / "store"), "--versus", value)  # fmt: skip
    assert got.exit_code == 2
    assert [line for line in got.output.splitlines() if line.startswith("error:")] == [message]


def test_versus_checks_its_own_output_files_before_any_work(
    annotations_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "run_benchmark", _NoWork())
    (tmp_path / "preds.vtg-gpt.jsonl").mkdir()  # the baseline's prediction file cannot be written
    got = invoke("bench", "--annotations", str(annotations_file), "--captions", str(DEMO.captions),
                 "--store", str(tmp_path / "store"), "--out", str(tmp_path / "preds.jsonl"),
                 "--versus", "vtg-gpt")  # fmt: skip
    assert got.exit_code == 2
    assert "preds.vtg-gpt.jsonl: is a folder, expected a file name" in got.output


def test_a_killed_run_keeps_its_journal_while_a_run_with_other_settings_finishes(
    annotations_file: Path,
    store_dir: Path,  # noqa: F811  (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``bench --versus`` runs two settings on one annotations file: a crash in the second pass
    must not cost the first pass's journal, nor the other way round."""
    ours = Context(store_dir=str(store_dir))
    peer = ours.with_overrides(proposal_mode="vtg-gpt")
    real_run_queries = bench.run_queries

    def killed_after_journaling(*args: Any, **kwargs: Any) -> Any:
        real_run_queries(*args, **kwargs)  # every query answered and journaled, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_queries", killed_after_journaling)
    with pytest.raises(KeyboardInterrupt):
        bench.run_benchmark(annotations_file, DEMO.captions, ours, concurrency=1)
    monkeypatch.setattr(bench, "run_queries", real_run_queries)
    finished = bench.run_benchmark(annotations_file, DEMO.captions, peer, concurrency=1)
    assert finished.resumed == 0
    again = bench.run_benchmark(annotations_file, DEMO.captions, ours, concurrency=1)
    assert again.resumed == len(read_jsonl(annotations_file))  # the killed run's rows were kept


def test_a_kill_during_the_peer_pass_does_not_cost_our_pass_again(
    annotations_file: Path,
    store_dir: Path,  # noqa: F811  (the imported fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our pass's journal stays until the whole ``--versus`` command has finished: the rerun
    after a kill in the peer's pass resumes our pass from it, and a finished command leaves no
    journal behind."""
    real_run_queries = bench.run_queries

    def killed_in_the_peer_pass(annotations: Any, ctx: Any, **kwargs: Any) -> Any:
        if ctx.proposal_mode == "vtg-gpt":
            raise KeyboardInterrupt
        return real_run_queries(annotations, ctx, **kwargs)

    journals = store_dir / "journals"
    before = set(journals.glob("bench-*.jsonl"))  # other tests' killed runs share this store
    monkeypatch.setattr(bench, "run_queries", killed_in_the_peer_pass)
    killed = _bench(annotations_file, store_dir, tmp_path, "--versus", "vtg-gpt")
    assert killed.exit_code != 0
    n = len(read_jsonl(annotations_file))
    kept = [p for p in set(journals.glob("bench-*.jsonl")) - before if len(p.read_text().splitlines()) > n]
    assert len(kept) == 1  # ours: a header and a row per query, kept for the rerun
    monkeypatch.setattr(bench, "run_queries", real_run_queries)
    again = _bench(annotations_file, store_dir, tmp_path, "--versus", "vtg-gpt")
    assert again.exit_code == 0, again.output
    assert f"resumed: {n} queries came from an interrupted run's journal" in " ".join(again.output.split())
    assert set(journals.glob("bench-*.jsonl")) <= before  # the finished command removed both
