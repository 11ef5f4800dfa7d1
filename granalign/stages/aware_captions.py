"""Stages 2 and 4: the query's focus, then query-aware captions C_awr of the key clips.

Both are cached in the store, so a repeated query costs no LLM and no VLM call:

* the focus (entities and actions) under ``focus:<rewriter>:<focus prompt hash>:<query hash>``; only a
  usable LLM answer is cached, a keyword fallback never is, so the next run asks again;
* C_awr per clip under the captioner, the aware prompt settings (``prompt_hash``) and the
  hash of the rendered prompt (which holds the focus), with its embedding.

The cache is the store (:class:`granalign.io.store.Store`): its rewrite and aware-caption collections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from granalign.backends.captioner import Captioner, QueryFocus, aware_prompt, focus_from_keywords
from granalign.backends.embedder import TextEmbedder
from granalign.errors import BackendError
from granalign.io.store import Store, text_hash
from granalign.rewrite import Rewriter

__all__ = ["AwareCaptions", "aware_captions", "query_focus"]


def query_focus(rewriter: Rewriter, cache: Store, query: str) -> QueryFocus:
    """The entities and actions that guide the query's aware captions (cached).

    From the rewriter's LLM when it can extract them (``openai:``); otherwise, or when its answer
    is unusable or the server fails, the query's content words, with the reason in ``note``.
    A server that says the deployment is wrong (401/403/404: ``BackendError.misconfigured``)
    raises instead: no later query would do better, and a fallback would hide it.
    """
    extract = getattr(rewriter, "extract_focus", None)
    if extract is None:
        return focus_from_keywords(
            query, note=f"rewriter {rewriter.name} does not extract entities and actions"
        )
    # the focus prompt's hash too: an edited prompts/focus/ text is asked again
    key = f"focus:{rewriter.name}:{getattr(rewriter, 'focus_key', '')}:{text_hash(query)}"
    cached = cache.get_rewrite(key)
    if cached is not None:
        return QueryFocus.from_dict(cached)
    try:
        entities, actions, problem = extract(query)
    except BackendError as exc:
        if exc.misconfigured:  # a wrong key, model or path: every query would fall back, unseen
            raise
        return focus_from_keywords(query, note=str(exc))
    if problem:
        return focus_from_keywords(query, note=f"unusable entities/actions from {rewriter.name}: {problem}")
    focus = QueryFocus(tuple(entities), tuple(actions), "llm")
    cache.put_rewrites({key: focus.to_dict()}, {key: query})
    return focus


@dataclass(frozen=True)
class AwareCaptions:
    """Query-aware captions of some key clips (clip order) and how many were computed now."""

    clips: list[int]
    captions: list[str]
    embeddings: NDArray[np.float32]
    computed: int


def aware_captions(
    cache: Store,
    captioner: Captioner,
    embedder: TextEmbedder,
    video_id: str,
    clips: Sequence[int],
    query: str,
    focus: QueryFocus,
    *,
    prompt_hash: str,
    frames: Callable[[list[int]], list[Any]] | None,
) -> AwareCaptions:
    """C_awr of ``clips`` for ``query`` guided by ``focus``: cached ones, the rest captioned now.

    ``frames(missing)`` decodes the frames of the clips not in the cache (one seek each); they
    are captioned, embedded and stored before returning, so the next query with the same focus
    costs no VLM call.  ``frames=None`` only reads the cache (what the fusion does after the
    caption stage stored them).  A server failure raises BackendError; the caller records it.
    """
    prompt = aware_prompt(focus, query)
    keys = {"source": captioner.name, "prompt_hash": prompt_hash, "query_hash": text_hash(prompt)}
    found = cache.get_aware_captions(video_id, clips, embedder_name=embedder.name, **keys)
    missing = [c for c in clips if c not in found] if frames is not None else []
    if missing and frames is not None:
        images = frames(missing)
        texts = captioner.caption(images, [prompt] * len(images))
        vectors = embedder.embed(texts)
        cache.put_aware_captions(video_id, missing, texts, vectors, embedder_name=embedder.name, **keys)
        found.update({c: (t, v) for c, t, v in zip(missing, texts, vectors, strict=True)})
    order = sorted(found)
    emb = np.stack([found[c][1] for c in order]).astype(np.float32) if order else np.zeros((0, 0), np.float32)
    return AwareCaptions(order, [found[c][0] for c in order], emb, len(missing))
