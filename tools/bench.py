"""Benchmark runner: every query of an annotation file through the compiled retrieval graph.

One path for users and benchmarks: the runner builds graph inputs, calls ``graph.batch`` and
writes a moment_detr submission file; it never calls the math directly.  A query that fails
(e.g. its video has no captions) is listed and the run goes on; the metrics count it as a miss,
so the denominator is always every annotation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from granalign.errors import BackendError, GranAlignError, InputError
from granalign.evaluation.metrics import (
    CLIP_SECONDS,
    _clip_ratings,
    _gt_windows,
    evaluate_submission,
    saliency_on_official_grid,
)
from granalign.evaluation.split import check_half, split_of
from granalign.io.captions_import import ImportReport, import_captions, source_name_for
from granalign.io.jsonl import Journal, iter_jsonl, write_json, write_jsonl
from granalign.io.store import default_store_dir, text_hash
from granalign.specs import parse_spec
from graphs import resources
from graphs.context import Context
from graphs.retrieval import graph
from prompts import prompt_hash


@dataclass(frozen=True)
class Annotation:
    """One benchmark query (the QVHighlights annotation fields the runner needs)."""

    qid: int | str
    query: str
    vid: str
    duration: float
    raw: dict[str, Any]


def read_annotations(
    path: str | Path, limit: int | None = None, split: str | None = None
) -> list[Annotation]:
    """Validated annotations; errors name the file and line.

    Every field the evaluation reads is checked here too (with the evaluator's own rules), so
    a bad ground-truth line stops the run before the first query, not after the last one.
    ``split`` (``tune`` or ``report``) keeps only that half's videos (:mod:`granalign.evaluation.split`),
    before ``limit`` counts; a duration-shifted query goes by its ``source_vid``.
    """
    half = check_half(split) if split is not None else None
    out: list[Annotation] = []
    seen: dict[str, int] = {}
    for lineno, obj in enumerate(iter_jsonl(path), start=1):
        where = f"{path}:{lineno}"
        qid, query, vid, duration = obj.get("qid"), obj.get("query"), obj.get("vid"), obj.get("duration")
        if isinstance(qid, bool) or not isinstance(qid, int | str):
            raise InputError(f"{where}: 'qid' must be an integer or a string")
        if not isinstance(query, str) or not query.strip():
            raise InputError(f"{where}: 'query' must be a non-empty string (qid {qid})")
        if not isinstance(vid, str) or not vid:
            raise InputError(f"{where}: 'vid' must be a non-empty string (qid {qid})")
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not math.isfinite(duration)
            or duration <= 0
        ):
            raise InputError(f"{where}: 'duration' must be a positive number (qid {qid})")
        _check_ground_truth(obj, where, qid, seen)
        seen[json.dumps(qid)] = lineno
        if half is not None and split_of(_source_vid(obj, vid)) != half:
            continue
        out.append(Annotation(qid, query, vid, float(duration), obj))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{path}: no annotations" + (f" in the {half} half" if half else ""))
    return out


def _source_vid(obj: dict[str, Any], vid: str) -> str:
    """The video whose side of the split a query is on: a duration-shifted query (``granalign
    shift``) names its source in ``source_vid``; its own vid is a derived one (``crop60:…``,
    ``concat8:…``) whose hash says nothing about the source video's half."""
    source = obj.get("source_vid")
    return source if isinstance(source, str) and source else vid


def _check_ground_truth(obj: dict[str, Any], where: str, qid: int | str, seen: dict[str, int]) -> None:
    """What scoring needs of one annotation: a unique qid, moments, and highlight labels."""
    if json.dumps(qid) in seen:
        raise InputError(f"{where}: qid {qid!r} repeats line {seen[json.dumps(qid)]}")
    _gt_windows(obj, where, qid)
    _clip_ratings(obj, where, qid)


@dataclass
class BenchResult:
    annotations: list[Annotation]
    predictions: list[dict[str, Any]]
    metrics: dict[str, Any]
    skipped: list[tuple[int | str, str]]
    import_report: ImportReport | None
    import_s: float
    rewrite_s: float
    passes_s: list[float] = field(default_factory=list)
    resumed: int = 0  # queries of the first pass taken from the journal of an interrupted run
    resumed_answered: int = 0  # of those, the answered ones (``n`` counts answered queries)
    kept_journal: Path | None = None
    """The first pass's journal when the caller asked to keep it (see :func:`run_benchmark`)."""

    @property
    def n(self) -> int:
        return len(self.predictions)

    @property
    def scored(self) -> list[dict[str, Any]]:
        """What the metrics score: every annotation, failed queries as misses."""
        return scored_predictions(self.annotations, self.predictions)

    def queries_per_s(self, i: int) -> float:
        """Queries this pass ran per second: pass 1 of a resumed run ran only the rest."""
        ran = self.n - (self.resumed_answered if i == 0 else 0)
        return ran / self.passes_s[i] if self.passes_s[i] > 0 else float("inf")


def _prediction(ann: Annotation, out: dict[str, Any]) -> dict[str, Any]:
    """moment_detr's submission record; its saliency is on the evaluator's 2-s clips whatever
    the video's caption grid (``saliency_on_official_grid``)."""
    clip_len = float(out["clip_len_s"])
    return {
        "qid": ann.qid,
        "query": ann.query,
        "vid": ann.vid,
        "pred_relevant_windows": out["moments"],
        "pred_saliency_scores": saliency_on_official_grid(out["saliency"], clip_len, ann.duration),
    }


def miss_prediction(ann: Annotation) -> dict[str, Any]:
    """How a query that failed is scored: as a miss, never left out (that would raise the metrics).

    No window, so R1 and AP count it as 0.  Its saliency is flat over the video's clips (ranks
    no clip above another: the HL-mAP of a guess) plus one clip past the end holding the top
    score, which the official HL-Hit1 counts as a miss.  Only for scoring; never written out.
    """
    clips = max(1, int(ann.duration / CLIP_SECONDS))
    return {
        "qid": ann.qid,
        "query": ann.query,
        "vid": ann.vid,
        "pred_relevant_windows": [],
        "pred_saliency_scores": [0.0] * clips + [1.0],
    }


def scored_predictions(
    annotations: Sequence[Annotation], predictions: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One prediction per annotation, in annotation order: the answered ones, misses for the rest."""
    answered = {json.dumps(p["qid"]): p for p in predictions}
    return [answered.get(json.dumps(a.qid)) or miss_prediction(a) for a in annotations]


def run_queries(
    annotations: Sequence[Annotation],
    ctx: Context,
    *,
    concurrency: int = 4,
    chunk: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
    journal: Journal | None = None,
    unavailable: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[int | str, str]]]:
    """Send queries through the compiled graph in chunks; per-query errors are collected.

    With a ``journal`` every finished chunk is logged (fsync'd) and queries it already holds
    are not run again, so a killed benchmark resumes where it stopped; the result is in
    annotation order either way, equal to an uninterrupted run's.  A query that failed on a
    backend (:class:`BackendError`: a model or Chroma server down or timed out) is not logged,
    so the re-run the error advises asks again instead of replaying the failure.  A model server
    that answers 401/403/404 (``BackendError.misconfigured``: a wrong key, model or path) ends
    the run at the chunk where it first happens, with its error: every later query would fail
    the same way, and scoring them all as misses would only hide it.
    """
    done: dict[str, dict[str, Any]] = {}
    if journal is not None:
        done = {json.dumps(r["qid"]): r for r in journal.rows if "qid" in r}
    for a in annotations:  # videos the run's captions file lacks: misses, never another file's captions
        why = (unavailable or {}).get(a.vid)
        if why is not None:
            done.setdefault(json.dumps(a.qid), {"qid": a.qid, "skipped": why})
    todo = [a for a in annotations if json.dumps(a.qid) not in done]
    config: dict[str, Any] = {"max_concurrency": concurrency}
    finished = len(annotations) - len(todo)
    if on_progress and finished:
        on_progress(finished, len(annotations))
    for lo in range(0, len(todo), chunk):
        part = todo[lo : lo + chunk]
        inputs = [{"video": a.vid, "query": a.query, "qid": a.qid, "duration": a.duration} for a in part]
        outs = graph.batch(inputs, config=config, context=ctx, return_exceptions=True)
        rows: list[dict[str, Any]] = []
        retry: list[dict[str, Any]] = []  # a server down or timed out: failed now, not for good
        for ann, out in zip(part, outs, strict=True):
            if isinstance(out, BackendError):
                retry.append({"qid": ann.qid, "skipped": str(out)})
            elif isinstance(out, GranAlignError):
                rows.append({"qid": ann.qid, "skipped": str(out)})
            elif isinstance(out, BaseException):
                raise out
            else:
                rows.append({"qid": ann.qid, "pred": _prediction(ann, out)})
        if journal is not None:  # a re-run asks the server again for the ``retry`` queries
            journal.append(rows)
        misconfigured = next((o for o in outs if isinstance(o, BackendError) and o.misconfigured), None)
        if misconfigured is not None:  # a wrong key, model or path: every later query fails alike
            raise misconfigured  # (after the journal: this chunk's answered queries are kept)
        rows += retry
        done.update((json.dumps(r["qid"]), r) for r in rows)
        finished += len(part)
        if on_progress:
            on_progress(finished, len(annotations))
    preds: list[dict[str, Any]] = []
    skipped: list[tuple[int | str, str]] = []
    for ann in annotations:
        row = done[json.dumps(ann.qid)]
        if "pred" in row:
            preds.append(row["pred"])
        else:
            skipped.append((ann.qid, str(row["skipped"])))
    return preds, skipped


def _stage_progress(
    on_progress: Callable[[str, int, int], None] | None, stage: str
) -> Callable[[int, int], None] | None:
    if on_progress is None:
        return None
    report = on_progress

    def forward(done: int, total: int) -> None:
        report(stage, done, total)

    return forward


def run_benchmark(
    annotations_path: str | Path,
    captions_path: str | Path,
    ctx: Context,
    *,
    limit: int | None = None,
    split: str | None = None,
    caption_source: str | None = None,
    repeat: int = 1,
    concurrency: int = 4,
    on_progress: Callable[[str, int, int], None] | None = None,
    journal_path: str | Path | None = None,
    predictions_out: str | Path | None = None,
    keep_journal: bool = False,
) -> BenchResult:
    """Import captions (skipped when present), warm the rewrite cache, run, write
    ``predictions_out`` (if given), evaluate.

    Every stage resumes after a crash: the import and the rewrites through the store, the
    first graph pass through a journal (``journal_path``, default under the store folder,
    keyed by the settings; removed once the run has finished, or with ``keep_journal`` left for
    the caller to remove when its whole command has finished: ``bench --versus`` runs a second
    pass after this one, and a kill there must not cost this pass again).
    """
    annotations = read_annotations(annotations_path, limit, split)
    check_run_settings(ctx)
    store = resources.store_for(ctx)
    embedder = resources.embedder_for(ctx)
    t0 = time.perf_counter()
    report = import_captions(
        store,
        embedder,
        captions_path,
        source=caption_source or source_name_for(captions_path),
        on_progress=_stage_progress(on_progress, "import"),
        only={a.vid for a in annotations},
    )
    import_s = time.perf_counter() - t0
    source = caption_source or source_name_for(captions_path)
    vids = sorted({a.vid for a in annotations})
    have = captioned_videos(store, embedder.name, source, vids, captions_path, annotations_path)
    unavailable = {v: f"video {v} has no captions in {captions_path}" for v in vids if v not in have}
    t0 = time.perf_counter()
    resources.warm_rewrites(
        ctx,
        [a.query for a in annotations],
        on_progress=_stage_progress(on_progress, "rewrite"),
    )
    rewrite_s = time.perf_counter() - t0
    passes: list[float] = []
    preds: list[dict[str, Any]] = []
    skipped: list[tuple[int | str, str]] = []
    # the captions the answers come from: a journal of another captions file (or an edited one)
    # must not be resumed
    stored = store.videos(sorted(have))
    run_key = _run_key(ctx, annotations, {v: [source, r.content_key] for v, r in stored.items()})
    default_journal = _journal_path(ctx, annotations_path, run_key)
    journal = Journal(journal_path or default_journal, run_key)
    try:
        for i in range(max(1, repeat)):
            if i == 0:
                resources.clear_caches()
            t0 = time.perf_counter()
            preds, skipped = run_queries(
                annotations,
                ctx,
                concurrency=concurrency,
                on_progress=_stage_progress(on_progress, f"pass {i + 1}"),
                journal=journal if i == 0 else None,
                unavailable=unavailable,
            )
            passes.append(time.perf_counter() - t0)
    finally:
        journal.close()
    resumed = len(journal.rows)
    resumed_answered = sum(1 for r in journal.rows if "pred" in r)
    if not preds:
        first = f", the first: {skipped[0][1]}" if skipped else ""
        raise InputError(f"no query of {annotations_path} could be answered ({len(skipped)} skipped{first})")
    if predictions_out is not None:  # saved before scoring: a scoring error loses no work
        write_jsonl(predictions_out, preds)
    metrics = evaluate_submission(scored_predictions(annotations, preds), [a.raw for a in annotations])
    if not keep_journal:
        journal.discard()
    return BenchResult(
        annotations,
        preds,
        metrics,
        skipped,
        report,
        import_s,
        rewrite_s,
        passes,
        resumed,
        resumed_answered,
        kept_journal=journal.path if keep_journal else None,
    )


def check_run_settings(ctx: Context) -> None:
    """Refuse what the settings alone get wrong before the caption import and any model load:
    the prompt pairs (ids, m, their files) and the rewriter (its spec; a ``file:`` one is read
    and parsed).  The run reads both only after the import, which on a full caption file takes
    minutes and writes to the store, to fail then on a typo in ``--set prompt_pairs``."""
    resources.pairs_for(ctx)
    resources.rewriter_for(ctx)


#: Bumped when the same settings start to give other prediction rows (2: length priors in
#: seconds and saliency on the evaluator's grid), so a run interrupted under an older release
#: does not resume with rows that a fresh run would not write.
PREDICTION_FORMAT = 2


def captioned_videos(
    store: Any,
    embedder_name: str,
    source: str,
    vids: Sequence[str],
    captions_path: str | Path,
    annotations_path: str | Path,
) -> set[str]:
    """The annotations' videos whose captions are in the store; none at all is an error said once,
    up front, not a run in which every query is skipped for the same reason."""
    have = set(store.complete_video_ids(list(vids), source=source, embedder_name=embedder_name))
    if not have:
        raise InputError(_no_captions_reason(captions_path, annotations_path, len(set(vids))))
    return have


def _no_captions_reason(captions_path: str | Path, annotations_path: str | Path, videos: int) -> str:
    """Why no query can be answered when none of the annotations' videos has captions: an empty
    file (a failed export) reads differently from a file of another split."""
    with Path(captions_path).open(encoding="utf-8", errors="replace") as lines:
        empty = not any(line.strip() for line in lines)
    what = "is empty" if empty else f"holds none of the {videos} video(s) of {annotations_path}"
    return f"captions file {captions_path} {what}; no query could be answered"


def journal_key(settings: Any, annotations: Sequence[Annotation]) -> str:
    """What a journal's rows depend on: the run's settings, the exact queries and the format."""
    queries = [[a.qid, a.query, a.vid, a.duration] for a in annotations]
    record = {"config": settings, "queries": queries, "format": PREDICTION_FORMAT}
    return text_hash(json.dumps(record, sort_keys=True, default=str))


def _run_key(
    ctx: Context, annotations: Sequence[Annotation], captions: dict[str, list[str]] | None = None
) -> str:
    """Settings, the prompt pairs' text (an edited pair is another run: its rows must not be
    resumed), the captions answered from (``{vid: [source, content key]}``) and the queries."""
    settings: dict[str, Any] = {k: v for k, v in dataclasses.asdict(ctx).items() if k not in _NOT_IN_KEY}
    settings["prompt_texts"] = {p.id: prompt_hash(p) for p in resources.pairs_for(ctx)}
    paraphrases = rewriter_file_key(ctx)
    if paraphrases is not None:
        settings["rewriter_file"] = paraphrases
    if captions is not None:
        settings["captions"] = captions
    return journal_key(settings, annotations)


def rewriter_file_key(ctx: Context) -> str | None:
    """A ``file:`` rewriter's name and content digest (reading, and so checking, the file), for
    the keys of journals and finished rows: answers from another or an edited paraphrase file
    (or from a broken one, whose every query failed) are not this run's.  None for a model."""
    if parse_spec(ctx.rewriter, role="rewriter").engine != "file":
        return None
    return str(resources.rewriter_for(ctx).name)


_NOT_IN_KEY = {"concurrency", "request_timeout", "request_attempts", "keep_threads", "checkpointer"}


def _journal_path(ctx: Context, annotations_path: str | Path, run_key: str) -> Path:
    """One journal per annotations file and run key (settings and queries): two runs with
    different settings (``bench --versus``, or two ``--set`` runs) never share a journal, so a
    killed run resumes from its own rows whatever ran since."""
    base = Path(ctx.store_dir).expanduser() if ctx.store_dir else default_store_dir()
    name = text_hash(f"{Path(annotations_path).resolve()}|{run_key}")[:16]
    return base / "journals" / f"bench-{name}.jsonl"


def save_results(result: BenchResult, out: str | Path | None, metrics_out: str | Path | None) -> None:
    if out:
        write_jsonl(out, result.predictions)
    if metrics_out:
        write_json(metrics_out, result.metrics)
