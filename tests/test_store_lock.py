"""One process per embedded store folder: real ``granalign index --captions`` processes.

Two processes writing one embedded Chroma folder at once crashed both and left a folder every
later process segfaults on.  The second process must now stop at once with one line naming the
holder (or wait for it, then import), and the folder must afterwards hold every clip once.
The holder is frozen with SIGSTOP while it holds the lock, so the overlap is certain.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from granalign.io.locks import STORE_HOLDER, StoreBusyError
from granalign.io.store import Store, close_stores, open_store
from tools.demo_data import DEMO

ROOT = Path(__file__).resolve().parents[1]
GRANALIGN = [sys.executable, "-m", "tools.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000", "HF_HUB_OFFLINE": "1"}
CAPTIONS = "captions.all-MiniLM-L6-v2"


@pytest.fixture
def captions(tmp_path: Path) -> tuple[Path, int]:
    """The first three videos of the shipped QVHighlights captions file, and their clip count."""
    lines = DEMO.captions.read_text().splitlines()[:3]
    path = tmp_path / "three.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, sum(len(json.loads(x)["captions"]) for x in lines)


def _start_index(captions: Path, store: Path, lock_timeout: float) -> subprocess.Popen[str]:
    env = {**ENV, "GRANALIGN_STORE_LOCK_TIMEOUT": f"{lock_timeout:g}"}
    return subprocess.Popen(
        [*GRANALIGN, "index", "--captions", str(captions), "--store", str(store)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _frozen_holder(captions: Path, store: Path) -> subprocess.Popen[str]:
    """A first import, stopped (SIGSTOP) as soon as it has written itself as the folder's holder."""
    proc = _start_index(captions, store, 0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((store / STORE_HOLDER).read_text())["pid"] == proc.pid:
                proc.send_signal(signal.SIGSTOP)
                return proc
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"the first import never held the store: {proc.communicate()[1][-2000:]}")


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _assert_every_clip_once(store_dir: Path, n_clips: int) -> None:
    with Store(store_dir, lock_timeout=0) as store:
        records = store.list_videos()
        assert len(records) == 3 and all(r.complete for r in records)
        assert store.count(CAPTIONS) == n_clips == sum(r.n_clips for r in records)


@pytest.mark.slow
def test_a_second_import_on_a_held_folder_stops_at_once_naming_the_holder(captions, tmp_path):
    path, n_clips = captions
    store = tmp_path / "store"
    first = _frozen_holder(path, store)
    try:
        second = subprocess.run(
            [*GRANALIGN, "index", "--captions", str(path), "--store", str(store)],
            cwd=ROOT,
            env={**ENV, "GRANALIGN_STORE_LOCK_TIMEOUT": "0"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.poll() is None, "the first import ended before the second one started"
    finally:
        rc, err = _finish(first)
    assert second.returncode == 2, second.stderr[-2000:]
    lines = [x for x in second.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"store {store} is in use by pid {first.pid} on {socket.gethostname()}" in lines[0]
    assert "index --captions" in lines[0] and "chroma run" in lines[0] and "CHROMA_URL" in lines[0]
    assert rc == 0, err[-2000:]
    _assert_every_clip_once(store, n_clips)


@pytest.mark.slow
def test_a_second_import_waits_for_the_holder_then_finds_every_video_imported(captions, tmp_path):
    path, n_clips = captions
    store = tmp_path / "store"
    first = _frozen_holder(path, store)
    second = _start_index(path, store, 300)
    try:
        assert second.stderr is not None
        waiting = second.stderr.readline()  # the one line it prints before waiting
        assert f"is in use by pid {first.pid}" in waiting and "waiting up to 300 s" in waiting, waiting
        assert second.poll() is None
    finally:
        rc, err = _finish(first)
    _, err2 = second.communicate(timeout=300)
    assert rc == 0, err[-2000:]
    assert second.returncode == 0, err2[-2000:]
    assert "3 videos: 0 imported (0 captions), 3 already in the store" in err2
    _assert_every_clip_once(store, n_clips)


def test_a_killed_holder_frees_the_folder(tmp_path):
    """The kernel drops the lock of a process killed with SIGKILL: no stale lock to clean."""
    store = tmp_path / "store"
    holder = (
        "import sys, time, pathlib\nfrom granalign.io.store import Store\nStore(pathlib.Path(sys.argv[1]))\n"
        "print('held', flush=True)\ntime.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(store)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusyError, match=rf"in use by pid {proc.pid} on "):
            Store(store, lock_timeout=0)
    finally:
        proc.kill()
        proc.wait()
    with Store(store, lock_timeout=0) as again:
        assert again.count("videos") == 0


def test_one_process_opens_a_folder_twice_without_waiting_and_reopens_after_close(tmp_path):
    store_dir = tmp_path / "store"
    first = open_store(store_dir, lock_timeout=0)
    assert open_store(store_dir, lock_timeout=0) is first
    with Store(store_dir, lock_timeout=0) as second:  # another Store in this process: counted
        second.put_rewrites({"k": {"v": 1}}, {"k": "q"})
    assert first.get_rewrite("k") == {"v": 1}  # still open and still locked after the inner close
    probe = "import sys, pathlib\nfrom granalign.io.store import Store\n"
    probe += "Store(pathlib.Path(sys.argv[1]), lock_timeout=0)"
    held = subprocess.run(
        [sys.executable, "-c", probe, str(store_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert held.returncode != 0 and f"in use by pid {os.getpid()}" in held.stderr
    close_stores()
    assert not (store_dir / STORE_HOLDER).exists()
    reopened = open_store(store_dir, lock_timeout=0)
    assert reopened is not first and reopened.get_rewrite("k") == {"v": 1}
    close_stores()


def test_a_chroma_server_store_takes_no_folder_lock(tmp_path, monkeypatch):
    from tests.servers import chroma_server

    monkeypatch.setenv("GRANALIGN_STORE", str(tmp_path / "unused"))
    with chroma_server(tmp_path) as url:
        one, two = Store(chroma_url=url, lock_timeout=0), Store(chroma_url=url, lock_timeout=0)
        one.put_rewrites({"k": {"v": 2}}, {"k": "q"})
        assert two.get_rewrite("k") == {"v": 2} and one.folder is None
        one.close()
        two.close()
    assert not (tmp_path / "unused").exists()


def test_a_chroma_server_lost_mid_run_is_one_line_naming_it(tmp_path):
    """The server goes away after the store was opened (restart, crash, network): the next
    store call says so in one GranAlignError naming the server, not an httpx traceback."""
    from granalign.errors import GranAlignError
    from granalign.io.store import StoreUnavailable, VideoRecord
    from tests.servers import chroma_server

    with chroma_server(tmp_path) as url:
        store = Store(chroma_url=url)
        store.put_video(VideoRecord("v", n_clips=1, clip_len_s=2.0, duration_s=2.0, caption_source="t"))
        assert store.video("v") is not None
    with pytest.raises(StoreUnavailable, match=f"lost the Chroma server at {url}") as info:
        store.video("v")
    assert isinstance(info.value, GranAlignError)
    with pytest.raises(StoreUnavailable):
        list(store.collection_names())
