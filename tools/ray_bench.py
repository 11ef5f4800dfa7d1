"""Ingest throughput: one machine (``--jobs 1``, ``--jobs 2``) against Ray (1 and 2 nodes), same files.

The ``ray_ingest`` row of ``granalign benchmark`` (left out of ``--quick``), and a script::

    .venv/bin/python -m tools.ray_bench compare VIDEO... [--work DIR] [--cpus-per-node 1]

Why each configuration runs in its own process against its own fresh ``chroma run`` server:
its peak memory is then its own (a process's peak never goes down), every configuration
writes to the same kind of store (the Ray path needs a server, so the one-machine runs use one
too), and nothing is skipped because an earlier run stored it.  Models are random-weight
(``tools.ingest_bench``): the figures measure the machinery (decode, scheduling, model calls,
writes), not Qwen2.5-VL-7B.  Model loading is never timed: the one-machine child warms its
models first, and the Ray driver starts its clock once every model actor is loaded.

Per configuration: clips/s of the whole ingest, each stage's share of the summed stage seconds
(on Ray the model stages include the actor round trip), and the peak resident set of each kind
of process (the one-machine process; Ray's driver, batch-task workers and model actors).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any

from graphs.context import ENV_PREFIX, Context

__all__ = ["benchmark_rows", "compare", "rows"]

BENCHMARK = "ray_ingest (random-weight models)"
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray maps a loopback address to the host's routable IP, where a GCS bound to loopback does
    # not listen; this keeps a driver on this host on loopback (the setting's only Linux effect).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def settings_env(ctx: Context) -> dict[str, str]:
    """``GRANALIGN_<NAME>`` variables for the settings of ``ctx`` that differ from the defaults."""
    default = Context()
    return {
        ENV_PREFIX + f.name.upper(): str(getattr(ctx, f.name))
        for f in fields(ctx)
        if getattr(ctx, f.name) != getattr(default, f.name)
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def chroma_server(folder: Path, timeout: float = 120) -> Iterator[str]:
    """A fresh ``chroma run`` on a free loopback port, stopped afterwards; yields its URL."""
    port = _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "chroma"), "run", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--path", str(folder / "chroma")]
    url = f"http://127.0.0.1:{port}"
    with (folder / "chroma.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chroma run did not start; see {folder / 'chroma.log'}")
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_cluster(nodes: int, cpus_per_node: int) -> Iterator[str]:
    """A Ray head plus ``nodes - 1`` worker nodes on loopback (separate processes); yields the address."""
    from tools.ray_ingest import import_ray

    import_ray()
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    from ray.cluster_utils import Cluster

    cluster: Any = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": cpus_per_node,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes(timeout=120)
        yield str(cluster.address)
    finally:
        cluster.shutdown()


# -- the measured runs (each in a child process) ------------------------------------------------


def _warm(ctx: Context) -> None:
    from PIL import Image

    from graphs import resources

    image = Image.new("RGB", (64, 48))
    resources.clip_for(ctx).embed_images([image])
    resources.captioner_for(ctx).caption([image], ["warm up"])
    resources.embedder_for(ctx).embed(["warm up"])


def one_machine(ctx: Context, files: Sequence[str], jobs: int) -> dict[str, Any]:
    """What ``granalign index --jobs N`` does (N files at once, one process), timed after warm-up."""
    from graphs.ingest import ingest_video
    from tools.ray_ingest import peak_rss_mib

    _warm(ctx)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outs = list(pool.map(lambda f: ingest_video(ctx, f), files))
    seconds = time.perf_counter() - t0
    stage_s: dict[str, float] = {}
    for out in outs:
        for stage, s in out["timings"].items():
            stage_s[stage] = stage_s.get(stage, 0.0) + s
    return {
        "clips": sum(int(o["encoded"]) for o in outs),
        "seconds": seconds,
        "stage_s": stage_s,
        "peak_rss_mib": {"one-machine process": peak_rss_mib()},
    }


def on_ray(ctx: Context, files: Sequence[str], address: str) -> dict[str, Any]:
    """``granalign index --ray ADDRESS`` without the bar: the driver's report."""
    from tools.ray_ingest import ingest_on_ray, peak_rss_mib, ray_context

    report = ingest_on_ray(ray_context(ctx), list(files), address)
    if report.failed:
        raise RuntimeError(f"ray ingest failed for {report.failed}: {report.results}")
    return {
        "clips": report.clips_encoded,
        "seconds": report.seconds,
        "stage_s": report.stage_s,
        "peak_rss_mib": {
            "ray driver": peak_rss_mib(),
            **{f"ray {k}": v for k, v in report.peak_rss_mib.items()},
        },
    }


def _child(ctx: Context, mode: str, arg: str, files: Sequence[str], chroma_url: str) -> dict[str, Any]:
    env = {**os.environ, **settings_env(ctx), **RAY_ENV, "CHROMA_URL": chroma_url, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tools.ray_bench", mode, arg, *files]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {arg} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    got: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return got


def compare(
    ctx: Context, files: Sequence[str], work: Path, cpus_per_node: int = 1
) -> dict[str, dict[str, Any]]:
    """The four configurations on ``files``, each with a fresh Chroma server; results by label."""
    files = [os.path.abspath(f) for f in files]
    results: dict[str, dict[str, Any]] = {}
    for jobs in (1, 2):
        folder = work / f"chroma-jobs{jobs}"
        with chroma_server(folder) as url:
            got = _child(ctx, "one-machine", str(jobs), files, url)
        results[f"one machine, --jobs {jobs}"] = {**got, "store_bytes": folder_bytes(folder / "chroma")}
    for nodes in (1, 2):
        folder = work / f"chroma-ray{nodes}"
        with chroma_server(folder) as url, local_cluster(nodes, cpus_per_node) as address:
            got = _child(ctx, "ray", address, files, url)
        label = f"ray, {nodes} node{'s' if nodes > 1 else ''} x {cpus_per_node} CPU"
        results[label] = {**got, "store_bytes": folder_bytes(folder / "chroma")}
    return results


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (a Chroma server's store, after its server stopped)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def benchmark_rows(ctx: Context, video: Path, work: Path) -> list[dict[str, Any]]:
    """The suite's ``ray_ingest`` rows: ``video`` plus a 2-minute synthetic one, four configurations."""
    from tools.ingest_bench import make_long_video

    work.mkdir(parents=True, exist_ok=True)
    synthetic = work / "synthetic_2min.mp4"
    if not synthetic.exists():
        make_long_video(synthetic, 2.0, fps=10)
    files = [str(video.resolve()), str(synthetic.resolve())]
    roots = os.pathsep.join([ctx.video_roots, str(work.resolve())])
    return rows(compare(ctx.with_overrides(video_roots=roots), files, work), files)


def rows(results: dict[str, dict[str, Any]], files: Sequence[str]) -> list[dict[str, Any]]:
    """Benchmark rows (benchmark, size, metric, value, unit) of :func:`compare`'s results."""
    out: list[dict[str, Any]] = []
    names = ", ".join(Path(f).name for f in files)
    for label, got in results.items():
        size = f"{label}; {got['clips']} clips of {names}"

        def row(metric: str, value: float, unit: str, size: str = size) -> None:
            out.append({"benchmark": BENCHMARK, "size": size, "metric": metric, "value": value, "unit": unit})

        row("whole ingest", got["clips"] / max(got["seconds"], 1e-9), "clips/s")
        total = sum(got["stage_s"].values()) or 1.0
        for stage, seconds in got["stage_s"].items():
            row(f"stage {stage} share", 100.0 * seconds / total, "%")
        for kind, mib in sorted(got["peak_rss_mib"].items()):
            row(f"peak RSS, {kind}", float(mib), "MiB")
        if got.get("store_bytes") and got["clips"]:
            row("store bytes per clip", got["store_bytes"] / got["clips"], "bytes")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("one-machine", help="(child) one-machine ingest with N jobs; JSON on stdout")
    one.add_argument("jobs", type=int)
    one.add_argument("files", nargs="+")
    ray = sub.add_parser("ray", help="(child) Ray ingest on the cluster at ADDRESS; JSON on stdout")
    ray.add_argument("address")
    ray.add_argument("files", nargs="+")
    both = sub.add_parser("compare", help="the four configurations with random-weight models; a table")
    both.add_argument("files", nargs="+")
    both.add_argument("--work", type=Path, default=Path("runs/ray_bench"))
    both.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args(argv)
    if args.mode == "compare":
        from tools.ingest_bench import ingest_context

        args.work.mkdir(parents=True, exist_ok=True)
        roots = sorted({Path(f).resolve().parent for f in args.files})
        ctx = ingest_context(args.work.resolve() / "models", roots)
        results = compare(ctx, args.files, args.work.resolve(), args.cpus_per_node)
        (args.work / "results.json").write_text(json.dumps(results, indent=1))
        for r in rows(results, args.files):
            print(f"{r['size']:<60} {r['metric']:<42} {r['value']:>10.2f} {r['unit']}")
        return
    ctx = Context.from_env()
    got = (
        one_machine(ctx, args.files, args.jobs)
        if args.mode == "one-machine"
        else on_ray(ctx, args.files, args.address)
    )
    print(json.dumps(got))


if __name__ == "__main__":
    main()
