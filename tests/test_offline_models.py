"""A first run without the models: no hub retry storm, one message that says what to set.

huggingface_hub reads ``HF_HOME``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` when it is imported,
so the user-facing cases run in child processes with the environment a user would set: an empty
hub cache, and either offline mode or a hub endpoint on loopback (a closed port, or a tiny server
that counts the requests it gets and answers 503).  The in-process tests cover the cache lookup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from granalign.backends.weights import TRANSFORMERS_FILES, require_hub_model
from granalign.errors import ConfigError
from tests.servers import free_port, http_stub
from tests.test_video import make_video

ROOT = Path(__file__).resolve().parents[1]
CLIP_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
VLM = "Qwen/Qwen2.5-VL-7B-Instruct"
LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDER = "BAAI/bge-small-en-v1.5"

LOAD_EACH = f"""
import json
from PIL import Image
from granalign.backends.captioner import make_captioner
from granalign.backends.clip import make_clip_encoder
from granalign.backends.embedder import make_embedder
from granalign.errors import ConfigError
from granalign.backends.rewriter import make_rewriter

loads = {{
    "clip": lambda: make_clip_encoder("local:ViT-B-32", "laion2b_s34b_b79k").embed_texts(["a dog"]),
    "captioner": lambda: make_captioner("local:{VLM}").caption([Image.new("RGB", (32, 32))], ["describe"]),
    "rewriter": lambda: make_rewriter("local:{LLM}").generate(["hello"]),
    "embedder": lambda: make_embedder("local:{EMBEDDER}").embed(["a dog"]),
}}
errors = {{}}
for name, load in loads.items():
    try:
        load()
        errors[name] = "loaded"
    except ConfigError as exc:
        errors[name] = str(exc)
print("ERRORS " + json.dumps(errors))
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's environment with an empty hub cache (and nothing of the test session's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), COLUMNS="2000", **extra)
    return env


def _load_each(env: dict[str, str]) -> tuple[dict[str, str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_EACH], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERRORS ")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    return json.loads(lines[-1][len("ERRORS ") :]), proc.stdout + proc.stderr


def _assert_what_to_set(errors: dict[str, str]) -> None:
    """Each message names the model and says what to set instead."""
    assert f"CLIP weights ViT-B-32/laion2b_s34b_b79k (hub repo {CLIP_REPO})" in errors["clip"]
    assert f"hf download {CLIP_REPO}" in errors["clip"] and "clip_pretrained=" in errors["clip"]
    assert f"captioner model {VLM}" in errors["captioner"]
    assert f"hf download {VLM}" in errors["captioner"]
    assert f"captioner=openai:http://HOST:8000/v1#{VLM}" in errors["captioner"]
    assert f"rewriter model {LLM}" in errors["rewriter"] and "rewriter=local:smollm2" in errors["rewriter"]
    assert f"text embedder {EMBEDDER}" in errors["embedder"] and "embedder=local:" in errors["embedder"]
    assert all("\n" not in e for e in errors.values())


def test_offline_without_cache_every_hub_model_fails_at_once_with_what_to_set(tmp_path):
    errors, output = _load_each(_env(tmp_path, HF_HUB_OFFLINE="1"))
    _assert_what_to_set(errors)
    assert all("HF_HUB_OFFLINE is set" in e for e in errors.values()), errors
    assert "Retrying" not in output


@contextmanager
def counting_hub() -> Iterator[tuple[str, list[str]]]:
    """A loopback 'hub' that answers every request with 503 and records its paths."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    with http_stub(Handler) as url:
        yield url, seen


def test_unusable_hub_is_asked_once_per_model_then_the_same_message(tmp_path):
    with counting_hub() as (endpoint, seen):
        errors, output = _load_each(_env(tmp_path, HF_ENDPOINT=endpoint))
    _assert_what_to_set(errors)
    assert all(f"hub at {endpoint} is not reachable (HTTP 503)" in e for e in errors.values()), errors
    assert sorted(seen) == sorted(f"/api/models/{repo}" for repo in (CLIP_REPO, VLM, LLM, EMBEDDER))
    assert "Retrying" not in output


def test_retrieve_cli_with_default_clip_offline_stops_with_one_line(tmp_path):
    """The first-run case of the issue: default settings, a new video, no weights, no internet."""
    video = make_video(tmp_path / "grey.mp4", 4.0)
    env = _env(
        tmp_path,
        HF_HUB_OFFLINE="1",
        GRANALIGN_STORE=str(tmp_path / "store"),
        GRANALIGN_VIDEO_ROOTS=str(tmp_path),
    )
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "granalign"), "retrieve", str(video), "a grey screen"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"CLIP weights ViT-B-32/laion2b_s34b_b79k (hub repo {CLIP_REPO})" in errors[0]
    assert "HF_HUB_OFFLINE is set" in errors[0] and "clip_pretrained=" in errors[0]
    assert "Retrying" not in proc.stdout + proc.stderr


# -- the cache lookup, in process ------------------------------------------------------------


def _fake_cached_model(cache: Path, repo_id: str, files: list[str]) -> None:
    """A hub cache entry as huggingface_hub lays it out (refs/main → snapshots/<commit>/...)."""
    commit = "0" * 40
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name in files:
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_cached_model_loads_offline_and_a_partial_one_does_not(hub_cache):
    _fake_cached_model(hub_cache, "org/whole", ["config.json", "model.safetensors"])
    _fake_cached_model(hub_cache, "org/partial", ["config.json"])  # weights never arrived
    require_hub_model("model org/whole", "org/whole", TRANSFORMERS_FILES, "set x")  # no error
    with pytest.raises(ConfigError, match=r"^model org/partial is not in the Hugging Face cache .*; set x$"):
        require_hub_model("model org/partial", "org/partial", TRANSFORMERS_FILES, "set x")


def test_a_closed_hub_port_gives_the_message_and_a_cached_model_says_go_offline(hub_cache, monkeypatch):
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    absent = rf"not in the Hugging Face cache .* hub at {endpoint} is not reachable"
    with pytest.raises(ConfigError, match=absent):
        require_hub_model("model org/absent", "org/absent", TRANSFORMERS_FILES, "set x")
    _fake_cached_model(hub_cache, "org/whole", ["config.json", "model.safetensors"])
    with pytest.raises(ConfigError, match=r"is in the Hugging Face cache but .*set HF_HUB_OFFLINE=1"):
        require_hub_model("model org/whole", "org/whole", TRANSFORMERS_FILES, "set x")
