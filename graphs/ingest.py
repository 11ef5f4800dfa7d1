"""The ingest graph: probe → encode → finalize, turning a video file into stored clips.

For every clip (``clip_len`` seconds, from Context) the ``encode`` node samples one frame
(PyAV, by seeking; never the whole video in memory), embeds it with CLIP, captions it
query-agnostically (``C_agn``), embeds the caption, and writes the frame record, then the
caption record (the one that marks the clip finished; see :mod:`granalign.io.store`).  Clips go in
batches of ``ingest_batch``: the next batch's frames are decoded on a helper thread while the
models work on the current one, and every batch is stored before the next starts, so a killed
ingest loses at most one batch and a re-run skips every finished clip.  ``finalize`` writes the
video record only when every clip is finished.

Progress is streamed (``stream_mode="custom"``): ``{"stage": "ingest", "done", "total", ...}``
after each batch, which ``granalign index`` shows as a bar.  :func:`ingest_video` runs the graph
and relays those events; the retrieval graph uses it for videos the store does not know yet.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from granalign.backends.captioner import AGNOSTIC_PROMPT
from granalign.backends.interrupt import stopped
from granalign.backends.weights import weights_notes
from granalign.errors import BackendError, ConfigError, InputError
from granalign.io.locks import StoreBusyError, video_lock
from granalign.io.store import Store, StoreUnavailable, VideoRecord, caption_id, frame_id
from granalign.io.video import (
    FrameSampler,
    VideoInfo,
    check_unchanged,
    clip_count,
    clip_times,
    content_hash,
    display_path,
    file_stamp,
    path_text,
    probe_video,
    resolve_video_path,
)
from graphs import resources
from graphs.context import Context
from graphs.state import IngestInput, IngestOutput, IngestState

__all__ = ["build_ingest_graph", "graph", "ingest_video", "unfinished_clips"]

STAGES = ("decode", "clip", "caption", "embed", "store")
"""The per-batch stages whose seconds ``timings`` reports (the benchmark's throughput table)."""


def _progress(runtime: Runtime[Context], stage: str, **data: Any) -> None:
    writer = getattr(runtime, "stream_writer", None)
    if writer is not None:
        writer({"stage": stage, **data})


def unfinished_clips(ctx: Context, video_id: str, n_clips: int) -> list[int]:
    """Clips lacking their frame or their agnostic caption under this run's ids."""
    store = resources.store_for(ctx)
    clip, captioner, embedder = (
        resources.clip_for(ctx),
        resources.captioner_for(ctx),
        resources.embedder_for(ctx),
    )
    s_key, p_hash = resources.sampling_key(ctx), resources.agnostic_prompt_hash(ctx)
    caption_ids = [caption_id(video_id, c, captioner.name, p_hash) for c in range(n_clips)]
    frame_ids = [frame_id(video_id, c, clip.name, s_key) for c in range(n_clips)]
    have_caption = store.existing_ids(store.captions_collection(embedder.name), caption_ids)
    have_frame = store.existing_ids(store.frames_collection(clip.name), frame_ids)
    return [c for c in range(n_clips) if caption_ids[c] not in have_caption or frame_ids[c] not in have_frame]


def _todo(ctx: Context, video_id: str, n_clips: int) -> list[int]:
    """The clips to encode: none when the store holds the whole video under these settings."""
    record = resources.store_for(ctx).video(video_id)
    current = (
        record is not None
        and record.complete
        and record.ingest_key == resources.ingest_key(ctx)
        and record.n_clips == n_clips
    )
    return [] if current else unfinished_clips(ctx, video_id, n_clips)


def probe(state: IngestState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Resolve and hash the file, read its duration, and find the clips still to encode."""
    ctx = runtime.context
    path = resolve_video_path(state["video"], resources.video_roots(ctx))
    stamp = file_stamp(path)
    video_id = content_hash(path)
    check_unchanged(path, stamp, video_id)  # not rewritten while it was hashed
    info = probe_video(path)
    n_clips = clip_count(info.duration_s, ctx.clip_len)
    todo = _todo(ctx, video_id, n_clips)
    notes: list[str] = []
    if info.duration_s < ctx.clip_len:
        notes.append(
            f"video is {info.duration_s:.2f} s long, shorter than one clip ({ctx.clip_len:g} s): "
            "one clip covers it"
        )
    # random or test-only weights: the ingest's output says so
    notes.extend(weights_notes(resources.clip_for(ctx), resources.captioner_for(ctx)))
    _progress(
        runtime,
        "probe",
        video_id=video_id,
        path=display_path(path),
        total=n_clips,
        todo=len(todo),
        duration_s=round(info.duration_s, 3),
    )
    return {
        "video_id": video_id,
        "path": str(path),
        "n_clips": n_clips,
        "duration_s": info.duration_s,
        "info": asdict(info),
        "stamp": stamp,
        "todo": todo,
        "skipped": n_clips - len(todo),
        "notes": Overwrite(notes),  # a server thread kept between runs: not the last run's notes
    }


def _batches(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[lo : lo + size]) for lo in range(0, len(items), size)]


def _decode(
    sampler: FrameSampler, times: Sequence[float], clip_len: float, clips: list[int]
) -> tuple[list[Any], float]:
    t0 = time.perf_counter()
    images = [sampler.frame_at(times[c], not_before=c * clip_len) for c in clips]
    return images, time.perf_counter() - t0


def encode(state: IngestState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Sample → CLIP-embed → caption → embed → store, batch by batch (the resume unit)."""
    ctx = runtime.context
    timings = dict.fromkeys(STAGES, 0.0)
    if not state.get("todo"):  # probe found every clip finished
        return {"encoded": 0, "timings": timings, "finished": True}
    video_id = state["video_id"]
    with video_lock(
        resources.lock_dir_for(ctx),
        video_id,
        ctx.ingest_lock_timeout,
        on_wait=lambda: _progress(runtime, "ingest_wait", video_id=video_id),
    ):
        # Another caller may have finished some clips while this one waited: look again.
        todo = unfinished_clips(ctx, video_id, state["n_clips"])
        if not todo:
            return {"encoded": 0, "skipped": state["n_clips"], "timings": timings, "finished": True}
        return {**_encode_clips(ctx, runtime, state, todo, timings), "finished": True}


@dataclass(frozen=True)
class _ClipWriter:
    """What every batch of one ingest writes with: the models, the store and the ids' keys."""

    video_id: str
    store: Store
    clip: Any  # a ClipEncoder's embed_images, a Captioner, a TextEmbedder: the Ray driver
    captioner: Any  # passes stand-ins that have only what a batch calls
    embedder: Any
    s_key: str
    p_hash: str
    have_frame: set[str]

    @classmethod
    def of(cls, ctx: Context, video_id: str, todo: list[int]) -> _ClipWriter:
        store, clip = resources.store_for(ctx), resources.clip_for(ctx)
        s_key = resources.sampling_key(ctx)
        frame_ids = [frame_id(video_id, c, clip.name, s_key) for c in todo]
        have_frame = store.existing_ids(store.frames_collection(clip.name), frame_ids)
        captioner, embedder = resources.captioner_for(ctx), resources.embedder_for(ctx)
        p_hash = resources.agnostic_prompt_hash(ctx)
        return cls(video_id, store, clip, captioner, embedder, s_key, p_hash, have_frame)


def _encode_clips(
    ctx: Context, runtime: Runtime[Context], state: IngestState, todo: list[int], timings: dict[str, float]
) -> dict[str, Any]:
    """Encode ``todo`` batch by batch, decoding the next batch while the models work on this one."""
    writer = _ClipWriter.of(ctx, state["video_id"], todo)
    info = VideoInfo(**state["info"])  # probed once, by the probe node
    times = clip_times(info.duration_s, ctx.clip_len)
    skipped = state["n_clips"] - len(todo)
    done, batches = skipped, _batches(todo, ctx.ingest_batch)
    with (
        FrameSampler(Path(state["path"]), info, max_pixels=ctx.max_pixels) as sampler,
        ThreadPoolExecutor(1) as pool,
    ):
        check_unchanged(Path(state["path"]), state.get("stamp"), writer.video_id)  # the file opened
        pending: Future[tuple[list[Any], float]] = pool.submit(
            _decode, sampler, times, ctx.clip_len, batches[0]
        )
        for i, batch in enumerate(batches):
            if stopped():  # Ctrl-C: the stored batches are whole clips; a re-run resumes after them
                raise KeyboardInterrupt("ingest stopped by an interrupt (Ctrl-C)")
            images, seconds = pending.result()
            timings["decode"] += seconds
            _check_read_unchanged(sampler, state, writer.video_id, done)
            if i + 1 < len(batches):
                pending = pool.submit(_decode, sampler, times, ctx.clip_len, batches[i + 1])
            _encode_batch(writer, batch, images, timings)
            done += len(batch)
            total = state["n_clips"]
            _progress(runtime, "ingest", video_id=writer.video_id, done=done, total=total, skipped=skipped)
        damage = sampler.damage.note()
    return {
        "encoded": len(todo),
        "skipped": skipped,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "notes": [damage] if damage else [],
    }


def _check_read_unchanged(sampler: FrameSampler, state: IngestState, video_id: str, done: int) -> None:
    """Refuse frames decoded from bytes other than those hashed into ``video_id``: a file rewritten
    in place (``cp`` over it, an editor saving) while its batches were read.  Checked after each
    batch is decoded and before it is stored, so the clips stored before are of the hashed bytes."""
    stamp = state.get("stamp")
    if stamp is not None and sampler.file_stamp() != list(stamp):
        raise InputError(
            f"video {display_path(state['path'])} changed while its frames were read (hashed as {video_id}); "
            f"the clips stored before the change ({done} of {state['n_clips']}) are of the hashed file, "
            "nothing after it was stored: re-run once the file is complete"
        )


def _encode_batch(w: _ClipWriter, batch: list[int], images: list[Any], timings: dict[str, float]) -> None:
    """One batch: frame embeddings (for clips without one), captions, caption embeddings, writes."""
    need = [
        j for j, c in enumerate(batch) if frame_id(w.video_id, c, w.clip.name, w.s_key) not in w.have_frame
    ]
    t0 = time.perf_counter()
    frame_vectors = w.clip.embed_images([images[j] for j in need]) if need else None
    t1 = time.perf_counter()
    captions = w.captioner.caption(images, [AGNOSTIC_PROMPT] * len(images))
    t2 = time.perf_counter()
    vectors = w.embedder.embed(captions)
    t3 = time.perf_counter()
    if frame_vectors is not None:  # frames first: a caption record marks its clip finished
        clips = [batch[j] for j in need]
        w.store.put_frames(w.video_id, clips, frame_vectors, clip_model=w.clip.name, sampling_key=w.s_key)
    w.store.put_clip_captions(
        w.video_id,
        batch,
        captions,
        vectors,
        source=w.captioner.name,
        prompt_hash=w.p_hash,
        embedder_name=w.embedder.name,
    )
    t4 = time.perf_counter()
    for stage, seconds in zip(STAGES[1:], (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
        timings[stage] += seconds


def finalize(state: IngestState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write the video record, only once every clip is finished in the store.

    ``encode`` saw that itself (``finished``: it stored every clip still missing under the
    video's lock); any other caller (the Ray driver) gets the clips checked here.
    """
    ctx = runtime.context
    video_id, n_clips = state["video_id"], state["n_clips"]
    left = [] if state.get("finished") else unfinished_clips(ctx, video_id, n_clips)
    if left:
        raise InputError(
            f"video {video_id}: clips {left[:5]} are still unfinished after encoding; re-run the ingest"
        )
    store = resources.store_for(ctx)
    store.put_video(
        VideoRecord(
            video_id=video_id,
            n_clips=n_clips,
            clip_len_s=ctx.clip_len,
            duration_s=float(state["duration_s"]),
            caption_source=resources.captioner_for(ctx).name,
            caption_embedder=resources.embedder_for(ctx).name,
            has_frames=True,
            complete=True,
            path=path_text(state["path"]),  # opened again for aware captions: not escaped
            clip_model=resources.clip_for(ctx).name,
            caption_prompt=resources.agnostic_prompt_hash(ctx),
            ingest_key=resources.ingest_key(ctx),
        )
    )
    resources.forget_video(video_id)
    _progress(
        runtime,
        "finalize",
        video_id=video_id,
        total=n_clips,
        encoded=state.get("encoded", 0),
        skipped=state.get("skipped", 0),
    )
    return {}


def build_ingest_graph(checkpointer: Any = None) -> Any:
    """Compile the ingest graph (``langgraph.json``: ``ingest``); ``checkpointer=False`` never
    checkpoints, not even into a calling graph's thread."""
    builder = StateGraph(
        IngestState, context_schema=Context, input_schema=IngestInput, output_schema=IngestOutput
    )
    builder.add_node("probe", probe)
    builder.add_node("encode", encode)
    builder.add_node("finalize", finalize)
    builder.add_edge(START, "probe")
    builder.add_edge("probe", "encode")
    builder.add_edge("encode", "finalize")
    builder.add_edge("finalize", END)
    return builder.compile(name="granalign-ingest", checkpointer=checkpointer)


graph = build_ingest_graph()
_unsaved = build_ingest_graph(checkpointer=False)
"""What :func:`ingest_video` runs.  Called inside a retrieval step, a graph compiled without a
checkpointer would borrow the retrieval's and write its steps into that run's thread: after a
cancelled call had deleted the thread, the ingest (which goes on in its worker thread) wrote
them back, rows nobody could resume or delete.  An ingest resumes through the store instead:
a re-run skips every finished clip."""
warnings.filterwarnings(  # ingest_video's durability="exit" (see there) is deliberate
    "ignore", message="`durability` has no effect when no checkpointer", category=UserWarning
)


def ingest_video(
    ctx: Context, video: str, on_event: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run the ingest graph on one file, relaying its progress events; returns its output."""
    result: dict[str, Any] = {}
    # durability: a calling retrieval's "sync" would be inherited, which LangGraph cannot do
    # without a checkpointer (AttributeError in its loop); "exit" writes nothing here
    parts = _unsaved.stream(
        {"video": video}, context=ctx, stream_mode=["custom", "values"], durability="exit"
    )
    for mode, chunk in parts:
        if mode == "custom":
            if on_event is not None:
                on_event(chunk)
        else:
            result = chunk
    return {k: result.get(k) for k in IngestOutput.__annotations__}


def is_deployment_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is about this deployment rather than one video: a model or setting that
    cannot load (ConfigError), a store folder another process holds, a Chroma server that is
    gone, a model server that refuses the key or knows no such model or path (HTTP 401, 403,
    404: ``BackendError.misconfigured``).  Every later video of a folder would fail the same
    way (and try to load the missing model again), so a folder ingest stops at the first one
    instead of skipping video by video; an undecodable or changed file (InputError) or a model
    server busy, failing or timing out for one batch (429, 5xx) stays the failure of that video."""
    if isinstance(exc, BackendError) and exc.misconfigured:
        return True
    return isinstance(exc, ConfigError | StoreBusyError | StoreUnavailable)
