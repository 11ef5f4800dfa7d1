"""Typer options of the commands that run a benchmark set (bench, experiment, shift).

One declaration each, so the flags read and validate the same way in every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

AnnotationsOpt = Annotated[Path, typer.Option(help="Annotations JSONL (qid, query, vid, duration, GT).")]
CaptionsOpt = Annotated[Path, typer.Option(help="Captions JSONL for the annotation's videos.")]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="Only the first N queries.")]
ConcurrencyOpt = Annotated[int, typer.Option(min=1, max=64, help="Graph runs in flight.")]
