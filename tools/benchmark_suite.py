"""The benchmark suite behind ``granalign benchmark``: the project's performance figures in one table.

Why one suite: a change to the math, the graph or the store should be judged by the same
numbers every time, on the same inputs, with model loading kept out of every timing.  Each
benchmark is a function ``(SuiteRun) -> list[Row]``; :data:`BENCHMARKS` names them in the order
they run.  Times are medians over repeats (the machines are shared, so a single run says
little); rates are work / median seconds.

* ``core_math``: the stages behind the retrieval graph's ``fuse``, ``propose`` and ``nms`` nodes
  (:mod:`granalign.stages`: query feedback, smoothing, fusion, proposals, NMS, saliency) on random
  unit-vector embeddings, at 75, 1,800 and 18,000 clips (2.5 min, 1 h, 10 h at 2-s clips).
* ``graph_overhead``: the compiled retrieval graph against the same stage functions called
  directly, on the demo queries (caption-only mode, their Baichuan2 paraphrases).
* ``caption_import``: captions/s of ``import_captions`` into a fresh store (MiniLM).
* ``warm_queries``: queries/s of ``tools.bench.run_queries`` with warm caches (rewriter none).
* ``ingest``: clips/s per ingest stage with random-weight CLIP and a tiny random-weight VLM.
* ``long_video``: peak memory growth while ingesting synthetic videos of two lengths; it must
  not grow with the length.  Slow (minutes), so ``quick`` runs leave it out.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from granalign.errors import ConfigError
from graphs.context import Context

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding ``tools`` (site-packages, or the checkout)."""
FloatArray = NDArray[np.float64]

#: Clip counts of the core-math benchmark: a QVHighlights clip (150 s), 1 h and 10 h at 2 s/clip.
CORE_SIZES = (75, 1_800, 18_000)
#: Embedding width of all-MiniLM-L6-v2, the captions' sentence embedder.
EMBED_DIM = 384
#: Prompt pairs of the core-math queries (m = 3): the original query plus 3 (Q_s, Q_d) pairs,
#: i.e. 7 distinct query embeddings in 4 variant rows, as the fuse node builds them.
PAIRS = 3
#: Lengths (minutes) of the long synthetic videos: full run and quick run.
LONG_MINUTES = (60.0, 120.0)
LONG_MINUTES_QUICK = (5.0, 10.0)
RANDOM_WEIGHTS = "random-weight models"


@dataclass(frozen=True)
class Row:
    """One figure of the table; ``value`` is always a finite number in ``unit``."""

    benchmark: str
    size: str
    metric: str
    value: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SuiteOptions:
    """What to run and how hard; ``base`` carries the Context settings (env, ``--set``)."""

    base: Context = field(default_factory=Context)
    quick: bool = False
    work_dir: Path | None = None
    queries: int | None = None
    core_sizes: tuple[int, ...] = CORE_SIZES
    long_minutes: tuple[float, ...] | None = None
    video: Path | None = None

    @property
    def n_queries(self) -> int:
        """Demo queries used by the graph benchmarks (all 100 unless quick or asked)."""
        return self.queries if self.queries is not None else (5 if self.quick else 100)

    @property
    def lengths(self) -> tuple[float, ...]:
        if self.long_minutes is not None:
            return self.long_minutes
        return LONG_MINUTES_QUICK if self.quick else LONG_MINUTES


class SuiteRun:
    """Shared state of one suite run: options, a work folder, and the demo store once imported."""

    def __init__(self, options: SuiteOptions, work: Path) -> None:
        self.options = options
        self.work = work
        self._demo_imported: set[str] = set()

    def repeats(self, full: int, quick: int = 1) -> int:
        return quick if self.options.quick else full

    def context(self, name: str, **overrides: Any) -> Context:
        """The base Context with a store of its own under the work folder."""
        return self.options.base.with_overrides(store_dir=str(self.work / name), **overrides)

    def fresh_store(self, prefix: str) -> str:
        """An empty store folder: imports and ingests are resumable, so a store that already
        holds the data (a kept ``--store`` work folder, an earlier repeat) would time nothing."""
        return tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.work)

    def demo_context(self, rewriter: str) -> Context:
        """A store holding the demo subset's captions (imported once, untimed) and warm models."""
        from granalign.io.captions_import import import_captions, source_name_for
        from graphs import resources
        from tools.demo_data import DEMO

        ctx = self.context("demo-store", rewriter=rewriter)
        if ctx.store_dir not in self._demo_imported:
            import_captions(
                resources.store_for(ctx),
                warm_embedder(ctx),
                DEMO.captions,
                source=source_name_for(DEMO.captions),
                only={a.vid for a in self.annotations()},
            )
            self._demo_imported.add(ctx.store_dir)
        return ctx

    def annotations(self) -> list[Any]:
        from tools.bench import read_annotations
        from tools.demo_data import DEMO

        return read_annotations(DEMO.annotations, self.options.n_queries)


BenchFn = Callable[[SuiteRun], list[Row]]


# --------------------------------------------------------------------------------------------
# helpers


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@contextmanager
def timed(into: dict[str, list[float]], key: str) -> Iterator[None]:
    """Adds (CPU s, wall s) of the block to ``into[key + ':cpu']`` and ``into[key + ':wall']``."""
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield
    finally:
        into.setdefault(f"{key}:cpu", []).append(time.process_time() - cpu)
        into.setdefault(f"{key}:wall", []).append(time.perf_counter() - wall)


def warm_embedder(ctx: Context) -> Any:
    """The context's text embedder, loaded and run once so no timing pays for the load."""
    from graphs import resources

    embedder = resources.embedder_for(ctx)
    embedder.embed(["warm up the sentence embedder"])
    return embedder


def _unit(rows: FloatArray) -> NDArray[np.float32]:
    unit: NDArray[np.float32] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return unit


def synthetic_embeddings(
    n_clips: int, rng: np.random.Generator, dim: int = EMBED_DIM
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Caption embeddings (n, dim) and query variants q_s, q_d (PAIRS + 1, dim), unit float32.

    Captions of a real video repeat a shot's topic for several clips, so the curves have
    moments for the proposal stage to find: shots of 3-30 clips share a topic vector plus
    noise.  The queries lean toward one shot's topic.  Row 0 of q_s and q_d is the original
    query (the same vector in both channels), rows 1.. are the simplified/detailed rewrites.
    """
    lengths = rng.integers(3, 31, size=n_clips // 3 + 1)
    shot = np.repeat(np.arange(lengths.size), lengths)[:n_clips]
    topics = rng.standard_normal((lengths.size, dim))
    captions = _unit(topics[shot] + 0.8 * rng.standard_normal((n_clips, dim)))
    target = topics[shot[rng.integers(0, n_clips)]]
    original = target + 1.5 * rng.standard_normal(dim)
    simplified = target + 1.5 * rng.standard_normal((PAIRS, dim))
    detailed = target + 1.5 * rng.standard_normal((PAIRS, dim))
    q_s = _unit(np.vstack([original, simplified]))
    q_d = _unit(np.vstack([original, detailed]))
    return captions, q_s, q_d


# --------------------------------------------------------------------------------------------
# the stages the graph nodes call, without the graph (the library path)


def fuse_step(captions: Any, q_s: Any, q_d: Any, ctx: Context) -> tuple[list[Any], list[float]]:
    """The ``fuse`` node's stage in caption-only mode: (per-variant curves, fused), as lists.

    With the video's ``match`` as the node computes it (row 0 of ``q_s`` is the original query).
    """
    from granalign.stages.fusion import FusionSettings, fuse

    scores = fuse(q_s, q_d, captions, FusionSettings.of(ctx), query_emb=q_s[0])
    return scores.variant_scores, scores.fused


def propose_step(
    per_variant: list[Any], fused: list[float], ctx: Context, duration: float, clip_len: float
) -> list[Any]:
    """The ``propose`` node's stage: candidate windows in seconds."""
    from granalign.stages.proposals import ProposalSettings, propose

    return propose(
        per_variant, fused, clip_len=clip_len, duration=duration, settings=ProposalSettings.of(ctx)
    )


def nms_step(
    candidates: list[Any], fused: list[float], ctx: Context, duration: float, clip_len: float
) -> tuple[list[Any], list[float]]:
    """The ``nms`` node's stage in caption-only mode: ranked moments and the saliency curve."""
    from granalign.stages.nms import AnswerSettings, answer, saliency_length

    n_out = saliency_length(duration, clip_len)
    return answer(candidates, fused, duration=duration, n_out=n_out, settings=AnswerSettings.of(ctx))


def core_query(
    captions: Any,
    q_s: Any,
    q_d: Any,
    ctx: Context,
    duration: float,
    times: dict[str, list[float]] | None = None,
    clip_len: float | None = None,
) -> tuple[list[Any], list[float]]:
    """fuse → propose → nms for one query; with ``times``, each stage's CPU and wall seconds.

    ``clip_len``: the captions' clip grid (default the Context's, as for synthetic curves).
    """
    clock: dict[str, list[float]] = {} if times is None else times
    grid = ctx.clip_len if clip_len is None else clip_len
    with timed(clock, "fuse"):
        per_variant, fused = fuse_step(captions, q_s, q_d, ctx)
    with timed(clock, "propose"):
        candidates = propose_step(per_variant, fused, ctx, duration, grid)
    with timed(clock, "nms"):
        return nms_step(candidates, fused, ctx, duration, grid)


# --------------------------------------------------------------------------------------------
# core_math


def length_label(seconds: float) -> str:
    """A video length for the size column: minutes below two hours, else hours."""
    return f"{seconds / 60:.3g} min" if seconds < 7200 else f"{seconds / 3600:.3g} h"


def _core_rows(n: int, times: dict[str, list[float]], clip_len: float) -> list[Row]:
    size = f"{n:,} clips ({length_label(n * clip_len)})"
    total_cpu = [
        sum(parts) for parts in zip(*(times[f"{s}:cpu"] for s in ("fuse", "propose", "nms")), strict=True)
    ]
    total_wall = [
        sum(parts) for parts in zip(*(times[f"{s}:wall"] for s in ("fuse", "propose", "nms")), strict=True)
    ]
    rows = [
        Row("core_math", size, "fuse+propose+NMS CPU per query", 1000 * median(total_cpu), "ms"),
        Row("core_math", size, "fuse+propose+NMS wall per query", 1000 * median(total_wall), "ms"),
    ]
    for stage in ("fuse", "propose", "nms"):
        label = "nms+saliency" if stage == "nms" else stage
        rows.append(Row("core_math", size, f"{label} CPU", 1000 * median(times[f"{stage}:cpu"]), "ms"))
    return rows


def core_math(run: SuiteRun) -> list[Row]:
    """CPU and wall time of the graph's math per query, by video length (random embeddings).

    The captions are checked once per video, outside the per-query timing, as the graph's caption
    cache does (``graphs.resources.VideoCaptions.checked``); that once-per-video cost is its own row.
    """
    from granalign.core.similarity import caption_matrix

    ctx = run.options.base
    rng = np.random.default_rng(0)
    reps = run.repeats(15, 3)
    rows: list[Row] = []
    for n in run.options.core_sizes:
        raw, q_s, q_d = synthetic_embeddings(n, rng)
        duration = n * ctx.clip_len
        once: dict[str, list[float]] = {}
        for _ in range(reps):
            with timed(once, "check"):
                captions = caption_matrix(raw)
        core_query(captions, q_s, q_d, ctx, duration)  # warm-up: first-call costs of numpy
        times: dict[str, list[float]] = {}
        for _ in range(reps):
            core_query(captions, q_s, q_d, ctx, duration, times)
        rows.extend(_core_rows(n, times, ctx.clip_len))
        size = f"{n:,} clips ({length_label(n * ctx.clip_len)})"
        check_ms = 1000 * median(once["check:cpu"])
        rows.append(Row("core_math", size, "captions checked, once per video CPU", check_ms, "ms"))
    return rows


# --------------------------------------------------------------------------------------------
# graph_overhead


def library_query(ctx: Context, ann: Any) -> list[Any]:
    """One query on the library path: the same stage functions the graph's nodes call."""
    from granalign.stages.rewrite import embed_variants, query_variants
    from graphs import resources

    video = resources.video_captions(ctx, ann.vid)
    found = resources.rewriter_for(ctx).variants_for(ann.query, ann.qid)  # type: ignore[attr-defined]
    variants = query_variants(ann.query, found, include_original=ctx.include_original)
    emb = embed_variants(ann.query, variants, resources.embedder_for(ctx), ctx.drift_threshold)
    clip_len = video.record.clip_len_s
    moments, _ = core_query(video.checked, emb.q_s, emb.q_d, ctx, ann.duration, clip_len=clip_len)
    return moments


def graph_query(ctx: Context, ann: Any) -> list[Any]:
    """One query through the compiled retrieval graph, as a user (or ``granalign bench``) calls it."""
    from graphs.retrieval import graph

    inputs = {"video": ann.vid, "query": ann.query, "qid": ann.qid, "duration": ann.duration}
    moments: list[Any] = graph.invoke(inputs, context=ctx)["moments"]
    return moments


def graph_overhead(run: SuiteRun) -> list[Row]:
    """What the LangGraph machinery costs per query on top of the same work done directly.

    Both paths read the same cached captions and embed the same variant texts with the same
    model, so the difference is the graph: its steps, Send fan-out, state channels and
    checkpoint-free bookkeeping.  The paths alternate query by query to share the machine's
    noise; the overhead is the median of the per-query differences.
    """
    from tools.demo_data import DEMO

    ctx = run.demo_context(f"file:{DEMO.paraphrases}")
    anns = run.annotations()
    graph_query(ctx, anns[0])  # warm-up: rewrite file, caption cache, embedder, graph compile
    library_query(ctx, anns[0])
    times: dict[str, list[float]] = {}
    same = 0
    for _ in range(run.repeats(3, 1)):
        for ann in anns:
            with timed(times, "graph"):
                via_graph = graph_query(ctx, ann)
            with timed(times, "library"):
                direct = library_query(ctx, ann)
            same += via_graph == direct
    size = f"{len(anns)} demo queries, caption-only"
    extra = [g - lib for g, lib in zip(times["graph:wall"], times["library:wall"], strict=True)]
    extra_cpu = [g - lib for g, lib in zip(times["graph:cpu"], times["library:cpu"], strict=True)]
    return [
        Row("graph_overhead", size, "graph wall per query", 1000 * median(times["graph:wall"]), "ms"),
        Row("graph_overhead", size, "library wall per query", 1000 * median(times["library:wall"]), "ms"),
        Row("graph_overhead", size, "overhead wall per query", 1000 * median(extra), "ms"),
        Row("graph_overhead", size, "overhead CPU per query", 1000 * median(extra_cpu), "ms"),
        Row("graph_overhead", size, "identical answers", float(same), f"of {len(times['graph:wall'])}"),
    ]


# --------------------------------------------------------------------------------------------
# caption_import and warm_queries


def caption_import(run: SuiteRun) -> list[Row]:
    """Captions/s of importing the demo subset's captions into a fresh store (MiniLM on this CPU)."""
    from granalign.io.captions_import import import_captions, read_captions_file, source_name_for
    from graphs import resources
    from tools.demo_data import DEMO

    vids = {a.vid for a in run.annotations()}
    videos = [v for v in read_captions_file(DEMO.captions) if v.vid in vids]
    unique = len({c for v in videos for c in v.captions})
    seconds: list[float] = []
    captions = 0
    for _ in range(run.repeats(3, 1)):
        ctx = run.options.base.with_overrides(store_dir=run.fresh_store("import"))
        store, embedder = resources.store_for(ctx), warm_embedder(ctx)
        t0 = time.perf_counter()
        report = import_captions(
            store, embedder, DEMO.captions, source=source_name_for(DEMO.captions), only=vids
        )
        seconds.append(time.perf_counter() - t0)
        captions = report.captions
    size = f"{len(videos)} videos, {captions:,} captions ({unique:,} unique)"
    return [
        Row("caption_import", size, "captions/s", captions / median(seconds), "captions/s"),
        Row("caption_import", size, "import time", median(seconds), "s"),
    ]


def warm_queries(run: SuiteRun) -> list[Row]:
    """Queries/s of the benchmark runner over the demo queries: a cold pass, then warm passes."""
    from graphs import resources
    from tools.bench import run_queries

    ctx = run.demo_context("none")
    anns = run.annotations()
    resources.clear_caches()
    t0 = time.perf_counter()
    run_queries(anns, ctx)
    cold = time.perf_counter() - t0
    warm: list[float] = []
    for _ in range(run.repeats(3, 1)):
        t0 = time.perf_counter()
        preds, _ = run_queries(anns, ctx)
        warm.append(time.perf_counter() - t0)
    size = f"{len(preds)} demo queries, rewriter none"
    return [
        Row("warm_queries", size, "queries/s, warm caches", len(preds) / median(warm), "queries/s"),
        Row("warm_queries", size, "queries/s, first pass (cold caches)", len(preds) / cold, "queries/s"),
    ]


# --------------------------------------------------------------------------------------------
# ingest and long_video (random-weight models)


def _ingest_video(run: SuiteRun) -> Path:
    """The checkout's real example video when present, else a 2-minute synthetic one."""
    from tools.ingest_bench import DEFAULT_VIDEO, make_long_video

    chosen = run.options.video or DEFAULT_VIDEO
    if chosen.is_file():
        return chosen
    path = run.work / "synthetic_2min.mp4"
    return path if path.exists() else make_long_video(path, 2.0, fps=10)


def _ingest_context(run: SuiteRun, video: Path) -> Context:
    from tools.ingest_bench import ingest_context

    models = run.work / "models"
    models.mkdir(parents=True, exist_ok=True)
    return ingest_context(models, [video.resolve().parent], base=run.options.base)  # type: ignore[no-any-return]


def ingest(run: SuiteRun) -> list[Row]:
    """Clips/s of each ingest stage and of the whole ingest, each repeat into a fresh store."""
    from tools.ingest_bench import ingest_once, warm_models

    video = _ingest_video(run)
    ctx = _ingest_context(run, video)
    warm_models(ctx)
    results = [
        ingest_once(ctx.with_overrides(store_dir=run.fresh_store("ingest")), video)
        for _ in range(run.repeats(3, 1))
    ]
    clips = results[0]["clips"]
    name = f"ingest ({RANDOM_WEIGHTS})"
    size = f"{video.name}, {clips} clips"
    rows = [Row(name, size, "whole ingest", clips / median([r["wall_s"] for r in results]), "clips/s")]
    for stage in results[0]["stage_s"]:
        seconds = median([r["stage_s"][stage] for r in results])
        if seconds > 0:
            rows.append(Row(name, size, f"stage {stage}", clips / seconds, "clips/s"))
    return rows


def _settings_env(ctx: Context) -> dict[str, str]:
    """``GRANALIGN_<NAME>`` variables for the settings of ``ctx`` that differ from the defaults."""
    from dataclasses import fields

    from graphs.context import ENV_PREFIX

    default = Context()
    changed = {
        f.name: getattr(ctx, f.name) for f in fields(ctx) if getattr(ctx, f.name) != getattr(default, f.name)
    }
    return {ENV_PREFIX + name.upper(): str(value) for name, value in changed.items()}


def long_ingest_process(run: SuiteRun, minutes: float) -> dict[str, Any]:
    """One long ingest in a fresh process (``tools.ingest_bench``), its report as a dict.

    A process per length: in one process, the stores of the earlier lengths stay open (a Chroma
    client holds its index in memory) and their memory would count against the next length.
    The process loads the models, ingests a 30-s video (first-use allocations: codec, allocator
    pools, the store's files), reads its baseline RSS, then ingests the long one.
    """
    out = Path(tempfile.mkdtemp(prefix="long-", dir=run.work)) / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "tools.ingest_bench",
        "--skip-short",
        "--quiet",
        "--rewriter=none",
        f"--long-minutes={minutes:g}",
        f"--long-clip-len={run.options.base.clip_len:g}",
        "--long-fps=4",
        "--warm-minutes=0.5",
        f"--out={out}",
    ]
    env = {**os.environ, **_settings_env(run.options.base), "HF_HUB_OFFLINE": "1"}
    # the child imports the same code as this process, installed or from a checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run(cmd, cwd=run.work, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"long ingest of {minutes:g} min failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    got: dict[str, Any] = json.loads(out.read_text())
    return got


def long_video(run: SuiteRun) -> list[Row]:
    """Peak RSS while ingesting long synthetic videos, over a warm models-loaded baseline.

    Frames are decoded by seeking and processed in batches, so the peak should not depend on
    the length; what still grows is what the store keeps (the embedded Chroma index of the
    clips written so far).  Synthetic H.264 at 320x180 and 4 fps: decode cost is not the point.
    """
    name = f"long_video ({RANDOM_WEIGHTS})"
    rows: list[Row] = []
    for minutes in run.options.lengths:
        got = long_ingest_process(run, minutes)
        baseline, long = float(got["rss_baseline_mib"]), got["long_videos"][0]
        size = f"{length_label(minutes * 60)}, {long['clips']:,} clips"
        rows += [
            Row(name, size, "RSS baseline (models loaded, warm)", baseline, "MiB"),
            Row(name, size, "peak RSS", long["rss_peak_during_mib"], "MiB"),
            Row(name, size, "peak RSS growth over baseline", long["rss_peak_during_mib"] - baseline, "MiB"),
            Row(name, size, "whole ingest", long["clips_per_s"], "clips/s"),
        ]
    return rows


# --------------------------------------------------------------------------------------------
# the suite


def ray_ingest(run: SuiteRun) -> list[Row]:
    """One machine (--jobs 1, 2) against Ray (1, 2 local nodes) on the same files (tools/ray_bench.py)."""
    from tools.ray_bench import benchmark_rows

    video = _ingest_video(run)
    return [Row(**r) for r in benchmark_rows(_ingest_context(run, video), video, run.work / "ray_ingest")]


BENCHMARKS: dict[str, BenchFn] = {
    "core_math": core_math,
    "graph_overhead": graph_overhead,
    "caption_import": caption_import,
    "warm_queries": warm_queries,
    "ingest": ingest,
    "long_video": long_video,
    "ray_ingest": ray_ingest,
}
#: Left out of a quick run unless named with ``only``.
SLOW = frozenset({"long_video", "ray_ingest"})


def select(only: Sequence[str] | None, quick: bool) -> list[str]:
    """Benchmark names to run, in suite order; unknown names are a ConfigError listing the known."""
    if only:
        unknown = sorted(set(only) - set(BENCHMARKS))
        if unknown:
            raise ConfigError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
        return [name for name in BENCHMARKS if name in only]
    return [name for name in BENCHMARKS if not (quick and name in SLOW)]


def machine() -> dict[str, Any]:
    """What the numbers were measured on (they mean little without it)."""
    return {
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "platform": platform.platform(),
    }


def run_suite(
    names: Sequence[str],
    options: SuiteOptions,
    on_start: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run the named benchmarks in a work folder (a temporary one unless ``options.work_dir``).

    Every row is checked to be finite: a NaN in the table would make comparisons meaningless.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="granalign-benchmark-"))
    work.mkdir(parents=True, exist_ok=True)
    run = SuiteRun(options, work)
    rows: list[Row] = []
    try:
        for name in names:
            if on_start is not None:
                on_start(name)
            rows.extend(BENCHMARKS[name](run))
    finally:
        if options.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in rows if not math.isfinite(r.value)]
    if bad:
        raise RuntimeError(f"benchmark rows with non-finite values: {bad}")
    return rows


def report(
    rows: Sequence[Row], options: SuiteOptions, names: Sequence[str], seconds: float
) -> dict[str, Any]:
    """The JSON document ``granalign benchmark --out`` writes."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "options": {
            "benchmarks": list(names),
            "quick": options.quick,
            "queries": options.n_queries,
            "core_sizes": list(options.core_sizes),
            "long_minutes": list(options.lengths),
        },
        "seconds": round(seconds, 1),
        "rows": [r.to_dict() for r in rows],
    }
