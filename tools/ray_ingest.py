"""Distributed ingest on Ray: ``granalign index SOURCE --ray [ADDRESS]``.

Why Ray: a library of thousands of hours needs the GPUs and CPUs of several hosts, and the
teams that have them already run Ray for batch multimodal inference.  The driver (this module,
in the CLI's process) plans; Ray runs the work and recovers it when a node dies:

* **model actors**, loaded once per actor process, never per video: on every node alive at the
  start, a CLIP actor (half a GPU when the node has one, else CPU), a MiniLM embedding actor and,
  for a ``local:`` captioner, a captioner actor; an ``openai:`` captioner gets one actor per
  base URL (``openai:http://a/v1,http://b/v1#model`` spreads the frames over the vLLM replicas).
  Actors restart on another node when theirs dies (``max_restarts``) and calls in flight are
  retried (``max_task_retries``).
* **probe tasks** (CPU, near the files): the ingest graph's :func:`graphs.ingest.probe` node
  (hash, duration, clips still to do under this run's ids).
* **batch tasks** (CPU): decode the ``ingest_batch`` clips of one batch by seeking (no task
  ever holds more than one batch of frames), then the ingest graph's own per-batch function
  (:func:`graphs.ingest._encode_batch`) with the actors standing in for the models: CLIP →
  caption → embed → write to the Chroma server.  Ids are deterministic and writes are upserts,
  so a task Ray retries after a node failure rewrites the same records and adds none.
  Before decoding, a batch task checks that its host's file is the one the probe hashed (the
  size and a sampled digest, :func:`granalign.io.video.content_sample`: comparable across
  hosts, unlike a stamp with an inode and mtime); after decoding, that the file did not change
  on its host meanwhile (its local stamp).  Either failing fails that video alone, nothing of
  the batch stored.
* the video record is written by the driver with :func:`graphs.ingest.finalize`, once, after
  the last batch of that video succeeded.  A bad file fails alone and is listed.

Workers on other hosts cannot share an embedded Chroma folder, so ``--ray`` needs a Chroma
server (``CHROMA_URL`` or ``--set chroma_url=...``).
"""

from __future__ import annotations

import glob
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from granalign.errors import BackendError, ConfigError, GranAlignError, InputError
from granalign.io.video import (
    check_unchanged,
    content_sample,
    display_path,
    file_stamp,
    find_videos,
    video_folder,
)
from granalign.specs import parse_spec
from graphs import resources
from graphs.context import Context

__all__ = [
    "RayIngestReport",
    "captioner_replicas",
    "import_ray",
    "index_on_ray",
    "ingest_on_ray",
    "list_sources",
    "ray_context",
]

LIST_SUFFIXES = (".txt", ".lst", ".list")
"""A SOURCE file with one of these endings is a list of video paths, one per line."""

FORWARDED_ENV = (
    "OPENAI_API_KEY",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "ANONYMIZED_TELEMETRY",
    "GRANALIGN_CHROMA_TIMEOUT",
)
"""Driver environment the workers need too (vLLM's bearer token, offline hubs, how long a
request to the Chroma server may wait); Ray workers inherit the environment of their node's
``ray start``, not the driver's."""

ACTOR_RESTARTS = 4
"""Restarts of a model actor (its node died) before its calls fail; each reloads the model."""
TASK_RETRIES = 4
"""Retries of a probe or batch task whose worker or node died."""

log = logging.getLogger(__name__)


# -- set-up ------------------------------------------------------------------------------------


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs Ray, which is not installed: pip install 'granalign[ray]' (ray==2.60.0)"
        ) from None
    return ray


def captioner_replicas(spec: str) -> list[str]:
    """One captioner spec per vLLM replica: ``openai:URL1,URL2#model`` → one ``openai:`` spec each.

    Every replica serves the same model, so captions carry the same source name and ids
    whichever replica wrote them.  ``local:`` specs are returned as they are.
    """
    parsed = parse_spec(spec, role="captioner", allowed=("local", "openai"))
    if parsed.engine != "openai":
        return [spec]
    urls = [u.strip() for u in parsed.target.split(",") if u.strip()]
    specs = [f"openai:{u}#{parsed.model}" for u in urls]
    for one in specs:
        parse_spec(one, role="captioner", allowed=("openai",))  # every URL must be a base URL
    return specs


def ray_context(ctx: Context) -> Context:
    """``ctx`` made self-contained for workers on other hosts.

    The Chroma server is required (an embedded folder cannot be shared across hosts); video
    roots become absolute folders (a worker's current directory is not the driver's); the
    captioner names its first replica (every replica has the same name, see
    :func:`captioner_replicas`).
    """
    url = ctx.chroma_url or os.environ.get("CHROMA_URL", "")
    if not url:
        raise ConfigError(
            "--ray needs a Chroma server: set CHROMA_URL=http://host:port (chroma run) or "
            "--set chroma_url=...; an embedded store folder cannot be shared by workers on other hosts"
        )
    roots = os.pathsep.join(str(r) for r in resources.video_roots(ctx))
    return ctx.with_overrides(
        chroma_url=url, video_roots=roots, captioner=captioner_replicas(ctx.captioner)[0]
    )


def list_sources(target: str, roots: Sequence[Path]) -> list[str]:
    """The video files SOURCE names, as absolute paths: a folder, a list file, a glob or one file.

    A list file (``.txt``, ``.lst``, ``.list``) holds one path per line (blank lines and ``#``
    comments skipped; relative paths are relative to the list's folder).  Each file is checked
    later, on a worker, by the ingest graph's probe, so one bad entry fails alone.
    """
    expanded = os.path.expanduser(target)
    folder = video_folder(target, roots)
    if folder is not None:
        files = [str(p) for p in find_videos(folder, roots)]
        if not files:
            raise InputError(f"folder {display_path(target)} holds no video files")
        return files
    if os.path.isfile(expanded):
        if Path(expanded).suffix.lower() not in LIST_SUFFIXES:
            return [os.path.abspath(expanded)]
        return _read_list(Path(expanded))
    if glob.has_magic(expanded):
        matches = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
        if not matches:
            raise InputError(f"glob {target!r} matches no files")
        return [os.path.abspath(p) for p in matches]
    raise InputError(
        f"SOURCE {display_path(target)!r} is not a folder, a list file ({', '.join(LIST_SUFFIXES)}), "
        "a glob or a file"
    )


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"list file {display_path(path)} cannot be read: {exc}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise InputError(f"list file {display_path(path)} names no video files")
    base = path.resolve().parent
    return [os.path.abspath(e if os.path.isabs(e) else base / e) for e in entries]


# -- worker side: model actors and their stand-ins ----------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set of this process in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) / (1024 * 1024 if sys.platform == "darwin" else 1024)


class ClipHost:
    """A CLIP image encoder in its own actor process, loaded once (on the GPU when given one)."""

    def __init__(self, ctx: Context, device: str, env: dict[str, str]) -> None:
        from granalign.backends.clip import OpenClipEncoder

        os.environ.update(env)
        target = parse_spec(ctx.clip_model, role="CLIP model", allowed=("local",)).target
        self.model = OpenClipEncoder(target, ctx.clip_pretrained, device=device)

    def ready(self) -> str:
        """Load and warm the model (so no batch pays for it); its name for the ids."""
        from PIL import Image

        self.model.embed_images([Image.new("RGB", (32, 32))])
        return self.model.name

    def embed_images(self, images: Sequence[Any]) -> NDArray[np.float32]:
        return self.model.embed_images(images)

    def peak_rss_mib(self) -> float:
        return peak_rss_mib()


class CaptionHost:
    """The agnostic captioner in its own actor process: a local VLM, or one vLLM replica's client."""

    def __init__(self, ctx: Context, spec: str, device: str, env: dict[str, str]) -> None:
        from granalign.backends.captioner import LocalVLMCaptioner, make_captioner

        os.environ.update(env)
        self.model: Any
        if parse_spec(spec, role="captioner", allowed=("local", "openai")).engine == "local":
            target = parse_spec(spec, role="captioner", allowed=("local",)).target
            self.model = LocalVLMCaptioner(
                target, max_new_tokens=ctx.caption_tokens, max_pixels=ctx.max_pixels, device=device
            )
        else:
            self.model = make_captioner(
                spec,
                max_pixels=ctx.max_pixels,
                max_tokens=ctx.caption_tokens,
                concurrency=ctx.concurrency,
                timeout_s=ctx.request_timeout,
                attempts=ctx.request_attempts,
            )

    def ready(self) -> str:
        """Load a local model (a served one is left alone: a warm-up request would be billed)."""
        from PIL import Image

        if not str(self.model.name).startswith("openai:"):
            self.model.caption([Image.new("RGB", (32, 32))], ["warm up"])
        return str(self.model.name)

    def caption(self, images: Sequence[Any], prompts: Sequence[str]) -> list[str]:
        return list(self.model.caption(images, prompts))

    def peak_rss_mib(self) -> float:
        return peak_rss_mib()


class EmbedHost:
    """The MiniLM caption embedder in its own actor process, loaded once."""

    def __init__(self, ctx: Context, env: dict[str, str]) -> None:
        from granalign.backends.embedder import make_embedder

        os.environ.update(env)
        self.model = make_embedder(ctx.embedder)

    def ready(self) -> str:
        self.model.embed(["warm up"])
        return str(self.model.name)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self.model.embed(texts)

    def peak_rss_mib(self) -> float:
        return peak_rss_mib()


@dataclass(frozen=True)
class ModelSet:
    """Handles of the model actors a batch task calls, with the models' names (for the ids)."""

    clip: Any
    captioners: tuple[Any, ...]
    embedder: Any
    clip_name: str
    captioner_name: str
    embedder_name: str


class _RemoteClip:
    """Stands in for a ClipEncoder inside :func:`graphs.ingest._encode_batch`."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle, self.name = handle, name

    def embed_images(self, images: Sequence[Any]) -> NDArray[np.float32]:
        import ray

        result: NDArray[np.float32] = ray.get(self.handle.embed_images.remote(list(images)))
        return result


class _RemoteCaptioner:
    """Stands in for a Captioner: the batch's replica first (batches spread round the ring), then
    the others in ring order when it fails with a :class:`BackendError` (its vLLM server down,
    timed out or answering errors), so one replica down slows the run instead of failing
    about 1/n of the batches and their videos.  All failing raises the last error."""

    def __init__(self, handles: Sequence[Any], first: int, name: str) -> None:
        if not handles:
            raise ConfigError("no captioner replica to send the batch to")
        n = len(handles)
        self.handles = [handles[(first + k) % n] for k in range(n)]
        self.name = name

    def caption(self, images: Sequence[Any], prompts: Sequence[str]) -> list[str]:
        import ray

        for k, handle in enumerate(self.handles):
            try:
                result: list[str] = ray.get(handle.caption.remote(list(images), list(prompts)))
            except BackendError as exc:  # a task's error arrives as a RayTaskError of its class
                cause = getattr(exc, "cause", None)  # the actor's own error, without Ray's traceback
                why = str(cause if isinstance(cause, BaseException) else exc)
                n = len(self.handles)
                if k + 1 == n:
                    status = getattr(cause if isinstance(cause, BackendError) else exc, "status", None)
                    raise BackendError(f"{why} ({n} captioner replicas tried)", status=status) from None
                log.warning("captioner replica %d of %d failed (%s); trying the next", k + 1, n, why)
                continue
            return result
        raise AssertionError("unreachable")  # pragma: no cover


class _RemoteEmbedder:
    """Stands in for a TextEmbedder."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle, self.name = handle, name

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import ray

        result: NDArray[np.float32] = ray.get(self.handle.embed.remote(list(texts)))
        return result


@dataclass(frozen=True)
class BatchJob:
    """One batch of one video: what a batch task needs (paths are the worker's).

    ``size`` and ``sample`` (:func:`granalign.io.video.content_sample`) are those of the bytes
    the probe hashed into ``video_id``: the batch task compares its own host's file with them.
    """

    video: str
    path: str
    video_id: str
    duration_s: float
    clips: tuple[int, ...]
    number: int
    size: int
    sample: str


def _pick_models(model_sets: dict[str, ModelSet], job: BatchJob) -> ModelSet:
    """This node's models when it has them (frames stay on the node), else one by batch number."""
    import ray

    here = model_sets.get(ray.get_runtime_context().get_node_id())
    if here is not None:
        return here
    ordered = [model_sets[k] for k in sorted(model_sets)]
    return ordered[job.number % len(ordered)]


def probe_task(ctx: Context, video: str, env: dict[str, str]) -> dict[str, Any]:
    """The ingest graph's probe node on a worker: hash, duration, clips still to do."""
    from langgraph.runtime import Runtime
    from langgraph.types import Overwrite

    from graphs.ingest import probe

    os.environ.update(env)
    got = probe({"video": video}, Runtime(context=ctx))
    path = Path(got["path"])
    got["sample"] = content_sample(path)  # what batch tasks on other hosts compare their copy with
    check_unchanged(path, got["stamp"], got["video_id"])  # the sample is of the bytes hashed
    notes = got.get("notes")
    if isinstance(notes, Overwrite):  # the graph's reducer bypass: the driver wants the list
        got["notes"] = list(notes.value)
    return got


def batch_task(
    ctx: Context, job: BatchJob, model_sets: dict[str, ModelSet], env: dict[str, str]
) -> dict[str, Any]:
    """Decode one batch's frames, then CLIP → caption → embed → store through the graph's batch code.

    Retried by Ray if its worker or node dies: it looks again at which frames exist and
    upserts the same ids, so a retry writes nothing twice.  Its host's file must be the one the
    probe hashed, and stay unchanged while the frames are read (:func:`_probed_file_here`,
    :func:`_unchanged_here`); otherwise an :class:`InputError` fails the video, nothing stored.
    """
    from granalign.io.store import frame_id
    from granalign.io.video import FrameSampler, clip_times, probe_video
    from graphs.ingest import STAGES, _ClipWriter, _decode, _encode_batch

    os.environ.update(env)
    models = _pick_models(model_sets, job)
    store = resources.store_for(ctx)
    s_key, p_hash = resources.sampling_key(ctx), resources.agnostic_prompt_hash(ctx)
    path, clips = Path(job.path), list(job.clips)
    stamp = _probed_file_here(path, job)
    info = probe_video(path)
    times = clip_times(job.duration_s, ctx.clip_len)
    timings = dict.fromkeys(STAGES, 0.0)
    with FrameSampler(path, info, max_pixels=ctx.max_pixels) as sampler:
        images, timings["decode"] = _decode(sampler, times, ctx.clip_len, clips)
        damage = sampler.damage.note()
    _unchanged_here(path, stamp, job)  # the frames in hand are of the bytes hashed: store them
    have_frame = store.existing_ids(
        store.frames_collection(models.clip_name),
        [frame_id(job.video_id, c, models.clip_name, s_key) for c in clips],
    )
    writer = _ClipWriter(
        job.video_id,
        store,
        _RemoteClip(models.clip, models.clip_name),
        _RemoteCaptioner(models.captioners, job.number, models.captioner_name),
        _RemoteEmbedder(models.embedder, models.embedder_name),
        s_key,
        p_hash,
        have_frame,
    )
    _encode_batch(writer, clips, images, timings)
    return {"timings": timings, "peak_rss_mib": peak_rss_mib(), "notes": [damage] if damage else []}


def _refuse(path: Path, job: BatchJob, what: str) -> InputError:
    return InputError(
        f"video {display_path(path)} {what}; nothing of its batch {job.number} was stored under "
        f"{job.video_id}: re-run the index once the file is complete and the same on every host"
    )


def _probed_file_here(path: Path, job: BatchJob) -> list[int]:
    """This host's stamp of ``path``, once its size and sampled digest are the probe's.

    The probe may have run on another host, reading that host's copy: a stamp (inode, mtime)
    cannot be compared across hosts, the size and :func:`content_sample` (2.5 MiB read) can.
    They refuse a file that is not the bytes hashed into ``job.video_id`` (replaced or
    re-exported since the probe, a stale or half-copied mirror on this host).
    """
    host = socket.gethostname()
    try:
        stamp = file_stamp(path)
        if stamp[0] != job.size:
            what = f"{stamp[0]:,} bytes here, {job.size:,} when probed"
            raise _refuse(path, job, f"on host {host} is not the file the probe hashed ({what})")
        sample = content_sample(path)
    except OSError as exc:
        raise _refuse(path, job, f"cannot be read on host {host} ({exc.strerror or exc})") from None
    if sample != job.sample:
        what = f"same size, other bytes: sampled digest {sample} here, {job.sample} when probed"
        raise _refuse(path, job, f"on host {host} is not the file the probe hashed ({what})")
    return stamp


def _unchanged_here(path: Path, stamp: list[int], job: BatchJob) -> None:
    """Refuse a file whose stamp on this host (size, mtime, inode) changed while the batch read it."""
    try:
        changed = file_stamp(path) != stamp
    except OSError:  # removed meanwhile
        changed = True
    if changed:
        what = f"changed on host {socket.gethostname()} while the batch read its frames"
        raise _refuse(path, job, what)


# -- driver side --------------------------------------------------------------------------------


@dataclass
class VideoPlan:
    """What the driver knows about one video: its probe, its batches in flight, its failure."""

    video: str
    probe: dict[str, Any] | None = None
    left: int = 0
    problem: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # from the batch tasks (damaged packets)
    same_as: str = ""  # another file of this run with the same bytes: encoded once, under it
    stored: int = 0  # its clips in the store: an earlier run's (the probe's skipped) and this run's
    begun: bool = False  # a batch of it was sent: a stopped run leaves it unfinished, not untried


@dataclass
class RayIngestReport:
    """The run's outcome: the summary rows of ``granalign index`` plus throughput figures.

    ``results`` has the one-machine path's shape, ``(video, ingest output or None, problem)``.
    ``stage_s`` sums each stage's seconds over all batch tasks; ``peak_rss_mib`` is the largest
    peak resident set seen per kind of worker process; ``nodes_lost``: nodes of the ``nodes`` the
    run started on that Ray no longer counts alive at its end (:func:`_lost_nodes`).
    """

    results: list[tuple[str, dict[str, Any] | None, str]]
    clips_total: int
    clips_encoded: int
    seconds: float
    stage_s: dict[str, float]
    peak_rss_mib: dict[str, float]
    nodes: int
    nodes_lost: int = 0

    @property
    def failed(self) -> list[str]:
        return [video for video, _, problem in self.results if problem]


def _cause(exc: BaseException) -> BaseException:
    """The user's exception inside a Ray task error (its text without Ray's traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _message(exc: BaseException) -> str:
    cause = _cause(exc)
    if isinstance(cause, GranAlignError):
        return str(cause)
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def _retryable(ray: Any) -> list[type[BaseException]]:
    """Ray errors raised inside a task by a lost actor call or object: worth re-running the task."""
    names = ("RayActorError", "ObjectLostError", "WorkerCrashedError", "NodeDiedError", "RaySystemError")
    return [getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n)]


def _alive_nodes(ray: Any) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _lost_nodes(ray: Any, started_on: Sequence[str]) -> int:
    """How many of the nodes the run started on are dead now.  Ray recovers (tasks retried,
    actors restarted elsewhere) without telling the driver; an operator must still hear that a
    host went away.  A node that died in the last seconds, before the head missed enough of its
    heartbeats, is not counted yet."""
    alive = {node["NodeID"] for node in _alive_nodes(ray)}
    return sum(1 for node_id in started_on if node_id not in alive)


def lost_nodes_text(lost: int, nodes: int) -> str:
    """The summary's line for nodes lost mid-run (the videos they failed, if any, are listed)."""
    one = lost == 1
    return (
        f"{lost} of {nodes} Ray nodes {'was' if one else 'were'} lost during the run; "
        f"{'its' if one else 'their'} batch tasks were retried and {'its' if one else 'their'} "
        "model actors restarted on the nodes left"
    )


def _start_models(
    ray: Any, ctx: Context, env: dict[str, str]
) -> tuple[dict[str, ModelSet], list[tuple[str, Any]]]:
    """Model actors on every alive node (captioners: per node if local, per replica if served).

    Returns the sets by node id and every actor with its kind (to read their memory at the end).
    Waits until every model is loaded; a model that cannot load is a ConfigError.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    common = {"max_restarts": ACTOR_RESTARTS, "max_task_retries": TASK_RETRIES, "num_cpus": 0}
    clip_cls, cap_cls, emb_cls = ray.remote(ClipHost), ray.remote(CaptionHost), ray.remote(EmbedHost)
    replicas = captioner_replicas(ctx.captioner)
    served = parse_spec(replicas[0], role="captioner").engine == "openai"
    shared_caps = tuple(  # a local captioner has one actor per node instead (below)
        cap_cls.options(**common, max_concurrency=4).remote(ctx, spec, "cpu", env)
        for spec in replicas
        if served
    )
    handles: dict[str, tuple[Any, tuple[Any, ...], Any]] = {}
    for node in _alive_nodes(ray):
        node_id = node["NodeID"]
        gpu = float(node.get("Resources", {}).get("GPU", 0)) > 0
        place = {**common, "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=True)}
        gpu_opts = {"num_gpus": 0.5} if gpu else {}
        device = "cuda" if gpu else "cpu"
        clip = clip_cls.options(**place, **gpu_opts).remote(ctx, device, env)
        caps = (
            shared_caps
            if served
            else (cap_cls.options(**place, **gpu_opts).remote(ctx, replicas[0], device, env),)
        )
        embedder = emb_cls.options(**place).remote(ctx, env)
        handles[node_id] = (clip, caps, embedder)
    kinds = {
        "clip actor": [c for c, _, _ in handles.values()],
        "embedder actor": [e for *_, e in handles.values()],
    }
    kinds["captioner actor"] = list(dict.fromkeys(h for _, caps, _ in handles.values() for h in caps))
    every = [(kind, h) for kind, hs in kinds.items() for h in hs]
    try:
        names = ray.get([h.ready.remote() for _, h in every])
    except Exception as exc:
        raise ConfigError(f"a model actor could not load its model: {_message(exc)}") from None
    name_of = dict(zip([id(h) for _, h in every], names, strict=True))
    sets = {
        node_id: ModelSet(
            clip, caps, embedder, name_of[id(clip)], name_of[id(caps[0])], name_of[id(embedder)]
        )
        for node_id, (clip, caps, embedder) in handles.items()
    }
    return sets, every


def _check_names(ctx: Context, sets: dict[str, ModelSet]) -> None:
    """The actors' model names must be the driver's: they make the ids the probe looked up."""
    want = (
        resources.clip_for(ctx).name,
        resources.captioner_for(ctx).name,
        resources.embedder_for(ctx).name,
    )
    for models in sets.values():
        got = (models.clip_name, models.captioner_name, models.embedder_name)
        if got != want:
            raise ConfigError(f"model actors report models {got}, the driver expects {want}")


def _forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


PROBE_S = 5.0
"""How long the head's GCS may take to answer the check that comes before ``ray.init``."""

AUTH_HINT = (
    "the Ray cluster at --ray {address!r} wants its authentication token: set RAY_AUTH_MODE=token "
    "with the cluster's token in ~/.ray/auth_token or $RAY_AUTH_TOKEN (ray start enables token "
    "authentication when ~/.ray/auth_token exists)"
)

NO_AUTO_CLUSTER = (
    "no Ray cluster at --ray 'auto': none is running on this host (no `ray start` here, RAY_ADDRESS "
    "unset); start one with `ray start --head`, or give its head: --ray HOST:PORT"
)
"""``--ray`` (auto) finding no cluster: Ray's own message asks for an ``--address`` flag."""


def _check_head(address: str) -> None:
    """Ask the GCS at a ``host:port`` address for its cluster id before ``ray.init`` does.

    Why: ``ray.init`` retries an address where no Ray head answers (a wrong port, a stopped
    cluster, an unknown host, another server) 20 times, up to 30 s each, behind a progress bar
    that shows nothing; this answers in one line within :data:`PROBE_S`.  A head that wants a
    token the driver does not send (``ray start`` turns token authentication on when
    ``~/.ray/auth_token`` exists; ``ray.init`` sends it to an explicit address only with
    ``RAY_AUTH_MODE=token``) would otherwise end in "Failed to connect" after 20 s.
    ``auto``, ``local`` and ``ray://`` addresses are left to Ray.
    """
    import grpc  # comes with chromadb

    if address in ("auto", "local") or address.startswith("ray://"):
        return
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=PROBE_S)
            return
        except grpc.RpcError as exc:
            code, details = exc.code(), str(exc.details() or "").strip()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return  # ray.init sends the token
        raise ConfigError(AUTH_HINT.format(address=address))
    head = "give the head's address (the --port of its `ray start --head`, default 6379)"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        seen = details.splitlines()[0] if details else f"no answer within {PROBE_S:g} s"
        port = address.rpartition(":")[2]
        why = f"no Ray head answers there ({seen}); {head} or start one: ray start --head --port {port}"
    else:
        why = f"the server there is not a Ray head ({code.name.lower()}: {details or 'no details'}); {head}"
    raise ConfigError(f"no Ray cluster at --ray {address!r}: {why}")


def _connect(ray: Any, address: str) -> None:
    _check_head(address)
    try:
        ray.init(
            address=address,
            logging_level="WARNING",
            log_to_driver=False,
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        cause = f"{exc} {exc.__cause__ or ''}"
        if "InvalidAuthToken" in cause or "token authentication" in cause:
            raise ConfigError(AUTH_HINT.format(address=address)) from None
        if address == "auto" and "Could not find any running Ray instance" in str(exc):
            raise ConfigError(NO_AUTO_CLUSTER) from None  # Ray's words name an --address flag
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"no Ray cluster at --ray {address!r}: {first}") from None


class _Driver:
    """The plan-and-collect loop: probes first, then batches with a bounded number in flight."""

    def __init__(self, ray: Any, ctx: Context, files: list[str], on_progress: Callable[..., None]) -> None:
        self.ray, self.ctx, self.on_progress = ray, ctx, on_progress
        self.env = _forwarded_env()
        self.plans = {video: VideoPlan(video) for video in files}
        self.pending: dict[Any, tuple[str, str, int]] = {}  # ref -> (kind, video, clips)
        self.queue: list[BatchJob] = []
        self.total = self.done = self.encoded = self.planned = 0
        self.stage_s: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.stopped = ""  # why the run stopped starting work (a deployment failure), if it did
        self.untried = ""  # the problem of the videos it left: "not attempted: " + why
        retry = {"max_retries": TASK_RETRIES, "retry_exceptions": _retryable(ray)}
        self.probe_fn = ray.remote(probe_task).options(num_cpus=1, scheduling_strategy="SPREAD", **retry)
        self.batch_fn = ray.remote(batch_task).options(num_cpus=1, scheduling_strategy="SPREAD", **retry)

    def run(self, model_sets: dict[str, ModelSet], max_in_flight: int) -> None:
        self.model_sets = self.ray.put(model_sets)
        for video in self.plans:
            self.pending[self.probe_fn.remote(self.ctx, video, self.env)] = ("probe", video, 0)
        while self.pending or self.queue:
            self._submit(max_in_flight)
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=0.5)
            for ref in ready:
                kind, video, clips = self.pending.pop(ref)
                try:
                    got = self.ray.get(ref)
                except Exception as exc:  # one file's failure: listed, the others go on
                    self._failed(video, exc, clips)
                    continue
                (self._probed if kind == "probe" else self._batch_done)(video, got, clips)
            self._report()

    def _submit(self, max_in_flight: int) -> None:
        while self.queue and len(self.pending) < max_in_flight:
            job = self.queue.pop(0)
            if self.plans[job.video].problem:  # its video already failed: skip its other batches
                self.done += len(job.clips)
                continue
            ref = self.batch_fn.remote(self.ctx, job, self.model_sets, self.env)
            self.pending[ref] = ("batch", job.video, len(job.clips))
            self.plans[job.video].begun = True

    def _failed(self, video: str, exc: BaseException, clips: int) -> None:
        """A task's failure: that video's, unless it is the deployment's (a model that cannot
        load, a model server refusing the key or knowing no such model: every later task would
        fail alike), which stops the run (:meth:`_stop`)."""
        from graphs.ingest import is_deployment_failure

        self._fail(video, _message(exc), clips)
        if not self.stopped and is_deployment_failure(_cause(exc)):
            self._stop(f"the run stopped when {video} failed for the whole deployment")

    def _stop(self, why: str) -> None:
        """Start no further batch: the queued ones are dropped, their videos (and any probed
        later) listed as not attempted, ``why`` (:meth:`results` words a begun one as
        unfinished); batches in flight finish, and finished videos stay stored."""
        self.stopped, self.untried = why, f"not attempted: {why}"
        for job in self.queue:
            plan = self.plans[job.video]
            plan.problem = plan.problem or self.untried
            self.done += len(job.clips)
        self.queue.clear()

    def _probed(self, video: str, got: dict[str, Any], _: int) -> None:
        plan = self.plans[video]
        plan.probe, plan.stored = got, int(got["skipped"])
        if self.stopped:  # a probe that was in flight when the run stopped: nothing is queued
            plan.problem = plan.problem or self.untried
            return
        self.total += int(got["n_clips"])
        plan.same_as = self._probed_first(got["video_id"], video)
        if plan.same_as:  # the same bytes under two names (a copy, a link): one id, encoded once
            self.done += int(got["n_clips"])
            return
        self.done += int(got["skipped"])
        todo: list[int] = list(got["todo"])
        size = self.ctx.ingest_batch
        batches = [todo[lo : lo + size] for lo in range(0, len(todo), size)]
        plan.left = len(batches)
        for batch in batches:
            job = BatchJob(
                video,
                got["path"],
                got["video_id"],
                float(got["duration_s"]),
                tuple(batch),
                self.planned,
                size=int(got["stamp"][0]),
                sample=str(got["sample"]),
            )
            self.queue.append(job)
            self.planned += 1
        if not batches:
            self._finalize(plan)

    def _probed_first(self, video_id: str, video: str) -> str:
        """The file probed earlier in this run with the same content id ('' if none)."""
        for name, other in self.plans.items():
            probe = other.probe
            if name != video and probe is not None and not other.same_as and probe["video_id"] == video_id:
                return name
        return ""

    def _batch_done(self, video: str, got: dict[str, Any], clips: int) -> None:
        plan = self.plans[video]
        self.done += clips
        self.encoded += clips
        plan.stored += clips
        for stage, seconds in got["timings"].items():
            plan.timings[stage] = plan.timings.get(stage, 0.0) + seconds
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + seconds
        self.peak["batch task"] = max(self.peak.get("batch task", 0.0), float(got["peak_rss_mib"]))
        plan.notes.extend(got.get("notes") or [])
        plan.left -= 1
        if plan.left == 0 and not plan.problem:
            self._finalize(plan)

    def _finalize(self, plan: VideoPlan) -> None:
        """The graph's finalize node: the video record, once every clip of the video is stored."""
        from langgraph.runtime import Runtime

        from graphs.ingest import finalize

        assert plan.probe is not None
        state = {**plan.probe, "encoded": len(plan.probe["todo"])}
        try:
            finalize(state, Runtime(context=self.ctx))  # type: ignore[arg-type]
        except GranAlignError as exc:
            plan.problem = str(exc)

    def _fail(self, video: str, problem: str, clips: int) -> None:
        plan = self.plans[video]
        plan.problem = plan.problem or problem
        if clips:  # a batch (not a probe) failed: its clips are settled, though not stored
            self.done += clips
            plan.left -= 1

    def _report(self) -> None:
        failed = sum(1 for p in self.plans.values() if p.problem)
        probed = sum(1 for p in self.plans.values() if p.probe is not None or p.problem)
        self.on_progress(
            done=self.done,
            total=self.total or None,
            failed=failed,
            encoded=self.encoded,
            probed=probed,
            videos=len(self.plans),
        )

    def _problem(self, plan: VideoPlan) -> str:
        """A video's problem; one the stopped run left after some of its clips were stored or a
        batch was sent is unfinished, not untried: a re-run continues it (as on one machine,
        where only videos never begun count as not attempted)."""
        if plan.problem != self.untried or not (plan.stored or plan.begun) or plan.probe is None:
            return plan.problem
        n = int(plan.probe["n_clips"])
        return f"unfinished ({plan.stored} of {n} clips stored): {self.stopped}; a re-run continues it"

    def results(self) -> list[tuple[str, dict[str, Any] | None, str]]:
        rows: list[tuple[str, dict[str, Any] | None, str]] = []
        for video, plan in self.plans.items():
            if plan.problem or plan.probe is None:
                rows.append((video, None, self._problem(plan) or "not probed"))
                continue
            got = plan.probe
            if plan.same_as:
                first = self.plans[plan.same_as]
                if first.problem:
                    problem = f"same content as {plan.same_as}, which failed: {first.problem}"
                    rows.append((video, None, problem))
                    continue
            out = {
                "video_id": got["video_id"],
                "n_clips": got["n_clips"],
                "duration_s": got["duration_s"],
                "skipped": got["n_clips"] if plan.same_as else got["skipped"],
                "encoded": 0 if plan.same_as else len(got["todo"]),
                "timings": {k: round(v, 4) for k, v in plan.timings.items()},
                "notes": list(dict.fromkeys([*(got.get("notes") or []), *plan.notes])),
            }
            if plan.same_as:
                out["notes"].append(f"same content as {plan.same_as}: encoded once, under that name")
            rows.append((video, out, ""))
        return rows


def ingest_on_ray(
    ctx: Context,
    files: list[str],
    address: str,
    on_progress: Callable[..., None] | None = None,
) -> RayIngestReport:
    """Ingest ``files`` on the Ray cluster at ``address`` into the Chroma server of ``ctx``.

    ``on_progress(done=, total=, failed=, encoded=, probed=, videos=)`` is called about twice a
    second (clips done, clips known so far, failed videos, clips encoded by this run, videos
    probed or failed, videos in all).  Connects, starts the model actors, runs, and disconnects.
    """
    ray = import_ray()
    ctx = ray_context(ctx)
    resources.store_for(ctx)  # a Chroma server that does not answer: one line, before any model loads
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _connect(ray, address)
    try:
        sets, actors = _start_models(ray, ctx, _forwarded_env())
        _check_names(ctx, sets)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        driver = _Driver(ray, ctx, files, on_progress or (lambda **_: None))
        t0 = time.perf_counter()
        driver.run(sets, max_in_flight=max(2, 2 * cpus))
        seconds = time.perf_counter() - t0
        lost = _lost_nodes(ray, list(sets))
        peaks = driver.peak
        for kind, handle in actors:
            try:
                peak = float(ray.get(handle.peak_rss_mib.remote(), timeout=30))
            except Exception:  # an actor lost for good does not spoil the report
                continue
            peaks[kind] = max(peaks.get(kind, 0.0), peak)
        return RayIngestReport(
            results=driver.results(),
            clips_total=driver.total,
            clips_encoded=driver.encoded,
            seconds=seconds,
            stage_s={k: round(v, 4) for k, v in driver.stage_s.items()},
            peak_rss_mib={k: round(v, 1) for k, v in peaks.items()},
            nodes=len(sets),
            nodes_lost=lost,
        )
    finally:
        ray.shutdown()


class _RateColumn(ProgressColumn):
    """Clips per second since the bar started (the ingest's throughput)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = float(task.fields.get("encoded", 0)) / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:.2f} clips/s")


LOG_EVERY_S = 30.0
"""With stderr not a terminal, ``index --ray`` prints a plain progress line this often: rich
draws its bar only at the end there, and an hour-long job's log must show it is alive."""


def index_on_ray(
    ctx: Context, target: str, address: str
) -> tuple[list[tuple[str, dict[str, Any] | None, str]], str]:
    """``granalign index SOURCE --ray ADDRESS``: a progress bar, then the rows of the summary table.

    The bar counts clips done (stored now or already stored) out of the clips known so far (the
    total grows as probes come back), the rate and the failed videos.  Returns the rows and
    the store's location.
    """
    from tools.cli_common import console

    import_ray()
    ray_ctx = ray_context(ctx)
    files = list_sources(target, resources.video_roots(ray_ctx))
    columns = (
        TextColumn("[bold]ray ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("clips"),
        _RateColumn(),
        TextColumn("{task.fields[failed]} failed videos"),
        TimeElapsedColumn(),
    )
    # a wrong CHROMA_URL or Ray address is one line, before the bar: not every video's failure
    # once the models have loaded (the store), not minutes of retries in ray.init (the head)
    resources.store_for(ray_ctx)
    _check_head(address)
    console.print(f"[dim]{len(files)} files; connecting to Ray at {address} and loading the models...[/]")
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("ray", total=None, failed=0, encoded=0)
        started: list[bool] = []

        logged = [time.monotonic()]

        def on_progress(
            done: int, total: int | None, failed: int, encoded: int, probed: int = 0, videos: int = 0
        ) -> None:
            if not started:  # the clock (and the rate) starts with the work, not the model loading
                bar.reset(task)
                started.append(True)
            bar.update(task, completed=done, total=total, failed=failed, encoded=encoded)
            if not console.is_terminal and time.monotonic() - logged[0] >= LOG_EVERY_S:
                logged[0] = time.monotonic()  # a log (nohup, a job) gets no bar until the end
                # the total counts the videos probed so far: "3/3 clips" must not read as done
                known = f" so far ({probed} of {videos} videos probed)" if probed < videos else ""
                line = f"ray ingest: {done}/{total or '?'} clips{known}, {failed} failed videos"
                console.print(line, highlight=False)

        report = ingest_on_ray(ray_ctx, files, address, on_progress)
    console.print(
        f"{report.clips_encoded} clips encoded on {report.nodes} node(s) in {report.seconds:.1f} s "
        f"({report.clips_encoded / max(report.seconds, 1e-9):.2f} clips/s)"
    )
    if report.nodes_lost:
        console.print(f"[yellow]note:[/] {lost_nodes_text(report.nodes_lost, report.nodes)}", highlight=False)
    return report.results, ray_ctx.chroma_url
