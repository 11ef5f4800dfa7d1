"""benchmarks/load_test.py end to end, small: both servers started by the script, 4 callers, 3 s."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.load_test import main, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert (
        percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0 and percentile(values, 99) == 99.0
    )
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) != percentile([], 50)  # NaN when nothing was measured


def test_load_script_drives_both_targets_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    report = main(
        ["--target", "both", "--callers", "4", "--duration", "3", "--videos", "2", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["rewriter"] == "none" and report["videos"] == 2 and report["queries"] >= 2
    assert [r["target"] for r in report["results"]] == ["langgraph", "mcp"]
    for r in report["results"]:
        assert r["errors"] == 0, r["error_messages"]
        assert r["error_messages"] == [] and r["callers"] == 4 and r["duration_s"] == 3
        assert r["ok"] == r["calls"] >= 4  # every caller finished at least one call
        assert r["window_s"] >= 3 and r["throughput_calls_per_s"] > 0
        lat = r["latency_ms"]
        assert set(lat) == {"p50", "p95", "p99", "mean", "min", "max"}
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert r["server"] == "started here" and r["url"].startswith("http://127.0.0.1:")
        assert r["servers"] == 1 and r["ok_per_server"] == [r["ok"]]
    mcp = report["results"][1]
    assert mcp["answers_checked"] == mcp["ok"]  # each equal to the sequential single-server answer
