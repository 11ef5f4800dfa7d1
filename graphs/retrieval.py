"""The retrieval graph: rewrite → fuse → propose → nms, as in the paper's method figure.

Each node is a small function of ``(state, runtime: Runtime[Context])``.  ``rewrite`` fans out
with ``Send``, one task per prompt pair, so pairs run concurrently against a served LLM.  This
is the caption-only mode: a video known only by imported captions has no frames, so the CLIP
filter and query-aware captions are skipped and that is recorded in ``notes`` (never faked).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import RetryPolicy, Send

from granalign.errors import InputError
from granalign.fusion import granular_fusion, variant_scores
from granalign.moments import propose_windows, saliency, select_moments
from granalign.proposals import ProposalParams
from granalign.rewrite import Rewrite
from granalign.similarity import normalised_similarity
from graphs import resources
from graphs.context import Context
from graphs.state import RetrievalInput, RetrievalOutput, RetrievalState, RewriteTask

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


def load_video(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Resolve the video in the store and decide the mode (caption-only without frames)."""
    query = _clean_query(state.get("query"))
    video = state.get("video")
    if not isinstance(video, str) or not video.strip():
        raise InputError("video must be a non-empty string (a store video id)")
    found = resources.video_captions(runtime.context, video.strip())
    notes: list[str] = []
    if not found.record.has_frames:
        notes.append("caption-only mode: no frames, so clip_filter and query-aware captions were skipped")
    _progress(runtime, "load_video", video_id=found.record.video_id, clips=len(found.captions))
    return {
        "query": query,
        "video_id": found.record.video_id,
        "n_clips": len(found.captions),
        "mode": "full" if found.record.has_frames else "caption-only",
        "notes": notes,
    }


def plan_rewrites(state: RetrievalState, runtime: Runtime[Context]) -> list[Send]:
    """Fan out: one rewrite task per prompt pair (one task for pair-less sources)."""
    task = {"query": state["query"], "qid": state.get("qid")}
    rewriter = resources.rewriter_for(runtime.context)
    if resources.is_pairless(rewriter):
        return [Send("rewrite", RewriteTask(**task, pair_id=""))]  # type: ignore[typeddict-item]
    return [
        Send("rewrite", RewriteTask(**task, pair_id=p.id))  # type: ignore[typeddict-item]
        for p in resources.pairs_for(runtime.context)
    ]


def rewrite(state: RewriteTask, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 1: rewrite the query with one prompt pair (cached in the store)."""
    ctx = runtime.context
    rewriter = resources.rewriter_for(ctx)
    if not state["pair_id"]:
        got = rewriter.variants_for(state["query"], state.get("qid"))  # type: ignore[attr-defined]
    else:
        pair = next(p for p in resources.pairs_for(ctx) if p.id == state["pair_id"])
        got = resources.cached_rewrites(ctx, pair, [state["query"]])
    notes = [f"rewrite {r.pair_id} fell back to the original query: {r.reason}" for r in got if r.fallback]
    _progress(runtime, "rewrite", pair=state["pair_id"] or rewriter.name, n=len(got))
    return {"rewrites": [r.to_dict() for r in got], "notes": notes}


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


def fuse(state: RetrievalState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Step 5: granular fusion S_f of g(Q_s, C_agn) and g(Q_d, C_awr) over the video's clips."""
    ctx = runtime.context
    video = resources.video_captions(ctx, state["video_id"])
    variants = _variants(state, ctx)
    texts = sorted({t for r in variants for t in (r.simplified, r.detailed)})
    emb = dict(zip(texts, resources.embedder_for(ctx).embed(texts), strict=True))
    q_s = np.stack([emb[r.simplified] for r in variants])
    q_d = np.stack([emb[r.detailed] for r in variants])
    g_s = normalised_similarity(q_s, video.embeddings)
    g_d_agn = normalised_similarity(q_d, video.embeddings)
    aware_mask = np.zeros(g_s.shape[1], dtype=bool)  # caption-only: no query-aware captions
    kwargs: dict[str, Any] = {"g_detailed_agnostic": g_d_agn, "aware_missing": ctx.aware_missing}
    per_variant = variant_scores(g_s, np.zeros_like(g_s), aware_mask, **kwargs)
    fused = granular_fusion(g_s, np.zeros_like(g_s), aware_mask, **kwargs)
    _progress(runtime, "fuse", variants=len(variants), clips=int(fused.size))
    return {
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
    n_out = max(1, math.ceil(duration / ctx.clip_len - 1e-9))
    curve = saliency(state["fused"])
    curve = (curve + [curve[-1]] * n_out)[:n_out]  # one value per clip of the whole duration
    _progress(runtime, "nms", moments=len(moments))
    return {"moments": moments, "saliency": curve}


def build_retrieval_graph() -> Any:
    """Compile the retrieval graph (the object ``langgraph.json`` points at)."""
    network = RetryPolicy(max_attempts=3, retry_on=(ConnectionError, TimeoutError))
    builder = StateGraph(
        RetrievalState, context_schema=Context, input_schema=RetrievalInput, output_schema=RetrievalOutput
    )
    builder.add_node("load_video", load_video)
    builder.add_node("rewrite", rewrite, input_schema=RewriteTask, retry_policy=network)
    builder.add_node("fuse", fuse)
    builder.add_node("propose", propose)
    builder.add_node("nms", nms)
    builder.add_edge(START, "load_video")
    builder.add_conditional_edges("load_video", plan_rewrites, ["rewrite"])
    builder.add_edge("rewrite", "fuse")
    builder.add_edge("fuse", "propose")
    builder.add_edge("propose", "nms")
    builder.add_edge("nms", END)
    return builder.compile(name="granalign-retrieval")


graph = build_retrieval_graph()
