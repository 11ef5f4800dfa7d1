"""The retrieval graph: rewrite → clip_filter → caption → fuse → propose → nms (the paper's figure).

Each node is a small function of ``(state, runtime: Runtime[Context])``.

* ``load_video`` takes a store id or a video file.  A file the store does not know (or knows
  under other settings) is ingested first by the ingest graph, whose progress is relayed.
* ``rewrite`` fans out with ``Send``, one task per prompt pair, so pairs run concurrently
  against a served LLM.  In full mode two more tasks run in the same step: ``focus`` (the
  query's entities and actions, for the aware captions) and ``clip_filter`` (top K % clips by
  CLIP text–image similarity), which needs no rewrite, so it does not wait for one.
* ``caption`` gets query-aware captions C_awr for the key clips only (cached per query).
* ``fuse`` computes S_f from both channels; ``propose`` and ``nms`` turn it into windows.
  ``fuse`` also gives ``match``, the raw cosine of the query with the video's best agnostic
  captions (:mod:`granalign.core.match`): S_f is normalised per video, so only ``match`` tells
  a query the video never shows from one it does.

Caption-only mode: a video known only by imported captions has no frames, so ``clip_filter``
and query-aware captions are skipped and that is recorded in ``notes`` (never faked).  A failed
model server that is down, slow or busy never crashes a run: the rewrite falls back to the
original query and aware captions fall back to ``aware_missing``, each recorded in ``notes``.
One that answers 401, 403 or 404 (a wrong API key, model name or base URL path:
``BackendError.misconfigured``) ends the run with an error that names the setting: every run
would fall back the same way, and notes alone would hide a broken deployment.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Overwrite, Send

from granalign.backends.captioner import QueryFocus
from granalign.backends.weights import weights_notes
from granalign.core.moments import positive_seconds
from granalign.errors import BackendError, GranAlignError, InputError
from granalign.io.store import VideoRecord
from granalign.io.video import VideoNotFound, content_hash, display_path, looks_like_path, resolve_video_path
from granalign.rewrite import Rewrite
from granalign.stages.aware_captions import AwareCaptions
from granalign.stages.clip_filter import clip_filter as clip_filter_stage
from granalign.stages.fusion import FusionSettings
from granalign.stages.fusion import fuse as fusion_stage
from granalign.stages.nms import AnswerSettings, answer, saliency_length
from granalign.stages.proposals import ProposalSettings
from granalign.stages.proposals import propose as propose_stage
from granalign.stages.rewrite import embed_variants, query_variants
from granalign.text import clean_query
from graphs import resources
from graphs.context import Context
from graphs.ingest import ingest_video
from graphs.state import (
    ClipFilterTask,
    FocusTask,
    RetrievalInput,
    RetrievalOutput,
    RetrievalState,
    RewriteTask,
)


def _progress(runtime: Runtime[Context], stage: str, **data: Any) -> None:
    """Custom-stream progress events (``stream_mode="custom"``) for CLIs and Studio."""
    writer = getattr(runtime, "stream_writer", None)
    if writer is not None:
        writer({"stage": stage, **data})


def _clean_query(query: Any) -> str:
    """The query as every front end cleans it (:func:`granalign.text.clean_query`): one limit,
    and TAB or newlines become spaces, so words never run together."""
    return clean_query(query)


def _stored_record(ctx: Context, video: str) -> VideoRecord | None:
    """The store's record when ``video`` is a stored id (never for strings that look like paths)."""
    if looks_like_path(video):
        return None
    record = resources.store_for(ctx).video(video)
    return record if record is not None and record.complete else None


def _ingest(runtime: Runtime[Context], video: str, why: str) -> tuple[str, list[str]]:
    """Ingest a file through the ingest graph, relaying its progress: (video id, the ingest's
    notes about the file, e.g. damaged packets it skipped, which the caller should see)."""
    ctx = runtime.context
    if not ctx.auto_ingest:
        raise InputError(f"video {video!r} {why}; ingest it first (granalign index VIDEO) or set auto_ingest")
    _progress(runtime, "ingest_start", video=display_path(video), reason=why)
    out = ingest_video(ctx, video, on_event=lambda ev: _progress(runtime, ev.pop("stage", "ingest"), **ev))
    return str(out["video_id"]), list(out.get("notes") or [])


def ingest_mismatch(ctx: Context, record: VideoRecord) -> str:
    """Why an ingested video's stored clips do not fit ``ctx`` ('' when they do).

    Names each differing setting with the value the video was ingested with and the current
    one, e.g. ``CLIP (settings clip_model/clip_pretrained) ViT-B-32/random-seed0, now
    ViT-B-32/laion2b_s34b_b79k``, so a user (or ``list_videos``) can tell what to change.
    """
    if not record.has_frames or record.ingest_key == resources.ingest_key(ctx):
        return ""
    pairs = [
        ("CLIP (settings clip_model/clip_pretrained)", record.clip_model, resources.clip_for(ctx).name),
        ("captioner (setting captioner)", record.caption_source, resources.captioner_for(ctx).name),
        ("embedder (setting embedder)", record.caption_embedder, resources.embedder_for(ctx).name),
        ("clip length (setting clip_len)", f"{record.clip_len_s:g} s", f"{ctx.clip_len:g} s"),
    ]
    parts = [f"{what} {then or 'unrecorded'}, now {now}" for what, then, now in pairs if then != now]
    if record.caption_prompt != resources.agnostic_prompt_hash(ctx):
        parts.append("caption prompt or frame size (settings max_pixels/caption_tokens) changed")
    return "ingested with other settings: " + ("; ".join(parts) or "recorded by an older version")


REINGEST_ADVICE = (
    "re-ingest it under the current settings (granalign index FILE, or pass the video file), "
    "or query it with the settings it was ingested with"
)


def _reingest(runtime: Runtime[Context], record: VideoRecord, mismatch: str) -> tuple[str, str, list[str]]:
    """Ingest a stored video again under the current settings; a failure says what happened."""
    head = f"video {record.video_id!r} was {mismatch}"
    if not runtime.context.auto_ingest:
        raise InputError(f"{head}; auto_ingest is off, so {REINGEST_ADVICE}")
    try:
        path = str(resources.video_file(runtime.context, record))
        video_id, notes = _ingest(runtime, path, "was ingested with other settings")
        return video_id, path, notes
    except GranAlignError as exc:
        raise InputError(f"{head}; re-ingesting it failed ({exc}); {REINGEST_ADVICE}") from exc


class _Resolved(NamedTuple):
    video_id: str
    path: str
    """The video file, '' for a store id."""
    notes: list[str]
    """Notes of an ingest it ran (damaged packets skipped, ...)."""
    record: VideoRecord | None
    """The store record read on the way, when no ingest has replaced it since."""


def _resolve_video(runtime: Runtime[Context], video: str) -> _Resolved:
    """A store id or a video file, ingesting when needed."""
    ctx = runtime.context
    record = _stored_record(ctx, video)
    if record is not None:
        mismatch = ingest_mismatch(ctx, record)
        if mismatch:
            return _Resolved(*_reingest(runtime, record, mismatch), None)
        return _Resolved(record.video_id, "", [], record)
    try:
        resolved = resolve_video_path(video, resources.video_roots(ctx))
    except VideoNotFound:
        if looks_like_path(video):
            raise
        store = resources.store_for(ctx)
        raise InputError(
            f"video {video!r} is not in the store at {store.location} and is not a video file; import its "
            "captions (granalign index --captions FILE) or pass a video file path"
        ) from None
    video_id = content_hash(resolved)
    record = resources.store_for(ctx).video(video_id)
    if record is None or not record.complete or record.ingest_key != resources.ingest_key(ctx):
        why = "is not in the store" if record is None else "is not fully ingested with these settings"
        video_id, notes = _ingest(runtime, str(resolved), why)
        return _Resolved(video_id, str(resolved), notes, None)
    return _Resolved(video_id, str(resolved), [], record)


def load_video(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Resolve the video (store id or file, ingesting a new file) and decide the mode."""
    query = _clean_query(state.get("query"))
    video = state.get("video")
    if not isinstance(video, str) or not video.strip():
        raise InputError("video must be a non-empty string (a store video id or a video file path)")
    ctx = runtime.context
    pair_notes = resources.prompt_pair_notes(ctx, resources.rewriter_for(ctx))  # before any ingest
    video_id, path, notes, record = _resolve_video(runtime, video.strip())
    found = resources.video_captions(runtime.context, video_id, check=True, record=record)
    if not found.record.has_frames:
        notes.append("caption-only mode: no frames, so clip_filter and query-aware captions were skipped")
    elif found.record.duration_s < found.record.clip_len_s:
        notes.append(
            f"video is {found.record.duration_s:.2f} s long, shorter than one clip "
            f"({found.record.clip_len_s:g} s): one clip covers it"
        )
    notes.extend(pair_notes)
    used: list[Any] = [resources.rewriter_for(ctx)]
    if found.record.has_frames:
        used += [resources.clip_for(ctx), resources.captioner_for(ctx)]
        used.append(resources.captioner_for(ctx, aware=True))
    notes.extend(weights_notes(*used))  # random or test-only weights: the output says so
    _progress(runtime, "load_video", video_id=found.record.video_id, clips=len(found.captions))
    # A thread kept between runs (LangGraph Server, Studio) feeds the next run's input into the
    # last run's state: the accumulating channels start over here, and the optional inputs move
    # to run_* channels and are cleared, so a run that omits them does not reuse the last run's.
    return {
        "query": query,
        "qid": None,
        "duration": None,
        "run_qid": state.get("qid"),
        "run_duration": state.get("duration"),
        "video_id": found.record.video_id,
        "n_clips": len(found.captions),
        "clip_len_s": float(found.record.clip_len_s),
        "mode": "full" if found.record.has_frames else "caption-only",
        "video_path": path or None,
        "rewrites": Overwrite([]),
        "notes": Overwrite(list(dict.fromkeys(notes))),  # an ingest's notes may repeat the ones above
    }


def plan_rewrites(state: RetrievalState, runtime: Runtime[Context]) -> list[Send]:
    """Fan out: one rewrite task per prompt pair (one for pair-less sources); in full mode also
    the focus extraction and the CLIP filter, which do not depend on the rewrites."""
    task = {"query": state["query"], "qid": _run_input(state, "qid")}
    rewriter = resources.rewriter_for(runtime.context)
    if resources.is_pairless(rewriter):
        sends = [Send("rewrite", RewriteTask(**task, pair_id=""))]  # type: ignore[typeddict-item]
    else:
        sends = [
            Send("rewrite", RewriteTask(**task, pair_id=p.id))  # type: ignore[typeddict-item]
            for p in resources.pairs_for(runtime.context)
        ]
    if state.get("mode") == "full":
        sends.append(Send("focus", FocusTask(query=state["query"])))
        sends.append(Send("clip_filter", ClipFilterTask(query=state["query"], video_id=state["video_id"])))
    return sends


def rewrite(state: RewriteTask, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 1: rewrite the query with one prompt pair (cached in the store).

    A model server that fails after its retries gives the original query as a recorded
    fallback, not cached, so the next run asks the server again; one that answers 401/403/404
    (misconfigured) ends the run with its error instead.
    """
    ctx = runtime.context
    rewriter = resources.rewriter_for(ctx)
    try:
        if not state["pair_id"]:
            got = rewriter.variants_for(state["query"], state.get("qid"))  # type: ignore[attr-defined]
        else:
            pair = next(p for p in resources.pairs_for(ctx) if p.id == state["pair_id"])
            got = resources.cached_rewrites(ctx, pair, [state["query"]])
    except BackendError as exc:
        if exc.misconfigured:  # the message names the rewriter setting and what to check
            raise
        got = [Rewrite(state["pair_id"] or "original", state["query"], state["query"], True, str(exc))]
    notes = [f"rewrite {r.pair_id} fell back to the original query: {r.reason}" for r in got if r.fallback]
    covers = getattr(rewriter, "covers", None)
    if not state["pair_id"] and covers is not None and not covers(state["query"], state.get("qid")):
        # a paraphrase file without this query: say so, or a typo in the query looks like a result
        notes.append(f"{rewriter.name} has no rewrites for this query; only the original query was used")
    _progress(runtime, "rewrite", pair=state["pair_id"] or rewriter.name, n=len(got))
    return {"rewrites": [r.to_dict() for r in got], "notes": notes}


def focus(state: FocusTask, runtime: Runtime[Context]) -> dict[str, Any]:
    """The query's entities and actions, which guide its query-aware captions (full mode)."""
    found = resources.query_focus(runtime.context, state["query"])
    notes = [f"query focus from the query's keywords: {found.note}"] if found.source != "llm" else []
    _progress(
        runtime, "focus", entities=list(found.entities), actions=list(found.actions), source=found.source
    )
    return {"focus": found.to_dict(), "notes": notes}


def clip_filter(state: ClipFilterTask, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 3: CLIP similarity of the query with every clip's frame; the top K % are key clips."""
    ctx = runtime.context
    frames = resources.video_frames(ctx, resources.video_captions(ctx, state["video_id"]).record)
    key = clip_filter_stage(frames, resources.clip_for(ctx), state["query"], ctx.key_pct)
    _progress(runtime, "clip_filter", key_clips=len(key), clips=len(frames))
    return {"key_clips": key}


def _focus(state: RetrievalState) -> QueryFocus:
    return QueryFocus.from_dict(state.get("focus") or {})


def caption(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 4: query-aware captions C_awr for the key clips only (cached per query and focus)."""
    if state.get("mode") != "full":
        _progress(runtime, "caption", skipped=True)
        return {}
    ctx = runtime.context
    record = resources.video_captions(ctx, state["video_id"]).record
    clips, path = state.get("key_clips", []), state.get("video_path")
    try:
        got = resources.aware_captions(ctx, record, clips, state["query"], _focus(state), video_path=path)
    except (BackendError, InputError) as exc:
        if isinstance(exc, BackendError) and exc.misconfigured:
            setting = "aware_captioner" if ctx.aware_captioner else "captioner"
            raise BackendError(f"query-aware captions ({setting}): {exc}", status=exc.status) from None
        _progress(runtime, "caption", failed=True)
        why = f"query-aware captions unavailable ({exc}); the aware channel used aware_missing="
        return {"aware_clips": [], "notes": [why + repr(ctx.aware_missing)]}
    _progress(runtime, "caption", key_clips=len(got.clips), computed=got.computed)
    return {"aware_clips": got.clips}


def _stored_aware(state: RetrievalState, ctx: Context) -> AwareCaptions | None:
    """C_awr the caption step stored (texts and embeddings; state holds no embeddings)."""
    clips = list(state.get("aware_clips") or [])
    if not clips or state.get("mode") != "full":
        return None
    record = resources.video_captions(ctx, state["video_id"]).record
    return resources.aware_captions(ctx, record, clips, state["query"], _focus(state), compute=False)


def fuse(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 5: granular fusion S_f of g(Q_s, C_agn) and g(Q_d, C_awr) over the video's clips."""
    ctx, query = runtime.context, state["query"]
    video = resources.video_captions(ctx, state["video_id"])
    rewrites = (Rewrite.from_dict(r) for r in state.get("rewrites", []))
    variants = query_variants(query, rewrites, include_original=ctx.include_original)
    embedder = resources.embedder_for(ctx)
    emb = embed_variants(query, variants, embedder, ctx.drift_threshold)
    aware = _stored_aware(state, ctx)
    scores = fusion_stage(
        emb.q_s, emb.q_d, video.checked, FusionSettings.of(ctx),
        aware=aware, agnostic_captions=video.captions, query=query, query_emb=emb.query_emb,
    )  # fmt: skip
    drift = f"{emb.replaced} rewrite side(s) drifted from the query (cosine < {ctx.drift_threshold:g}) "
    notes = [drift + "and were replaced by the original query"] if emb.replaced else []
    _progress(runtime, "fuse", variants=len(emb.variants), clips=len(scores.fused), aware=scores.aware_clips)
    return {
        "notes": notes,
        "variants": [r.to_dict() for r in emb.variants],
        "variant_scores": scores.variant_scores,
        "fused": scores.fused,
        "match": scores.match,
        "match_embedder": embedder.name,
    }


def _run_input(state: RetrievalState, key: str) -> Any:
    """This run's optional input ``qid`` or ``duration``: ``load_video`` moved it to ``run_<key>``
    (a kept thread must not reuse the last run's); a node called alone finds it under ``key``."""
    given = state.get(f"run_{key}")
    return given if given is not None else state.get(key)


def _duration(state: RetrievalState, ctx: Context) -> float:
    given = _run_input(state, "duration")
    if given is not None:  # the same bounds as the proposal stage's, checked before any work
        return positive_seconds("duration", given)
    record = resources.video_captions(ctx, state["video_id"]).record
    return float(record.duration_s)


def _clip_len(state: RetrievalState) -> float:
    """Seconds per clip of the stored video (``load_video`` reads it from the record): the grid
    its captions (and S_f) are on.

    Not ``Context.clip_len``: an imported caption file has its own grid (``clip_len_s``, e.g.
    1 s or 3 s), and converting its clips with another length would put every window at the
    wrong time.  For an ingested video the two agree (the ingest key holds ``clip_len``).
    """
    return float(state["clip_len_s"])


def propose(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 6: proposals from high-score clips (and contrast windows when enabled), or with
    ``proposal_mode="vtg-gpt"`` the peer's windows, already ranked (:mod:`granalign.stages.proposals`)."""
    ctx = runtime.context
    windows = propose_stage(
        state["variant_scores"],
        state["fused"],
        clip_len=_clip_len(state),
        duration=_duration(state, ctx),
        settings=ProposalSettings.of(ctx),
    )
    _progress(runtime, "propose", candidates=len(windows))
    return {"candidates": windows}


def nms(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 7: temporal NMS, top-N windows; S_f becomes the saliency curve."""
    ctx = runtime.context
    duration, clip_len = _duration(state, ctx), _clip_len(state)
    ingested = state.get("mode") == "full"  # ingested videos: exactly one value per stored clip
    n_out = saliency_length(duration, clip_len, int(state["n_clips"]) if ingested else None)
    moments, curve = answer(
        state["candidates"], state["fused"], duration=duration, n_out=n_out, settings=AnswerSettings.of(ctx)
    )
    _progress(runtime, "nms", moments=len(moments))
    return {"moments": moments, "saliency": curve, "clip_len_s": clip_len}


def build_retrieval_graph(checkpointer: BaseCheckpointSaver[Any] | None = None) -> Any:
    """Compile the retrieval graph (the object ``langgraph.json`` points at).

    ``langgraph.json``'s graph has no checkpointer (LangGraph Server brings its own);
    :mod:`graphs.durable` compiles one with SQLite for the library, CLI and tool.

    Retries: no node has a LangGraph ``RetryPolicy``.  The served backends retry HTTP 5xx and
    timeouts themselves (``request_attempts``, with backoff) and turn what is left into a
    BackendError, which the network nodes record as a fallback (or, for a misconfigured server,
    raise: no retry changes a 401/403/404); a node-level policy would never see an exception to
    retry.
    """
    builder = StateGraph(
        RetrievalState, context_schema=Context, input_schema=RetrievalInput, output_schema=RetrievalOutput
    )
    builder.add_node("load_video", load_video)
    builder.add_node("rewrite", rewrite, input_schema=RewriteTask)
    builder.add_node("focus", focus, input_schema=FocusTask)
    builder.add_node("clip_filter", clip_filter, input_schema=ClipFilterTask)
    builder.add_node("caption", caption)
    builder.add_node("fuse", fuse)
    builder.add_node("propose", propose)
    builder.add_node("nms", nms)
    builder.add_edge(START, "load_video")
    builder.add_conditional_edges("load_video", plan_rewrites, ["rewrite", "focus", "clip_filter"])
    builder.add_edge("rewrite", "caption")
    builder.add_edge("focus", "caption")
    builder.add_edge("clip_filter", "caption")
    builder.add_edge("caption", "fuse")
    builder.add_edge("fuse", "propose")
    builder.add_edge("propose", "nms")
    builder.add_edge("nms", END)
    return builder.compile(name="granalign-retrieval", checkpointer=checkpointer)


graph = build_retrieval_graph()
