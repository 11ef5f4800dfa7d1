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

Caption-only mode: a video known only by imported captions has no frames, so ``clip_filter``
and query-aware captions are skipped and that is recorded in ``notes`` (never faked).  A failed
model server never crashes a run: the rewrite falls back to the original query and aware
captions fall back to ``aware_missing``, each recorded in ``notes``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import RetryPolicy, Send

from granalign.backends.captioner import QueryFocus
from granalign.backends.openai_llm import BackendError
from granalign.errors import InputError
from granalign.feedback import feedback_queries
from granalign.fusion import granular_fusion, variant_scores
from granalign.moments import propose_windows, saliency, select_moments
from granalign.proposals import ProposalParams
from granalign.rewrite import Rewrite
from granalign.similarity import cosine_similarity, minmax_normalise
from granalign.smoothing import smoothed_similarity
from granalign.store import VideoRecord
from granalign.validation import ImitationGuard, drifted, rewrite_similarity
from granalign.video import content_hash, display_path, looks_like_path, resolve_video_path
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

MAX_QUERY_CHARS = 1000


def _progress(runtime: Runtime[Context], stage: str, **data: Any) -> None:
    """Custom-stream progress events (``stream_mode="custom"``) for CLIs and Studio."""
    writer = getattr(runtime, "stream_writer", None)
    if writer is not None:
        writer({"stage": stage, **data})


def _clean_query(query: Any) -> str:
    if not isinstance(query, str):
        raise InputError(f"query must be a string, got {type(query).__name__}")
    text = "".join(ch for ch in query if ch.isprintable() or ch == " ").strip()
    if not text:
        raise InputError("query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(f"query is {len(text)} characters long; at most {MAX_QUERY_CHARS} are allowed")
    return text


def _stored_record(ctx: Context, video: str) -> VideoRecord | None:
    """The store's record when ``video`` is a stored id (never for strings that look like paths)."""
    if looks_like_path(video):
        return None
    record = resources.store_for(ctx).video(video)
    return record if record is not None and record.complete else None


def _ingest(runtime: Runtime[Context], video: str, why: str) -> str:
    """Ingest a file through the ingest graph, relaying its progress; returns the video id."""
    ctx = runtime.context
    if not ctx.auto_ingest:
        raise InputError(f"video {video!r} {why}; ingest it first (granalign index VIDEO) or set auto_ingest")
    _progress(runtime, "ingest_start", video=display_path(video), reason=why)
    out = ingest_video(ctx, video, on_event=lambda ev: _progress(runtime, ev.pop("stage", "ingest"), **ev))
    return str(out["video_id"])


def _resolve_video(runtime: Runtime[Context], video: str) -> tuple[str, str]:
    """(video id, file path or '') for a store id or a video file, ingesting when needed."""
    ctx = runtime.context
    record = _stored_record(ctx, video)
    if record is not None:
        if record.has_frames and record.ingest_key != resources.ingest_key(ctx):
            path = str(resources.video_file(ctx, record))
            return _ingest(runtime, path, "was ingested with other settings"), path
        return record.video_id, ""
    if not looks_like_path(video) and not os.path.lexists(video):
        store = resources.store_for(ctx)
        raise InputError(
            f"video {video!r} is not in the store at {store.location} and is not a video file; import its "
            "captions (granalign index --captions FILE) or pass a video file path"
        )
    resolved = resolve_video_path(video, resources.video_roots(ctx))
    video_id = content_hash(resolved)
    record = resources.store_for(ctx).video(video_id)
    if record is None or not record.complete or record.ingest_key != resources.ingest_key(ctx):
        why = "is not in the store" if record is None else "is not fully ingested with these settings"
        video_id = _ingest(runtime, str(resolved), why)
    return video_id, str(resolved)


def load_video(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Resolve the video (store id or file, ingesting a new file) and decide the mode."""
    query = _clean_query(state.get("query"))
    video = state.get("video")
    if not isinstance(video, str) or not video.strip():
        raise InputError("video must be a non-empty string (a store video id or a video file path)")
    video_id, path = _resolve_video(runtime, video.strip())
    found = resources.video_captions(runtime.context, video_id)
    notes: list[str] = []
    if not found.record.has_frames:
        notes.append("caption-only mode: no frames, so clip_filter and query-aware captions were skipped")
    elif found.record.duration_s < found.record.clip_len_s:
        notes.append(
            f"video is {found.record.duration_s:.2f} s long, shorter than one clip "
            f"({found.record.clip_len_s:g} s): one clip covers it"
        )
    _progress(runtime, "load_video", video_id=found.record.video_id, clips=len(found.captions))
    out: dict[str, Any] = {
        "query": query,
        "video_id": found.record.video_id,
        "n_clips": len(found.captions),
        "mode": "full" if found.record.has_frames else "caption-only",
        "notes": notes,
    }
    if path:
        out["video_path"] = path
    return out


def plan_rewrites(state: RetrievalState, runtime: Runtime[Context]) -> list[Send]:
    """Fan out: one rewrite task per prompt pair (one for pair-less sources); in full mode also
    the focus extraction and the CLIP filter, which do not depend on the rewrites."""
    task = {"query": state["query"], "qid": state.get("qid")}
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
    fallback, not cached, so the next run asks the server again.
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
        got = [Rewrite(state["pair_id"] or "original", state["query"], state["query"], True, str(exc))]
    notes = [f"rewrite {r.pair_id} fell back to the original query: {r.reason}" for r in got if r.fallback]
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
    record = resources.video_captions(ctx, state["video_id"]).record
    frames = resources.video_frames(ctx, record)
    text = resources.clip_for(ctx).embed_texts([state["query"]])
    scores = (frames @ text[0]).astype(float)
    k = max(1, math.ceil(ctx.key_pct / 100.0 * len(scores) - 1e-9))
    order = np.argsort(-scores, kind="stable")[:k]
    key = sorted(int(i) for i in order)
    _progress(runtime, "clip_filter", key_clips=len(key), clips=len(scores))
    return {"clip_scores": np.round(scores, 6).tolist(), "key_clips": key}


def caption(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 4: query-aware captions C_awr for the key clips only (cached per query and focus)."""
    if state.get("mode") != "full":
        _progress(runtime, "caption", skipped=True)
        return {}
    ctx = runtime.context
    record = resources.video_captions(ctx, state["video_id"]).record
    query_focus = QueryFocus.from_dict(state.get("focus") or {})
    try:
        got = resources.aware_captions(
            ctx,
            record,
            state.get("key_clips", []),
            state["query"],
            query_focus,
            video_path=state.get("video_path"),
        )
    except (BackendError, InputError) as exc:
        note = (
            f"query-aware captions unavailable ({exc}); "
            f"the aware channel used aware_missing={ctx.aware_missing!r}"
        )
        _progress(runtime, "caption", failed=True)
        return {"aware_clips": [], "aware_captions": [], "notes": [note]}
    _progress(runtime, "caption", key_clips=len(got.clips), computed=got.computed)
    return {"aware_clips": got.clips, "aware_captions": got.captions}


def _variants(state: RetrievalState, ctx: Context) -> list[Rewrite]:
    """Original (if asked) + rewrites, de-duplicated, in a deterministic order."""
    found = sorted((Rewrite.from_dict(r) for r in state.get("rewrites", [])), key=lambda r: r.pair_id)
    out: list[Rewrite] = [Rewrite.original(state["query"])] if ctx.include_original else []
    seen = {(r.simplified, r.detailed) for r in out}
    for r in found:
        if (r.simplified, r.detailed) not in seen:
            seen.add((r.simplified, r.detailed))
            out.append(r)
    return out or [Rewrite.original(state["query"])]


def _aware_channel(
    state: RetrievalState,
    ctx: Context,
    q_d: np.ndarray,
    n: int,
    video: resources.VideoCaptions,
    query_emb: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """g(Q_d, C_awr) over the clips that have aware captions, and the mask of those clips.

    The cosine is min–max normalised over the key clips with aware captions only (the only
    clips where C_awr exists), so the aware channel spans [0, 1] like the agnostic one and a
    query whose aware captions all look alike lifts no clip.  Other clips are NaN (ignored).
    With ``imitation_guard`` each clip's aware score is then damped by how much its caption
    copies the query beyond what its agnostic caption supports (:class:`ImitationGuard`).
    """
    mask = np.zeros(n, dtype=bool)
    g = np.full((q_d.shape[0], n), np.nan)
    clips = list(state.get("aware_clips") or [])
    if not clips or state.get("mode") != "full":
        return g, mask
    record = resources.video_captions(ctx, state["video_id"]).record
    got = resources.aware_captions(
        ctx,
        record,
        clips,
        state["query"],
        QueryFocus.from_dict(state.get("focus") or {}),
        video_path=state.get("video_path"),
    )
    aware = minmax_normalise(cosine_similarity(q_d, got.embeddings))
    if ctx.imitation_guard and got.clips:
        guard = ImitationGuard(max_penalty=ctx.imitation_max_penalty)
        aware = aware * guard.weights(
            got.captions,
            [video.captions[c] for c in got.clips],
            state["query"],
            got.embeddings,
            video.embeddings[got.clips],
            query_emb,
        )[None, :]
    g[:, got.clips] = aware
    mask[got.clips] = True
    return g, mask


def _replace_drifted(
    variants: list[Rewrite], query: str, emb: dict[str, np.ndarray], threshold: float
) -> tuple[list[Rewrite], int]:
    """Rewrite validation: a side whose cosine to the query is below ``threshold`` becomes the query.

    A small LLM sometimes answers the question or invents a subject instead of rewriting; such a
    side would pull the scores towards the wrong clips.  Returns the variants and how many sides
    were replaced (reported in the notes).
    """
    sides = [t for r in variants for t in (r.simplified, r.detailed)]
    bad = drifted(rewrite_similarity(emb[query], np.stack([emb[t] for t in sides])), threshold)
    if not bad.any():
        return variants, 0
    out = []
    for i, r in enumerate(variants):
        s_bad, d_bad = bool(bad[2 * i]), bool(bad[2 * i + 1])
        if s_bad or d_bad:
            r = Rewrite(
                r.pair_id,
                query if s_bad else r.simplified,
                query if d_bad else r.detailed,
                r.fallback,
                (r.reason + "; " if r.reason else "") + "drifted from the query: replaced",
            )
        out.append(r)
    return out, int(bad.sum())


def fuse(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 5: granular fusion S_f of g(Q_s, C_agn) and g(Q_d, C_awr) over the video's clips."""
    ctx = runtime.context
    video = resources.video_captions(ctx, state["video_id"])
    variants = _variants(state, ctx)
    query = state["query"]
    texts = sorted({query} | {t for r in variants for t in (r.simplified, r.detailed)})
    emb = dict(zip(texts, resources.embedder_for(ctx).embed(texts), strict=True))
    notes: list[str] = []
    if ctx.drift_threshold > -1.0:
        variants, replaced = _replace_drifted(variants, query, emb, ctx.drift_threshold)
        if replaced:
            notes.append(
                f"{replaced} rewrite side(s) drifted from the query (cosine < {ctx.drift_threshold:g}) "
                "and were replaced by the original query"
            )
    q_s = np.stack([emb[r.simplified] for r in variants])
    q_d = np.stack([emb[r.detailed] for r in variants])
    # Pseudo-relevance feedback and temporal smoothing (measured on QVHighlights val, README).
    k, w, sigma = ctx.feedback_k, ctx.feedback_weight, ctx.smooth_sigma
    g_s = smoothed_similarity(feedback_queries(q_s, video.embeddings, k=k, weight=w), video.embeddings, sigma)
    g_d_agn = smoothed_similarity(
        feedback_queries(q_d, video.embeddings, k=k, weight=w), video.embeddings, sigma
    )
    g_d_aware, aware_mask = _aware_channel(state, ctx, q_d, g_s.shape[1], video, emb[query])
    kwargs: dict[str, Any] = {"g_detailed_agnostic": g_d_agn, "aware_missing": ctx.aware_missing}
    per_variant = variant_scores(g_s, g_d_aware, aware_mask, **kwargs)
    fused = granular_fusion(g_s, g_d_aware, aware_mask, **kwargs)
    _progress(runtime, "fuse", variants=len(variants), clips=int(fused.size), aware=int(aware_mask.sum()))
    return {
        "notes": notes,
        "variants": [r.to_dict() for r in variants],
        "variant_scores": np.round(per_variant, 6).tolist(),
        "fused": np.round(fused, 6).tolist(),
    }


def _duration(state: RetrievalState, ctx: Context) -> float:
    given = state.get("duration")
    if given is not None:
        if (
            isinstance(given, bool)
            or not isinstance(given, int | float)
            or not math.isfinite(given)
            or given <= 0
        ):
            raise InputError(f"duration must be a positive number of seconds, got {given!r}")
        return float(given)
    record = resources.video_captions(ctx, state["video_id"]).record
    return float(record.duration_s)


def propose(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 6: proposals from high-score clips (and contrast windows when enabled)."""
    ctx = runtime.context
    windows = propose_windows(
        np.asarray(state["variant_scores"]),
        np.asarray(state["fused"]),
        clip_len=ctx.clip_len,
        duration=_duration(state, ctx),
        params=ProposalParams(**ctx.proposal_kwargs()),
        mode=ctx.proposal_mode,
        contrast=ctx.contrast,
        contrast_min_len=ctx.contrast_min_len,
    )
    _progress(runtime, "propose", candidates=len(windows))
    return {"candidates": windows}


def nms(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 7: temporal NMS, top-N windows; S_f becomes the saliency curve."""
    ctx = runtime.context
    duration = _duration(state, ctx)
    moments = select_moments(
        state["candidates"],
        np.asarray(state["fused"]),
        duration=duration,
        nms_iou=ctx.nms_iou,
        top_n=ctx.top_n,
    )
    if state.get("mode") == "full":  # ingested videos: exactly one value per stored clip
        n_out = int(state["n_clips"])
    else:
        n_out = max(1, math.ceil(duration / ctx.clip_len - 1e-9))
    curve = saliency(state["fused"], sigma=ctx.saliency_sigma)
    curve = (curve + [curve[-1]] * n_out)[:n_out]  # one value per clip of the whole duration
    _progress(runtime, "nms", moments=len(moments))
    return {"moments": moments, "saliency": curve}


def build_retrieval_graph(checkpointer: BaseCheckpointSaver[Any] | None = None) -> Any:
    """Compile the retrieval graph (the object ``langgraph.json`` points at).

    ``langgraph.json``'s graph has no checkpointer (LangGraph Server brings its own);
    :mod:`graphs.durable` compiles one with SQLite for the library, CLI and tool.

    Retries: only the network-facing nodes retry, and only on connection errors and timeouts
    (never ValueError/OSError); the served backends already retry 5xx answers themselves.
    """
    network = RetryPolicy(max_attempts=3, retry_on=(ConnectionError, TimeoutError))
    builder = StateGraph(
        RetrievalState, context_schema=Context, input_schema=RetrievalInput, output_schema=RetrievalOutput
    )
    builder.add_node("load_video", load_video)
    builder.add_node("rewrite", rewrite, input_schema=RewriteTask, retry_policy=network)
    builder.add_node("focus", focus, input_schema=FocusTask, retry_policy=network)
    builder.add_node("clip_filter", clip_filter, input_schema=ClipFilterTask)
    builder.add_node("caption", caption, retry_policy=network)
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
