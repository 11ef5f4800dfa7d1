"""Shared pieces of the ``granalign`` command line: the Typer app, consoles, error handling.

Errors a user can act on (GranAlignError) are printed as one red line and exit with status 2;
anything else is a bug and keeps its traceback.  Commands live in ``tools/cli_*.py`` modules
that register themselves on :data:`app`; ``tools/cli.py`` imports them all.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from granalign.errors import ConfigError, GranAlignError

app = typer.Typer(
    help="GranAlign zero-shot video moment retrieval (LangGraph tool).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., Any])

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Chroma store folder (default $GRANALIGN_STORE or the user cache)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a Context setting, e.g. --set nms_iou=0.7 (repeatable)."),
]


def _resume_hint(exc: BaseException) -> None:
    """A checkpointed run that failed (see graphs.durable) can be resumed by its thread id."""
    tid = getattr(exc, "thread_id", None)
    if tid:
        console.print(f"[yellow]resume:[/] re-run the same command with --thread-id {tid}", highlight=False)


def user_errors(fn: F) -> F:
    """Turn user-facing errors into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GranAlignError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            _resume_hint(exc)
            raise typer.Exit(2) from None
        except Exception as exc:
            _resume_hint(exc)
            raise
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: finished work is kept in the store; re-run to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _parse_sets(sets: list[str] | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like name=value")
        pairs[key.strip()] = value.strip()
    return pairs


def make_context(store: Path | None, sets: list[str] | None, **explicit: Any) -> Any:
    """Context from defaults, environment, ``--set`` strings and explicit flags."""
    from graphs.context import ENV_PREFIX, Context

    env = dict(os.environ)
    env.update({ENV_PREFIX + k.upper(): v for k, v in _parse_sets(sets).items()})
    known = {name.upper() for name in Context.__dataclass_fields__}
    for key in _parse_sets(sets):
        if key.upper() not in known:
            raise ConfigError(f"unknown setting {key!r}; allowed: {sorted(Context.__dataclass_fields__)}")
    if store is not None:
        explicit["store_dir"] = str(store)
    return Context.from_env(env, **explicit)


def _short_spec(spec: str) -> str:
    """A spec for a table title: file paths shortened to their name."""
    engine, sep, target = spec.partition(":")
    return f"{engine}:{Path(target).name}" if sep and engine == "file" else spec


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _print_metrics(
    metrics: dict[str, Any], extra: dict[str, float] | None = None, title: str = "metrics"
) -> None:
    from granalign.evaluation import metrics_table_rows

    table = Table(title=title, show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics_table_rows(metrics):
        table.add_row(name, f"{value:.2f}")
    for name, value in (extra or {}).items():
        table.add_row(name, f"{value:.2f}")
    out.print(table)
