"""``granalign index SOURCE --ray``: distributed ingest on a real local Ray cluster (CPU, offline).

The fault-tolerance test starts a Ray head and a second worker node (separate processes, one CPU
each, on loopback), a real ``chroma run``, and ingests the committed test videos plus synthetic
ones with random-weight models (open_clip ViT-S-32 with ``pretrained=None`` and the tiny
random-weight Qwen2.5-VL of ``tests/test_ingest.py``).  Mid-run it SIGKILLs every process of the
worker node; the run must finish and the store must hold exactly the records a one-machine
ingest of the same files writes.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from granalign.errors import ConfigError, InputError
from granalign.io.store import open_store
from graphs import resources
from graphs.context import Context
from graphs.ingest import ingest_video
from tests.servers import chroma_server, free_port
from tests.test_ingest import build_tiny_vlm_random_weights, model_context
from tests.test_video import damaged_copy, make_video
from tools.cli import app
from tools.ray_ingest import captioner_replicas, list_sources, ray_context

VIDEOS = Path(__file__).resolve().parent / "fixtures" / "videos"
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


# -- without a cluster -------------------------------------------------------------------------


def test_ray_ingest_refuses_an_embedded_store(tmp_path, monkeypatch):
    monkeypatch.delenv("CHROMA_URL", raising=False)
    make_video(tmp_path / "a.mp4", 2.0)
    result = CliRunner().invoke(
        app,
        ["index", str(tmp_path), "--ray"],
        env={"GRANALIGN_STORE": str(tmp_path / "store"), "GRANALIGN_VIDEO_ROOTS": str(tmp_path)},
    )
    assert result.exit_code == 2, result.output
    assert "--ray needs a Chroma server" in result.output
    assert "embedded store folder cannot be shared" in result.output
    with pytest.raises(ConfigError, match="needs a Chroma server"):
        ray_context(model_context(tmp_path / "store", tmp_path, [tmp_path]))


def test_ray_ingest_without_ray_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    make_video(tmp_path / "a.mp4", 2.0)
    result = CliRunner().invoke(
        app,
        ["index", str(tmp_path), "--ray", "127.0.0.1:1"],
        env={"CHROMA_URL": "http://127.0.0.1:1", "GRANALIGN_VIDEO_ROOTS": str(tmp_path)},
    )
    assert result.exit_code == 2, result.output
    assert "pip install 'granalign[ray]'" in result.output


def test_ray_sources_are_a_folder_a_list_file_a_glob_or_a_file(tmp_path):
    (tmp_path / "sub").mkdir()
    a = make_video(tmp_path / "a.mp4", 1.0)
    b = make_video(tmp_path / "sub" / "b.mp4", 1.0)
    (tmp_path / "notes.md").write_text("not a video")
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# my library\n\na.mp4\n{b}\n")
    roots = [tmp_path]
    assert list_sources(str(tmp_path), roots) == [str(a), str(b)]
    assert list_sources(str(listing), roots) == [str(a), str(b)]
    assert list_sources(str(tmp_path / "**" / "*.mp4"), roots) == [str(a), str(b)]
    assert list_sources(str(a), roots) == [str(a)]
    with pytest.raises(InputError, match="matches no files"):
        list_sources(str(tmp_path / "*.mkv"), roots)
    with pytest.raises(InputError, match="is not a folder, a list file"):
        list_sources(str(tmp_path / "missing.mp4"), roots)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="names no video files"):
        list_sources(str(tmp_path / "empty.txt"), roots)


def test_captioner_replicas_spread_one_model_over_several_servers():
    spec = "openai:http://vlm-0:8001/v1,http://vlm-1:8001/v1#qwen2.5-vl-7b-instruct"
    assert captioner_replicas(spec) == [
        "openai:http://vlm-0:8001/v1#qwen2.5-vl-7b-instruct",
        "openai:http://vlm-1:8001/v1#qwen2.5-vl-7b-instruct",
    ]
    assert captioner_replicas("local:/models/tiny") == ["local:/models/tiny"]
    with pytest.raises(ConfigError, match="base_url must start with http"):
        captioner_replicas("openai:http://vlm-0/v1,vlm-1/v1#m")


# -- on a real two-node cluster ----------------------------------------------------------------


def _collections(store: Any) -> dict[str, dict[str, tuple[Any, Any, Any]]]:
    """Every collection of a store: id → (document, metadata, embedding or None)."""
    got: dict[str, dict[str, tuple[Any, Any, Any]]] = {}
    for name in store.collection_names():
        rows = store._collection(name).get(include=["documents", "metadatas", "embeddings"])
        embeddings = rows["embeddings"] if rows["embeddings"] is not None else [None] * len(rows["ids"])
        got[name] = {
            i: (d, m, None if e is None else np.asarray(e, dtype=np.float32))
            for i, d, m, e in zip(rows["ids"], rows["documents"], rows["metadatas"], embeddings, strict=True)
        }
    return got


def _assert_same_records(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for name, records in want.items():
        assert sorted(got[name]) == sorted(records), f"{name}: ids differ"
        for rid, (doc, meta, emb) in records.items():
            g_doc, g_meta, g_emb = got[name][rid]
            assert (g_doc, g_meta) == (doc, meta), f"{name} {rid}"
            if emb is not None:
                np.testing.assert_allclose(g_emb, emb, atol=1e-5, err_msg=f"{name} {rid}")


def _ray_env(ctx, chroma_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "CHROMA_URL": chroma_url,
        "GRANALIGN_CLIP_MODEL": ctx.clip_model,
        "GRANALIGN_CLIP_PRETRAINED": ctx.clip_pretrained,
        "GRANALIGN_CAPTIONER": ctx.captioner,
        "GRANALIGN_CAPTION_TOKENS": str(ctx.caption_tokens),
        "GRANALIGN_CLIP_LEN": str(ctx.clip_len),
        "GRANALIGN_INGEST_BATCH": str(ctx.ingest_batch),
        "GRANALIGN_VIDEO_ROOTS": ctx.video_roots,
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray maps a loopback address to the host's routable IP, where a GCS bound to loopback
        # does not listen; this keeps the driver on loopback (the setting's only Linux effect).
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def test_ray_ingest_survives_a_killed_worker_node_random_weight_models(tmp_path, monkeypatch):
    """SIGKILL the worker node mid-run: the run finishes, every clip is stored exactly once, and
    the store equals a one-machine ingest of the same files (ids, captions, metadata, embeddings);
    a broken file fails alone and is listed, a damaged one is stored and noted."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    library = tmp_path / "library"
    library.mkdir()
    real = sorted(VIDEOS.glob("*.mp4"))
    assert len(real) == 3, f"the committed test videos are missing from {VIDEOS}"
    for video in real:
        shutil.copy(video, library / video.name)
    make_video(library / "synthetic_noise.mp4", 5.0, size=(96, 72), pattern="noise")
    make_video(library / "synthetic_short.mp4", 0.8)
    (library / "broken.mp4").write_text("not a video")
    damaged_copy(library / "damaged.mp4", at=0.5, nbytes=20000)  # skips packets, is stored whole
    vlm = build_tiny_vlm_random_weights(tmp_path / "tiny-qwen25vl-random-weights")
    ctx = model_context(tmp_path / "one-machine", vlm, [library], ingest_batch=2)
    good = sorted(p for p in library.glob("*.mp4") if p.name != "broken.mp4")

    with chroma_server(tmp_path) as chroma_url:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
        )
        try:
            worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
            cluster.wait_for_nodes(timeout=120)
            server_ctx = ctx.with_overrides(store_dir="", chroma_url=chroma_url)
            captions = resources.store_for(server_ctx).captions_collection(
                resources.embedder_for(server_ctx).name
            )
            log = tmp_path / "ray-index.log"
            with log.open("w") as fh:
                proc = subprocess.Popen(
                    [str(BIN / "granalign"), "index", str(library), "--ray", cluster.address],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                    env=_ray_env(ctx, chroma_url),
                )
            try:
                stored_at_kill = _kill_when_clips_are_stored(cluster, worker, proc, server_ctx, captions, log)
                proc.wait(timeout=900)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            output = log.read_text()
            assert proc.returncode == 1, output  # only broken.mp4 failed
            assert "broken.mp4" in output and "not a video FFmpeg can read" in output
            flat = " ".join(output.split())  # the console wraps long lines
            skipped = r"note \(damaged\.mp4\): \d+ damaged video packets were skipped \(at 4\.\d-5\.\d s\)"
            assert re.search(skipped, flat), flat
            lost = "1 of 2 Ray nodes was lost during the run; its batch tasks were retried"
            assert lost in flat, flat  # Ray recovered silently: the operator is told
            ray_records = _collections(open_store(chroma_url=chroma_url))
        finally:
            cluster.shutdown()

    for video in good:
        ingest_video(ctx, str(video))
    want = _collections(open_store(ctx.store_dir))
    n_clips = sum(r[1]["n_clips"] for r in want["videos"].values())
    assert len(want["videos"]) == len(good) and n_clips >= 25
    assert 0 < stored_at_kill < n_clips, "the worker node was not killed mid-run"
    assert len(ray_records[captions]) == n_clips  # every clip exactly once
    _assert_same_records(ray_records, want)


def _kill_when_clips_are_stored(cluster, worker, proc, ctx, captions: str, log: Path) -> int:
    """SIGKILL every process of ``worker`` once the first clips are in the store; their count."""
    store = resources.store_for(ctx)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the ingest ended before the worker node was killed:\n{log.read_text()[-3000:]}")
        stored = store.count(captions) if captions in set(store.collection_names()) else 0
        if stored >= 2:
            cluster.remove_node(worker, allow_graceful=False)
            return stored
        time.sleep(0.1)
    pytest.fail(f"no clip was stored within 600 s:\n{log.read_text()[-3000:]}")


def test_ray_benchmark_row_is_left_out_of_quick_runs_and_reports_rates_shares_and_memory():
    from tools import benchmark_suite
    from tools.ray_bench import rows

    assert "ray_ingest" in benchmark_suite.select(None, quick=False)
    assert "ray_ingest" not in benchmark_suite.select(None, quick=True)
    got = rows(
        {
            "ray, 1 node x 1 CPU": {
                "clips": 20,
                "seconds": 4.0,
                "stage_s": {"decode": 1.0, "clip": 3.0},
                "peak_rss_mib": {"ray clip actor": 900.0},
                "store_bytes": 40_000,
            }
        },
        ["/v/a.mp4"],
    )
    table = {r["metric"]: (r["value"], r["unit"]) for r in got}
    assert table == {
        "whole ingest": (5.0, "clips/s"),
        "stage decode share": (25.0, "%"),
        "stage clip share": (75.0, "%"),
        "peak RSS, ray clip actor": (900.0, "MiB"),
        "store bytes per clip": (2000.0, "bytes"),
    }
    assert all(r["size"].startswith("ray, 1 node x 1 CPU; 20 clips of a.mp4") for r in got)


def test_ray_sources_find_a_relative_folder_under_a_video_root(tmp_path, monkeypatch):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.mp4").write_bytes(b"x")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert list_sources("sub", [root.resolve()]) == [str((root / "sub" / "a.mp4").resolve())]


class _StandInRay:
    """Just what ``_Driver.__init__`` asks of the ``ray`` module; the plan logic runs for real."""

    class _Remote:
        def options(self, **_: object) -> _StandInRay._Remote:
            return self

        def remote(self, *_: object) -> object:  # a task sent: its ref
            return object()

    def remote(self, _fn: object) -> _StandInRay._Remote:
        return self._Remote()

    class exceptions:  # ray.exceptions: none of its errors reaches a plan here
        pass


def _probe(video_id: str, n: int, todo: list[int]) -> dict[str, Any]:
    return {
        "video_id": video_id,
        "path": f"/v/{video_id}.mp4",
        "n_clips": n,
        "duration_s": 2.0 * n,
        "skipped": n - len(todo),
        "todo": todo,
        "notes": [],
        "stamp": [1000 * n, 1, 1],
        "sample": f"sample-{video_id}",
    }


def test_the_same_bytes_under_two_names_are_encoded_once_on_ray(tmp_path):
    """A copy of a video beside it (or a link) has the same content id: the driver queues its
    batches once, under the name probed first, and lists the other as skipped with a note;
    if the first one fails, so does its copy, saying why."""
    from tools.ray_ingest import _Driver

    ctx = Context(store_dir=str(tmp_path / "store"), ingest_batch=2)
    driver = _Driver(_StandInRay(), ctx, ["a.mp4", "copy_of_a.mp4", "b.mp4"], lambda **_: None)
    driver._probed("a.mp4", _probe("sha256-a", 5, [0, 1, 2, 3, 4]), 0)
    driver._probed("copy_of_a.mp4", _probe("sha256-a", 5, [0, 1, 2, 3, 4]), 0)
    driver._probed("b.mp4", _probe("sha256-b", 2, [0, 1]), 0)
    assert [(job.video, job.clips) for job in driver.queue] == [
        ("a.mp4", (0, 1)),
        ("a.mp4", (2, 3)),
        ("a.mp4", (4,)),
        ("b.mp4", (0, 1)),
    ]
    assert (driver.total, driver.done) == (12, 5)  # the copy's clips count as settled
    rows = {video: (got, problem) for video, got, problem in driver.results()}
    copy, problem = rows["copy_of_a.mp4"]
    assert problem == "" and copy is not None
    assert (copy["video_id"], copy["skipped"], copy["encoded"]) == ("sha256-a", 5, 0)
    assert "same content as a.mp4: encoded once, under that name" in copy["notes"]
    driver._fail("a.mp4", "the captioner failed", 2)
    rows = {video: (got, problem) for video, got, problem in driver.results()}
    assert rows["copy_of_a.mp4"] == (None, "same content as a.mp4, which failed: the captioner failed")


@pytest.mark.parametrize(("status", "stops"), [(401, True), (404, True), (503, False)])
def test_a_captioner_refusing_the_key_stops_the_ray_run_and_a_busy_one_fails_one_video(
    tmp_path, status, stops
):
    """A captioner answering 401/404 failed each video's tasks one by one, each listed with the
    same error; the driver now starts no further batch after the first such failure and lists
    the other videos as not attempted (batches in flight still finish).  A 503 stays the failure
    of its own video."""
    from granalign.errors import BackendError
    from tools.ray_ingest import _Driver

    ctx = Context(store_dir=str(tmp_path / "store"), ingest_batch=2)
    driver = _Driver(_StandInRay(), ctx, ["a.mp4", "b.mp4", "c.mp4"], lambda **_: None)
    driver._probed("a.mp4", _probe("sha256-a", 5, [0, 1, 2, 3, 4]), 0)
    driver._probed("b.mp4", _probe("sha256-b", 2, [0, 1]), 0)
    driver.queue.pop(0)  # a's first batch is in flight, and fails
    driver._failed("a.mp4", BackendError(f"captioner answered HTTP {status}", status=status), 2)
    driver._probed("c.mp4", _probe("sha256-c", 2, [0, 1]), 0)  # a probe that was in flight
    rows = {video: problem for video, _, problem in driver.results()}
    assert rows["a.mp4"] == f"captioner answered HTTP {status}"
    if stops:
        assert driver.queue == [] and driver.done == driver.total == 7
        for other in ("b.mp4", "c.mp4"):
            assert rows[other] == (
                "not attempted: the run stopped when a.mp4 failed for the whole deployment"
            )
    else:
        # a's other batches stay queued (_submit skips a failed video's), b's and c's run
        assert [job.video for job in driver.queue] == ["a.mp4", "a.mp4", "b.mp4", "c.mp4"]
        assert rows["b.mp4"] == rows["c.mp4"] == ""


def _offline_index_log(
    monkeypatch: pytest.MonkeyPatch, files: list[str], ingest: Any, *, width: int = 100
) -> Any:
    """What ``index_on_ray`` prints, as a StringIO, when stderr is not a terminal (plain lines,
    one per progress report), with no cluster, no store, ``files`` as the folder's videos and
    ``ingest`` in place of ``ingest_on_ray``."""
    from io import StringIO

    from rich.console import Console

    from tools import cli_common, ray_ingest

    log = StringIO()
    monkeypatch.setattr(cli_common, "console", Console(file=log, force_terminal=False, width=width))
    monkeypatch.setattr(ray_ingest, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(ray_ingest, "import_ray", lambda: None)
    monkeypatch.setattr(ray_ingest, "ray_context", lambda ctx: ctx)
    monkeypatch.setattr(resources, "store_for", lambda ctx: None)  # no Chroma server here
    monkeypatch.setattr(ray_ingest, "list_sources", lambda target, roots: list(files))
    monkeypatch.setattr(ray_ingest, "ingest_on_ray", ingest)
    return log


def test_index_on_ray_logs_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch):
    """Under nohup or a cluster job rich draws the bar only at the end; plain lines show the run
    is alive (one per ``LOG_EVERY_S``; 0 here, so one per progress report)."""
    from tools import ray_ingest

    def fake_ingest(ctx, files, address, on_progress):
        on_progress(done=0, total=None, failed=0, encoded=0)
        on_progress(done=3, total=8, failed=0, encoded=3)
        on_progress(done=8, total=8, failed=1, encoded=5)
        return ray_ingest.RayIngestReport([], 8, 5, 1.0, {}, {}, 1)

    log = _offline_index_log(monkeypatch, ["a.mp4", "b.mp4"], fake_ingest)
    ctx = Context(store_dir=str(tmp_path / "s"), chroma_url="http://127.0.0.1:1")
    ray_ingest.index_on_ray(ctx, "x", "auto")
    lines = [line for line in log.getvalue().splitlines() if line.startswith("ray ingest: ")]
    assert lines == [
        "ray ingest: 0/? clips, 0 failed videos",
        "ray ingest: 3/8 clips, 0 failed videos",
        "ray ingest: 8/8 clips, 1 failed videos",
    ]


def test_a_batch_fails_over_to_the_next_captioner_replica_when_its_own_is_down(monkeypatch, caplog):
    """One vLLM replica down used to fail every batch sent to it (about 1/n of the batches, and
    their videos); the batch now asks the next replica. The error crosses Ray as a RayTaskError
    of the actor's class, built here as Ray builds it."""
    import ray

    from granalign.errors import BackendError
    from tools.ray_ingest import _RemoteCaptioner

    def task_error(message: str, status: int | None = None) -> BaseException:
        cause = BackendError(message, status=status)
        trace = "Traceback (most recent call last): ..."
        return ray.exceptions.RayTaskError("Cap.caption", trace, cause).as_instanceof_cause()

    class Replica:
        def __init__(self, up: bool, name: str, status: int | None = None) -> None:
            self.up, self.name, self.calls, self.status = up, name, 0, status
            self.caption = self

        def remote(self, images, prompts):
            self.calls += 1
            if not self.up:
                if self.status is not None:
                    return task_error(f"captioner m: {self.name} answered HTTP {self.status}", self.status)
                return task_error(f"captioner m: the server at http://{self.name}/v1 is not reachable")
            return [f"{self.name}:{len(images)}"]

    def fake_get(ref):
        if isinstance(ref, BaseException):
            raise ref
        return ref

    monkeypatch.setattr(ray, "get", fake_get)
    a, b, c = Replica(False, "a"), Replica(True, "b"), Replica(True, "c")
    assert _RemoteCaptioner([a, b, c], 0, "m").caption(["img"], ["p"]) == ["b:1"]
    assert _RemoteCaptioner([a, b, c], 2, "m").caption(["img"], ["p"]) == ["c:1"]  # its own first
    assert (a.calls, b.calls, c.calls) == (1, 1, 1)
    assert "replica 1 of 3 failed" in caplog.text and "Traceback" not in caplog.text
    with pytest.raises(BackendError) as err:
        _RemoteCaptioner([a, Replica(False, "d")], 1, "m").caption(["img"], ["p"])
    tried = "captioner m: the server at http://a/v1 is not reachable (2 captioner replicas tried)"
    assert str(err.value) == tried and err.value.status is None
    # the HTTP status of the last replica's answer stays on the error (401: a deployment failure)
    with pytest.raises(BackendError, match=r"HTTP 401 \(2 captioner") as err:
        _RemoteCaptioner([Replica(False, "e", 401), Replica(False, "f", 401)], 0, "m").caption(["i"], ["p"])
    assert err.value.status == 401 and err.value.misconfigured


# -- a file that is not (or no longer) the one the probe hashed --------------------------------


def _job(path: Path, video_id: str = "sha256-x", number: int = 0) -> Any:
    from granalign.io.video import content_sample
    from tools.ray_ingest import BatchJob

    return BatchJob(
        str(path), str(path), video_id, 4.0, (0, 1), number, path.stat().st_size, content_sample(path)
    )


def test_a_batch_accepts_another_hosts_copy_of_the_probed_bytes_and_refuses_other_bytes(tmp_path):
    """A worker host reads its own copy (its own inode and mtime): the probe's stamp cannot be
    compared there, the size and the sampled digest can.  A copy of the same bytes passes; a
    file of another size, one with the same size and other bytes, and a missing one are refused;
    so is a file whose stamp changes on that host while the batch reads it."""
    from granalign.io.video import SAMPLE_ENDS, _sample_spans
    from tools.ray_ingest import _probed_file_here, _unchanged_here

    probed = make_video(tmp_path / "probed.mp4", 3.5, pattern="noise")
    job = _job(probed, number=3)
    mirror = tmp_path / "mirror" / "probed.mp4"  # another host's copy: other inode, other mtime
    mirror.parent.mkdir()
    shutil.copyfile(probed, mirror)
    os.utime(mirror, ns=(1, 1))
    stamp = _probed_file_here(mirror, job)
    _unchanged_here(mirror, stamp, job)

    data = bytearray(probed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    mirror.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        _probed_file_here(mirror, job)
    assert "probed.mp4 on host" in str(err.value)
    assert "is not the file the probe hashed (same size, other bytes" in str(err.value)
    assert "nothing of its batch 3 was stored under sha256-x: re-run the index" in str(err.value)
    mirror.write_bytes(bytes(data[:-1000]))
    with pytest.raises(InputError, match=r"is not the file the probe hashed \([\d,]+ bytes here"):
        _probed_file_here(mirror, job)
    with pytest.raises(InputError, match="cannot be read on host"):
        _probed_file_here(tmp_path / "gone.mp4", job)

    stamp = _probed_file_here(probed, job)
    os.utime(probed, ns=(2, 2))  # rewritten on this host while the batch decoded
    with pytest.raises(InputError, match=r"changed on host .* while the batch read its frames"):
        _unchanged_here(probed, stamp, job)

    big = 3_000_000_000  # a multi-GB file: 2.5 MiB read, whatever its size
    spans = _sample_spans(big)
    assert sum(n for _, n in spans) == 2 * SAMPLE_ENDS + 8 * 64 * 1024
    assert spans[0] == (0, SAMPLE_ENDS) and spans[-1] == (big - SAMPLE_ENDS, SAMPLE_ENDS)
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(spans))


def test_a_video_replaced_after_its_probe_fails_alone_on_ray_and_nothing_is_stored_under_the_old_id(
    tmp_path, monkeypatch
):
    """The probe task hashes a file (its id); the file is then replaced by another video of the
    same name before the batch tasks read it (a re-export while the index runs).  Before the fix
    the batch tasks stored the new video's frames and captions under the old content's id and the
    driver wrote its video record; now the video fails with a message saying so, nothing is stored
    under the old id, and the other video is ingested whole."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from granalign.io.video import content_hash
    from graphs.ingest import unfinished_clips
    from tools import ray_ingest

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    library = tmp_path / "library"
    library.mkdir()
    replaced = make_video(library / "replaced.mp4", 7.5)
    kept = make_video(library / "kept.mp4", 3.5, pattern="halves")
    old_id = content_hash(replaced)
    vlm = build_tiny_vlm_random_weights(tmp_path / "tiny-qwen25vl-random-weights")
    real_probed = ray_ingest._Driver._probed

    def replace_then_plan(self: Any, video: str, got: dict[str, Any], clips: int) -> None:
        if video == str(replaced):  # after the probe hashed it, before any batch task reads it
            os.replace(make_video(tmp_path / "replacement.mp4", 7.5, pattern="noise"), replaced)
        real_probed(self, video, got, clips)

    monkeypatch.setattr(ray_ingest._Driver, "_probed", replace_then_plan)
    with chroma_server(tmp_path) as chroma_url:
        ctx = model_context(tmp_path / "unused", vlm, [library], ingest_batch=2).with_overrides(
            store_dir="", chroma_url=chroma_url
        )
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
        )
        try:
            # the driver on loopback, as _ray_env keeps the CLI's (read when ray is imported)
            monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
            report = ray_ingest.ingest_on_ray(ctx, [str(replaced), str(kept)], cluster.address)
        finally:
            cluster.shutdown()
        rows = {video: (got, problem) for video, got, problem in report.results}
        assert report.failed == [str(replaced)], rows
        problem = rows[str(replaced)][1]
        assert "replaced.mp4 on host" in problem and "is not the file the probe hashed" in problem
        assert f"stored under {old_id}: re-run the index" in problem
        store = resources.store_for(ctx)
        assert store.video(old_id) is None
        assert unfinished_clips(ctx, old_id, 4) == [0, 1, 2, 3]  # no frame, no caption of it
        got = rows[str(kept)][0]
        assert got is not None and got["encoded"] == 2
        record = store.video(content_hash(kept))
        assert record is not None and record.complete


# -- an address where no Ray head answers ---------------------------------------------------------


def test_index_ray_at_an_address_where_no_cluster_runs_is_one_line_and_never_reaches_ray_init(
    tmp_path, monkeypatch
):
    """``--ray HOST:PORT`` with no cluster there (stopped, a wrong port, an unknown host) waited
    in ray.init for many minutes (20 attempts of up to 30 s) behind a bar that showed nothing;
    the head is now asked first and the run ends with one line, before the bar and ray.init."""
    import ray

    def no_init(**_: object) -> None:
        raise AssertionError("ray.init was called for an address where nothing listens")

    monkeypatch.setattr(ray, "init", no_init)
    monkeypatch.setattr(resources, "store_for", lambda ctx: None)  # no Chroma server here
    make_video(tmp_path / "a.mp4", 1.0)
    dead = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app,
        ["index", str(tmp_path), "--ray", dead],
        env={"CHROMA_URL": "http://127.0.0.1:1", "GRANALIGN_VIDEO_ROOTS": str(tmp_path)},
    )
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert flat.startswith(f"error: no Ray cluster at --ray '{dead}': no Ray head answers there ("), flat
    assert "Connection refused" in flat and f"ray start --head --port {dead.rpartition(':')[2]}" in flat
    assert "connecting to Ray" not in flat


def _grpc_server(handler: Any) -> tuple[Any, str]:
    """A gRPC server on loopback whose every method ``handler(request, context)`` answers."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    class Every(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(handler) if handler else None

    server = grpc.server(ThreadPoolExecutor(max_workers=1), handlers=[Every()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_a_ray_head_wanting_a_token_or_a_server_that_is_no_ray_head_is_said_before_ray_init(monkeypatch):
    """A head started with token authentication (``ray start`` turns it on when ~/.ray/auth_token
    exists) refused a driver that sends no token, and ray.init ended after 20 s in "Failed to
    connect to Ray cluster"; another gRPC server made it retry for minutes.  Both are now one line
    naming the cause; with RAY_AUTH_MODE=token the token is ray.init's to send."""
    import grpc

    from tools.ray_ingest import _connect

    class NoInit:
        def init(self, **_: object) -> None:
            raise AssertionError("ray.init was called")

    class Init:
        address = ""

        def init(self, address: str, **_: object) -> None:
            self.address = address

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    token_head, address = _grpc_server(
        lambda request, context: context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken")
    )
    other, other_address = _grpc_server(None)  # answers every method: unimplemented
    try:
        with pytest.raises(ConfigError) as err:
            _connect(NoInit(), address)
        wants = f"the Ray cluster at --ray '{address}' wants its authentication token"
        assert str(err.value).startswith(wants)
        assert "set RAY_AUTH_MODE=token" in str(err.value)
        with pytest.raises(ConfigError) as err:
            _connect(NoInit(), other_address)
        assert str(err.value).startswith(
            f"no Ray cluster at --ray '{other_address}': the server there is not a Ray head (unimplemented"
        )
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        with_token = Init()
        _connect(with_token, address)
        assert with_token.address == address
    finally:
        token_head.stop(None)
        other.stop(None)


def test_a_ray_progress_line_before_every_video_is_probed_says_the_total_is_so_far(tmp_path, monkeypatch):
    """The total grows as probes come back: a re-run's first log line read "ray ingest: 3/3
    clips" with 41 of 44 clips to go (one video of four probed).  The driver now reports how many
    videos are probed, and the line says the total is so far until all are."""
    from tools import ray_ingest
    from tools.ray_ingest import _Driver

    seen: list[dict[str, Any]] = []
    ctx = Context(store_dir=str(tmp_path / "store"), ingest_batch=2)
    driver = _Driver(_StandInRay(), ctx, ["a.mp4", "b.mp4"], lambda **kw: seen.append(kw))
    driver._probed("a.mp4", _probe("sha256-a", 3, [2]), 0)  # two clips stored before
    driver._report()
    driver._probed("b.mp4", _probe("sha256-b", 2, [0, 1]), 0)
    driver._report()
    assert [(s["done"], s["total"], s["probed"], s["videos"]) for s in seen] == [(2, 3, 1, 2), (2, 5, 2, 2)]

    def fake_ingest(ctx, files, address, on_progress):
        for report in seen:
            on_progress(**report)
        return ray_ingest.RayIngestReport([], 5, 2, 1.0, {}, {}, 1)

    log = _offline_index_log(monkeypatch, ["a.mp4", "b.mp4"], fake_ingest)
    ray_ingest.index_on_ray(
        Context(store_dir=str(tmp_path / "s"), chroma_url="http://127.0.0.1:1"), "x", "auto"
    )
    lines = [line for line in log.getvalue().splitlines() if line.startswith("ray ingest: ")]
    assert lines == [
        "ray ingest: 2/3 clips so far (1 of 2 videos probed), 0 failed videos",
        "ray ingest: 2/5 clips, 0 failed videos",
    ]


@pytest.mark.parametrize(
    ("chroma_url", "says"),
    [
        ("http://127.0.0.1:{port}", "Chroma server at http://127.0.0.1:{port} is not reachable"),
        ("127.0.0.1:{port}", "CHROMA_URL '127.0.0.1:{port}' must look like http://host:port"),
    ],
)
def test_index_ray_with_a_chroma_server_that_does_not_answer_is_one_line_before_ray(
    tmp_path, monkeypatch, chroma_url, says
):
    """A wrong CHROMA_URL loaded every model on the cluster, then failed each video with the same
    line (a library of thousands: thousands of lines, exit status 1); like the one-machine
    path, it is now one error (exit status 2) before Ray is asked anything."""
    import ray

    from tools.ray_ingest import ingest_on_ray

    def no_init(**_: object) -> None:
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", no_init)
    make_video(tmp_path / "a.mp4", 1.0)
    port = free_port()
    url, says = chroma_url.format(port=port), says.format(port=port)
    result = CliRunner().invoke(
        app,
        ["index", str(tmp_path), "--ray", "127.0.0.1:1"],
        env={"CHROMA_URL": url, "GRANALIGN_VIDEO_ROOTS": str(tmp_path)},
    )
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert flat.startswith(f"error: {says}"), flat
    assert "connecting to Ray" not in flat
    with pytest.raises(ConfigError, match=re.escape(says)):
        ingest_on_ray(Context(chroma_url=url, video_roots=str(tmp_path)), [str(tmp_path / "a.mp4")], "auto")


def test_a_local_captioner_gets_one_actor_per_node_and_no_idle_extra_one():
    """The per-replica captioner actors were started for a ``local:`` captioner too, which uses
    one actor per node instead: an actor process per run that nothing ever called.  Only served
    (``openai:``) captioners get them now, one per replica; a local one, one per node."""
    from tools.ray_ingest import _start_models

    class Handle:
        def __init__(self, kind: str, args: tuple[Any, ...]) -> None:
            self.kind, self.args = kind, args
            self.ready = self.peak_rss_mib = self

        def remote(self, *_: object) -> str:
            return {"ClipHost": "clip", "CaptionHost": "captioner", "EmbedHost": "embedder"}[self.kind]

    class StandInRay:
        def __init__(self) -> None:
            self.started: list[Handle] = []

        def remote(self, cls: type) -> Any:
            ray = self

            class Options:
                def options(self, **_: object) -> Options:
                    return self

                def remote(self, *args: Any) -> Handle:
                    ray.started.append(Handle(cls.__name__, args))
                    return ray.started[-1]

            return Options()

        def nodes(self) -> list[dict[str, Any]]:
            return [{"NodeID": f"{i:056x}", "Alive": True, "Resources": {"CPU": 1.0}} for i in range(2)]

        def get(self, refs: list[str]) -> list[str]:
            return list(refs)

    for spec, want in [
        ("local:/models/tiny-vlm", ["local:/models/tiny-vlm"] * 2),
        ("openai:http://a/v1,http://b/v1#m", ["openai:http://a/v1#m", "openai:http://b/v1#m"]),
    ]:
        ray = StandInRay()
        _start_models(ray, Context(captioner=spec), {})
        assert [h.args[1] for h in ray.started if h.kind == "CaptionHost"] == want, spec


def test_the_chroma_timeout_set_for_the_driver_reaches_the_workers(monkeypatch):
    """GRANALIGN_CHROMA_TIMEOUT bounds each request to the Chroma server, but Ray workers inherit
    their node's ``ray start`` environment: set beside ``granalign index --ray`` it bounded the
    driver's requests only, and the batch tasks writing every clip waited the default 120 s on
    a server that stopped answering.  It now travels with the tasks, like OPENAI_API_KEY."""
    from granalign.io.store import server_timeout_from_env
    from tools.ray_ingest import _forwarded_env

    monkeypatch.setenv("GRANALIGN_CHROMA_TIMEOUT", "7")
    env = _forwarded_env()
    monkeypatch.delenv("GRANALIGN_CHROMA_TIMEOUT")  # a worker: its node's environment
    for name, value in env.items():  # what the probe and batch tasks do with the env they get
        monkeypatch.setenv(name, value)
    assert server_timeout_from_env() == 7.0


def test_a_video_begun_before_the_chroma_server_was_lost_reads_as_unfinished_not_as_not_attempted(tmp_path):
    """The Chroma server lost mid-run (a deployment failure) stops the run; a video that already
    had clips stored (by this run, or by an earlier one) or a batch sent was listed as "not
    attempted", though a re-run continues it.  Like the one-machine folder run, which counts only
    videos never begun as not attempted, it now reads as unfinished, with its clips stored."""
    from granalign.io.store import StoreUnavailable
    from tools.ray_ingest import _Driver

    def send(video: str) -> int:  # the first queued batch of ``video`` goes out: its clips
        job = next(job for job in driver.queue if job.video == video)
        driver.queue.remove(job)
        driver.queue.insert(0, job)
        driver._submit(max_in_flight=len(driver.pending) + 1)
        return len(job.clips)

    ctx = Context(store_dir=str(tmp_path / "store"), ingest_batch=2)
    videos = ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    driver = _Driver(_StandInRay(), ctx, videos, lambda **_: None)
    driver.model_sets = {}
    driver._probed("a.mp4", _probe("sha256-a", 6, [0, 1, 2, 3, 4, 5]), 0)
    driver._probed("b.mp4", _probe("sha256-b", 4, [2, 3]), 0)  # 2 clips stored by an earlier run
    driver._probed("c.mp4", _probe("sha256-c", 2, [0, 1]), 0)
    driver._probed("d.mp4", _probe("sha256-d", 4, [0, 1, 2, 3]), 0)
    first, second, c_only, d_first = send("a.mp4"), send("a.mp4"), send("c.mp4"), send("d.mp4")
    driver._batch_done("a.mp4", {"timings": {}, "peak_rss_mib": 1.0}, first)  # 2 clips of a stored
    lost = StoreUnavailable("Chroma server at http://10.0.0.5:8002 is not reachable")
    driver._failed("c.mp4", lost, c_only)  # the server is gone: the run stops here
    driver._failed("a.mp4", lost, second)  # batches in flight meet it too
    driver._failed("d.mp4", lost, d_first)
    rows = {video: problem for video, _, problem in driver.results()}
    stopped = "the run stopped when c.mp4 failed for the whole deployment; a re-run continues it"
    assert rows["a.mp4"] == f"unfinished (2 of 6 clips stored): {stopped}"
    assert rows["b.mp4"] == f"unfinished (2 of 4 clips stored): {stopped}"
    assert rows["d.mp4"] == f"unfinished (0 of 4 clips stored): {stopped}"
    assert rows["c.mp4"] == "Chroma server at http://10.0.0.5:8002 is not reachable"


def test_index_ray_auto_with_no_cluster_running_says_so_in_granaligns_words(monkeypatch):
    """``--ray`` (auto) with no Ray cluster on this host ended with Ray's own message, which
    tells the user to set an ``--address`` flag granalign does not have; it is now one line
    saying no cluster was found and how to start one or name its head (ray.init's own discovery
    is kept, only told to find nothing: the test must not meet another session's cluster)."""
    import ray
    from ray._private import services, utils

    from tools.ray_ingest import _connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def no_gcs_process() -> list[str]:  # no gcs_server process on this host
        return []

    no_gcs_process.cache_clear = lambda: None  # type: ignore[attr-defined]  # ray.init clears it
    monkeypatch.setattr(services, "find_gcs_addresses", no_gcs_process)
    monkeypatch.setattr(utils, "read_ray_address", lambda temp_dir=None: None)  # no `ray start`
    with pytest.raises(ConfigError) as err:
        _connect(ray, "auto")
    message = str(err.value)
    assert message.startswith("no Ray cluster at --ray 'auto': none is running on this host"), message
    assert "ray start --head" in message and "--ray HOST:PORT" in message
    assert "--address" not in message and "\n" not in message


def test_index_ray_says_when_a_node_was_lost_during_the_run(tmp_path, monkeypatch):
    """Ray survives a worker node that dies (tasks retried, actors restarted elsewhere) without a
    word to the driver: the summary said "33 clips encoded on 2 node(s)" as if both had stayed.
    The driver now compares the nodes it started on with those alive at the end, and says so."""
    from tools import ray_ingest
    from tools.ray_ingest import _lost_nodes

    class Nodes:
        def nodes(self) -> list[dict[str, Any]]:
            return [
                {"NodeID": "head", "Alive": True},
                {"NodeID": "worker", "Alive": False},  # SIGKILLed mid-run
                {"NodeID": "old", "Alive": False},  # died before this run: not its loss
                {"NodeID": "joined", "Alive": True},  # joined mid-run
            ]

    assert _lost_nodes(Nodes(), ["head", "worker"]) == 1
    assert _lost_nodes(Nodes(), ["head"]) == 0

    reports = [
        ray_ingest.RayIngestReport([], 8, 8, 1.0, {}, {}, nodes=2, nodes_lost=1),
        ray_ingest.RayIngestReport([], 8, 8, 1.0, {}, {}, nodes=2),
    ]
    log = _offline_index_log(
        monkeypatch, ["a.mp4"], lambda ctx, files, address, on_progress: reports.pop(0), width=200
    )
    ctx = Context(store_dir=str(tmp_path / "s"), chroma_url="http://127.0.0.1:1")
    ray_ingest.index_on_ray(ctx, "x", "auto")
    said = "note: 1 of 2 Ray nodes was lost during the run; its batch tasks were retried and its model "
    assert said + "actors restarted on the nodes left" in log.getvalue()
    log.truncate(0)
    ray_ingest.index_on_ray(ctx, "x", "auto")
    assert "lost" not in log.getvalue()
