"""Researcher CLI inputs: a caption file that changed under the same name and ids, clip lengths
no query accepts, outputs naming one file, non-finite shift lengths, experiment --only, the
speed of a resumed pass, and videos the run's captions file lacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from granalign.backends.embedder import make_embedder
from granalign.errors import InputError
from granalign.io.captions_import import import_captions, read_captions_file
from granalign.io.store import Store
from tools import bench
from tools.cli import app
from tools.demo_data import DEMO


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_with_the_same_name_and_ids_but_other_captions_is_imported_again(tmp_path: Path) -> None:
    """``shift`` writes every set as ``captions.jsonl`` with vids ``concatK:<group>``: the tune
    and report halves (or two seeds) share names and ids, never content."""
    embedder = make_embedder("local:all-MiniLM-L6-v2")
    store = Store(tmp_path / "s")
    first = _write(
        tmp_path / "a" / "captions.jsonl",
        [{"vid": "concat4:00000", "clip_len_s": 2, "captions": ["a dog runs", "a cat sleeps", "rain"]}],
    )
    second = _write(
        tmp_path / "b" / "captions.jsonl",
        [{"vid": "concat4:00000", "clip_len_s": 2, "captions": ["people cook", "a man chops onions"]}],
    )
    import_captions(store, embedder, first, source="captions")
    report = import_captions(store, embedder, second, source="captions")
    assert report.imported == 1
    texts, _ = store.get_captions("concat4:00000", source="captions", embedder_name=embedder.name)
    assert texts == ["people cook", "a man chops onions"]  # none of the first file's 3 clips left
    again = import_captions(store, embedder, second, source="captions")
    assert (again.imported, again.skipped) == (0, 1)  # still idempotent


@pytest.mark.parametrize("clip_len", [1e-9, 1e9])
def test_a_clip_length_no_query_accepts_is_refused_at_import(tmp_path: Path, clip_len: float) -> None:
    path = _write(tmp_path / "c.jsonl", [{"vid": "v", "clip_len_s": clip_len, "captions": ["x"]}])
    with pytest.raises(InputError, match=r"c.jsonl:1: 'clip_len_s' must be a number of seconds in"):
        list(read_captions_file(path))


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _no_work(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the benchmark started")


def test_bench_refuses_out_and_metrics_naming_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "run_benchmark", _no_work)
    same = str(tmp_path / "run.json")
    got = _invoke("bench", "--annotations", str(DEMO.annotations), "--captions", str(DEMO.captions),
                  "--store", str(tmp_path / "store"), "--out", same, "--metrics", same)  # fmt: skip
    assert got.exit_code == 2, got.output
    assert "the same file as --out" in got.output


@pytest.mark.parametrize("value", ["nan", "inf", "30,-inf"])
def test_shift_refuses_non_finite_lengths(tmp_path: Path, value: str) -> None:
    got = _invoke("shift", "--annotations", str(DEMO.annotations), "--captions", str(DEMO.captions),
                  "--out", str(tmp_path / "S"), "--crop", value)  # fmt: skip
    assert got.exit_code == 2, got.output
    assert "positive finite number" in got.output


def test_experiment_only_with_an_unknown_name_keeps_the_previous_results(tmp_path: Path) -> None:
    out_dir = tmp_path / "exp"
    out_dir.mkdir()
    (out_dir / "results.md").write_text("| earlier results |\n")
    got = _invoke("experiment", "--annotations", str(DEMO.annotations), "--captions", str(DEMO.captions),
                  "--store", str(tmp_path / "store"), "--out-dir", str(out_dir), "--rewriter", "none",
                  "--only", "Q_r-C_agn", "--limit", "1")  # fmt: skip
    assert got.exit_code == 2, got.output
    assert "no setting named Q_r-C_agn" in got.output
    assert (out_dir / "results.md").read_text() == "| earlier results |\n"


def test_pass_1_speed_of_a_resumed_run_counts_only_the_queries_it_ran() -> None:
    result = bench.BenchResult(
        annotations=[], predictions=[{}] * 300, metrics={}, skipped=[], import_report=None,
        import_s=0.0, rewrite_s=0.0, passes_s=[2.0, 10.0], resumed=224, resumed_answered=224,
    )  # fmt: skip
    assert result.queries_per_s(0) == pytest.approx(76 / 2.0)
    assert result.queries_per_s(1) == pytest.approx(300 / 10.0)


def test_bench_never_answers_from_captions_of_another_file(tmp_path: Path) -> None:
    """A video the run's --captions file lacks is a miss, even when an earlier import of another
    captions file left that video in the store."""
    from granalign.io.jsonl import read_jsonl, write_jsonl
    from graphs.context import Context

    anns = read_jsonl(DEMO.annotations)
    first, second = anns[0], next(a for a in anns if a["vid"] != anns[0]["vid"])
    annotations = tmp_path / "ann.jsonl"
    write_jsonl(annotations, [first, second])
    caps = {c["vid"]: c for c in read_jsonl(DEMO.captions)}
    write_jsonl(tmp_path / "both.jsonl", [caps[first["vid"]], caps[second["vid"]]])
    write_jsonl(tmp_path / "only_first.jsonl", [caps[first["vid"]]])
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter="none")
    bench.run_benchmark(annotations, tmp_path / "both.jsonl", ctx, concurrency=1)
    result = bench.run_benchmark(annotations, tmp_path / "only_first.jsonl", ctx, concurrency=1)
    assert [qid for qid, _ in result.skipped] == [second["qid"]]
    assert "has no captions in" in result.skipped[0][1]
