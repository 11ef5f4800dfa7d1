"""Ingest throughput per stage, warm per-query latency, and peak memory of a long ingest (CPU).

A benchmark script, not a test: it prints a table and writes JSON.  It drives the same graphs a
user calls (``graphs.ingest``, ``graphs.retrieval``), with the models this machine has:

* CLIP: open_clip ``--clip-model`` (default ViT-B-32, the production architecture) with random
  weights unless ``--clip-pretrained`` names weights you have: the cost of a forward pass does
  not depend on the weights' values.
* captioner: ``--captioner`` (default: a tiny random-weight Qwen2.5-VL built here, as in the
  tests; its cost says nothing about Qwen2.5-VL-7B, which runs on a GPU server in production).
* rewriter: ``--rewriter`` (default ``local:smollm2``), text embedder MiniLM.

Usage::

    .venv/bin/python -m tools.ingest_bench [--video V] [--long-minutes 60] [--out runs/bench/ingest.json]

Model loading is excluded from every timing (each model is warmed first).  Peak memory is the
process's resident set (``VmRSS``, sampled every 50 ms, and ``VmHWM``) while ingesting a long
synthetic video made with PyAV; the number that matters is how much it grows over the
models-loaded baseline, and that it does not grow with the video's length.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from granalign.testing import build_tiny_vlm_random_weights

DEFAULT_VIDEO = Path(__file__).resolve().parents[1] / "tests/fixtures/videos/charades_univtg_example.mp4"
"""The repository's real example video (a checkout only; an installed package has none, and the
suite then ingests a synthetic video)."""
QUERIES = [
    "a person opens a door and walks in",
    "someone drinks from a cup",
    "a man puts a bag on the table",
    "a person sits down on a chair",
    "someone turns off the light",
]


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set of this process in MiB, from /proc (Linux)."""
    fields: dict[str, float] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = float(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


class RssSampler:
    """Samples VmRSS on a thread; ``peak`` is the largest value seen while running."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s = every_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib()[0])
            time.sleep(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_long_video(path: Path, minutes: float, *, fps: int = 10, size: tuple[int, int] = (320, 180)) -> Path:
    """A synthetic H.264 video: a moving gradient with noise, so every clip has its own frame."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "32"}
        stream.codec_context.gop_size = fps * 4
        for i in range(int(minutes * 60 * fps)):
            shift = (i * 3) % w
            base = np.roll(ramp, shift, axis=1).repeat(h, axis=0).repeat(3, axis=2)
            noise = rng.integers(0, 24, (h, w, 3), dtype=np.uint8)
            pixels = (base + noise).clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def warm_models(ctx: Any) -> dict[str, float]:
    """Load every model once (not part of any timing); returns seconds per model."""
    from PIL import Image

    from graphs import resources

    seconds: dict[str, float] = {}
    image = Image.new("RGB", (64, 48))
    for name, call in (
        ("clip", lambda: resources.clip_for(ctx).embed_images([image])),
        ("clip_text", lambda: resources.clip_for(ctx).embed_texts(["warm"])),
        ("captioner", lambda: resources.captioner_for(ctx).caption([image], ["warm"])),
        ("embedder", lambda: resources.embedder_for(ctx).embed(["warm"])),
    ):
        t0 = time.perf_counter()
        call()
        seconds[name] = round(time.perf_counter() - t0, 2)
    return seconds


def stage_rates(out: dict[str, Any]) -> dict[str, float]:
    """Clips per second of each ingest stage and of the whole ingest."""
    n = out["encoded"]
    rates = {stage: round(n / s, 2) if s > 0 else float("inf") for stage, s in out["timings"].items()}
    return rates


def bench_queries(ctx: Any, video: str, queries: list[str]) -> dict[str, Any]:
    """Warm per-query latency: new queries (rewrite + aware captions computed), then repeats (cached).

    Stage times are the gaps between the graph's progress events (a stage's event is written
    when it ends; the parallel branches - rewrites, focus, clip_filter - overlap).
    """
    from graphs.retrieval import graph

    stage_times: dict[str, list[float]] = {}

    def run(q: str, record: bool) -> float:
        t0 = last = time.perf_counter()
        for event in graph.stream({"video": video, "query": q}, context=ctx, stream_mode="custom"):
            now = time.perf_counter()
            if record:
                stage_times.setdefault(event["stage"], []).append(now - last)
            last = now
        return time.perf_counter() - t0

    run(queries[0] + " (warm-up)", False)  # the first query pays one-time costs (rewriter load)
    new = [run(q, True) for q in queries]
    repeat = [run(q, False) for q in queries]
    return {
        "new_query_s": {"median": round(statistics.median(new), 3), "all": [round(x, 3) for x in new]},
        "new_query_stage_median_s": {k: round(statistics.median(v), 3) for k, v in stage_times.items()},
        "repeat_query_s": {
            "median": round(statistics.median(repeat), 3),
            "all": [round(x, 3) for x in repeat],
        },
    }


def long_run(
    ctx: Any,
    work: Path,
    minutes: float,
    clip_len: float,
    size: tuple[int, int] = (320, 180),
    *,
    fps: int = 10,
    verbose: bool = True,
    keep_video: bool = True,
) -> dict[str, Any]:
    """Make a synthetic video of ``minutes`` and ingest it, sampling the process's memory.

    ``keep_video=False`` deletes the file afterwards: two hours of video are a few hundred MiB
    that a suite running several lengths should not keep on disk.
    """
    from graphs.ingest import ingest_video

    path = work / f"synthetic_{minutes:g}min.mp4"
    t0 = time.perf_counter()
    make_long_video(path, minutes, fps=fps, size=size)
    made = time.perf_counter() - t0
    before = rss_mib()
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        out = ingest_video(ctx.with_overrides(clip_len=clip_len), str(path))
        wall = time.perf_counter() - t0
    result = {
        "minutes": minutes,
        "size": f"{size[0]}x{size[1]}",
        "fps": fps,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "make_s": round(made, 1),
        "clip_len_s": clip_len,
        "clips": out["n_clips"],
        "wall_s": round(wall, 1),
        "clips_per_s": round(out["n_clips"] / wall, 2),
        "stage_s": out["timings"],
        "rss_before_mib": round(before[0], 1),
        "rss_peak_during_mib": round(sampler.peak, 1),
        "rss_growth_mib": round(sampler.peak - before[0], 1),
        "vmhwm_after_mib": round(rss_mib()[1], 1),
    }
    if not keep_video:
        path.unlink(missing_ok=True)
    if verbose:
        print(json.dumps(result), flush=True)
    return result


def ingest_context(
    work: Path,
    video_roots: list[Path],
    *,
    clip_model: str = "local:ViT-B-32",
    clip_pretrained: str = "none",
    captioner: str = "",
    rewriter: str = "none",
    prompt_pairs: str = "",
    base: Any = None,
) -> Any:
    """The Context of an ingest benchmark: a store under ``work`` and the models this CPU has.

    An empty ``captioner`` builds the tiny random-weight Qwen2.5-VL of the tests under ``work``
    (its cost says nothing about Qwen2.5-VL-7B; it only exercises the real loading and
    generation code).  ``base`` supplies every other setting (``--set`` overrides of a CLI);
    without it they come from the defaults and ``GRANALIGN_<NAME>`` variables.
    """
    from graphs.context import Context

    tiny = work / "tiny-qwen25vl-random-weights"
    if not captioner and not tiny.exists():
        build_tiny_vlm_random_weights(tiny)
    settings: dict[str, Any] = {
        "store_dir": str(work / "store"),
        "clip_model": clip_model,
        "clip_pretrained": clip_pretrained,
        "captioner": captioner or f"local:{tiny}",
        "rewriter": rewriter,
        "prompt_pairs": prompt_pairs,
        "video_roots": os.pathsep.join(str(p) for p in [*video_roots, work]),
    }
    return base.with_overrides(**settings) if base is not None else Context.from_env(**settings)


def ingest_once(ctx: Any, video: Path) -> dict[str, Any]:
    """Ingest one file into ``ctx``'s store: clips, wall time and per-stage throughput."""
    from graphs.ingest import ingest_video

    t0 = time.perf_counter()
    out = ingest_video(ctx, str(video))
    wall = time.perf_counter() - t0
    return {
        "video": video.name,
        "clips": out["n_clips"],
        "wall_s": round(wall, 2),
        "clips_per_s": round(out["n_clips"] / wall, 2),
        "stage_s": out["timings"],
        "stage_clips_per_s": stage_rates(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--clip-model", default="local:ViT-B-32")
    parser.add_argument("--clip-pretrained", default="none")
    parser.add_argument("--captioner", default="", help="captioner spec; empty = tiny random-weight VLM")
    parser.add_argument("--rewriter", default="local:smollm2")
    parser.add_argument(
        "--prompt-pairs", default="", help="comma-separated pair ids; empty = the default m=3"
    )
    parser.add_argument(
        "--long-minutes", default="10,120", help="comma-separated synthetic video lengths; 0 = none"
    )
    parser.add_argument("--long-clip-len", type=float, default=10.0, help="clip length of the long runs (s)")
    parser.add_argument("--long-size", default="320x180", help="frame size of the synthetic videos, WxH")
    parser.add_argument("--long-fps", type=int, default=10, help="frame rate of the synthetic videos")
    parser.add_argument(
        "--warm-minutes",
        type=float,
        default=0.0,
        help="ingest a synthetic video this long before the long runs, so first-use allocations "
        "are in the baseline (rss_baseline_mib); 0 = none",
    )
    parser.add_argument("--skip-short", action="store_true", help="only the long-video memory runs")
    parser.add_argument("--quiet", action="store_true", help="write --out only, print nothing")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench" / "ingest.json")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="granalign-bench-"))
    ctx = ingest_context(
        work,
        [args.video.resolve().parent],
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        captioner=args.captioner,
        rewriter=args.rewriter,
        prompt_pairs=args.prompt_pairs,
    )
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "models": {
            "clip": f"{ctx.clip_model} ({ctx.clip_pretrained})",
            "captioner": ctx.captioner,
            "rewriter": ctx.rewriter,
        },
    }
    try:
        report["model_load_s"] = warm_models(ctx)
        if not args.skip_short:
            report["ingest"] = ingest_once(ctx, args.video)
            report["queries"] = bench_queries(ctx, str(args.video), QUERIES)
        minutes = [float(m) for m in args.long_minutes.split(",") if float(m) > 0]
        w, h = (int(x) for x in args.long_size.lower().split("x"))
        run = {"fps": args.long_fps, "verbose": not args.quiet, "keep_video": False}
        if args.warm_minutes > 0:  # same store as the long runs: its client is part of the baseline
            long_run(ctx, work, args.warm_minutes, args.long_clip_len, (w, h), **{**run, "verbose": False})
            report["rss_baseline_mib"] = round(rss_mib()[0], 1)
        report["long_videos"] = [long_run(ctx, work, m, args.long_clip_len, (w, h), **run) for m in minutes]
    finally:
        shutil.rmtree(work, ignore_errors=True)  # models, store and synthetic videos
    report["machine"]["load_avg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.quiet:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
