"""CLI commands on the store itself: ``store check``, ``store recover``, ``videos list|rm``.

An embedded Chroma folder that two processes wrote at once can be left so that every later
process segfaults inside Chroma.  ``store check`` therefore opens the store in a child process:
a crash there becomes one clear line (which step crashed, and how to recover) instead of a dead
shell.  ``store recover`` never runs Chroma on the broken folder: it reads the records straight
from its SQLite file (video records, caption texts, cached rewrites), writes the captions as an
ordinary captions file and imports that into a fresh folder, re-embedding the texts.  What the
records hold decides what comes back:

* imported captions (``index --captions``): every caption text, the clip length and duration,
  source tag and embedder, so the videos come back whole (embedding is the cheap part);
* cached LLM rewrites: their JSON, copied as they are;
* ingested videos (``index VIDEO``): only the file path; CLIP embeddings are not in SQLite, so
  these are listed for ``granalign index FILE`` (a re-ingest);
* clips of an ingest or import that stopped (no video record: ``store check``'s ``unfinished:``
  lines): nothing says which file or captions they came from, so each is listed as not
  recovered, to be re-run into the new folder.
"""

from __future__ import annotations

import json
import shlex
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from granalign.errors import InputError
from granalign.io.store import (
    REWRITES,
    VIDEOS,
    VideoRecord,
    collection_slug,
    count_record,
    default_store_dir,
)
from granalign.io.video import display_path
from tools.cli_common import (
    SetOpt,
    StoreOpt,
    app,
    console,
    import_with_bar,
    make_context,
    out,
    user_errors,
)

store_app = typer.Typer(
    help="Check the store, or recover its records into a fresh folder.", no_args_is_help=True
)
videos_app = typer.Typer(help="List or remove the videos in the store.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(videos_app, name="videos")

RECOVER_HINT = "granalign store recover --store {folder} --to NEW_FOLDER"
REBUILD_HINT = "granalign videos rm -- {video_id}, then re-run its import or ingest"


# -- store check (the child process does the Chroma work) ---------------------------------------


def _location(ctx: Any) -> tuple[Path | None, str | None]:
    """(embedded folder, server URL) of a Context: exactly one of them is set."""
    from graphs.resources import chroma_url

    url = chroma_url(ctx)
    if url:
        return None, url
    return (Path(ctx.store_dir).expanduser() if ctx.store_dir else default_store_dir()), None


def _emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def check_child(folder: str, url: str) -> int:
    """Open the store and read every record, printing each step first (the parent's crash report).

    Every collection is counted, paged through and searched once (the nearest-neighbour index is
    what a damaged folder crashes on); then the video records are compared with their captions.
    """
    from granalign.errors import GranAlignError
    from granalign.io.store import Store

    _emit(step="open the store")
    try:
        store = Store(Path(folder) if folder else None, url or None, lock_timeout=0)
    except GranAlignError as exc:
        _emit(busy=str(exc))
        return 2
    counts: dict[str, int] = {}
    per_video: dict[str, dict[str, dict[tuple[str, str], int]]] = {}
    for name in sorted(store.collection_names()):
        _emit(step=f"count collection {name}")
        counts[name] = store.count(name)
        _emit(step=f"read collection {name}")
        per_video[name] = store.records_per_video(name)
        if counts[name]:
            _emit(step=f"search collection {name}")
            store.search_once(name)
    _emit(step="read the video records")
    records = store.list_videos() if VIDEOS in counts else []
    problems = [p for r in records if (p := _record_problem(store, r, per_video))]
    _emit(
        done=True,
        collections=counts,
        videos=len(records),
        complete=sum(r.complete for r in records),
        ingested=sum(r.has_frames for r in records),
        problems=problems,
        unfinished=_unfinished(records, per_video),
    )
    store.close()
    return 0


def _unfinished(
    records: list[VideoRecord], per_video: dict[str, dict[str, dict[tuple[str, str], int]]]
) -> list[tuple[str, int]]:
    """(video id, clips stored) of each video with clip rows but no video record: an ingest or
    import that stopped (killed, a lost server, a file truncated mid-way).  ``videos list``
    shows only recorded videos, so without this line its rows and its id would be nowhere."""
    recorded = {r.video_id for r in records}
    clips: dict[str, int] = {}
    for name, videos in per_video.items():
        if name.split(".")[0] not in ("captions", "frames"):
            continue
        for video_id, per_keys in videos.items():
            if video_id and video_id not in recorded:
                clips[video_id] = max(clips.get(video_id, 0), sum(per_keys.values()))
    return sorted(clips.items())


def _record_problem(
    store: Any, record: VideoRecord, per_video: dict[str, dict[str, dict[tuple[str, str], int]]]
) -> str:
    """Why a complete video record does not match its captions ('' when it does).

    Counted are the rows a retrieval reads for the record (its source, and its caption prompt
    when it has one): fewer than its clips leave clips without a caption; more are clip rows
    past its last clip (left by imports before orphan rows were cleared on re-import), which
    an imported video's curve reads as extra clips.  A re-run of the import or ingest alone
    finds such a record complete and current and skips it, so both point to ``videos rm`` first.
    """
    if not record.complete or not record.caption_embedder:
        return ""
    name = store.captions_collection(record.caption_embedder)
    have = sum(
        n
        for (source, prompt), n in per_video.get(name, {}).get(record.video_id, {}).items()
        if source == record.caption_source and (not record.caption_prompt or prompt == record.caption_prompt)
    )
    if have == record.n_clips:
        return ""
    if have < record.n_clips:
        what = f"{have} of {record.n_clips} captions in {name}"
    else:
        extra = have - record.n_clips
        what = (
            f"{have} captions in {name} but {record.n_clips} clips in its record "
            f"({extra} extra row{'s' if extra > 1 else ''} past its last clip)"
        )
    return f"video {record.video_id}: {what}; rebuild it: {REBUILD_HINT.format(video_id=record.video_id)}"


@dataclass
class CheckReport:
    """What the child process said: its last step, its final summary, or why it stopped."""

    returncode: int
    step: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    busy: str = ""
    stderr: str = ""


def run_check(folder: Path | None, url: str | None, timeout_s: float = 1800) -> CheckReport:
    """Run :func:`check_child` in a fresh interpreter; a segfault there is only a return code here."""
    code = "import sys\nfrom tools.cli_store import check_child\nsys.exit(check_child(*sys.argv[1:3]))"
    cmd = [sys.executable, "-c", code, str(folder or ""), url or ""]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return CheckReport(returncode=-1, step=f"everything (no answer within {timeout_s:g} s)")
    report = CheckReport(returncode=done.returncode, stderr=done.stderr)
    for line in done.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        report.step = str(event.get("step", report.step))
        report.busy = str(event.get("busy", report.busy))
        if event.get("done"):
            report.summary = event
    return report


def _failure(report: CheckReport) -> str:
    """How the child stopped, in words: a signal, or the last line of its exception."""
    if report.returncode < 0:
        try:
            name = signal.Signals(-report.returncode).name
        except ValueError:
            name = f"signal {-report.returncode}"
        return f"Chroma crashed ({name}) while it tried to {report.step}"
    lines = [x.strip() for x in report.stderr.splitlines() if x.strip()]
    last = lines[-1] if lines else f"exit status {report.returncode}"
    return f"Chroma failed while it tried to {report.step}: {last[:300]}"


@store_app.command("check")
@user_errors
def check_cmd(store: StoreOpt = None, sets: SetOpt = None) -> None:
    """Open the store in a child process and read every record: a crash becomes a report."""
    ctx = make_context(store, sets)
    folder, url = _location(ctx)
    where = url or str(folder)
    if folder is not None and not (folder / "chroma.sqlite3").is_file():
        raise InputError(f"store {folder} holds no Chroma store (no chroma.sqlite3)")
    report = run_check(folder, url)
    if report.busy:
        raise InputError(report.busy)
    if report.returncode != 0 or not report.summary:
        hint = f"; recover its records with: {RECOVER_HINT.format(folder=folder)}" if folder else ""
        raise InputError(f"store {where} is broken: {_failure(report)}{hint}")
    s = report.summary
    sizes = ", ".join(f"{name} {n}" for name, n in s["collections"].items())
    console.print(  # ids and paths are free text: printed as they are, never read as Rich markup
        f"[green]ok[/]: store {escape(where)}: {s['videos']} videos ({s['complete']} complete, "
        f"{s['ingested']} ingested from files); {sizes or 'no collections'}",
        highlight=False,
    )
    for video_id, n in s.get("unfinished", []):
        console.print(
            escape(
                f"unfinished: video {video_id}: {n} clips stored, no video record (an ingest or import "
                f"that stopped): re-run it to finish it, or remove them: granalign videos rm -- {video_id}"
            ),
            highlight=False,
            soft_wrap=True,
        )
    for problem in s["problems"]:
        console.print(f"[yellow]problem:[/] {escape(problem)}", highlight=False)
    if s["problems"]:
        raise typer.Exit(1)


# -- store recover (SQLite only: no Chroma code runs on the broken folder) ----------------------


@dataclass
class StoreRecords:
    """What a store folder's SQLite file holds, read without Chroma."""

    videos: list[VideoRecord]
    captions: dict[tuple[str, str, str], dict[int, str]]
    """(collection, video id, source) -> {clip: caption text}"""
    rewrites: dict[str, tuple[str, dict[str, Any]]]
    """key -> (query text, rewrite JSON)"""
    unfinished: list[tuple[str, int]] = field(default_factory=list)
    """(video id, clips stored) of clip rows without a video record, as ``store check`` lists them"""


def _metadata_rows(db: sqlite3.Connection) -> dict[tuple[str, str], dict[str, Any]]:
    """(collection name, record id) -> metadata (with the document under 'chroma:document')."""
    rows = db.execute(
        "SELECT c.name, e.embedding_id, m.key, m.string_value, m.int_value, m.float_value, m.bool_value "
        "FROM embeddings e JOIN segments s ON e.segment_id = s.id "
        "JOIN collections c ON s.collection = c.id JOIN embedding_metadata m ON m.id = e.id"
    )
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for name, rid, key, text, num, real, flag in rows:
        value = next((v for v in (text, num, real) if v is not None), None)
        out[(name, rid)][key] = bool(flag) if flag is not None and value is None else value
    return out


def read_records(folder: Path) -> StoreRecords:
    """The video records, caption texts and rewrites of an embedded store, from its SQLite file."""
    path = folder / "chroma.sqlite3"
    if not path.is_file():
        raise InputError(f"store {folder} holds no Chroma store (no chroma.sqlite3)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = _metadata_rows(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise InputError(f"the records of store {folder} cannot be read from {path}: {exc}") from None
    records = StoreRecords([], defaultdict(dict), {})
    per_video: dict[str, dict[str, dict[tuple[str, str], int]]] = defaultdict(dict)
    for (name, rid), meta in rows.items():
        if "video_id" in meta and "clip" in meta:  # a clip row, counted as check counts it
            count_record(per_video[name], meta)
        if name == VIDEOS:
            records.videos.append(VideoRecord.from_metadata(meta))
        elif name == REWRITES and "json" in meta:
            records.rewrites[rid] = (str(meta.get("chroma:document") or ""), json.loads(meta["json"]))
        elif name.startswith("captions.") and "clip" in meta:
            key = (name, str(meta["video_id"]), str(meta["source"]))
            records.captions[key][int(meta["clip"])] = str(meta.get("chroma:document") or "")
    records.videos.sort(key=lambda r: r.video_id)
    records.unfinished = _unfinished(records.videos, per_video)
    return records


@dataclass
class RecoveryPlan:
    """Captions files to import (per source and embedder), ingested files, and what is lost."""

    manifests: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    reingest: list[VideoRecord] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def plan_recovery(records: StoreRecords) -> RecoveryPlan:
    """Which videos come back from their caption texts, which need their file, which are lost.

    A video whose clips 0..n-1 are all there comes back with those n captions, its record's
    count: caption rows past its last clip (left by imports before orphan rows were cleared,
    the extra rows ``store check`` reports) are left out, not a reason to lose the video.
    """
    plan = RecoveryPlan()
    for rec in records.videos:
        if rec.has_frames:
            plan.reingest.append(rec)
            continue
        if not rec.complete:
            plan.lost.append(f"{rec.video_id} (its import had not finished)")
            continue
        name = f"captions.{collection_slug(rec.caption_embedder)}"
        clips = records.captions.get((name, rec.video_id, rec.caption_source), {})
        have = sum(c in clips for c in range(rec.n_clips))
        if have < rec.n_clips:
            plan.lost.append(f"{rec.video_id} ({have} of {rec.n_clips} captions readable)")
            continue
        if (extra := len(clips) - rec.n_clips) > 0:
            rows = "caption rows" if extra > 1 else "caption row"
            plan.left_out.append(f"{rec.video_id}: {extra} {rows} past its {rec.n_clips} clips")
        line = {
            "vid": rec.video_id,
            "clip_len_s": rec.clip_len_s,
            "duration": rec.duration_s,
            "captions": [clips[i] for i in range(rec.n_clips)],
        }
        plan.manifests.setdefault((rec.caption_source, rec.caption_embedder), []).append(line)
    return plan


def _write_manifest(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")


@store_app.command("recover")
@user_errors
def recover_cmd(
    to: Annotated[Path, typer.Option("--to", help="A new store folder to rebuild into.")],
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="The damaged store folder to recover from: its records are read straight from its "
            "SQLite file, without Chroma, and left in place (default $GRANALIGN_STORE or the user cache).",
        ),
    ] = None,
    sets: SetOpt = None,
) -> None:
    """Rebuild a broken embedded store into a new folder from the records its SQLite file holds."""
    from granalign.backends.embedder import spec_for_name
    from granalign.io.locks import acquire_store_lock, release_store_lock
    from graphs import resources

    ctx = make_context(store, sets)
    folder, url = _location(ctx)
    if folder is None:
        raise InputError(
            f"recover rebuilds an embedded store folder; {url} is a Chroma server (unset CHROMA_URL)"
        )
    target = to.expanduser()
    if target.resolve() == folder.resolve():
        raise InputError(f"--to {target} is the broken store itself; give a new folder")
    acquire_store_lock(folder, 0)  # nobody may write the folder while its records are read
    try:
        records = read_records(folder)
    finally:
        release_store_lock(folder)
    plan = plan_recovery(records)
    new_ctx = ctx.with_overrides(store_dir=str(target), chroma_url="")
    new_store, embedder = resources.store_for(new_ctx), resources.embedder_for(new_ctx)
    imported = 0
    for (source, emb_name), lines in sorted(plan.manifests.items()):
        manifest = target / "recovered" / f"{collection_slug(source)}.{collection_slug(emb_name)}.jsonl"
        _write_manifest(manifest, lines)
        if emb_name != embedder.name:
            plan.lost.append(
                f"{len(lines)} videos of source {source!r} embedded with {emb_name!r}: import "
                f"{manifest} with --set embedder={spec_for_name(emb_name)}"
            )
            continue
        imported += import_with_bar(new_store, embedder, manifest, source, "re-import").total
    if records.rewrites:
        keys = sorted(records.rewrites)
        new_store.put_rewrites(
            {k: records.rewrites[k][1] for k in keys}, {k: records.rewrites[k][0] for k in keys}
        )
    console.print(
        escape(
            f"recovered into {target}: {imported} videos from their captions, "
            f"{len(records.rewrites)} cached rewrites; next: use --store {target} (or GRANALIGN_STORE)"
        ),
        highlight=False,
    )
    for rec in plan.reingest:  # a command to paste: the name quoted for the shell, never read as markup
        shown = display_path(shlex.quote(rec.path)) if rec.path else f"<file of {rec.video_id}>"
        console.print(f"[yellow]re-ingest:[/] granalign index {escape(shown)}", highlight=False)
    for what in plan.lost:
        console.print(f"[yellow]not recovered:[/] {escape(what)}", highlight=False)
    for video_id, n in records.unfinished:  # check's `unfinished:` lines: no record says what they were
        console.print(
            f"[yellow]not recovered:[/] unfinished video {escape(video_id)}: {n} clips stored, no video "
            f"record (an ingest or import that stopped; its clips are not copied): re-run that ingest "
            f"or import with --store {escape(str(target))}",
            highlight=False,
            soft_wrap=True,
        )
    for what in plan.left_out:
        console.print(f"[yellow]left out:[/] {escape(what)}", highlight=False)


# -- videos list / rm ---------------------------------------------------------------------------


@videos_app.command("list")
@user_errors
def videos_list_cmd(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON array of the video records ([] when none).")
    ] = False,
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Every video record in the store (ids in full)."""
    from graphs import resources

    ctx = make_context(store, sets)
    st = resources.store_for(ctx)
    records = st.list_videos()
    if as_json:  # one document, as `retrieve --json`: a parser reads it whole, an empty store is []
        out.print_json(json.dumps([rec.to_metadata() for rec in records]))
        return
    table = Table(title=f"{len(records)} videos in {st.location}")
    table.add_column("video id", overflow="fold")
    for col in ("clips", "clip (s)", "duration (s)"):
        table.add_column(col, justify="right")
    for col in ("captions", "frames", "complete"):
        table.add_column(col)
    table.add_column("file", overflow="fold")
    for rec in records:
        table.add_row(
            rec.video_id,
            str(rec.n_clips),
            f"{rec.clip_len_s:g}",
            f"{rec.duration_s:.1f}",
            rec.caption_source,
            "yes" if rec.has_frames else "no",
            "yes" if rec.complete else "no",
            escape(display_path(rec.path)),  # a file name is no Rich markup, nor terminal codes
        )
    out.print(table)


@videos_app.command("rm")
@user_errors
def videos_rm_cmd(
    video_ids: Annotated[
        list[str],
        typer.Argument(
            metavar="VIDEO_ID...", help="Store ids to remove (put `--` before ids that begin with '-')."
        ),
    ],
    store: StoreOpt = None,
    sets: SetOpt = None,
) -> None:
    """Remove videos: their record, captions, query-aware captions and frame embeddings."""
    from graphs import resources

    ctx = make_context(store, sets)
    st = resources.store_for(ctx)
    missing = [v for v in video_ids if st.video(v) is None and not st.has_clip_records(v)]
    if missing:
        raise InputError(
            f"video {missing[0]!r} is not in the store at {st.location}; "
            "`granalign videos list` shows the stored ids"
        )
    for video_id in video_ids:
        removed = st.delete_video(video_id)
        resources.forget_video(video_id)
        parts = ", ".join(f"{n} from {name}" for name, n in removed.items() if n)
        console.print(escape(f"removed {video_id}: {parts}"), highlight=False)
