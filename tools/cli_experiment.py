"""CLI command: experiment (prompt pairs, m = 1..k, caption-only ablation rows)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from granalign.errors import ConfigError, InputError
from tools.cli_common import (
    SetOpt,
    SplitOpt,
    StoreOpt,
    _progress,
    app,
    check_output_dir,
    console,
    make_context,
    out,
    user_errors,
)
from tools.cli_options import AnnotationsOpt, CaptionsOpt, ConcurrencyOpt, LimitOpt

if TYPE_CHECKING:  # the command imports tools.experiment (the graph) only when it runs
    from tools.experiment import RowResult, Setting


def _bar_updater(bar: Progress, task: TaskID) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update


#: Settings every row sets itself (a --set of one would be ignored by the rows, silently).
PER_ROW_SETTINGS = {
    "prompt_pairs": "choose the pairs with --pairs",
    "m": "choose the largest m with --max-m",
    "include_original": "each row says whether it scores the original query",
}


def _refuse_per_row_sets(sets: list[str] | None) -> None:
    for item in sets or []:
        name = item.partition("=")[0].strip().lower()
        if name in PER_ROW_SETTINGS:
            raise ConfigError(
                f"--set {item}: experiment sets {name} per row, so it would be ignored; "
                f"{PER_ROW_SETTINGS[name]}"
            )


def _pair_ids(pairs: str | None) -> list[str] | None:
    """``--pairs core,plain`` as ids; None (no --pairs) is every pair file.

    An empty item is refused, not skipped: ``--pairs "$A,$B"`` with ``B`` unset (or a stray
    comma) would otherwise run a smaller experiment whose m = k rows are other prefixes than
    the ones meant, and a blank value would run every pair with the rewriter model.
    """
    if pairs is None:
        return None
    ids = [p.strip() for p in pairs.split(",")]
    if not any(ids):
        raise InputError(
            f"--pairs {pairs!r}: no pair id given; name them (e.g. core,plain) or leave out --pairs "
            "for every pair"
        )
    blank = next((i for i, p in enumerate(ids, start=1) if not p), None)
    if blank is not None:
        raise InputError(
            f"--pairs {pairs!r}: item {blank} is empty (a doubled or trailing comma?); "
            "separate pair ids with single commas, e.g. core,plain"
        )
    return ids


def _say_where_rows_come_from(
    rows: list[RowResult], ran: list[RowResult], planned: list[Setting], out_dir: Path
) -> None:
    """Which rows of the reports come from earlier runs (``--only``), and which planned ones
    the reports lack: a reader of results.md must not take a partial table for the whole."""
    now, reported = {r.setting.name for r in ran}, {r.setting.name for r in rows}
    earlier = [r.setting.name for r in rows if r.setting.name not in now]
    missing = [s.name for s in planned if s.name not in reported]
    if earlier:
        console.print(
            f"the reports also hold row(s) {', '.join(earlier)}, finished earlier in {out_dir} "
            "under the same settings and queries",
            highlight=False,
        )
    if missing:
        console.print(
            f"not in the reports (no result in {out_dir} under these settings and queries): "
            f"{', '.join(missing)}",
            highlight=False,
        )


@app.command("experiment")
@user_errors
def experiment_cmd(
    annotations: AnnotationsOpt,
    captions: CaptionsOpt,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Results folder (resumable).")] = Path(
        "runs/experiment"
    ),
    rewriter: Annotated[
        str | None,
        typer.Option(help="LLM rewriter for the prompt pairs (default: --set rewriter, else local:smollm2)."),
    ] = None,
    pairs: Annotated[
        str | None, typer.Option(help="Comma-separated pair ids (default: every file in prompts/rewrite/).")
    ] = None,
    max_m: Annotated[
        int | None,
        typer.Option("--max-m", min=1, max=16, help="Also run m = 2..max_m (default 3, at most the pairs)."),
    ] = None,
    ablation: Annotated[bool, typer.Option(help="Add the caption-only ablation rows.")] = True,
    paraphrases: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Paraphrase JSONL for an extra row.")
    ] = None,
    only: Annotated[str | None, typer.Option(help="Run only these settings (comma-separated names).")] = None,
    limit: LimitOpt = None,
    split: SplitOpt = None,
    concurrency: ConcurrencyOpt = 4,
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Compare prompt pairs and ablations; writes results.md, results.csv and results.png."""
    from granalign.io.captions_import import import_captions, source_name_for
    from graphs import resources
    from tools.bench import captioned_videos, read_annotations
    from tools.experiment import (
        check_rewriter,
        check_row_rewriters,
        detail_unscored_note,
        plan_settings,
        report_rows,
        run_setting,
        write_reports,
    )

    check_output_dir(out_dir, "--out-dir")
    _refuse_per_row_sets(sets)
    base = make_context(store, sets, {"rewriter": "local:smollm2"}, rewriter=rewriter)
    anns = read_annotations(annotations, limit, split)
    settings = planned = plan_settings(_pair_ids(pairs), max_m, ablation, paraphrases)
    if only:
        wanted = {n.strip() for n in only.split(",") if n.strip()}
        unknown = sorted(wanted - {s.name for s in settings})
        if unknown or not wanted:
            raise InputError(
                f"--only {only!r}: no setting named {', '.join(unknown) or '(empty)'}; "
                f"planned: {', '.join(s.name for s in settings)}"
            )
        settings = [s for s in settings if s.name in wanted]
    check_rewriter(base, settings)
    check_row_rewriters(base, settings)
    rows = []
    with _progress() as bar:
        imp = bar.add_task("import", total=None)
        st, embedder = resources.store_for(base), resources.embedder_for(base)
        import_captions(
            st,
            embedder,
            captions,
            source=source_name_for(captions),
            only={a.vid for a in anns},
            on_progress=lambda d, t: bar.update(imp, completed=d, total=t),
        )
        vids = sorted({a.vid for a in anns})
        captioned_videos(st, embedder.name, source_name_for(captions), vids, captions, annotations)
        for setting in settings:
            task = bar.add_task(setting.name[:10], total=len(anns))
            row = run_setting(
                base, setting, anns, out_dir, concurrency=concurrency, on_progress=_bar_updater(bar, task)
            )
            bar.update(task, completed=len(anns))
            rows.append(row)
            console.print(
                f"{setting.name}: R1@0.5 {row.metrics['brief']['MR-full-R1@0.5']:.2f} "
                f"mAP {row.metrics['brief']['MR-full-mAP']:.2f}" + (" (cached)" if row.cached else "")
            )
    ran, rows = rows, report_rows(base, planned, rows, anns, out_dir)
    _say_where_rows_come_from(rows, ran, planned, out_dir)
    note = detail_unscored_note(base, [r.setting for r in rows])
    paths = write_reports(rows, out_dir, note)
    table = Table(title=f"{len(anns)} queries" + (f" ({split} half)" if split else ""))
    for col in ("setting", "R1@0.5", "R1@0.7", "mAP", "HL mAP", "q/s"):
        table.add_column(col, justify="right")
    for r in rows:
        b = r.metrics["brief"]
        table.add_row(
            r.setting.name,
            f"{b['MR-full-R1@0.5']:.2f}",
            f"{b['MR-full-R1@0.7']:.2f}",
            f"{b['MR-full-mAP']:.2f}",
            f"{b.get('HL-min-VeryGood-mAP', float('nan')):.2f}",
            f"{r.queries_per_s:.1f}",
        )
    out.print(table)
    if note:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"wrote {paths['md']}, {paths['csv']}, {paths['png']}")
