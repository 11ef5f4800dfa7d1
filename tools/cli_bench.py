"""CLI commands: eval, bench, settings, demo (benchmarks and evaluation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from granalign.errors import InputError
from tools.cli_common import (
    SetOpt,
    SplitOpt,
    StoreOpt,
    _print_metrics,
    _progress,
    _short_spec,
    app,
    check_distinct,
    check_output,
    check_output_dir,
    console,
    make_context,
    out,
    user_errors,
)
from tools.cli_options import AnnotationsOpt, CaptionsOpt, ConcurrencyOpt, LimitOpt

if TYPE_CHECKING:
    from granalign.evaluation.breakdown import LengthBin
    from granalign.evaluation.metrics import PerQueryMetrics


@app.command("eval")
@user_errors
def eval_cmd(
    submission: Annotated[Path, typer.Option(help="Predictions in moment_detr submission format (JSONL).")],
    gt: Annotated[Path, typer.Option(help="Ground-truth annotations (JSONL).")],
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Write the official metrics JSON here.")
    ] = None,
    allow_subset: Annotated[
        bool, typer.Option("--allow-subset", help="Score only the submission's qids (a --limit run).")
    ] = False,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Another submission on the same queries: print Δ with a paired-bootstrap 95 % CI, "
            "overall and R1@0.5 by the length of each query's longest ground-truth window."
        ),
    ] = None,
) -> None:
    """Official QVHighlights metrics (parity with moment_detr's evaluator) plus R1@IoU / mIoU."""
    from granalign.evaluation.metrics import evaluate_submission, recall_and_miou
    from granalign.io.jsonl import read_jsonl, write_json

    check_output(out_path, "--out")
    # every file is read and checked before anything is printed, and each error names its file
    labels = (f"--submission {submission}", f"--gt {gt}")
    preds, truth = read_jsonl(submission), read_jsonl(gt)
    base = read_jsonl(baseline) if baseline is not None else None
    try:
        metrics = evaluate_submission(preds, truth, allow_subset=allow_subset, labels=labels)
        extra = recall_and_miou(preds, truth, allow_subset=allow_subset, labels=labels)
        pair = (
            None
            if base is None
            else _paired_metrics(preds, base, truth, allow_subset, labels, f"--baseline {baseline}")
        )
    except InputError as exc:  # the library's advice names its keyword; a CLI user needs the flag
        raise InputError(str(exc).replace("pass allow_subset=True", "pass --allow-subset")) from None
    _print_metrics(metrics, extra, title=f"{submission.name}")
    if pair is not None and baseline is not None:
        _print_paired(pair, f"{submission.name} − {baseline.name}")
    if out_path:
        write_json(out_path, metrics)
        console.print(f"wrote {out_path}")


PAIRED_METRICS = ("R1@0.5", "R1@0.7", "mAP")
#: The metric broken down by moment length (R1 is what a caller of the tool reads first).
LENGTH_METRIC = "R1@0.5"


def _paired_metrics(
    preds: list[dict[str, Any]],
    base: list[dict[str, Any]],
    truth: list[dict[str, Any]],
    allow_subset: bool,
    labels: tuple[str, str] = ("submission", "ground truth"),
    base_label: str = "baseline",
) -> tuple[PerQueryMetrics, PerQueryMetrics]:
    """Per-query metrics of a submission and a baseline, separate from printing them so that a
    bad baseline is refused before any table is printed.

    ``labels`` name the submission and the ground truth in errors, ``base_label`` the baseline,
    whose qids must be exactly the submission's.
    """
    from granalign.evaluation.metrics import per_query_metrics

    submission_label, gt_label = labels
    ours = per_query_metrics(
        preds, truth, allow_subset=allow_subset, label=submission_label, gt_label=gt_label
    )
    # the submission's query set is checked by that call; the baseline's is compared with it below
    theirs = per_query_metrics(base, truth, allow_subset=True, label=base_label, gt_label=gt_label)
    _check_same_qids(ours.qids, theirs.qids, base_label)
    return ours, theirs


def _print_paired(pair: tuple[PerQueryMetrics, PerQueryMetrics], title: str) -> dict[str, Any]:
    """Δ R1@0.5 / R1@0.7 / mAP of two submissions on the same queries (:func:`_paired_metrics`),
    paired-bootstrap 95 % CI, then Δ R1@0.5 by the length of each query's longest ground-truth window.

    Returns ``{"delta_pp": {metric: {"delta", "low", "high"}}, "by_longest_gt_window": [...]}``
    in percent points, for a JSON record.
    """
    from granalign.evaluation.bootstrap import paired_bootstrap
    from granalign.evaluation.breakdown import paired_by_length

    ours, theirs = pair
    order = {qid: i for i, qid in enumerate(theirs.qids)}
    index = [order[q] for q in ours.qids]
    table = Table(title=f"{title}: Δ [95 % CI], paired bootstrap over {len(index)} queries")
    table.add_column("metric")
    table.add_column("Δ [95 % CI]", justify="right")
    deltas: dict[str, dict[str, float]] = {}
    for name in PAIRED_METRICS:
        interval = paired_bootstrap(ours.metric(name), theirs.metric(name)[index])
        table.add_row(name, interval.describe())
        deltas[name] = interval.record()
    out.print(table)
    mine, baseline = ours.metric(LENGTH_METRIC), theirs.metric(LENGTH_METRIC)[index]
    bins = paired_by_length(mine, baseline, ours.longest_gt_s)
    _print_by_length(bins, title)
    return {"delta_pp": deltas, "by_longest_gt_window": [row.record() for row in bins]}


def _check_same_qids(ours: tuple[Any, ...], theirs: tuple[Any, ...], base_label: str) -> None:
    """The baseline must answer exactly the submission's qids (a paired Δ needs both on each)."""
    mine, its = set(ours), set(theirs)
    missing = [q for q in ours if q not in its]
    extra = [q for q in theirs if q not in mine]
    if not missing and not extra:
        return

    def examples(qids: list[Any]) -> str:
        return ", ".join(repr(q) for q in qids[:5]) + (", ..." if len(qids) > 5 else "")

    parts = [f"{len(missing)} of the submission's qids missing (e.g. {examples(missing)})"] if missing else []
    if extra:
        parts.append(f"{len(extra)} qids the submission does not answer (e.g. {examples(extra)})")
    raise InputError(f"{base_label}: a paired comparison needs the submission's qids: {'; '.join(parts)}")


def _print_by_length(bins: list[LengthBin], title: str) -> None:
    """The R1@0.5 table by moment length; a bin of few queries is marked, its interval rough."""
    from granalign.evaluation.breakdown import FEW_QUERIES

    table = Table(title=f"{title}: {LENGTH_METRIC} by the longest ground-truth window")
    for column in ("longest GT window", "queries", "ours", "baseline", "Δ [95 % CI]"):
        table.add_column(column, justify="left" if column.startswith("longest") else "right")
    for row in bins:
        queries = f"{row.interval.n}{' *' if row.few else ''}"
        cells = (row.label, queries, f"{100 * row.ours:.2f}", f"{100 * row.baseline:.2f}")
        table.add_row(*cells, row.interval.describe())
    if any(row.few for row in bins):
        table.caption = f"* fewer than {FEW_QUERIES} queries: the interval is rough"
    out.print(table)


@app.command("bench")
@user_errors
def bench_cmd(
    annotations: AnnotationsOpt,
    captions: CaptionsOpt,
    rewriter: Annotated[
        str | None, typer.Option(help="none | file:<jsonl> | local:<model> | openai:<url>#<model>")
    ] = None,
    limit: LimitOpt = None,
    split: SplitOpt = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the submission JSONL here.")] = None,
    metrics: Annotated[Path | None, typer.Option(help="Write the official metrics JSON here.")] = None,
    repeat: Annotated[
        int, typer.Option(min=1, max=10, help="Passes over the queries (2 = also a warm pass).")
    ] = 1,
    concurrency: ConcurrencyOpt = 4,
    plot: Annotated[Path | None, typer.Option(help="Timeline PNG of the first query.")] = None,
    store: StoreOpt = None,
    sets: SetOpt = None,
    versus: Annotated[
        str | None,
        typer.Option(
            help="Also run this proposal mode on the very same queries, captions and rewrites "
            "('vtg-gpt': the peer's published rule) and print ours − it with paired-bootstrap 95 % "
            "CIs (overall and R1@0.5 by moment length); its predictions and metrics go beside "
            "--out/--metrics as NAME.MODE.jsonl/.json, the Δ as NAME.MODE.delta.json."
        ),
    ] = None,
) -> None:
    """Run every query through the compiled graph, write predictions, print official metrics."""
    ctx = make_context(store, sets, rewriter=rewriter)
    peer_ctx = _versus_context(ctx, versus)
    outputs = [(out_path, "--out"), (metrics, "--metrics"), (plot, "--plot")]
    if peer_ctx is not None:
        outputs += [(_beside(path, peer_ctx.proposal_mode, suffix), option)
                    for path, option, suffix in ((out_path, "--out", ".jsonl"),
                                                 (metrics, "--metrics", ".json"),
                                                 (metrics, "--metrics", ".delta.json"))]  # fmt: skip
    for path, option in outputs:
        check_output(path, option)
    check_distinct(outputs)
    _run_bench(
        annotations, captions, ctx, limit, out_path, metrics, repeat, concurrency, plot, split, peer_ctx
    )


def _versus_context(ctx: Any, versus: str | None) -> Any:
    """The run's Context with only the proposal mode changed: the baseline sees the same curves.

    Refused before any work when the mode is unknown or is the run's own (a Δ of exactly 0).
    """
    if versus is None:
        return None
    from granalign.core.moments import PROPOSAL_MODES

    if versus not in PROPOSAL_MODES:
        raise InputError(f"--versus {versus!r}: expected one of {', '.join(PROPOSAL_MODES)}")
    if versus == ctx.proposal_mode:
        raise InputError(f"--versus {versus}: the run itself uses proposal_mode={versus}; pick another")
    return dataclasses.replace(ctx, proposal_mode=versus)


def _beside(path: Path | None, mode: str, suffix: str) -> Path | None:
    """``preds.jsonl`` → ``preds.vtg-gpt.jsonl``: the baseline's file next to the run's."""
    if path is None:
        return None
    return path.with_name(f"{path.stem}.{mode}{suffix}")


def _run_bench(
    annotations: Path,
    captions: Path,
    ctx: Any,
    limit: int | None,
    out_path: Path | None,
    metrics: Path | None,
    repeat: int,
    concurrency: int,
    plot: Path | None,
    split: str | None = None,
    peer_ctx: Any = None,
) -> None:
    """One benchmark run; with ``peer_ctx`` a second over the same queries and the paired Δ."""
    from granalign.io.jsonl import write_json

    keep = peer_ctx is not None  # a kill during the peer's pass must not cost this pass again
    result = _bench_pass(annotations, captions, ctx, limit, split, repeat, concurrency, out_path, keep)
    _report_bench(result, ctx, split, metrics)
    for path in (out_path, metrics):  # as the peer's pair below, --metrics is announced too
        if path:
            console.print(f"wrote {path}")
    if plot and result.predictions:
        _plot_first(result, plot)
    if peer_ctx is None:
        return
    mode = peer_ctx.proposal_mode
    peer_out, peer_metrics = _beside(out_path, mode, ".jsonl"), _beside(metrics, mode, ".json")
    peer = _bench_pass(annotations, captions, peer_ctx, limit, split, repeat, concurrency, peer_out)
    _report_bench(peer, peer_ctx, split, peer_metrics, label=f"proposal_mode {mode}")
    gt = [a.raw for a in result.annotations]
    title = f"ours ({ctx.proposal_mode}) − {mode}"
    paired = _print_paired(_paired_metrics(result.scored, peer.scored, gt, False), title)
    for path in (peer_out, peer_metrics):
        if path:
            console.print(f"wrote {path}")
    delta_path = _beside(metrics, mode, ".delta.json")
    if delta_path:
        record = {"ours": ctx.proposal_mode, "baseline": mode, "queries": len(gt), **paired}
        write_json(delta_path, record)
        console.print(f"wrote {delta_path}")
    if result.kept_journal is not None:  # both passes are saved: the first one's log can go
        result.kept_journal.unlink(missing_ok=True)


def _bench_pass(
    annotations: Path,
    captions: Path,
    ctx: Any,
    limit: int | None,
    split: str | None,
    repeat: int,
    concurrency: int,
    out_path: Path | None,
    keep_journal: bool = False,
) -> Any:
    from tools.bench import run_benchmark

    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        return run_benchmark(
            annotations,
            captions,
            ctx,
            limit=limit,
            split=split,
            repeat=repeat,
            concurrency=concurrency,
            on_progress=on_progress,
            predictions_out=out_path,
            keep_journal=keep_journal,
        )


def _report_bench(result: Any, ctx: Any, split: str | None, metrics: Path | None, label: str = "") -> None:
    """Metrics and speed tables of one pass; the metrics JSON when asked for."""
    from granalign.evaluation.metrics import recall_and_miou
    from tools.bench import save_results

    save_results(result, None, metrics)
    if result.resumed:
        console.print(
            f"[yellow]resumed[/]: {result.resumed} queries came from an interrupted run's journal "
            "(pass 1 speed covers the rest only)"
        )
    for qid, why in result.skipped:
        console.print(f"[yellow]failed (scored as a miss)[/] qid {qid}: {why}", highlight=False)
    gt = [a.raw for a in result.annotations]
    extra = recall_and_miou(result.scored, gt)
    failed = f" ({len(result.skipped)} failed, scored as misses)" if result.skipped else ""
    half = f" ({split} half)" if split else ""
    which = f", {label}" if label else ""
    title = f"{len(result.annotations)} queries{half}{failed}, rewriter {_short_spec(ctx.rewriter)}{which}"
    _print_metrics(result.metrics, extra, title=title)
    timing = Table(title="speed")
    timing.add_column("stage")
    timing.add_column("seconds", justify="right")
    timing.add_column("queries/s", justify="right")
    imported = result.import_report.imported if result.import_report else 0
    timing.add_row(f"caption import ({imported} videos new)", f"{result.import_s:.1f}", "")
    timing.add_row("rewrite cache warm-up", f"{result.rewrite_s:.1f}", "")
    for i, secs in enumerate(result.passes_s):
        label_i = "graph pass 1 (cold caches)" if i == 0 else f"graph pass {i + 1} (warm caches)"
        timing.add_row(label_i, f"{secs:.1f}", f"{result.queries_per_s(i):.1f}")
    out.print(timing)


def _plot_first(result: Any, plot: Path) -> None:
    """The first query's timeline; its saliency is on the evaluator's 2-s clips (``bench``
    writes the submission format whatever the caption grid)."""
    from granalign.evaluation.metrics import CLIP_SECONDS
    from tools.plots import timeline_plot

    first = result.predictions[0]
    gt_row = next(a.raw for a in result.annotations if a.raw["qid"] == first["qid"])
    timeline_plot(
        plot,
        saliency=first["pred_saliency_scores"],
        clip_len=float(CLIP_SECONDS),
        moments=first["pred_relevant_windows"],
        ground_truth=gt_row.get("relevant_windows", []),
        title=f"qid {first['qid']}: {first['query']}",
    )
    console.print(f"wrote {plot}")


@app.command("settings")
@user_errors
def settings_cmd() -> None:
    """Every Context setting with its default and meaning (override: --set or GRANALIGN_<NAME>)."""
    from graphs.context import describe

    table = Table(title="Context settings")
    table.add_column("name")
    table.add_column("default")
    table.add_column("meaning")
    for name, default, text in describe():
        # plain text, not console markup: "[m] number of prompt pairs" would lose its "[m]"
        table.add_row(Text(name), Text(repr(default)), Text(text))
    out.print(table)


@app.command("demo")
@user_errors
def demo_cmd(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where predictions, metrics and the plot go.")
    ] = Path("runs/demo"),
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """The main job on embedded defaults: a QVHighlights val subset shipped with the project."""
    from tools.demo_data import DEMO

    check_output_dir(out_dir, "--out-dir")
    ctx = make_context(store, sets, rewriter=f"file:{DEMO.paraphrases}")
    console.print(f"[bold]GranAlign demo[/]: {DEMO.description}")
    _run_bench(
        DEMO.annotations,
        DEMO.captions,
        ctx,
        None,
        out_dir / "preds.jsonl",
        out_dir / "metrics.json",
        2,
        4,
        out_dir / "timeline.png",
    )
