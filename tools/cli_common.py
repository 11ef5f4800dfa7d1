"""Shared pieces of the ``granalign`` command line: the Typer app, consoles, error handling.

Errors a user can act on (GranAlignError) are printed as one red line and exit with status 2;
anything else is a bug and keeps its traceback.  Commands live in ``tools/cli_*.py`` modules
that register themselves on :data:`app`; ``tools/cli.py`` imports them all.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer._click.core import Context as ClickContext  # typer >= 0.24 vendors click here
from typer._click.exceptions import NoSuchOption
from typer.core import TyperGroup

from granalign.backends.interrupt import stop_generation_on_interrupt
from granalign.errors import ConfigError, GranAlignError, InputError

if TYPE_CHECKING:
    from granalign.io.captions_import import ImportReport

DASH_HINT = (
    "a video id that begins with '-' goes in --video ID or after '--': "
    'granalign retrieve -- -dB_W38mCRM_210.0_360.0 "a query"'
)
#: The hint for the commands that take video ids as arguments (others get none: ``bench -l 5``
#: is a mistyped option, not an id).
DASH_HINTS = {
    "retrieve": DASH_HINT,
    "rm": "video ids that begin with '-' go after '--': granalign videos rm -- -dB_W38mCRM_210.0_360.0",
}


class _Commands(TyperGroup):
    """The command group; an unknown short option gets the hint for ids that begin with '-'.

    Many QVHighlights ids (``-dB_W38mCRM_210.0_360.0``) look like options to the parser,
    which then reports ``No such option: -d``, naming nothing the user typed on purpose.
    """

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except NoSuchOption as exc:
            hint = DASH_HINTS.get(exc.ctx.info_name or "") if exc.ctx is not None else None
            if exc.option_name.startswith("--") or hint is None:
                raise
            raise NoSuchOption(
                exc.option_name, f"{exc.message} ({hint})", exc.possibilities, exc.ctx
            ) from None


app = typer.Typer(
    cls=_Commands,
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
SplitOpt = Annotated[
    str | None,
    typer.Option(
        help="Only one half of the videos: 'tune' (choose settings) or 'report' (report numbers); "
        "a fixed split by vid (granalign/evaluation/split.py)."
    ),
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
            with stop_generation_on_interrupt():  # Ctrl-C also stops generation on worker threads
                return fn(*args, **kwargs)
        except GranAlignError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
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


def _unknown_setting(key: str, names: list[str]) -> str:
    """One line for ``--set nms_iuo=...``: the setting it nearly names, not a list of fifty
    names wrapped over a screen with the one meant somewhere in it."""
    import difflib

    close = difflib.get_close_matches(key.lower(), names, n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"--set {key}: unknown setting{hint} (granalign settings lists them)"


def make_context(
    store: Path | None, sets: list[str] | None, fallbacks: dict[str, Any] | None = None, **explicit: Any
) -> Any:
    """Context from defaults, environment, ``--set`` strings and explicit flags (last wins).

    ``--set`` values are converted here, so a bad one is reported as the user typed it
    (``--set clip_len=abc: expected a number``), and the environment variable it replaces
    is not read at all.  ``fallbacks`` are a command's own defaults (``experiment``'s
    rewriter): used only where neither a flag, ``--set`` nor the environment names the
    setting, which a flag's default value would silently override.
    """
    from graphs.context import ENV_PREFIX, Context, _coerce, _default_of, misspelt_setting_variables

    by_name = {f.name: f for f in fields(Context)}
    overrides: dict[str, Any] = {}
    for key, value in _parse_sets(sets).items():
        f = by_name.get(key.lower())
        if f is None:
            raise ConfigError(_unknown_setting(key, list(by_name)))
        overrides[f.name] = _coerce(f.name, value, _default_of(f), source=f"--set {key}={value}")
    replaced = {ENV_PREFIX + name.upper() for name in overrides}
    env = {k: v for k, v in os.environ.items() if k not in replaced}
    if store is not None:
        explicit["store_dir"] = str(store)
    for name, value in (fallbacks or {}).items():
        if name not in overrides and ENV_PREFIX + name.upper() not in env:
            overrides[name] = value
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    for name, meant in misspelt_setting_variables(os.environ):
        console.print(
            f"[yellow]warning:[/] {name} is not a setting and is not read; did you mean {meant}? "
            "(granalign settings lists them)",
            highlight=False,
        )
    return Context.from_env(env, **overrides)


def check_output(path: Path | None, option: str) -> None:
    """Refuse an output file that cannot be written, before any work starts.

    A benchmark or an ingest may run for minutes; finding at its last line that ``--out``
    points into a file or a read-only folder would throw that work away.
    """
    if path is None:
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise InputError(f"{option} {path}: is a folder, expected a file name")
    _probe_writable(target.parent, f"{option} {path}")


def check_distinct(outputs: list[tuple[Path | None, str]]) -> None:
    """Refuse two outputs of one run that name the same file (the second would replace the first)."""
    seen: dict[Path, str] = {}
    for path, option in outputs:
        if path is None:
            continue
        target = Path(path).expanduser().resolve()
        if target in seen:
            raise InputError(
                f"{option} {path}: the same file as {seen[target]}; give each output its own name"
            )
        seen[target] = f"{option} {path}"


def check_output_dir(path: Path, option: str) -> None:
    """Like :func:`check_output` for a results folder (it may exist; files go inside it)."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise InputError(f"{option} {path}: is a file, expected a folder")
    _probe_writable(target, f"{option} {path}")


def _probe_writable(folder: Path, label: str) -> None:
    """The nearest existing folder must take a new file: probed with a real one, since root
    ignores permission bits and a read-only mount does not."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{label}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".granalign-probe-", dir=folder)
    except OSError as exc:
        raise InputError(f"{label}: folder {folder} is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


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


def import_with_bar(store: Any, embedder: Any, path: Path, source: str, label: str) -> ImportReport:
    """Import a captions file into ``store`` behind a progress bar named ``label``."""
    from granalign.io.captions_import import import_captions

    with _progress() as bar:
        task = bar.add_task(label, total=None)
        return import_captions(
            store,
            embedder,
            path,
            source=source,
            on_progress=lambda d, t: bar.update(task, completed=d, total=t),
        )


def _print_metrics(
    metrics: dict[str, Any], extra: dict[str, float] | None = None, title: str = "metrics"
) -> None:
    from granalign.evaluation.metrics import metrics_table_rows

    table = Table(title=title, show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics_table_rows(metrics):
        table.add_row(name, f"{value:.2f}")
    for name, value in (extra or {}).items():
        table.add_row(name, f"{value:.2f}")
    out.print(table)
