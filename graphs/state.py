"""Graph state schemas (retrieval and ingest).

State holds only JSON-serialisable values (ids, texts, plain float lists): a checkpointer
serialises every step, and numpy arrays or embeddings would break it or bloat it.  Embeddings
live in Chroma and are looked up by id inside the nodes.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired

from pydantic import Field
from typing_extensions import TypedDict


class RetrievalInput(TypedDict):
    """What a caller gives: a video (store id) and a natural-language query.

    Each field's description is in ``Field``: LangGraph Studio shows it beside the input's form
    field (an attribute docstring never reaches the graph's JSON schema).
    """

    video: Annotated[
        str,
        Field(
            description="A store video id (granalign videos list) or a video file inside the video "
            "roots (ingested first when the store does not know it)."
        ),
    ]
    query: Annotated[
        str, Field(description="What to find in the video, in natural language (at most 500 characters).")
    ]
    qid: NotRequired[
        Annotated[
            int | str | None,
            Field(
                description="Optional query id: the key a file: rewriter looks the query's "
                "paraphrases up by (benchmark rows); otherwise unused."
            ),
        ]
    ]
    duration: NotRequired[
        Annotated[
            float | None,
            Field(
                description="Optional length of the video in seconds, e.g. an annotation's "
                "(windows end there); empty = the stored video's."
            ),
        ]
    ]


class RetrievalOutput(TypedDict):
    """moment_detr-style answer plus what the run did (rewrites used, stages skipped)."""

    video_id: str
    query: str
    moments: list[list[float]]
    saliency: list[float]
    clip_len_s: float
    variants: list[dict[str, Any]]
    mode: str
    notes: list[str]
    match: float | None
    """Mean of the 3 best raw cosines of the query with the video's agnostic captions, in [-1, 1]
    (:func:`granalign.core.match.caption_match`): the scores above are normalised per video, so
    only this tells whether the video shows the query at all."""
    match_embedder: str
    """The text embedder ``match`` was measured with (its thresholds hold for one embedder)."""


class RewriteTask(TypedDict):
    """The payload of one ``Send`` to the rewrite node (one prompt pair)."""

    query: str
    qid: int | str | None
    pair_id: str


class FocusTask(TypedDict):
    """The payload of the ``Send`` that extracts the query's entities and actions (full mode)."""

    query: str


class ClipFilterTask(TypedDict):
    """The payload of the ``Send`` that runs the CLIP filter (full mode, beside the rewrites)."""

    query: str
    video_id: str


class RetrievalState(TypedDict):
    video: str
    query: str
    qid: NotRequired[int | str | None]
    duration: NotRequired[float | None]
    run_qid: NotRequired[int | str | None]
    """This run's ``qid`` (``load_video`` moves it here and clears ``qid``, see there)."""
    run_duration: NotRequired[float | None]
    """This run's ``duration`` (moved like ``run_qid``)."""
    video_id: NotRequired[str]
    n_clips: NotRequired[int]
    mode: NotRequired[str]
    video_path: NotRequired[str | None]
    rewrites: NotRequired[Annotated[list[dict[str, Any]], operator.add]]
    focus: NotRequired[dict[str, Any]]
    key_clips: NotRequired[list[int]]
    aware_clips: NotRequired[list[int]]
    variants: NotRequired[list[dict[str, Any]]]
    variant_scores: NotRequired[list[list[float]]]
    fused: NotRequired[list[float]]
    match: NotRequired[float | None]
    match_embedder: NotRequired[str]
    candidates: NotRequired[list[list[float]]]
    moments: NotRequired[list[list[float]]]
    saliency: NotRequired[list[float]]
    clip_len_s: NotRequired[float]
    notes: NotRequired[Annotated[list[str], operator.add]]


class IngestInput(TypedDict):
    """A video file to ingest (a path inside the configured video roots)."""

    video: Annotated[str, Field(description="A video file to ingest, inside the video roots (video_roots).")]


class IngestOutput(TypedDict):
    """What an ingest did: the video's id and clips, clips skipped (already stored) and encoded now."""

    video_id: str
    path: str
    n_clips: int
    duration_s: float
    skipped: int
    encoded: int
    timings: dict[str, float]
    notes: list[str]


class IngestState(TypedDict):
    video: str
    video_id: NotRequired[str]
    path: NotRequired[str]
    n_clips: NotRequired[int]
    duration_s: NotRequired[float]
    info: NotRequired[dict[str, Any]]
    stamp: NotRequired[list[int]]
    todo: NotRequired[list[int]]
    skipped: NotRequired[int]
    encoded: NotRequired[int]
    finished: NotRequired[bool]
    timings: NotRequired[dict[str, float]]
    notes: NotRequired[Annotated[list[str], operator.add]]
