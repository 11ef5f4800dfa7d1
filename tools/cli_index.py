"""CLI commands: index (captions import) and retrieve (one query on one stored video)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tools.cli_common import (
    SetOpt,
    StoreOpt,
    _progress,
    app,
    console,
    make_context,
    out,
    user_errors,
)


@app.command("index")
@user_errors
def index_cmd(
    captions: Annotated[
        Path, typer.Option(help="Captions JSONL: {vid, clip_len_s, captions: [...]} per line.")
    ],
    source: Annotated[str | None, typer.Option(help="Caption source tag (default: the file's stem).")] = None,
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Import precomputed agnostic captions into the store (idempotent, resumable)."""
    from granalign.captions_import import import_captions, source_name_for
    from graphs import resources

    ctx = make_context(store, sets)
    st, emb = resources.store_for(ctx), resources.embedder_for(ctx)
    with _progress() as bar:
        task = bar.add_task("import", total=None)
        report = import_captions(
            st,
            emb,
            captions,
            source=source or source_name_for(captions),
            on_progress=lambda d, t: bar.update(task, completed=d, total=t),
        )
    console.print(
        f"{report.total} videos: {report.imported} imported ({report.captions} captions), "
        f"{report.skipped} already in the store at {st.location}"
    )


@app.command("retrieve")
@user_errors
def retrieve_cmd(
    video: Annotated[str, typer.Argument(help="Video id in the store.")],
    query: Annotated[str, typer.Argument(help="What to find, in natural language.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the graph output as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a timeline PNG here.")] = None,
    rewriter: Annotated[str | None, typer.Option(help="Rewriter spec (see settings).")] = None,
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Find the moments of a stored video that match a query."""
    from graphs.retrieval import graph

    ctx = make_context(store, sets, rewriter=rewriter)
    result = graph.invoke({"video": video, "query": query}, context=ctx)
    if as_json:
        out.print_json(json.dumps(result))
    else:
        table = Table(title=f"{result['video_id']}: {result['query']}")
        for col in ("rank", "start (s)", "end (s)", "score"):
            table.add_column(col, justify="right")
        for i, (s, e, sc) in enumerate(result["moments"], start=1):
            table.add_row(str(i), f"{s:.1f}", f"{e:.1f}", f"{sc:.3f}")
        out.print(table)
        for note in result["notes"]:
            console.print(f"[dim]note: {note}[/]")
    if plot:
        from tools.plots import timeline_plot

        timeline_plot(
            plot,
            saliency=result["saliency"],
            clip_len=ctx.clip_len,
            moments=result["moments"],
            title=f"{result['video_id']}: {result['query']}",
        )
        console.print(f"wrote {plot}")
