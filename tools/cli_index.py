"""CLI commands: index (video ingest or captions import) and retrieve (one query on one video)."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from granalign.errors import GranAlignError, InputError
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
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="VIDEO_OR_FOLDER",
            help="A video file or a folder of videos to ingest (frames, CLIP, captions).",
        ),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(help="Import a captions JSONL instead: {vid, clip_len_s, captions: [...]} per line."),
    ] = None,
    source: Annotated[str | None, typer.Option(help="Caption source tag (default: the file's stem).")] = None,
    jobs: Annotated[int, typer.Option(min=1, max=32, help="Videos of a folder ingested at once.")] = 2,
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Ingest videos (resumable: finished clips are skipped) or import precomputed captions."""
    if (target is None) == (captions is None):
        raise InputError("give a video file or folder, or --captions FILE (not both)")
    ctx = make_context(store, sets)
    if captions is not None:
        _import_captions(ctx, captions, source)
    else:
        assert target is not None
        _ingest_target(ctx, target, jobs)


def _import_captions(ctx: Any, captions: Path, source: str | None) -> None:
    from granalign.captions_import import import_captions, source_name_for
    from graphs import resources

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


def _bar_updater(bar: Progress, task: TaskID) -> Any:
    """A progress-event handler that drives one bar (probe sets the total, ingest the count)."""

    def on_event(event: dict[str, Any]) -> None:
        stage = event.get("stage")
        if stage == "probe":
            bar.update(task, total=event["total"], completed=event["total"] - event["todo"])
        elif stage == "ingest":
            bar.update(task, completed=event["done"], total=event["total"])

    return on_event


def _ingest_target(ctx: Any, target: str, jobs: int) -> None:
    from granalign.video import display_path, find_videos, resolve_video_folder
    from graphs import resources
    from graphs.ingest import ingest_video

    roots = resources.video_roots(ctx)
    is_dir = os.path.isdir(os.path.expanduser(target))
    files = [str(p) for p in find_videos(resolve_video_folder(target, roots))] if is_dir else [target]
    if is_dir and not files:
        raise InputError(f"folder {display_path(target)} holds no video files")
    results: list[tuple[str, dict[str, Any] | None, str]] = []
    lock = threading.Lock()
    with _progress() as bar:

        def run(video: str) -> None:
            task = bar.add_task(Path(display_path(video)).name[:30], total=None)
            try:
                got: dict[str, Any] | None = ingest_video(ctx, video, on_event=_bar_updater(bar, task))
                problem = ""
            except GranAlignError as exc:
                if not is_dir:
                    raise
                got, problem = None, str(exc)
            with lock:
                results.append((video, got, problem))

        with ThreadPoolExecutor(max_workers=min(jobs, len(files))) as pool:
            for fut in as_completed([pool.submit(run, f) for f in files]):
                fut.result()
    _print_ingest_summary(results, resources.store_for(ctx).location)
    if any(problem for _, _, problem in results):
        raise typer.Exit(1)


def _print_ingest_summary(results: list[tuple[str, dict[str, Any] | None, str]], location: str) -> None:
    from granalign.video import display_path

    table = Table(title=f"ingested into {location}")
    for col in ("video", "video id", "clips", "skipped", "encoded"):
        table.add_column(col, justify="left" if col in ("video", "video id") else "right")
    for video, got, problem in sorted(results):
        name = Path(display_path(video)).name
        if got is None:
            table.add_row(name, f"[red]failed: {problem}[/]", "", "", "")
        else:
            table.add_row(
                name, got["video_id"], str(got["n_clips"]), str(got["skipped"]), str(got["encoded"])
            )
    out.print(table)
    for video, got, _ in results:
        for note in (got or {}).get("notes") or []:
            console.print(f"[dim]note ({Path(display_path(video)).name}): {note}[/]")


@app.command("retrieve")
@user_errors
def retrieve_cmd(
    video: Annotated[
        str,
        typer.Argument(metavar="VIDEO", help="A video id in the store, or a video file (ingested if new)."),
    ],
    query: Annotated[str, typer.Argument(help="What to find, in natural language.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the graph output as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a timeline PNG here.")] = None,
    rewriter: Annotated[str | None, typer.Option(help="Rewriter spec (see settings).")] = None,
    thread_id: Annotated[
        str | None,
        typer.Option(
            "--thread-id", help="Checkpoint thread of this run; a failed run under it is resumed."
        ),
    ] = None,
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Find the moments of a video that match a query."""
    from graphs.durable import stream_retrieval
    from tools.safety import clean_thread_id

    ctx = make_context(store, sets, rewriter=rewriter)
    tid = clean_thread_id(thread_id) if thread_id is not None else None
    result: dict[str, Any] = {}
    with _progress() as bar:
        task: TaskID | None = None
        for mode, chunk in stream_retrieval(ctx, {"video": video, "query": query}, thread_id=tid):
            if mode == "values":
                result = chunk
            elif chunk.get("stage") in ("probe", "ingest"):
                if task is None:
                    task = bar.add_task("ingest", total=None)
                _bar_updater(bar, task)(chunk)
    keys = ("video_id", "query", "moments", "saliency", "variants", "mode", "notes")
    result = {k: result[k] for k in keys}
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
