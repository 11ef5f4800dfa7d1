"""``granalign benchmark``: the suite runs, prints its table and writes well-formed JSON.

Structure only: performance is never asserted (the machines are shared; a timing threshold
would make the suite flaky).  The quick core-math and graph-overhead benchmarks need MiniLM and
the embedded demo data, no other model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from granalign.errors import ConfigError
from graphs.context import Context
from tools import benchmark_suite as suite
from tools.cli import app
from tools.cli_benchmark import format_value

pytestmark = pytest.mark.slow

COLUMNS = ("benchmark", "size", "metric", "value", "unit")


def test_quick_core_math_and_graph_overhead(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    work = tmp_path / "work"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--quick",
            "--only",
            "core_math,graph_overhead",
            "--store",
            str(work),
            "--out",
            str(out),
            "--queries",
            "3",
        ],
        env={"COLUMNS": "160", "OMP_NUM_THREADS": "1"},
    )
    assert result.exit_code == 0, result.output
    for word in ("core_math", "graph_overhead", "fuse+propose+NMS CPU per query", "18,000 clips"):
        assert word in result.output
    report = json.loads(out.read_text())
    assert report["options"]["benchmarks"] == ["core_math", "graph_overhead"]
    assert report["options"]["quick"] is True
    assert report["machine"]["cpus"] >= 1
    rows = report["rows"]
    assert {r["benchmark"] for r in rows} == {"core_math", "graph_overhead"}
    for row in rows:
        assert tuple(row) == COLUMNS
        assert isinstance(row["value"], float) and math.isfinite(row["value"]), row
        assert row["value"] > 0 or row["metric"].startswith("overhead"), row  # a difference may be < 0
        assert row["size"] and row["metric"] and row["unit"]
    same = next(r for r in rows if r["metric"] == "identical answers")
    assert same["value"] == float(same["unit"].split()[1])  # the stages = the graph, query by query
    core = {(r["size"], r["metric"]) for r in rows if r["benchmark"] == "core_math"}
    for n in ("75", "1,800", "18,000"):
        assert any(size.startswith(f"{n} clips") and "fuse+propose+NMS CPU" in m for size, m in core)
        # the once-per-video check of the captions (the graph's caption cache) is timed apart
        assert any(size.startswith(f"{n} clips") and "checked, once per video" in m for size, m in core)
    same = next(r for r in rows if r["metric"] == "identical answers")
    assert same["value"] == 3 and same["unit"] == "of 3"  # the library path reproduces the graph
    assert (work / "demo-store").is_dir()  # --store keeps the work folder


def test_unknown_benchmark_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["benchmark", "--only", "nope", "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert "unknown benchmark" in result.output and "core_math" in result.output
    assert not (tmp_path / "r.json").exists()


def test_select_and_quick_leave_out_the_slow_benchmark() -> None:
    assert "long_video" in suite.select(None, quick=False)
    assert "long_video" not in suite.select(None, quick=True)
    assert suite.select(["long_video", "core_math"], quick=True) == ["core_math", "long_video"]
    with pytest.raises(ConfigError):
        suite.select(["core_maths"], quick=False)


def test_core_query_on_synthetic_embeddings_gives_moments_inside_the_video() -> None:
    ctx = Context()
    captions, q_s, q_d = suite.synthetic_embeddings(300, np.random.default_rng(1))
    assert captions.shape == (300, suite.EMBED_DIM) and q_s.shape == q_d.shape == (suite.PAIRS + 1, 384)
    np.testing.assert_allclose(np.linalg.norm(captions, axis=1), 1.0, rtol=1e-5)
    times: dict[str, list[float]] = {}
    moments, curve = suite.core_query(captions, q_s, q_d, ctx, 600.0, times)
    assert 1 <= len(moments) <= ctx.top_n and len(curve) == 300
    assert all(0.0 <= start < end <= 600.0 for start, end, _ in moments)
    assert {k.split(":")[0] for k in times} == {"fuse", "propose", "nms"}


@pytest.mark.parametrize(
    ("value", "text"), [(0.0, "0"), (0.01234, "0.0123"), (3.14159, "3.14"), (42.42, "42.4"), (5.0, "5")]
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text
    assert format_value(12345.6) == "12,346"


def test_feedback_top_k_equals_the_stable_sort_it_replaced() -> None:
    """The partial-sort top-k (a core_math optimisation) must pick and order exactly as before."""
    from granalign.core.feedback import _top_k

    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(1, 300))
        sims = rng.standard_normal((int(rng.integers(1, 5)), n))
        if trial % 2:
            sims = np.round(sims, 0)  # many exact ties, including -0.0 against 0.0
        for k in (1, 2, 3, 7, n):
            expected = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            assert np.array_equal(_top_k(sims, k), expected), (trial, k)
