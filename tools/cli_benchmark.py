"""CLI command: benchmark (the performance suite of ``tools/benchmark_suite.py`` as one table + JSON)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from granalign.errors import ConfigError
from tools.cli_common import SetOpt, app, check_output, console, make_context, out, user_errors


def _suite() -> Any:
    """``tools.benchmark_suite``, imported when the command runs (it pulls in the graphs)."""
    from tools import benchmark_suite

    return benchmark_suite


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _numbers(text: str | None, option: str, kind: type[int] | type[float]) -> tuple[Any, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(kind(part) for part in _split(text))
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{option} must be comma-separated positive numbers, got {text!r}")
    return values


def format_value(value: float) -> str:
    """Three significant digits for small figures, thousands separators for large ones."""
    if value == 0 or abs(value) >= 100 or (value.is_integer() and abs(value) < 1e15):
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def results_table(rows: list[Any], title: str) -> Table:
    table = Table(title=title)
    for name, justify in (("benchmark", "left"), ("size", "left"), ("metric", "left"), ("value", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("unit")
    last: tuple[str, str] = ("", "")
    for row in rows:
        cells = (
            row.benchmark if row.benchmark != last[0] else "",
            row.size if (row.benchmark, row.size) != last else "",
            row.metric,
            format_value(row.value),
            row.unit,
        )
        table.add_row(*(escape(c) for c in cells))  # file names may hold [brackets]
        last = (row.benchmark, row.size)
    return table


@app.command("benchmark")
@user_errors
def benchmark_cmd(
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated benchmarks: core_math, graph_overhead, caption_import, warm_queries, "
            "ingest, long_video, ray_ingest (default: all; long_video and ray_ingest are left out of "
            "--quick unless named here)."
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Fewer repeats and queries, no long_video or ray_ingest (a smoke run).")
    ] = False,
    out_path: Annotated[
        Path, typer.Option("--out", help="Write the rows and the machine's description here (JSON).")
    ] = Path("runs/benchmark/results.json"),
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="Work folder for the benchmark's stores, models and videos (kept); "
            "default a temporary folder, removed afterwards.",
        ),
    ] = None,
    queries: Annotated[
        int | None, typer.Option(min=1, max=100, help="Demo queries (default 100, --quick 5).")
    ] = None,
    clips: Annotated[
        str | None, typer.Option(help="Clip counts of core_math (default 75,1800,18000).")
    ] = None,
    long_minutes: Annotated[
        str | None, typer.Option(help="Video lengths of long_video in minutes (default 60,120; quick 5,10).")
    ] = None,
    video: Annotated[
        Path | None,
        typer.Option(help="Video for the ingest benchmark (default the checkout's example, else synthetic)."),
    ] = None,
    sets: SetOpt = None,
) -> None:
    """Performance figures in one table: core math, graph overhead, import, queries/s, ingest, memory."""
    check_output(out_path, "--out")
    suite = _suite()
    if os.environ.pop("CHROMA_URL", None):
        console.print("[yellow]CHROMA_URL ignored[/]: the benchmarks use fresh embedded stores")
    names = suite.select(_split(only) or None, quick)
    options = suite.SuiteOptions(
        base=make_context(None, sets),
        quick=quick,
        work_dir=store,
        queries=queries,
        core_sizes=_numbers(clips, "--clips", int) or suite.CORE_SIZES,
        long_minutes=_numbers(long_minutes, "--long-minutes", float),
        video=video,
    )
    t0 = time.perf_counter()
    rows = suite.run_suite(names, options, on_start=lambda name: console.print(f"[bold]running[/] {name}"))
    seconds = time.perf_counter() - t0
    from granalign.io.jsonl import write_json

    write_json(out_path, suite.report(rows, options, names, seconds))
    cpus = os.cpu_count()
    title = f"GranAlign benchmarks ({'quick, ' if quick else ''}{cpus} CPUs, {seconds:.0f} s)"
    out.print(results_table(rows, title))
    console.print(f"wrote {out_path}")
