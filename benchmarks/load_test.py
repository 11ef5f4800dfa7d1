"""Load test of the deployed retrieval graph: many concurrent callers for a bounded time.

A benchmark script, not a test: it prints a table and writes JSON.  Two surfaces a user calls:

* ``langgraph``: the ``retrieval`` graph served by ``langgraph dev`` (the API Studio and
  ``RemoteGraph`` use), called through ``langgraph_sdk`` with stateless runs
  (``runs.wait(thread_id=None, ...)``); every caller has its own HTTP client (connection).
* ``mcp``: ``granalign mcp --transport http`` (streamable HTTP), the ``retrieve_moments`` tool
  called with the ``mcp`` client library; every caller holds its own MCP session (its own
  HTTP client, ``initialize`` once, then one tool call after another), as independent agents do.

Replicas (``--replicas N``, MCP target): N ``granalign mcp`` servers share one ``chroma run``
store started here (the captions are imported into it; a ``langgraph`` target uses it too),
and the callers are split across them round-robin, as a load balancer would.  Before the
clock starts, every distinct query is asked once, one at a time, of the first MCP server (a
single replica): under load every MCP answer must equal that one (windows and saliency within
1e-4, the rounding of the outputs), or it counts as an error.

Each caller sends one request at a time, back to back, until ``--duration`` seconds have
passed (a call started before the deadline is waited for).  Queries are the 100 QVHighlights
val queries of the embedded demo data (``tools/demo_data.py``), round-robin, on their own videos,
whose MiniGPT-v2 captions are imported into a temporary Chroma store first (``granalign index
--captions``, in a subprocess; ``--store DIR`` keeps and reuses the store).  The rewriter is
``none`` (original query only, no LLM): the load is the graph, the store and the transport.

Usage::

    .venv/bin/python -m benchmarks.load_test [--target langgraph|mcp|both] [--callers 50]
        [--duration 60] [--replicas 1] [--url URL] [--out runs/load/results.json]

Without ``--url`` the servers are started here (concurrently with the caption import), each
on 127.0.0.1 and a free port in its own process group, and stopped afterwards; targets are then
measured one after the other (the other server sits idle).  With ``--url`` (one target only)
an existing server is called: ``http://host:port`` for langgraph, ``http://host:port/mcp`` for
MCP; its store must hold the demo videos.

One warm-up call (the server loads its text embedder) is made before the clock starts and is
not counted.  Latency is per call, client side; throughput is successful calls per second of
the measured window (start to the last caller's return).  ``client_cpu_s`` is the callers' own
CPU time: on a small machine they compete with the server for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.servers import chroma_server, free_port, langgraph_dev, server, store_copy
from tools.demo_data import DEMO

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = ("langgraph", "mcp")
SOURCE = "demo"
MAX_MESSAGES = 5
ANSWER_TOL = 1e-4 + 1e-9
"""Answers are rounded to 4 decimals: replicas (other processes) agree up to the last digit."""

Call = Callable[[dict[str, Any]], Awaitable[None]]
MakeCaller = Callable[["Tally", int], contextlib.AbstractAsyncContextManager[Call]]
"""A caller's session factory: its tally and its index (which picks its replica)."""


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    qid: int | str
    query: str
    vid: str
    duration: float


def demo_queries(videos: int | None = None) -> list[Query]:
    """The demo annotations, limited to the first ``videos`` distinct videos."""
    out: list[Query] = []
    kept: set[str] = set()
    for line in DEMO.annotations.read_text().splitlines():
        if not line.strip():
            continue
        ann = json.loads(line)
        if ann["vid"] not in kept:
            if videos is not None and len(kept) >= videos:
                continue
            kept.add(ann["vid"])
        out.append(Query(ann["qid"], ann["query"], ann["vid"], float(ann["duration"])))
    return out


def prepare_store(store: Path, vids: set[str], log: Path, chroma_url: str = "") -> float:
    """Import the demo captions of ``vids`` into ``store``, or into the Chroma server at
    ``chroma_url`` when given (idempotent); returns seconds taken."""
    store.mkdir(parents=True, exist_ok=True)
    captions = store.parent / f"{store.name}-captions.jsonl"
    lines = [x for x in DEMO.captions.read_text().splitlines() if x.strip() and json.loads(x)["vid"] in vids]
    captions.write_text("\n".join(lines) + "\n")
    cmd = [
        str(BIN / "granalign"),
        "index",
        "--captions",
        str(captions),
        "--source",
        SOURCE,
        "--store",
        str(store),
    ]
    t0 = time.perf_counter()
    with log.open("wb") as fh:
        rc = subprocess.run(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=server_env(store, chroma_url), cwd=ROOT
        ).returncode
    if rc != 0:
        raise RuntimeError(f"caption import failed ({rc}):\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def server_env(store: Path, chroma_url: str = "") -> dict[str, str]:
    """Environment of the processes started here: the store (a folder, or the Chroma server at
    ``chroma_url``), no LLM, offline, one thread."""
    env = {k: v for k, v in os.environ.items() if k != "CHROMA_URL"}
    return {
        **env,
        **({"CHROMA_URL": chroma_url} if chroma_url else {}),
        "GRANALIGN_STORE": str(store),
        "GRANALIGN_REWRITER": "none",
        "GRANALIGN_VIDEO_ROOTS": str(store),  # holds no video: paths are refused
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


# ---------------------------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def langgraph_server(store: Path, logs: Path, n_jobs: int | None, chroma_url: str = "") -> Iterator[str]:
    extra = ("--n-jobs-per-worker", str(n_jobs)) if n_jobs is not None else ()
    env = server_env(store, chroma_url)
    with langgraph_dev(env, logs / "langgraph.log", extra_args=extra, timeout=240) as url:
        yield url


@contextlib.contextmanager
def mcp_server(store: Path, logs: Path, name: str = "mcp", chroma_url: str = "") -> Iterator[str]:
    port = free_port()
    cmd = [str(BIN / "granalign"), "mcp", "--transport", "http", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    env = server_env(store, chroma_url)
    with server(cmd, f"{url}/healthz", logs / f"{name}.log", cwd=ROOT, env=env, timeout=240):
        yield f"{url}/mcp"


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of an ascending list; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n·q/100), at least 1
    return sorted_values[min(int(rank), len(sorted_values)) - 1]


@dataclass
class Tally:
    """What the callers of one target saw."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    ok_per_server: Counter[int] = field(default_factory=Counter)
    answers_checked: int = 0

    def error(self, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        text = " ".join(text.split())[:400]
        self.errors[text] += 1
        if text not in self.first_errors and len(self.first_errors) < MAX_MESSAGES:
            self.first_errors.append(text)


Answer = tuple[list[list[float]], list[float]]
"""(moments, saliency) of one answer."""


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= ANSWER_TOL for x, y in zip(a, b, strict=True))


def answer_differs(out: dict[str, Any], reference: Answer) -> str | None:
    """How ``out`` differs from the single replica's answer (None: equal within 1e-4)."""
    moments, saliency = reference
    got = out.get("moments") or []
    if len(got) != len(moments) or not all(_close(g, m) for g, m in zip(got, moments, strict=True)):
        return f"moments {got} differ from the single replica's {moments}"
    if not _close(out.get("saliency") or [], saliency):
        return "saliency differs from the single replica's"
    return None


def check_result(out: Any, q: Query) -> str | None:
    """A problem with a retrieval result, or None when it is a proper answer."""
    if not isinstance(out, dict) or not isinstance(out.get("moments"), list) or not out["moments"]:
        return f"no moments in the result: {str(out)[:200]}"
    if out.get("video_id") != q.vid:
        return f"answered about video {out.get('video_id')!r} instead of {q.vid!r}"
    for start, end, _ in out["moments"]:
        if not 0 <= start < end <= q.duration + 1e-6:
            return f"window [{start}, {end}] outside [0, {q.duration}]"
    return None


async def drive(
    make_caller: MakeCaller,
    queries: list[Query],
    callers: int,
    duration: float,
    call_timeout: float,
) -> tuple[Tally, float]:
    """Run ``callers`` callers until ``duration`` has passed; returns the tally and the window."""
    tally = Tally()
    counter = iter(range(10**12))
    deadline = 0.0

    async def caller(index: int) -> None:
        while time.monotonic() < deadline:
            try:
                async with make_caller(tally, index) as call:
                    while time.monotonic() < deadline:
                        q = queries[next(counter) % len(queries)]
                        t0 = time.perf_counter()
                        try:
                            async with asyncio.timeout(call_timeout):
                                await call(asdict(q))
                        except TimeoutError:
                            tally.error(f"timeout: no answer within {call_timeout:.0f} s")
                            continue
                        except Exception as exc:
                            tally.error(exc)
                            continue
                        tally.latencies_s.append(time.perf_counter() - t0)
            except Exception as exc:  # the session itself failed (connect, initialize)
                tally.error(f"session: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)

    start = time.monotonic()
    deadline = start + duration
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return tally, time.monotonic() - start


def langgraph_caller(urls: list[str], call_timeout: float) -> MakeCaller:
    from langgraph_sdk import get_client

    @contextlib.asynccontextmanager
    async def make(tally: Tally, index: int) -> Any:
        server_no = index % len(urls)
        client = get_client(url=urls[server_no], api_key=None, timeout=call_timeout + 5)

        async def call(q: dict[str, Any]) -> None:
            out = await client.runs.wait(
                None,
                "retrieval",
                input={"video": q["vid"], "query": q["query"], "duration": q["duration"]},
                context={"top_n": 5},
            )
            problem = check_result(out, Query(**q))
            if problem:
                raise RuntimeError(problem)
            tally.ok_per_server[server_no] += 1

        try:
            yield call
        finally:
            await client.http.client.aclose()

    return make


def mcp_caller(
    urls: list[str], call_timeout: float, reference: dict[str, Answer] | None = None
) -> MakeCaller:
    """MCP sessions, caller ``i`` on ``urls[i % len(urls)]``; answers are checked against
    ``reference`` (by query text and video) when given."""
    from datetime import timedelta

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    @contextlib.asynccontextmanager
    async def make(tally: Tally, index: int) -> Any:
        server_no = index % len(urls)
        async with (
            streamable_http_client(urls[server_no]) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()

            async def call(q: dict[str, Any]) -> None:
                res = await session.call_tool(
                    "retrieve_moments",
                    {"video": q["vid"], "query": q["query"], "top_k": 5},
                    read_timeout_seconds=timedelta(seconds=call_timeout),
                )
                if res.isError:
                    text = res.content[0].text if res.content and hasattr(res.content[0], "text") else "?"
                    raise RuntimeError(f"tool error: {text}")
                out = res.structuredContent
                problem = check_result(out, Query(**q))
                expected = None if reference is None else reference.get(answer_key(q))
                if problem is None and expected is not None and out is not None:
                    tally.answers_checked += 1
                    problem = answer_differs(out, expected)
                if problem:
                    raise RuntimeError(problem)
                tally.ok_per_server[server_no] += 1

            yield call

    return make


def summarise(
    target: str, url: str, tally: Tally, window_s: float, args: argparse.Namespace
) -> dict[str, Any]:
    lat = sorted(tally.latencies_s)
    ms = [x * 1000.0 for x in lat]
    n_err = sum(tally.errors.values())
    return {
        "target": target,
        "url": url,
        "callers": args.callers,
        "duration_s": args.duration,
        "window_s": round(window_s, 3),
        "calls": len(lat) + n_err,
        "ok": len(lat),
        "errors": n_err,
        "error_messages": tally.first_errors,
        "error_counts": dict(tally.errors.most_common(MAX_MESSAGES)),
        "throughput_calls_per_s": round(len(lat) / window_s, 3) if window_s > 0 else 0.0,
        "latency_ms": {
            "p50": round(percentile(ms, 50), 1),
            "p95": round(percentile(ms, 95), 1),
            "p99": round(percentile(ms, 99), 1),
            "mean": round(sum(ms) / len(ms), 1) if ms else float("nan"),
            "min": round(ms[0], 1) if ms else float("nan"),
            "max": round(ms[-1], 1) if ms else float("nan"),
        },
    }


async def warm_up(make_caller: MakeCaller, index: int, q: Query, timeout: float) -> float:
    """One uncounted call on server ``index`` (it loads its text embedder); raises if it fails."""
    tally = Tally()
    t0 = time.perf_counter()
    async with make_caller(tally, index) as call, asyncio.timeout(timeout):
        await call(asdict(q))
    return time.perf_counter() - t0


def callers_for(
    target: str, urls: list[str], call_timeout: float, reference: dict[str, Answer] | None = None
) -> MakeCaller:
    if target == "langgraph":
        return langgraph_caller(urls, call_timeout)
    return mcp_caller(urls, call_timeout, reference)


async def warm_all(urls: dict[str, list[str]], q: Query, timeout: float) -> dict[str, float]:
    """One warm-up call per server, all at once (each loads its own embedder); the slowest
    server's seconds per target."""
    jobs = [(t, i) for t, us in urls.items() for i in range(len(us))]
    took = await asyncio.gather(*(warm_up(callers_for(t, urls[t], timeout), i, q, timeout) for t, i in jobs))
    out: dict[str, float] = {}
    for (t, _), s in zip(jobs, took, strict=True):
        out[t] = max(out.get(t, 0.0), s)
    return out


def answer_key(q: dict[str, Any] | Query) -> str:
    d = asdict(q) if isinstance(q, Query) else q
    return f"{d['vid']}\n{d['query']}"


async def reference_answers(url: str, queries: list[Query], timeout: float) -> dict[str, Answer]:
    """Every distinct query asked once of one MCP server, one at a time: a single replica's answers."""
    from datetime import timedelta

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    out: dict[str, Answer] = {}
    async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        for q in queries:
            if answer_key(q) in out:
                continue
            res = await session.call_tool(
                "retrieve_moments",
                {"video": q.vid, "query": q.query, "top_k": 5},
                read_timeout_seconds=timedelta(seconds=timeout),
            )
            got = res.structuredContent
            if res.isError or got is None or check_result(got, q):
                raise RuntimeError(f"reference call failed for {q.qid}: {res.content}")
            out[answer_key(q)] = (got["moments"], got["saliency"])
    return out


def measure(
    target: str,
    urls: list[str],
    queries: list[Query],
    args: argparse.Namespace,
    reference: dict[str, Answer] | None = None,
) -> dict[str, Any]:
    make = callers_for(target, urls, args.call_timeout, reference)
    load_before = os.getloadavg()
    cpu0 = time.process_time()
    tally, window = asyncio.run(drive(make, queries, args.callers, args.duration, args.call_timeout))
    out = summarise(target, " ".join(urls), tally, window, args)
    out["servers"] = len(urls)
    out["ok_per_server"] = [tally.ok_per_server[i] for i in range(len(urls))]
    out["answers_checked"] = tally.answers_checked
    # the callers share the machine with the server: their own CPU time says how much they took
    out["client_cpu_s"] = round(time.process_time() - cpu0, 1)
    out["loadavg_before"] = [round(x, 2) for x in load_before]
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def start_everything(
    targets: list[str], store: Path, vids: set[str], logs: Path, args: argparse.Namespace, stack: ExitStack
) -> tuple[dict[str, list[str]], dict[str, float], float]:
    """Import the captions, then start the servers concurrently; every server that came up is
    registered on ``stack`` for shutdown, also when another one failed.

    One server per target on its own copy of the store (an embedded folder serves one
    process); with ``--replicas N`` > 1, a ``chroma run`` store shared by all of them (the N
    MCP replicas and the langgraph server).  Returns urls per target, start seconds per target
    (the slowest of its servers) and import seconds."""
    chroma_url = stack.enter_context(chroma_server(logs)) if args.replicas > 1 else ""
    import_s = prepare_store(store, vids, logs / "import.log", chroma_url)

    def store_of(name: str) -> Path:
        return store if chroma_url else store_copy(store, logs / f"store-{name}")

    n = {"langgraph": 1, "mcp": args.replicas}
    names = {t: [t] if n[t] == 1 else [f"{t}-{i + 1}" for i in range(n[t])] for t in targets}
    stores = {name: store_of(name) for t in targets for name in names[t]}

    def start(target: str, name: str) -> tuple[contextlib.AbstractContextManager[str], str, float]:
        t0 = time.perf_counter()
        cm = (
            langgraph_server(stores[name], logs, args.n_jobs_per_worker, chroma_url)
            if target == "langgraph"
            else mcp_server(stores[name], logs, name, chroma_url)
        )
        url = cm.__enter__()
        return cm, url, time.perf_counter() - t0

    jobs = [(t, name) for t in targets for name in names[t]]
    with ThreadPoolExecutor(len(jobs)) as pool:
        started = {job: pool.submit(start, *job) for job in jobs}
    # leaving the pool waited for all of them
    urls: dict[str, list[str]] = {t: [] for t in targets}
    start_s: dict[str, float] = {}
    for (target, _), future in started.items():
        if future.exception() is None:
            cm, url, took = future.result()
            urls[target].append(url)
            start_s[target] = max(start_s.get(target, 0.0), took)
            stack.push(cm.__exit__)
    futures: list[Future[Any]] = list(started.values())
    problems = [f.exception() for f in futures if f.exception() is not None]
    if problems:
        raise RuntimeError(f"could not prepare the load test: {problems[0]}") from problems[0]
    return urls, start_s, import_s


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Load test: retrieval graph (rewriter none, demo QVHighlights queries)")
    for col in (
        "target",
        "servers",
        "callers",
        "window s",
        "calls",
        "errors",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "calls/s",
    ):
        table.add_column(col, justify="left" if col == "target" else "right")
    for r in results:
        lat = r["latency_ms"]
        table.add_row(
            r["target"],
            str(r.get("servers", 1)),
            str(r["callers"]),
            f"{r['window_s']:.1f}",
            str(r["calls"]),
            str(r["errors"]),
            f"{lat['p50']:.0f}",
            f"{lat['p95']:.0f}",
            f"{lat['p99']:.0f}",
            f"{lat['max']:.0f}",
            f"{r['throughput_calls_per_s']:.2f}",
        )
    console = Console(width=None if sys.stdout.isatty() else 132)
    console.print(table)
    for r in results:
        for msg in r["error_messages"]:
            console.print(
                f"[red]{r['target']} error[/] ×{r['error_counts'].get(msg, '?')}: {msg}", markup=True
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load_test", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=(*TARGETS, "both"), default="both")
    p.add_argument("--callers", type=int, default=50, help="concurrent callers (default 50)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per target (default 60)")
    p.add_argument("--url", default="", help="call this server instead of starting one (one target only)")
    p.add_argument("--out", type=Path, default=Path("runs/load/results.json"))
    p.add_argument(
        "--store", type=Path, default=None, help="store folder to fill and keep (default: temporary)"
    )
    p.add_argument("--videos", type=int, default=None, help="use only the first N demo videos (default all)")
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="MCP servers sharing one chroma run store, callers split across them (default 1)",
    )
    p.add_argument("--call-timeout", type=float, default=120.0, help="seconds before a call counts as failed")
    p.add_argument(
        "--n-jobs-per-worker",
        type=int,
        default=None,
        help="passed to langgraph dev (its default is 1 run at once; the rest queue)",
    )
    args = p.parse_args(argv)
    if args.callers < 1 or args.duration <= 0 or args.call_timeout <= 0:
        p.error("--callers, --duration and --call-timeout must be positive")
    if args.replicas < 1:
        p.error("--replicas must be at least 1")
    if args.replicas > 1 and args.url:
        p.error("--replicas starts its own servers: leave out --url")
    if args.videos is not None and args.videos < 1:
        p.error("--videos must be at least 1")
    if args.url and args.target == "both":
        p.error("--url needs one --target (langgraph or mcp)")
    if args.url and not args.url.startswith(("http://", "https://")):
        p.error("--url must start with http:// or https://")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    targets = list(TARGETS) if args.target == "both" else [args.target]
    queries = demo_queries(args.videos)
    warm_timeout = max(args.call_timeout, 120.0)
    results: list[dict[str, Any]] = []
    import_s: float | None = None
    tmp = Path(tempfile.mkdtemp(prefix="granalign-load-"))
    try:
        with ExitStack() as stack:
            if args.url:
                urls: dict[str, list[str]] = {targets[0]: [args.url]}
                start_s: dict[str, float] = {}
            else:
                store = args.store.resolve() if args.store else tmp / "store"
                vids = {q.vid for q in queries}
                urls, start_s, import_s = start_everything(targets, store, vids, tmp, args, stack)
            warm_s = asyncio.run(warm_all(urls, queries[0], warm_timeout))
            reference = (
                asyncio.run(reference_answers(urls["mcp"][0], queries, warm_timeout))
                if "mcp" in urls
                else None
            )
            for target in targets:
                result = measure(target, urls[target], queries, args, reference if target == "mcp" else None)
                result["warmup_s"] = round(warm_s[target], 3)
                if target in start_s:
                    result["server"] = (
                        "started here"
                        + (
                            f" ({len(urls[target])} replicas, one chroma run store)"
                            if len(urls[target]) > 1
                            else ""
                        )
                        + (
                            f" (--n-jobs-per-worker {args.n_jobs_per_worker})"
                            if target == "langgraph" and args.n_jobs_per_worker
                            else ""
                        )
                    )
                    result["server_start_s"] = round(start_s[target], 1)
                else:
                    result["server"] = "given (--url)"
                results.append(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "rewriter": "none",
        "queries": len(queries),
        "videos": len({q.vid for q in queries}),
        "import_s": None if import_s is None else round(import_s, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
