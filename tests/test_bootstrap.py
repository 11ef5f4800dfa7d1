"""Per-query metrics (means equal the official aggregates) and the paired bootstrap interval."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from granalign.errors import ConfigError, InputError
from granalign.evaluation.bootstrap import paired_bootstrap
from granalign.evaluation.metrics import evaluate_submission, per_query_metrics
from granalign.io.jsonl import read_jsonl
from tests.conftest import fixture_path


@pytest.mark.parametrize("name", ["sample_val_preds", "vtg_gpt_val_preds"])
def test_per_query_means_equal_the_official_aggregates(name: str) -> None:
    preds = read_jsonl(fixture_path("qvhighlights", f"{name}.jsonl"))
    truth = read_jsonl(fixture_path("qvhighlights", "highlight_val_release.jsonl"))
    official = json.loads(fixture_path("qvhighlights", f"{name}_metrics.json").read_text())["brief"]
    got = per_query_metrics(preds, truth)
    assert got.qids == tuple(p["qid"] for p in preds)
    for metric, key in (("R1@0.5", "MR-full-R1@0.5"), ("R1@0.7", "MR-full-R1@0.7"), ("mAP", "MR-full-mAP")):
        vector = got.metric(metric)
        assert vector.shape == (len(preds),)
        assert round(100 * float(vector.mean()), 2) == official[key]
    assert set(np.unique(got.r1_05)) <= {0.0, 1.0}
    # and the aggregate path is unchanged
    assert evaluate_submission(preds, truth)["brief"]["MR-full-mAP"] == official["MR-full-mAP"]


def test_per_query_metric_names_are_checked() -> None:
    preds = [{"qid": 1, "pred_relevant_windows": [[0, 10, 1.0]]}]
    truth = [{"qid": 1, "relevant_windows": [[0, 10]], "duration": 150}]
    got = per_query_metrics(preds, truth)
    assert got.metric("R1@0.7").tolist() == [1.0] and got.metric("mAP").tolist() == [1.0]
    with pytest.raises(InputError, match="unknown per-query metric"):
        got.metric("R5@0.5")


def test_identical_systems_give_a_zero_interval() -> None:
    a = np.array([1.0, 0.0, 1.0, 1.0])
    got = paired_bootstrap(a, a)
    assert (got.mean_diff, got.low, got.high) == (0.0, 0.0, 0.0)
    assert not got.significant


def test_interval_matches_a_direct_resampling_and_is_seeded() -> None:
    rng = np.random.default_rng(7)
    a = rng.random(200)
    b = a - 0.05 + 0.1 * rng.standard_normal(200)
    got = paired_bootstrap(a, b, resamples=2000, seed=3)
    again = paired_bootstrap(a, b, resamples=2000, seed=3)
    assert got == again
    # the same computation written out: 2,000 resamples of query indices, percentiles of means
    draw = np.random.default_rng(3)
    diffs = a - b
    means = np.concatenate(
        [diffs[draw.integers(0, 200, size=(count, 200))].mean(axis=1) for count in (500, 500, 500, 500)]
    )
    assert got.low == pytest.approx(np.quantile(means, 0.025))
    assert got.high == pytest.approx(np.quantile(means, 0.975))
    assert got.mean_diff == pytest.approx(0.05 + (diffs.mean() - 0.05))
    assert got.low < got.mean_diff < got.high and got.significant
    assert got.describe().startswith(f"{100 * got.mean_diff:+.2f} [")


def test_pairing_narrows_the_interval() -> None:
    # b is a shifted copy of a: every query gains exactly 0.1, so the paired interval is a point
    a = np.random.default_rng(1).random(100)
    got = paired_bootstrap(a + 0.1, a)
    assert got.low == pytest.approx(0.1) and got.high == pytest.approx(0.1)


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(InputError, match="one value per query"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(InputError, match="at least one query"):
        paired_bootstrap([], [])
    with pytest.raises(ConfigError, match="resamples"):
        paired_bootstrap([1.0], [0.0], resamples=0)
    with pytest.raises(ConfigError, match="confidence"):
        paired_bootstrap([1.0], [0.0], confidence=1.0)


def test_cli_eval_prints_the_paired_difference_against_a_baseline() -> None:
    from typer.testing import CliRunner

    from tools.cli import app

    gt = fixture_path("qvhighlights", "highlight_val_release.jsonl")
    ours = fixture_path("qvhighlights", "sample_val_preds.jsonl")
    peer = fixture_path("qvhighlights", "vtg_gpt_val_preds.jsonl")
    args = ["eval", "--submission", str(ours), "--gt", str(gt), "--baseline", str(peer)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    a = per_query_metrics(read_jsonl(ours), read_jsonl(gt))
    b = per_query_metrics(read_jsonl(peer), read_jsonl(gt))
    order = {q: i for i, q in enumerate(b.qids)}
    expected = paired_bootstrap(a.ap, b.ap[[order[q] for q in a.qids]]).describe()
    assert "paired bootstrap" in result.output and expected in result.output
    # then R1@0.5 by the longest ground-truth window, every bin the bootstrap over its queries
    assert "longest GT window" in result.output  # the bins table's first column
    longest = {str(r["qid"]): max(e - s for s, e in r["relevant_windows"]) for r in read_jsonl(gt)}
    lengths = np.array([longest[str(q)] for q in a.qids])
    ordered = b.r1_05[[order[q] for q in a.qids]]
    edges, labels = (0, 10, 20, 40, 80, np.inf), ("≤10 s", "10–20 s", "20–40 s", "40–80 s", ">80 s")
    for low, high, label in zip(edges, edges[1:], labels, strict=False):
        members = (lengths > low) & (lengths <= high)
        interval = paired_bootstrap(a.r1_05[members], ordered[members])
        means = (f"{100 * a.r1_05[members].mean():.2f}", f"{100 * ordered[members].mean():.2f}")
        cells = (label, str(members.sum()), *means, interval.describe())
        row = r"\s*│\s*".join(re.escape(cell) for cell in cells)
        assert re.search(row, result.output), row


def test_cli_eval_blames_the_baseline_for_its_own_missing_or_extra_qids(tmp_path: Path) -> None:
    """A baseline lacking queries is the baseline's fault: the error must name it (not the
    submission, whose metrics are fine) and must not advise --allow-subset, which fails too."""
    from typer.testing import CliRunner

    from tools.cli import app

    gt = fixture_path("qvhighlights", "highlight_val_release.jsonl")
    ours = fixture_path("qvhighlights", "sample_val_preds.jsonl")
    lines = fixture_path("qvhighlights", "vtg_gpt_val_preds.jsonl").read_text().splitlines()
    short = tmp_path / "short_baseline.jsonl"
    short.write_text("\n".join(lines[:-2]) + "\n")
    missing = [json.loads(line)["qid"] for line in lines[-2:]]
    args = ["eval", "--submission", str(ours), "--gt", str(gt), "--baseline", str(short)]
    for extra in ([], ["--allow-subset"]):
        result = CliRunner().invoke(app, [*args, *extra], env={"COLUMNS": "400"})
        assert result.exit_code == 2, result.output
        error = " ".join(result.output[result.output.index("error:") :].split())
        assert f"--baseline {short}" in error and "allow" not in error, error
        assert "2 of the submission's qids missing" in error and all(str(q) in error for q in missing)
    # and a subset submission against a full baseline: the baseline's extra qids are named
    sub = tmp_path / "sub.jsonl"
    sub.write_text("\n".join(lines[:-2]) + "\n")
    args = ["eval", "--submission", str(sub), "--gt", str(gt), "--baseline", str(ours), "--allow-subset"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    error = " ".join(result.output.split())
    assert result.exit_code == 2 and "2 qids the submission does not answer" in error, error


def test_cli_eval_names_each_bad_file_and_prints_nothing_before_a_bad_baseline(tmp_path: Path) -> None:
    """An error about the submission or the ground truth names the file (as --baseline errors
    always did), and a bad --baseline is refused before the submission's metrics table."""
    from typer.testing import CliRunner

    from tools.cli import app

    gt = fixture_path("qvhighlights", "highlight_val_release.jsonl")
    ours = fixture_path("qvhighlights", "sample_val_preds.jsonl")
    first = read_jsonl(ours)[0]
    no_windows = tmp_path / "no_windows.jsonl"
    no_windows.write_text(json.dumps({"qid": first["qid"]}) + "\n")
    bad_gt = tmp_path / "bad_gt.jsonl"
    gt_line = next(r for r in read_jsonl(gt) if r["qid"] == first["qid"])
    bad_gt.write_text(json.dumps({k: v for k, v in gt_line.items() if k != "relevant_windows"}) + "\n")
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(first) + "\n")
    cases = {
        f"--submission {no_windows}": ["--submission", str(no_windows), "--gt", str(gt), "--allow-subset"],
        f"--gt {bad_gt}": ["--submission", str(one), "--gt", str(bad_gt)],
        f"--submission {one} vs --gt {gt}: query sets differ": ["--submission", str(one), "--gt", str(gt)],
        f"--baseline {no_windows}": [
            "--submission",
            str(ours),
            "--gt",
            str(gt),
            "--baseline",
            str(no_windows),
        ],
        str(tmp_path / "absent.jsonl"): [
            "--submission",
            str(ours),
            "--gt",
            str(gt),
            "--baseline",
            str(tmp_path / "absent.jsonl"),
        ],
    }
    for named, args in cases.items():
        result = CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "400"})
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error:") and named in result.output, result.output
        assert "MR-full" not in result.output, result.output
