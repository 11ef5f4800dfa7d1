"""Prompt-pair experiments and the caption-only ablation rows, run through the compiled graph.

A *setting* is a named set of Context overrides (plus, for ablations, a rewrite file derived
from cached LLM rewrites).  Each setting runs the benchmark through the same graph a user calls,
and its predictions and metrics are written to ``out_dir/settings/<name>/`` before the next one
starts: an interrupted experiment keeps every finished setting and skips it when re-run (the
saved config must match, else the setting is recomputed).  Rewrites are cached in the store, so
a second run makes no LLM call.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from granalign.errors import GranAlignError, InputError
from granalign.evaluation.metrics import evaluate_submission, recall_and_miou
from granalign.io.jsonl import Journal, atomic_write_text, write_json, write_jsonl
from granalign.prompt_files import available_pair_ids, load_prompt_pairs
from granalign.rewrite import FileRewriter
from graphs import resources
from graphs.context import Context
from prompts import DEFAULT_PAIRS, prompt_hash
from tools.bench import Annotation, journal_key, rewriter_file_key, run_queries, scored_predictions

Side = Literal["both", "simplified", "detailed"]
COLUMNS = (
    "MR-full-R1@0.5",
    "MR-full-R1@0.7",
    "MR-full-mAP@0.5",
    "MR-full-mAP@0.75",
    "MR-full-mAP",
    "HL-min-VeryGood-mAP",
    "HL-min-VeryGood-Hit1",
)


@dataclass(frozen=True)
class Setting:
    """One row of the results table."""

    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    sides: Side = "both"  # which rewrite side(s) are scored (ablations derive a rewrite file)
    pairs: tuple[str, ...] = ()  # prompt pairs of an LLM rewriter

    def config(self) -> dict[str, Any]:
        return {"overrides": self.overrides, "sides": self.sides, "pairs": list(self.pairs)}


def pair_settings(pair_ids: Sequence[str], max_m: int) -> list[Setting]:
    """One row per prompt pair (m = 1) and the m = 1..max_m prefixes of ``pair_ids``."""
    rows = [
        Setting(f"pair:{p}", f"prompt pair {p} alone (m=1)", {"include_original": False}, pairs=(p,))
        for p in pair_ids
    ]
    for m in range(2, min(max_m, len(pair_ids)) + 1):
        ids = tuple(pair_ids[:m])
        rows.append(
            Setting(f"m={m}", f"pairs {', '.join(ids)} (m={m})", {"include_original": False}, pairs=ids)
        )
    return rows


def ablation_settings(pair_ids: Sequence[str], paraphrases: Path | None) -> list[Setting]:
    """The paper's ablation rows that are possible without frames (caption-only)."""
    ids = tuple(pair_ids)
    rows = [
        Setting("Q_r->C_agn", "original query only", {"rewriter": "none", "include_original": True}),
        Setting("Q_s->C_agn", "simplified rewrites only", {"include_original": False}, "simplified", ids),
        Setting(
            "Q_d->C_agn",
            "detailed rewrites only, against agnostic captions",
            {"include_original": False},
            "detailed",
            ids,
        ),
        Setting(
            "Q_s+Q_d->C_agn",
            "both sides against agnostic captions",
            {"include_original": False, "aware_missing": "agnostic"},
            "both",
            ids,
        ),
        Setting(
            "Q_r+Q_s+Q_d->C_agn",
            "original + both sides against agnostic captions",
            {"include_original": True, "aware_missing": "agnostic"},
            "both",
            ids,
        ),
    ]
    if paraphrases is not None:
        rows.append(
            Setting(
                "Q_r+para->C_agn",
                f"original + paraphrases of {paraphrases.name}",
                {"rewriter": f"file:{paraphrases}", "include_original": True},
            )
        )
    return rows


@dataclass
class RowResult:
    setting: Setting
    metrics: dict[str, Any]
    extra: dict[str, float]
    n: int
    seconds: float
    skipped: int
    cached: bool

    @property
    def queries_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def _derived_rewrite_file(
    base: Context, setting: Setting, annotations: Sequence[Annotation], work: Path
) -> Path:
    """Write the setting's rewrites (from the cache) with only the chosen side(s) kept."""
    queries = [resources.graph_query(a.query) for a in annotations]  # the rewrites the graph asks for
    per_pair = {
        p.id: resources.cached_rewrites(base, p, queries) for p in load_prompt_pairs(list(setting.pairs))
    }
    rows = []
    for j, ann in enumerate(annotations):
        rewrites = []
        for pid in setting.pairs:
            r = per_pair[pid][j]
            s, d = r.simplified, r.detailed
            if setting.sides == "simplified":
                d = s
            elif setting.sides == "detailed":
                s = d
            rewrites.append(
                {"pair_id": pid, "simplified": s, "detailed": d, "fallback": r.fallback, "reason": r.reason}
            )
        rows.append({"qid": ann.qid, "query": ann.query, "rewrites": rewrites})
    path = work / f"rewrites.{setting.sides}.{'-'.join(setting.pairs)}.jsonl"
    write_jsonl(path, rows)
    return path


def _context_for(base: Context, setting: Setting, annotations: Sequence[Annotation], work: Path) -> Context:
    overrides = dict(setting.overrides)
    if setting.pairs:
        overrides["prompt_pairs"] = ",".join(setting.pairs)
        overrides["m"] = len(setting.pairs)
        if setting.sides != "both":
            overrides["rewriter"] = f"file:{_derived_rewrite_file(base, setting, annotations, work)}"
            if setting.sides == "detailed":
                overrides.setdefault("aware_missing", "agnostic")
    return base.with_overrides(**overrides)


def _load_cached(row_dir: Path, setting: Setting, key: str) -> RowResult | None:
    """A finished row of the same settings *and* queries (another --split or --limit reruns)."""
    meta = row_dir / "row.json"
    if not meta.exists():
        return None
    try:  # a damaged or hand-edited row is computed again, not a traceback that stops the run
        saved = json.loads(meta.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("key") != key:
            return None
        return RowResult(
            setting, saved["metrics"], saved["extra"], saved["n"], saved["seconds"], saved["skipped"], True
        )
    except (OSError, ValueError, KeyError):
        return None


def _config_key(setting: Setting, base: Context) -> dict[str, Any]:
    # what the rows answer, not how patiently the run waits (timeouts, concurrency, locks)
    context = {k: str(v) for k, v in base.answer_settings().items()}
    key: dict[str, Any] = {"setting": setting.config(), "context": context}
    if setting.pairs:  # the pairs' text, not just their ids: an edited pair is a new row
        key["prompts"] = {p.id: prompt_hash(p) for p in load_prompt_pairs(list(setting.pairs))}
    rewriter = setting.overrides.get("rewriter", base.rewriter)
    paraphrases = rewriter_file_key(base.with_overrides(rewriter=rewriter))  # the file's content too
    if paraphrases is not None:
        key["rewriter_file"] = paraphrases
    return key


def _stored_captions(base: Context, annotations: Sequence[Annotation]) -> dict[str, list[str]]:
    """The captions the queries are answered from (source and content of each video's record):
    a row or journal of other captions (another or an edited file) is not this row's."""
    records = resources.store_for(base).videos(sorted({a.vid for a in annotations}))
    return {v: [r.caption_source, r.content_key] for v, r in records.items()}


def check_rewriter(base: Context, settings: Sequence[Setting]) -> None:
    """Refuse prompt-pair settings when the rewriter gives no rewrite per pair.

    ``none`` and a paraphrase file are pair-less: the graph scores the original query (and the
    paraphrases) whatever the pairs, so a ``pair:core`` or ``m=2`` row would be the original
    query's result under a prompt pair's name; so would a row of a pair that a file of
    per-pair rewrites lacks.
    """
    with_pairs = [s.name for s in settings if s.pairs]
    if not with_pairs:
        return
    rewriter = resources.rewriter_for(base)
    if resources.is_pairless(rewriter):
        raise InputError(
            f"rewriter {base.rewriter!r} gives no rewrites per prompt pair (it is the original query or "
            f"paraphrases), so setting(s) {', '.join(with_pairs)} would not measure their pairs; use an "
            "LLM rewriter (local:smollm2, openai:URL#MODEL) or a file of per-pair rewrites, or --only "
            "the settings without pairs"
        )
    if isinstance(rewriter, FileRewriter):  # its rows of a pair it lacks: the original query only
        lacking = sorted({p for s in settings for p in s.pairs} - rewriter.pair_ids)
        if lacking:
            raise InputError(
                f"rewriter {base.rewriter!r} has no rewrites for prompt pair(s) {', '.join(lacking)} "
                f"(it has {', '.join(sorted(rewriter.pair_ids))}): their rows would score the original "
                "query; choose the pairs with --pairs or --only"
            )


def check_row_rewriters(base: Context, settings: Sequence[Setting]) -> None:
    """Build each row's rewriter before the caption import: a ``--paraphrases`` or ``file:``
    rewriter file that is missing or malformed is otherwise found only when its row starts,
    after the import (minutes on a full caption file) and every row before it."""
    for spec in dict.fromkeys(s.overrides.get("rewriter", base.rewriter) for s in settings):
        resources.rewriter_for(base.with_overrides(rewriter=spec))


def _row_key(base: Context, setting: Setting, annotations: Sequence[Annotation]) -> str:
    """What a finished row and its journal belong to (settings, pairs' text, captions, queries)."""
    return journal_key(
        {**_config_key(setting, base), "captions": _stored_captions(base, annotations)}, annotations
    )


def _row_dir(out_dir: Path, setting: Setting) -> Path:
    return out_dir / "settings" / setting.name.replace("/", "_").replace(">", "")


def report_rows(
    base: Context,
    planned: Sequence[Setting],
    ran: Sequence[RowResult],
    annotations: Sequence[Annotation],
    out_dir: Path,
) -> list[RowResult]:
    """The rows a report holds, in plan order: this run's, and those of the other planned
    settings that ``out_dir`` holds a finished row of under the same key (settings, pairs' text,
    captions, queries), so that ``--only`` runs into one folder add up instead of each report
    replacing the last one's rows.  A row whose key cannot be made now (e.g. its rewriter file
    is gone or broken) has no valid result and is left out."""
    by_name = {row.setting.name: row for row in ran}
    rows: list[RowResult] = []
    for setting in planned:
        row = by_name.get(setting.name)
        if row is None:
            try:
                key = _row_key(base, setting, annotations)
            except GranAlignError:
                continue
            row = _load_cached(_row_dir(out_dir, setting), setting, key)
        if row is not None:
            rows.append(row)
    return rows


def run_setting(
    base: Context,
    setting: Setting,
    annotations: Sequence[Annotation],
    out_dir: Path,
    *,
    concurrency: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> RowResult:
    """Run one setting (or load its finished result) and save it atomically."""
    check_rewriter(base, [setting])
    row_dir = _row_dir(out_dir, setting)
    key = _row_key(base, setting, annotations)
    cached = _load_cached(row_dir, setting, key)
    if cached is not None:
        return cached
    if setting.pairs:  # in batches, each stored: an interrupt keeps the rewrites it finished
        pairs = {"prompt_pairs": ",".join(setting.pairs), "m": len(setting.pairs)}
        resources.warm_rewrites(base.with_overrides(**pairs), [a.query for a in annotations])
    ctx = _context_for(base, setting, annotations, out_dir)
    journal = Journal(row_dir / "preds.partial.jsonl", key)
    t0 = time.perf_counter()
    try:
        preds, skipped = run_queries(
            annotations, ctx, concurrency=concurrency, on_progress=on_progress, journal=journal
        )
    finally:
        journal.close()
    seconds = time.perf_counter() - t0
    if _row_key(base, setting, annotations) != key:  # the graph reads the pair files per query
        journal.discard()
        raise InputError(
            f"setting {setting.name}: its prompt pair files, rewrite file or captions changed while it "
            "ran, so its answers mix the old and the new version; nothing was saved, run it again"
        )
    if not preds:
        why = f" (first: {skipped[0][1]})" if skipped else ""
        raise InputError(f"setting {setting.name}: no query could be answered{why}")
    write_jsonl(row_dir / "preds.jsonl", preds)  # written before scoring, as bench does
    # every annotation is scored, a failed query as a miss (leaving it out would raise the metrics)
    scored, gt = scored_predictions(annotations, preds), [a.raw for a in annotations]
    metrics = evaluate_submission(scored, gt)
    extra = recall_and_miou(scored, gt)
    result = RowResult(setting, metrics, extra, len(preds), seconds, len(skipped), False)
    write_json(
        row_dir / "row.json",
        {
            "config": _config_key(setting, base),
            "key": key,
            "metrics": metrics,
            "extra": extra,
            "n": len(preds),
            "seconds": seconds,
            "skipped": len(skipped),
            "resumed": len(journal.rows),
        },
    )
    journal.discard()
    return result


def detail_unscored_note(base: Context, settings: Sequence[Setting]) -> str | None:
    """Which pair rows score no detailed rewrite, or None.

    An experiment is caption-only: there are no query-aware captions, and the detailed side
    Q_d is matched against those (GranAlign's Q_d -> C_awr), so under ``aware_missing=zero``
    a pair row's number is its simplified rewrites' alone and an edit of its ``detail``
    template changes nothing; the reader of the table has to be told.
    """
    names = [
        s.name
        for s in settings
        if s.pairs and s.sides == "both" and s.overrides.get("aware_missing", base.aware_missing) == "zero"
    ]
    if not names:
        return None
    return (
        f"caption-only: rows {', '.join(names)} score only the simplified rewrites (Q_s); the detailed "
        "ones (Q_d) are matched against query-aware captions, which caption-only runs have none of "
        "(aware_missing=zero), so a pair's detail template does not change them. The Q_d->C_agn and "
        "Q_s+Q_d->C_agn rows score Q_d against the agnostic captions; so do the pair rows with "
        "--set aware_missing=agnostic."
    )


def results_table(rows: Sequence[RowResult]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        row: dict[str, Any] = {"setting": r.setting.name, "description": r.setting.description, "n": r.n}
        row.update({c: r.metrics["brief"].get(c, float("nan")) for c in COLUMNS})
        row.update(
            {"R1@0.3": r.extra["R1@0.3"], "mIoU": r.extra["mIoU"], "queries/s": round(r.queries_per_s, 1)}
        )
        out.append(row)
    return out


def to_markdown(table: Sequence[dict[str, Any]]) -> str:
    if not table:
        return ""
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if table:
        writer = csv.DictWriter(buf, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def comparison_plot(table: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped bars of the headline metrics, one group per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "HL-min-VeryGood-mAP")
    names = [row["setting"] for row in table]
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(names) + 3), 4.2))
    for i, metric in enumerate(metrics):
        ax.bar(x + i * width - 0.4 + width / 2, [row[metric] for row in table], width, label=metric)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (%)")
    ax.legend(fontsize=8, ncol=len(metrics), loc="upper center", bbox_to_anchor=(0.5, 1.12))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_reports(rows: Sequence[RowResult], out_dir: Path, note: str | None = None) -> dict[str, Path]:
    """results.md (with ``note`` under the table), results.csv and results.png."""
    table = results_table(rows)
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "png": out_dir / "results.png"}
    atomic_write_text(paths["md"], to_markdown(table) + (f"\nNote: {note}\n" if note else ""))
    atomic_write_text(paths["csv"], to_csv(table))
    comparison_plot(table, paths["png"])
    return paths


#: The largest m of the m = 2..max_m rows when the caller names none (the default m of a run).
DEFAULT_MAX_M = 3


def plan_settings(
    pairs: Sequence[str] | None, max_m: int | None, ablation: bool, paraphrases: Path | None
) -> list[Setting]:
    """The rows of an experiment.  ``max_m`` None: up to :data:`DEFAULT_MAX_M` (fewer with fewer
    pairs).  A ``max_m`` beyond the pairs is refused rather than silently cut: the results table
    would lack the rows the caller asked for without saying why."""
    avail = available_pair_ids()
    ids = (
        list(pairs)
        if pairs
        else [p for p in DEFAULT_PAIRS if p in avail] + [p for p in avail if p not in DEFAULT_PAIRS]
    )
    load_prompt_pairs(ids)  # fails early, naming a bad or unknown pair
    if max_m is not None and max_m > len(ids):
        raise InputError(
            f"--max-m {max_m}: only {len(ids)} prompt pair{'s' if len(ids) > 1 else ''} "
            f"({', '.join(ids)}) {'are' if len(ids) > 1 else 'is'} chosen, so m can "
            f"be at most {len(ids)}; lower --max-m or add pairs with --pairs"
        )
    max_m = min(DEFAULT_MAX_M, len(ids)) if max_m is None else max_m
    rows = pair_settings(ids, max_m)
    if ablation:
        rows += ablation_settings(ids[: max(1, min(max_m, len(ids)))], paraphrases)
    return rows
