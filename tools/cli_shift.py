"""CLI command: shift (duration-shifted benchmark sets from a captioned split)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from granalign.errors import InputError
from tools.cli_common import SplitOpt, app, check_output_dir, console, user_errors
from tools.cli_options import AnnotationsOpt, CaptionsOpt

README = """# Duration-shifted benchmark sets

Built by `granalign shift` (granalign/evaluation/shift.py) from

- annotations: `{annotations}`
- captions: `{captions}`
- split: {split}; seed: {seed}

| set | queries | videos | dropped (why) |
|---|---|---|---|
{rows}

Each set folder holds `annotations.jsonl` and `captions.jsonl` in the input formats; run e.g.
`granalign bench --annotations {example}/annotations.jsonl --captions {example}/captions.jsonl`.

- `cropL`: each query's video cut to an L-second window holding all its ground-truth windows,
  at a seeded random offset on the clip grid; GT windows, `relevant_clip_ids` and
  `saliency_scores` shifted (highlight clips outside the cut dropped). vid
  `cropL:<vid>:<offset_s>`. Queries whose GT span exceeds L are dropped.
- `concatK`: videos shuffled (seeded) and joined K at a time into one pseudo-video
  (`concatK:<group>`, its `members` listed in the captions line); each query asks the whole
  recording with its GT shifted by its video's start; the other videos are distractors.
  A last group of fewer than K videos is dropped.
- `thinK`: every video keeps every K-th caption on a K× longer clip grid (`thinK:<vid>`), as a
  captioner sampling K times less often would give; durations and annotations are unchanged.

Derived queries keep their qid and carry `source_vid` and `source_offset_s`.
"""


def _parse_list(text: str | None, option: str, kind: type[int] | type[float]) -> list[Any]:
    if not text:
        return []
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(
            f"{option} {text!r}: expected comma-separated {kind.__name__}s, e.g. 30,60"
        ) from None
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise InputError(f"{option} {text!r}: every value must be a positive finite number")
    return values


def _dropped(result: Any) -> str:
    """``12 (video shorter than the crop); 3 (...)``: what a set dropped and why."""
    return "; ".join(f"{n} ({reason})" for reason, n in result.dropped.items()) or "0"


def _no_query_left(result: Any) -> str:
    """``--crop 1e+09: no query is left, dropped 20 (video shorter than the crop)``: the option
    that asked for an empty set, and why each query went."""
    kind = next(k for k in ("concat", "crop", "thin") if result.name.startswith(k))
    return f"--{kind} {result.name[len(kind) :]}: no query is left, dropped {_dropped(result)}"


def _non_empty(sets: list[Any]) -> list[Any]:
    """The sets that hold a query.  An empty set is never written (a benchmark of 0 queries
    reads as a result): all empty is refused in one line, some empty are named and skipped."""
    empty = [result for result in sets if not result.annotations]
    if len(empty) == len(sets):
        raise InputError("; ".join(_no_query_left(result) for result in empty) + "; nothing written")
    for result in empty:
        console.print(f"[yellow]skipped[/] {_no_query_left(result)}; no folder written", highlight=False)
    return [result for result in sets if result.annotations]


@app.command("shift")
@user_errors
def shift_cmd(
    annotations: AnnotationsOpt,
    captions: CaptionsOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the derived sets (one folder each).")],
    crop: Annotated[str | None, typer.Option(help="Crop lengths in seconds, e.g. 30,60.")] = None,
    concat: Annotated[str | None, typer.Option(help="Videos per concatenation, e.g. 8,24.")] = None,
    thin: Annotated[
        str | None, typer.Option(help="Keep every K-th caption on a K× longer clip grid, e.g. 2,3.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the crop offsets and concat groups.")] = 0,
    split: SplitOpt = None,
) -> None:
    """Duration-shifted sets: cropL (short videos) and concatK (long recordings) with shifted GT,
    thinK (coarser caption grids)."""
    from granalign.evaluation.shift import shift_sets
    from granalign.io.captions_import import read_captions_file
    from granalign.io.jsonl import atomic_write_text, write_json, write_jsonl
    from tools.bench import read_annotations

    crops = _parse_list(crop, "--crop", float)
    concats = _parse_list(concat, "--concat", int)
    thins = _parse_list(thin, "--thin", int)
    if not crops and not concats and not thins:
        raise InputError("nothing to build: pass --crop, --concat and/or --thin")
    check_output_dir(out_dir, "--out")
    anns = [a.raw for a in read_annotations(annotations, split=split)]
    wanted = {a["vid"] for a in anns}
    videos = [v for v in read_captions_file(captions) if v.vid in wanted]
    sets = _non_empty(shift_sets(anns, videos, crops=crops, concats=concats, thins=thins, seed=seed))
    manifest: dict[str, Any] = {
        "annotations": str(annotations),
        "captions": str(captions),
        "split": split,
        "seed": seed,
        "sets": {},
    }
    rows = []
    for result in sets:
        folder = out_dir / result.name
        write_jsonl(folder / "annotations.jsonl", result.annotations)
        write_jsonl(folder / "captions.jsonl", result.captions)
        manifest["sets"][result.name] = {
            "queries": len(result.annotations),
            "videos": len(result.captions),
            "dropped": result.dropped,
        }
        why = _dropped(result)
        rows.append(f"| {result.name} | {len(result.annotations)} | {len(result.captions)} | {why} |")
        console.print(
            f"{result.name}: {len(result.annotations)} queries, {len(result.captions)} videos, dropped {why}"
        )
    write_json(out_dir / "manifest.json", manifest)
    atomic_write_text(
        out_dir / "README.md",
        README.format(
            annotations=annotations,
            captions=captions,
            split=split or "all videos",
            seed=seed,
            rows="\n".join(rows),
            example=out_dir / sets[0].name,
        ),
    )
    console.print(f"wrote {out_dir}/manifest.json and README.md")
