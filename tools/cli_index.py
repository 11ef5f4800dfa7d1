"""CLI commands: index (video ingest or captions import) and retrieve (one query on one video)."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table
from typer.core import TyperCommand

from granalign.errors import GranAlignError, InputError
from granalign.text import seconds_text
from tools.cli_common import (
    SetOpt,
    StoreOpt,
    _progress,
    app,
    check_output,
    console,
    import_with_bar,
    make_context,
    out,
    user_errors,
)

_RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.\-\[\]:]+:\d+)$")


class _IndexCommand(TyperCommand):
    """``--ray`` takes an optional ADDRESS: a bare ``--ray`` (next token not an address) means auto."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = list(args)
        for i in reversed(range(len(given))):
            if given[i] == "--ray" and (i + 1 == len(given) or not _RAY_ADDRESS.match(given[i + 1])):
                given.insert(i + 1, "auto")
        return super().parse_args(ctx, given)


@app.command("index", cls=_IndexCommand)
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
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Ingest on a Ray cluster: auto (default), host:port or ray://host:port; needs CHROMA_URL "
            "and granalign[ray]. VIDEO_OR_FOLDER may then also be a list file or a glob.",
        ),
    ] = None,
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Ingest videos (resumable: finished clips are skipped) or import precomputed captions."""
    if (target is None) == (captions is None):
        raise InputError("give a video file or folder, or --captions FILE (not both)")
    ctx = make_context(store, sets)
    if captions is not None:
        _import_captions(ctx, captions, source)
    elif ray_address is not None:
        assert target is not None
        from tools.ray_ingest import index_on_ray

        results, location = index_on_ray(ctx, target, ray_address)
        _print_ingest_summary(results, location)
        if any(problem for _, _, problem in results):
            raise typer.Exit(1)
    else:
        assert target is not None
        _ingest_target(ctx, target, jobs)


def _import_captions(ctx: Any, captions: Path, source: str | None) -> None:
    from granalign.io.captions_import import source_name_for
    from graphs import resources

    _check_captions_file(captions)
    st, emb = resources.store_for(ctx), resources.embedder_for(ctx)
    report = import_with_bar(st, emb, captions, source or source_name_for(captions), "import")
    console.print(
        f"{report.total} videos: {report.imported} imported ({report.captions} captions), "
        f"{report.skipped} already in the store at {st.location}"
    )


def _check_captions_file(captions: Path) -> None:
    """Refuse a missing, unreadable or empty captions file (or a bad first line) before the store
    and the embedder are opened: a typo must not wait for a model and draw an empty bar first."""
    from granalign.io.captions_import import read_captions_file

    if next(read_captions_file(captions), None) is None:  # a failed export: "0 imported", status 0
        raise InputError(f"captions file {captions} is empty: no video to import")


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
    from granalign.io.video import display_path, find_videos, video_folder
    from graphs import resources
    from graphs.ingest import is_deployment_failure

    roots = resources.video_roots(ctx)
    folder = video_folder(target, roots)  # a relative folder is looked up under the roots, like a file
    if folder is None:
        _check_index_target(ctx, target, roots)
    files = [str(p) for p in find_videos(folder, roots)] if folder is not None else [target]
    if folder is not None and not files:
        raise InputError(f"folder {display_path(target)} holds no video files")
    run = _FolderRun(ctx, files, is_dir=folder is not None)
    try:
        run.ingest_all(jobs)
    except GranAlignError as exc:
        if folder is None or not is_deployment_failure(exc) or run.stopper is None:
            raise
        if len(run.results) > 1:  # other videos finished or failed too: the table lists them all
            # the location without opening the store: a store that failed would be tried again
            _print_ingest_summary(run.results, resources.store_location(ctx))
        left = len(files) - run.started  # none when every video had begun (--jobs >= the videos)
        untried = f": {left} of {len(files)} videos not attempted" if left else ""
        raise GranAlignError(  # the one place the cause is printed (the rows point here)
            f"{exc}; stopped indexing folder {display_path(target)} at {run.names[run.stopper]}{untried}"
        ) from exc
    _print_ingest_summary(run.results, resources.store_location(ctx))
    if any(problem for _, _, problem in run.results):
        raise typer.Exit(1)


STOPPED_RUN = "stopped the run: a failure of the whole deployment (the error at the end says why)"
SAME_FAILURE = "ended by the same failure as {video} (the error at the end says why)"


class _FolderRun:
    """The videos of one ``index`` call, ingested ``jobs`` at a time behind progress bars.

    ``results``: (video, output or None, problem) of each video begun; ``started``: how many.
    The first deployment failure (:func:`graphs.ingest.is_deployment_failure`) is raised as well
    as recorded, and no further video is started after it; ``stopper`` is its video.  Its cause
    is said once, by the error raised: its row, and that of each running video the same failure
    ends after it, point there instead of repeating it (:data:`STOPPED_RUN`, :data:`SAME_FAILURE`).
    """

    def __init__(self, ctx: Any, files: list[str], *, is_dir: bool) -> None:
        self.ctx, self.files, self.is_dir = ctx, files, is_dir
        self.names = short_names(files)
        self.results: list[tuple[str, dict[str, Any] | None, str]] = []
        self.started = 0
        self.stopper: str | None = None  # the video whose deployment failure stopped the run
        self._cause = ""  # that failure's message
        self._stop = False
        self._lock = threading.Lock()

    def ingest_all(self, jobs: int) -> None:
        """Every video, ``jobs`` at once; the first error that is not one video's own ends the run."""
        with _progress() as bar, ThreadPoolExecutor(max_workers=min(jobs, len(self.files))) as pool:
            futures = [pool.submit(self._one, bar, f) for f in self.files]
            try:
                for fut in as_completed(futures):
                    fut.result()
            except BaseException:  # Ctrl-C, a deployment failure (or a bug): start no queued
                with self._lock:  # video; the pool then waits for running ones, which stop at
                    self._stop = True  # their next batch on Ctrl-C (graphs.ingest checks the
                # interrupt flag), else finish or fail alike: whole batches either way
                for fut in futures:
                    fut.cancel()
                raise

    def _begin(self) -> bool:
        """Count a video as started, unless the run is stopping (a worker may pick up a queued
        video between a failure and the cancelling of the queue)."""
        with self._lock:
            if self._stop:
                return False
            self.started += 1
            return True

    def _one(self, bar: Progress, video: str) -> None:
        from graphs.ingest import ingest_video, is_deployment_failure

        if not self._begin():
            return
        task = bar.add_task(self.names[video][-30:], total=None)
        try:
            got: dict[str, Any] | None = ingest_video(self.ctx, video, on_event=_bar_updater(bar, task))
            problem = ""
        except GranAlignError as exc:
            if not self.is_dir:
                raise
            if is_deployment_failure(exc):
                if self._deployment_failed(bar, video, str(exc)):
                    raise  # the run's error (a later one is only recorded)
                return
            got, problem = None, str(exc)
        self._record(bar, video, got, problem)

    def _deployment_failed(self, bar: Progress, video: str, cause: str) -> bool:
        """Stop the run; record ``video`` as the one that stopped it (True: no log line, the
        error raised names it), or as ended by the same failure (another failure keeps its
        message), without repeating the cause."""
        with self._lock:
            self._stop = True
            if self.stopper is None:
                self.stopper, self._cause = video, cause
                self.results.append((video, None, STOPPED_RUN))
                return True
            stopper, same = self.names[self.stopper], cause == self._cause
        self._record(bar, video, None, SAME_FAILURE.format(video=stopper) if same else cause)
        return False

    def _record(self, bar: Progress, video: str, got: dict[str, Any] | None, problem: str) -> None:
        with self._lock:
            self.results.append((video, got, problem))
            if not bar.console.is_terminal:  # a log gets no bars until the end: a line each
                _log_finished(len(self.results), len(self.files), self.names[video], got, problem)


def short_names(videos: Sequence[str]) -> dict[str, str]:
    """How each video is shown in progress lines and the summary: its path below the folder
    that holds them all (its file name when they share one folder), so ``cam1/0001.mp4`` and
    ``cam2/0001.mp4`` of one library stay two names."""
    from granalign.io.video import display_path

    shown = [display_path(v) for v in videos]
    try:
        base = os.path.commonpath([os.path.dirname(p) for p in shown])
    except ValueError:  # relative and absolute paths mixed (a Ray list file): names as given
        return dict(zip(videos, shown, strict=True))
    return {v: os.path.relpath(p, base) if base else p for v, p in zip(videos, shown, strict=True)}


def _log_finished(n: int, total: int, name: str, got: dict[str, Any] | None, problem: str) -> None:
    """One plain line for a finished video (stderr is not a terminal)."""
    name = escape(name)
    if got is None:
        text = f"[{n}/{total}] {name}: failed: {escape(problem)}"
    else:
        counts = f"{got['n_clips']} clips, {got['skipped']} skipped, {got['encoded']} encoded"
        text = f"[{n}/{total}] {name}: {counts}"
    console.print(text, highlight=False, soft_wrap=True)


def _check_index_target(ctx: Any, target: str, roots: Sequence[Path]) -> None:
    """A name that is no file anywhere the ingest would look: say so (and whether it is a
    stored id) instead of the path rules' answer for a file that would lie outside the roots."""
    from graphs import resources

    if "://" in target:  # a URL: the ingest's own message says why it is refused
        return
    given = Path(os.path.expanduser(target))
    places = [given] if given.is_absolute() else [given, *(root / given for root in roots)]
    if any(os.path.lexists(p) for p in places):
        return
    if resources.store_for(ctx).video(target) is not None:
        raise InputError(
            f"{target!r} is a video id in the store, already indexed: query it with "
            f"granalign retrieve (index takes video files and folders)"
        )
    raise InputError(
        f"{target!r} is not a video id in the store nor a video file or folder "
        f"(looked in the current folder and the video roots)"
    )


def _print_ingest_summary(results: list[tuple[str, dict[str, Any] | None, str]], location: str) -> None:
    """One row per video; ids are printed whole (never cut to the terminal's width), failure
    reasons on their own lines below the table, then each distinct note once."""
    names = short_names([video for video, _, _ in results])
    ids = [got["video_id"] for _, got, _ in results if got is not None]
    table = Table(title=f"ingested into {location}")
    table.add_column("video", overflow="fold", min_width=12)
    table.add_column("video id", no_wrap=True, min_width=max(map(len, ids), default=8))
    for col in ("clips", "skipped", "encoded"):
        table.add_column(col, justify="right", no_wrap=True)
    failed: list[tuple[str, str]] = []
    for video, got, problem in sorted(results):
        name = names[video]
        if got is None:
            table.add_row(escape(name), "[red]failed[/]", "", "", "")
            failed.append((name, problem))
        else:
            table.add_row(
                escape(name), got["video_id"], str(got["n_clips"]), str(got["skipped"]), str(got["encoded"])
            )
    out.print(table)
    for name, problem in failed:
        console.print(f"[red]failed[/] {escape(name)}: {escape(problem)}", highlight=False, soft_wrap=True)
    for note, videos in _notes_by_text(results).items():
        console.print(f"[dim]note ({escape(_videos_text(videos, names, len(ids)))}): {escape(note)}[/]")


def _notes_by_text(results: list[tuple[str, dict[str, Any] | None, str]]) -> dict[str, list[str]]:
    """Each distinct note with the videos that gave it, in the order first given: a note every
    video gives (random test weights) is said once, not once per video."""
    notes: dict[str, list[str]] = {}
    for video, got, _ in sorted(results):  # the table's order
        for note in dict.fromkeys((got or {}).get("notes") or []):
            notes.setdefault(note, []).append(video)
    return notes


def _videos_text(videos: list[str], names: dict[str, str], ingested: int) -> str:
    """Whom a note is about: one video by name, every ingested video by count, else a few names."""
    if len(videos) == 1:
        return names[videos[0]]
    if len(videos) == ingested:
        return f"all {ingested} videos"
    shown = ", ".join(names[v] for v in videos[:3])
    return f"{len(videos)} videos: {shown}" + (f" and {len(videos) - 3} more" if len(videos) > 3 else "")


@app.command("retrieve")
@user_errors
def retrieve_cmd(
    video: Annotated[
        str | None,
        typer.Argument(
            metavar="VIDEO",
            help="A video id in the store, or a video file (ingested if new); "
            "an id that begins with '-' goes in --video (or after '--').",
            show_default=False,
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Argument(metavar="QUERY", help="What to find, in natural language.", show_default=False),
    ] = None,
    video_opt: Annotated[
        str | None,
        typer.Option("--video", help="The video, for ids that begin with '-' (QUERY is then alone)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the graph output as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a timeline PNG here.")] = None,
    rewriter: Annotated[str | None, typer.Option(help="Rewriter spec (see settings).")] = None,
    thread_id: Annotated[
        str | None,
        typer.Option("--thread-id", help="Checkpoint thread of this run; a failed run under it is resumed."),
    ] = None,
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Find the moments of a video that match a query."""
    from granalign.core.match import match_reading
    from graphs.durable import stream_retrieval
    from graphs.state import RetrievalOutput
    from tools.safety import clean_thread_id

    video, query = _video_and_query(video, query, video_opt)
    check_output(plot, "--plot")
    ctx = make_context(store, sets, rewriter=rewriter).for_answers()  # distinct windows
    tid = clean_thread_id(thread_id) if thread_id is not None else None
    result: dict[str, Any] = {}
    started: list[str] = []
    said = False

    with _progress() as bar:
        task: TaskID | None = None
        stream = stream_retrieval(
            ctx, {"video": video, "query": query}, thread_id=tid, on_start=started.append
        )
        for mode, chunk in stream:
            if not said and _run_underway(mode, chunk):
                said = True
                _say_thread_id(ctx, started[0])
            if mode == "values":
                result = chunk
            elif chunk.get("stage") in ("probe", "ingest"):
                if task is None:
                    task = bar.add_task("ingest", total=None)
                _bar_updater(bar, task)(chunk)
    # match: None for a run resumed from a checkpoint written before the graph gave it
    got = {"match": None, "match_embedder": None} | result
    result = {k: got[k] for k in RetrievalOutput.__annotations__} | {"thread_id": started[0]}
    if as_json:
        out.print_json(json.dumps(result))
    else:
        # the query and a stored id are free text: printed as typed, never read as Rich markup
        table = Table(title=escape(f"{result['video_id']}: {result['query']}"))
        for col in ("rank", "start (s)", "end (s)", "score"):
            table.add_column(col, justify="right")
        for i, (s, e, sc) in enumerate(result["moments"], start=1):
            table.add_row(str(i), seconds_text(s), seconds_text(e), f"{sc:.3f}")
        out.print(table)
        if result["match"] is not None:
            captions = len(result["saliency"]) or None  # the upper level depends on it
            reading = match_reading(result["match"], result["match_embedder"], captions)
            out.print(escape(reading), highlight=False)
        for note in result["notes"]:
            console.print(f"[dim]note: {escape(note)}[/]")
    if plot:
        from tools.plots import timeline_plot

        timeline_plot(
            plot,
            saliency=result["saliency"],
            clip_len=result["clip_len_s"],
            moments=result["moments"],
            title=f"{result['video_id']}: {result['query']}",
        )
        console.print(f"wrote {escape(str(plot))}")


def _run_underway(mode: str, chunk: Any) -> bool:
    """Whether the graph accepted the input: a progress event (the file probed, ingest batches,
    the video loaded) or state that names the video.  A refused input (no such video, an empty
    query, a path outside the roots) stops before either, and its thread is deleted."""
    if not isinstance(chunk, dict):
        return False
    return mode == "custom" or (mode == "values" and bool(chunk.get("video_id")))


def _say_thread_id(ctx: Any, tid: str) -> None:
    """Say the thread id as soon as there is a run to resume (a killed or interrupted run raises
    nothing, so this is the only place it is said)."""
    if ctx.checkpointer != "none":
        console.print(
            f"thread id {tid} (to resume this run if it stops: --thread-id {tid})",
            highlight=False,
            soft_wrap=True,
        )


def _video_and_query(video: str | None, query: str | None, video_opt: str | None) -> tuple[str, str]:
    """(video, query) from ``VIDEO QUERY`` or ``--video VIDEO QUERY``."""
    if video_opt is not None:
        if query is not None:
            raise InputError("give the video once: --video VIDEO QUERY, or VIDEO QUERY")
        video, query = video_opt, video
    if video is None or query is None:
        raise InputError("give a video and a query: granalign retrieve VIDEO QUERY (or --video VIDEO QUERY)")
    return video, query
