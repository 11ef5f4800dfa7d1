"""Run-time configuration of the retrieval and ingest graphs (LangGraph ``context_schema``).

Every hyperparameter of the method and every backend spec lives here with its default and a
one-line description (shown as a form in LangGraph Studio).  Any field can be overridden by an
environment variable ``GRANALIGN_<FIELD>`` (e.g. ``GRANALIGN_NMS_IOU=0.7``) so a deployment is
configured without code, and every value is validated at construction so a typo fails before a
model is loaded, with the allowed range in the message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from granalign.core.moments import DISTINCT_NMS_IOU, MOMENT_BOUNDS, MomentSettings
from granalign.core.proposals import ProposalParams
from granalign.errors import ConfigError
from granalign.specs import parse_spec

ENV_PREFIX = "GRANALIGN_"


def misspelt_setting_variables(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(variable, setting variable it resembles)`` for each ``GRANALIGN_*`` name that is no
    setting but nearly one (``GRANALIGN_NMS_IUO`` → ``GRANALIGN_NMS_IOU``).

    ``--set nms_iuo=0.5`` is refused, but a misspelt variable is simply never read; the CLI
    warns about these.  Only near misses are named: other ``GRANALIGN_*`` variables (the
    store, tokens, server addresses, ...) are not settings and are left alone.
    """
    import difflib

    wanted = [ENV_PREFIX + f.name.upper() for f in fields(Context)]
    found = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in wanted:
            continue
        close = difflib.get_close_matches(name, wanted, n=1, cutoff=0.85)
        if close and not any(name.startswith(w + "_") or w.startswith(name + "_") for w in wanted):
            found.append((name, close[0]))
    return found


def _meta(description: str, *, lo_excluded: bool = False, **bounds: Any) -> dict[str, Any]:
    """A field's description and ``lo``/``hi`` (checked by :func:`_check_field`), the range also
    as the JSON schema's ``minimum``/``maximum``: pydantic (which builds the schema LangGraph
    Studio renders as the form) reads a dataclass field's metadata keys named like ``Field``'s
    arguments, so the form shows the range the run checks, from the same numbers.
    ``json_schema_extra`` changes the schema only, never what validates.  ``lo_excluded``: the
    run also refuses ``lo`` itself (``nms_iou`` = 0), so the schema says ``exclusiveMinimum``."""
    meta: dict[str, Any] = {"description": description, **bounds}
    if bounds:
        low = "exclusiveMinimum" if lo_excluded else "minimum"
        meta["json_schema_extra"] = {low: bounds["lo"], "maximum": bounds["hi"]}
    return meta


_MOMENTS = MomentSettings()
"""Defaults of the proposal, NMS and saliency settings: the library's (one source)."""


def _bounds(name: str) -> dict[str, Any]:
    """``lo``/``hi`` of a proposal, NMS or saliency setting, from the library's ranges."""
    lo, hi = MOMENT_BOUNDS[name]
    return {"lo": lo, "hi": hi}


RUN_ONLY_SETTINGS: frozenset[str] = frozenset(
    {
        "concurrency",
        "request_timeout",
        "request_attempts",
        "ingest_batch",
        "lock_dir",
        "ingest_lock_timeout",
        "store_lock_timeout",
        "checkpointer",
        "checkpoint_db",
        "keep_threads",
        "video_roots",
        "auto_ingest",
    }
)
"""Settings that decide how a run is carried out, never what it answers: how long and how often
to wait for a server or a lock, the ingest batch (a resume unit, not a result), where checkpoints
go, and what a run may read or ingest (a run they forbid fails; it does not answer otherwise).
Every other field counts for :meth:`Context.answer_settings`, so a new field is answer-relevant
until someone shows it is not."""


@dataclass(frozen=True, kw_only=True)
class Context:
    """Hyperparameters (paper names in brackets) and backend specs of one retrieval run."""

    # -- backends ------------------------------------------------------------------------------
    rewriter: str = field(
        default="none",
        metadata=_meta(
            "Query rewriter: none | file:<rephrased jsonl> | local:<model> (local:smollm2 offline) "
            "| openai:<base_url>#<model> (vLLM)."
        ),
    )
    embedder: str = field(
        default="local:all-MiniLM-L6-v2",
        metadata=_meta(
            "Sentence embedder for g(query, caption): local:<sentence-transformers id or path>, "
            "with #onnx or #onnx-int8 for ONNX Runtime (float, int8) instead of PyTorch."
        ),
    )
    store_dir: str = field(
        default="",
        metadata=_meta("Chroma store folder; empty = $GRANALIGN_STORE or the user cache directory."),
    )
    chroma_url: str = field(
        default="",
        metadata=_meta("Chroma server URL (chroma run); empty = $CHROMA_URL or the embedded store."),
    )
    clip_model: str = field(
        default="local:ViT-B-32",
        metadata=_meta("CLIP for the clip filter: local:<open_clip model name>."),
    )
    clip_pretrained: str = field(
        default="laion2b_s34b_b79k",
        metadata=_meta(
            "open_clip pretrained tag or checkpoint file for clip_model; "
            "'none' = random weights (tests only)."
        ),
    )
    captioner: str = field(
        default="local:Qwen/Qwen2.5-VL-7B-Instruct",
        metadata=_meta(
            "Query-agnostic captioner (ingest): local:<hf id or path> (transformers) | "
            "openai:<base_url>#<model> (vLLM serving Qwen2.5-VL-7B-Instruct)."
        ),
    )
    aware_captioner: str = field(
        default="",
        metadata=_meta("Query-aware captioner (key clips, per query); empty = the same as captioner."),
    )
    video_roots: str = field(
        default="",
        metadata=_meta(
            "Folders video paths must resolve into (os.pathsep-separated); empty = "
            "$GRANALIGN_VIDEO_ROOTS or the current directory."
        ),
    )
    auto_ingest: bool = field(
        default=True, metadata=_meta("Ingest a video file the store does not know before retrieving.")
    )
    # -- backend limits ------------------------------------------------------------------------
    concurrency: int = field(
        default=8,
        metadata=_meta(
            "Requests in flight per OpenAI-compatible model server (shared by the backends using it).",
            lo=1,
            hi=256,
        ),
    )
    request_timeout: float = field(
        default=60.0, metadata=_meta("Timeout of one model-server request, in seconds.", lo=0.1, hi=3600.0)
    )
    request_attempts: int = field(
        default=3,
        metadata=_meta(
            "Attempts per model-server request (only HTTP 5xx, 429 after its Retry-After, timeouts and "
            "a 200 without a usable completion are retried).",
            lo=1,
            hi=10,
        ),
    )
    max_pixels: int = field(
        default=448 * 448,
        metadata=_meta(
            "Frames are shrunk to at most this many pixels before captioning.", lo=28 * 28, hi=4096 * 4096
        ),
    )
    caption_tokens: int = field(
        default=64, metadata=_meta("Longest caption, in generated tokens.", lo=4, hi=1024)
    )
    ingest_batch: int = field(
        default=16,
        metadata=_meta(
            "Clips per ingest batch (decode → CLIP → caption → store; the resume unit).", lo=1, hi=1024
        ),
    )
    lock_dir: str = field(
        default="",
        metadata=_meta(
            "Folder of the per-video ingest locks; empty = <store folder>/locks (embedded store) or "
            "the user cache (chroma_url). Processes sharing a store must share this folder."
        ),
    )
    ingest_lock_timeout: float = field(
        default=3600.0,
        metadata=_meta(
            "Seconds a caller waits for another caller's ingest of the same video.", lo=0.0, hi=86400.0
        ),
    )
    store_lock_timeout: float = field(
        default=10.0,
        metadata=_meta(
            "Seconds to wait for another process's embedded store folder (0 = fail at once).",
            lo=0.0,
            hi=86400.0,
        ),
    )
    checkpointer: Literal["sqlite", "memory", "none"] = field(
        default="sqlite",
        metadata=_meta(
            "Checkpointer of library/CLI/tool runs, so a failed run resumes by thread id "
            "(LangGraph Server uses its own)."
        ),
    )
    checkpoint_db: str = field(
        default="",
        metadata=_meta("SQLite checkpoint file; empty = checkpoints.sqlite beside the store."),
    )
    keep_threads: bool = field(
        default=False,
        metadata=_meta("Keep the checkpoints of successful runs too (default: failed runs only)."),
    )
    # -- rewriting -------------------------------------------------------------------------------
    prompt_pairs: str = field(
        default="",
        metadata=_meta(
            "Comma-separated prompt-pair ids from prompts/rewrite (used whatever m says; checked even "
            "with rewriter none); empty = the default m pairs."
        ),
    )
    m: int = field(
        default=3,
        metadata=_meta("[m] number of prompt pairs (rewrite pairs) when prompt_pairs is empty.", lo=1, hi=16),
    )
    include_original: bool = field(
        default=True, metadata=_meta("Also score the original query as a variant (Q_r).")
    )
    drift_threshold: float = field(
        default=0.4,
        metadata=_meta(
            "[rewrite validation] A rewrite side whose cosine to the query is below this is replaced "
            "by the query (-1 = off; 0.4 catches degenerate rewrites, measured neutral on val).",
            lo=-1.0,
            hi=1.0,
        ),
    )
    # -- clip filter and fusion ----------------------------------------------------------------
    key_pct: float = field(
        default=30.0,
        metadata=_meta(
            "[K %] the CLIP filter keeps the top K % clips as key clips (query-aware captions).",
            lo=1.0,
            hi=100.0,
        ),
    )
    clip_len: float = field(default=2.0, metadata=_meta("Clip length in seconds.", lo=0.1, hi=600.0))
    aware_missing: Literal["zero", "agnostic"] = field(
        default="zero",
        metadata=_meta(
            "Clips without a query-aware caption: 'zero' (aware channel only lifts key clips) or "
            "'agnostic' (match Q_d against C_agn there)."
        ),
    )
    imitation_guard: bool = field(
        default=True,
        metadata=_meta(
            "Damp query-aware caption scores that copy the query's wording beyond what the clip's "
            "agnostic caption supports (full mode)."
        ),
    )
    imitation_max_penalty: float = field(
        default=0.5,
        metadata=_meta("Largest share of a clip's aware score the imitation guard removes.", lo=0.0, hi=1.0),
    )
    # -- proposals -------------------------------------------------------------------------------
    proposal_mode: Literal["pooled", "fused", "vtg-gpt"] = field(
        default=_MOMENTS.proposal_mode,
        metadata=_meta(
            "'pooled': proposals per query variant and on the fused curve, pooled before NMS; "
            "'fused': the paper's order (fuse, then propose once); 'vtg-gpt': the peer baseline, "
            "VTG-GPT's published rule on each variant's curve (granalign/core/peer.py; ignores "
            "num_bins/top_k/gap/drop_pct/lam/contrast/nms_iou/saliency_sigma)."
        ),
    )
    num_bins: int = field(
        default=_MOMENTS.num_bins,
        metadata=_meta("Histogram bins of the dynamic threshold.", **_bounds("num_bins")),
    )
    top_k: int = field(
        default=_MOMENTS.top_k,
        metadata=_meta(
            "Clips that must lie above the dynamic threshold (2-s clips: on another clip_len the "
            "same seconds; so are gap, contrast_min_len and contrast_short_prior).",
            **_bounds("top_k"),
        ),
    )
    gap: int = field(
        default=_MOMENTS.gap,
        metadata=_meta("[τ] merge high-score clips at most this many (2-s) clips apart.", **_bounds("gap")),
    )
    drop_pct: float = field(
        default=_MOMENTS.drop_pct,
        metadata=_meta("[n %] drop proposals whose mean score is in the bottom n %.", **_bounds("drop_pct")),
    )
    lam: float = field(
        default=_MOMENTS.lam,
        metadata=_meta("[λ] proposal score = (1-λ)·mean + λ·normalised length.", **_bounds("lam")),
    )
    contrast: bool = field(
        default=_MOMENTS.contrast, metadata=_meta("Add contrast-scored sliding windows to the proposal pool.")
    )
    contrast_min_len: int = field(
        default=_MOMENTS.contrast_min_len,
        metadata=_meta(
            "Contrast windows of at least this many (2-s) clips count at full contrast (shorter ones: "
            "contrast_short_prior).",
            **_bounds("contrast_min_len"),
        ),
    )
    contrast_step: float = field(
        default=_MOMENTS.contrast_step,
        metadata=_meta(
            "Contrast windows' scale-free grid: starts this share of each window's length apart "
            "(0 = the older square grid with a fixed candidate budget).",
            **_bounds("contrast_step"),
        ),
    )
    contrast_short_prior: float = field(
        default=_MOMENTS.contrast_short_prior,
        metadata=_meta(
            "Contrast windows shorter than contrast_min_len (down to 2 clips), their contrast "
            "shrunk by L/(L+this) (2-s clips), so short moments are reachable; 0 = none "
            "(needs contrast_step > 0).",
            **_bounds("contrast_short_prior"),
        ),
    )
    contrast_refine: bool = field(
        default=_MOMENTS.contrast_refine,
        metadata=_meta(
            "Move each contrast window's edges to where the fused curve crosses the midpoint "
            "between the window's mean and the rest of the video's (trim, then grow; one pass)."
        ),
    )
    feedback_k: int = field(
        default=3,
        metadata=_meta(
            "Query feedback: move each variant toward the mean embedding of its k best-matching "
            "agnostic captions before scoring; 0 = off.",
            lo=0,
            hi=1000,
        ),
    )
    feedback_weight: float = field(
        default=0.5,
        metadata=_meta(
            "Query feedback weight w: q' = unit(q + w·unit(mean of the k best captions)); 0 = off.",
            lo=0.0,
            hi=10.0,
        ),
    )
    smooth_sigma: float = field(
        default=1.0,
        metadata=_meta(
            "Gaussian smoothing (σ, clips) of each variant's cosine curve before min–max; 0 = off.",
            lo=0.0,
            hi=200.0,
        ),
    )
    saliency_sigma: float = field(
        default=_MOMENTS.saliency_sigma,
        metadata=_meta(
            "Gaussian smoothing (σ, clips) of the saliency curve (highlight detection); 0 = off.",
            **_bounds("saliency_sigma"),
        ),
    )
    nms_iou: float = field(
        default=_MOMENTS.nms_iou,
        metadata=_meta(
            "Temporal NMS: suppress windows with IoU ≥ this.", lo_excluded=True, **_bounds("nms_iou")
        ),
    )
    top_n: int = field(
        default=_MOMENTS.top_n, metadata=_meta("Windows returned per query.", **_bounds("top_n"))
    )
    answer_profile: Literal["auto", "benchmark", "distinct"] = field(
        default="auto",
        metadata=_meta(
            "'benchmark': NMS at nms_iou (near-duplicate windows kept: they raise the official mAP); "
            "'distinct': NMS at distinct_nms_iou, so the top windows are different moments (what a "
            "person or an agent reads); 'auto': benchmark, except that the CLI retrieve command, "
            "the LangChain tool and the MCP server answer with distinct."
        ),
    )
    distinct_nms_iou: float = field(
        default=DISTINCT_NMS_IOU,
        metadata=_meta("NMS IoU of the 'distinct' answer profile.", **_bounds("nms_iou")),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name), f.type, f.metadata)
        self.moment_settings()  # the library's own checks (e.g. nms_iou > 0)
        parse_spec(self.rewriter, role="rewriter")
        parse_spec(self.embedder, role="text embedder", allowed=("local",))
        parse_spec(self.clip_model, role="CLIP model", allowed=("local",))
        parse_spec(self.captioner, role="captioner", allowed=("local", "openai"))
        if self.aware_captioner:
            parse_spec(self.aware_captioner, role="aware captioner", allowed=("local", "openai"))

    @property
    def aware_captioner_spec(self) -> str:
        """The query-aware captioner's spec (``captioner`` unless set separately)."""
        return self.aware_captioner or self.captioner

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Context:
        """Defaults, then ``GRANALIGN_<FIELD>`` variables, then explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.name, raw, _default_of(f))
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {sorted(unknown)}; allowed: {sorted(f.name for f in fields(cls))}"
            )
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Context:
        """A copy with some fields changed (validated again)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return replace(self, **overrides)

    @property
    def answer_nms_iou(self) -> float:
        """The NMS IoU of this run's answer profile (``nms_iou`` unless the profile is distinct)."""
        return self.distinct_nms_iou if self.answer_profile == "distinct" else self.nms_iou

    def for_answers(self) -> Context:
        """This Context as a front end that answers a person or an agent runs it: an ``auto``
        answer profile becomes ``distinct`` (an explicit profile is kept)."""
        return self.with_overrides(answer_profile="distinct") if self.answer_profile == "auto" else self

    def answer_settings(self) -> dict[str, Any]:
        """The settings this run's answer depends on (all but :data:`RUN_ONLY_SETTINGS`), so two
        runs can be told apart by what they would answer, not by how patiently they wait.

        ``auto`` reads as ``benchmark``: the graph treats them alike (front ends turn ``auto``
        into ``distinct`` before a run starts, see :meth:`for_answers`).
        """
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUN_ONLY_SETTINGS}
        if values["answer_profile"] == "auto":
            values["answer_profile"] = "benchmark"
        return values

    def proposal_kwargs(self) -> dict[str, Any]:
        """The :class:`ProposalParams` fields of this Context (it has one of each name)."""
        return {f.name: getattr(self, f.name) for f in fields(ProposalParams)}

    def moment_settings(self) -> MomentSettings:
        """The proposal, NMS and saliency settings as the library's :class:`MomentSettings`."""
        return MomentSettings(**{f.name: getattr(self, f.name) for f in fields(MomentSettings)})


def _default_of(f: Any) -> Any:
    return f.default if f.default is not MISSING else None


def _coerce(name: str, raw: str, default: Any, source: str | None = None) -> Any:
    """Environment and ``--set`` values are strings: convert to the field's type.

    The error names what the user wrote: ``source`` (e.g. ``--set clip_len=abc``), by
    default the environment variable ``GRANALIGN_<NAME>='abc'``.
    """
    where = source or f"{ENV_PREFIX}{name.upper()}={raw!r}"
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ConfigError(f"{where}: expected {kind}") from None
    return raw


def _check_field(name: str, value: Any, annotation: Any, meta: Any) -> None:
    if annotation in ("bool", bool) and not isinstance(value, bool):
        # a JSON client's "false" is a truthy string: auto_ingest="false" would ingest
        raise ConfigError(
            f"setting {name}={value!r} must be a boolean (JSON true or false), not {value_kind(value)}"
        )
    if annotation in ("str", str) and not isinstance(value, str):
        raise ConfigError(f"setting {name}={value!r} must be a string")
    choices = _literal_choices(annotation)
    if choices:
        if value not in choices:
            raise ConfigError(f"setting {name}={value!r} is not allowed; choose one of {list(choices)}")
        return
    if "lo" in meta:
        lo, hi = meta["lo"], meta["hi"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"setting {name}={value!r} must be a number in [{lo}, {hi}]")
        if isinstance(lo, int) and not isinstance(value, int):
            raise ConfigError(f"setting {name}={value!r} must be an integer in [{lo}, {hi}]")
        if not lo <= value <= hi:
            raise ConfigError(f"setting {name}={value!r} is out of range; allowed: [{lo}, {hi}]")


def value_kind(value: Any) -> str:
    """How a wrongly typed value reads in an error: ``auto_ingest='false'`` is "a string"."""
    kinds = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if value is None else kinds.get(type(value), f"a {type(value).__name__}")


def _literal_choices(annotation: Any) -> tuple[Any, ...]:
    text = str(annotation)
    if text.startswith("Literal["):
        return tuple(a.strip().strip("'\"") for a in text[len("Literal[") : -1].split(","))
    return get_args(annotation) if "Literal" in text else ()


def describe() -> list[tuple[str, Any, str]]:
    """(name, default, description) of every setting, for ``granalign settings``."""
    return [(f.name, _default_of(f), f.metadata.get("description", "")) for f in fields(Context)]
