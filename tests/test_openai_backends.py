"""The ``openai:`` backends (vLLM in production) against real HTTP servers on loopback.

* ``transformers serve`` (a real OpenAI-compatible server process) serving SmolLM2 saved as a
  normal model folder (the rewriter) and a tiny random-weight Qwen2.5-VL (the captioner):
  the request formats are accepted end to end, images travel as base64 data URLs.
  ``transformers serve`` ignores ``response_format`` (it logs "Ignoring unsupported fields"),
  so SmolLM2's free-text answers exercise the validation and fallback path.
* A scripted OpenAI-compatible stub (``http.server`` on loopback, in a thread) for what a
  healthy model server rarely does on demand: valid JSON, invalid JSON, HTTP 500 then
  recovery, HTTP 400, a hang past the timeout, and a server that is down.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from granalign.backends.captioner import OpenAICaptioner, make_captioner
from granalign.backends.openai_llm import OpenAIRewriter, ServerSettings
from granalign.backends.rewriter import make_rewriter
from granalign.errors import BackendError, InputError
from granalign.io.video import content_hash
from graphs import resources
from graphs.context import Context
from graphs.ingest import ingest_video, unfinished_clips
from graphs.retrieval import graph
from prompts import load_prompt_pairs
from tests.conftest import VIDEOS, needs_videos
from tests.servers import BIN, free_port, http_stub, server
from tests.test_ingest import build_tiny_vlm_random_weights, model_context

CORE = load_prompt_pairs(["core"])[0]
QUERY = "a man in a blue shirt rides a bike down the street"


# -- a scripted OpenAI-compatible stub ------------------------------------------------------------


class Stub:
    """Answers /v1/chat/completions from a script: each entry is used once, the last one forever."""

    def __init__(self) -> None:
        self.script: list[tuple[str, Any]] = [("content", "ok")]
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.delay = 0.0

    def next(self) -> tuple[str, Any]:
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def _completion(content: str | None) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "stub",
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
            ],
        }
    ).encode()


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    with stub_server() as served:
        yield served


@contextlib.contextmanager
def stub_server() -> Iterator[tuple[Stub, str]]:
    """A scripted stub on a free loopback port; yields its state and its ``/v1`` base URL."""
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(body)
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            answered = False

            def done() -> None:  # before the answer goes out: a client that has its answer may
                nonlocal answered  # send its next request before this thread runs on, and
                if not answered:  # counting that one too would be this stub's race, not the client's
                    answered = True
                    with state.lock:
                        state.in_flight -= 1

            try:
                kind, value = state.next()
                time.sleep(state.delay)
                if kind == "sleep":
                    time.sleep(value)
                    kind, value = "content", "late"
                if kind == "trickle":  # the whole answer promised, then one byte every `value` s
                    body = _completion("slow")
                    done()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(value)
                    return
                headers = {}
                if kind == "limited":  # HTTP 429 with Retry-After: value (seconds)
                    kind, value, headers = "status", 429, {"Retry-After": str(value)}
                if kind == "status":
                    payload, code = json.dumps({"error": {"message": f"scripted {value}"}}).encode(), value
                elif kind == "raw":  # a 200 whose body is whatever the script says
                    payload, code = value, 200
                else:
                    payload, code = _completion(value), 200
                done()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for name, header in headers.items():
                    self.send_header(name, header)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)
            finally:
                done()

    with http_stub(Handler) as url:
        yield state, f"{url}/v1"


def _rewriter(url: str, **kw: Any) -> OpenAIRewriter:
    settings = ServerSettings(url, "llama-3-8b", **{"backoff_s": 0.01, **kw})
    return OpenAIRewriter(settings)


def test_rewriter_asks_for_json_schema_and_uses_valid_json(stub):
    state, url = stub
    answer = {
        "simplified": "A man rides a bike.",
        "detailed": "A man in a blue shirt rides a bike down the street.",
    }
    state.script = [("content", json.dumps(answer))]
    (got,) = _rewriter(url).rewrite_batch([QUERY], CORE)
    assert (got.pair_id, got.simplified, got.detailed, got.fallback) == ("core", *answer.values(), False)
    body = state.requests[0]
    assert body["model"] == "llama-3-8b" and body["temperature"] == 0.0
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and set(fmt["json_schema"]["schema"]["required"]) == {
        "simplified",
        "detailed",
    }
    assert QUERY in body["messages"][-1]["content"] and body["messages"][0]["role"] == "system"


def test_rewriter_records_a_fallback_for_invalid_or_unusable_json(stub):
    state, url = stub
    state.script = [
        ("content", "Sure! Here is the rewrite: a man rides"),
        ("content", '{"simplified": "", "detailed": 3}'),
    ]
    first, second = (_rewriter(url).rewrite_batch([QUERY], CORE)[0] for _ in range(2))
    assert first.fallback and "invalid JSON" in first.reason and first.simplified == QUERY
    assert second.fallback and "simplified:" in second.reason and "detailed:" in second.reason


def test_retries_5xx_with_backoff_then_succeeds(stub):
    state, url = stub
    good = json.dumps({"simplified": "A man rides a bike.", "detailed": "A man rides a bike down a street."})
    state.script = [("status", 500), ("status", 503), ("content", good)]
    (got,) = _rewriter(url, attempts=3).rewrite_batch([QUERY], CORE)
    assert not got.fallback and len(state.requests) == 3


def test_http_429_is_retried_after_the_servers_retry_after(stub):
    """A rate-limiting gateway in front of vLLM answers 429 with Retry-After: it was taken for
    the caller's mistake (4xx, never retried), so one busy moment stopped an ingest and made
    every rewrite fall back.  Now 429 is retried within request_attempts, after Retry-After
    (capped by the request timeout) when it is longer than the backoff."""
    from PIL import Image

    state, url = stub
    good = json.dumps({"simplified": "A man rides a bike.", "detailed": "A man rides a bike down a street."})
    state.script = [("limited", 1), ("content", good)]
    start = time.perf_counter()
    (got,) = _rewriter(url, attempts=2).rewrite_batch([QUERY], CORE)
    assert not got.fallback and len(state.requests) == 2 and time.perf_counter() - start >= 0.9
    state.script = [("limited", 0), ("limited", 0), ("content", "a frame")]
    captioner = make_captioner(f"openai:{url}#qwen", attempts=3)
    assert captioner.caption([Image.new("RGB", (32, 32))], ["x"]) == ["a frame"]
    state.script = [("limited", 0)]
    with pytest.raises(BackendError, match=r"failed 2 time\(s\), last with HTTP 429"):
        _rewriter(url, attempts=2).rewrite_batch([QUERY], CORE)


def test_a_request_waiting_to_retry_gives_its_slot_to_the_others(stub):
    """The concurrency semaphore was held around all of a request's attempts, so one waiting
    out a backoff or a 429's Retry-After kept its slot with nothing in flight: with a server
    that 503s a few requests, the others queued behind sleeps.  Now the slot is held per
    attempt: with concurrency 1, the second request is answered while the first one waits."""
    from PIL import Image

    state, url = stub
    good = json.dumps({"simplified": "A man rides a bike.", "detailed": "A man rides a bike down a street."})
    state.script = [("status", 503), ("content", good)]
    queries = [QUERY, "a woman feeds ducks at a pond"]
    rewriter = _rewriter(url, attempts=2, backoff_s=1.0, concurrency=1)
    got = rewriter.rewrite_batch(queries, CORE)
    assert len(got) == 2  # no BackendError
    asked = [next(q for q in queries if q in body["messages"][-1]["content"]) for body in state.requests]
    assert len(asked) == 3 and asked[1] != asked[0] and asked[2] == asked[0]  # the other one, then the retry

    state.requests.clear()
    state.script = [("limited", 1), ("content", "a frame")]
    captioner = make_captioner(f"openai:{url}#qwen", attempts=2, concurrency=1)
    assert captioner.caption([Image.new("RGB", (32, 32))] * 2, ["first", "second"]) == ["a frame"] * 2
    asked = [body["messages"][0]["content"][0]["text"] for body in state.requests]
    assert len(asked) == 3 and asked[1] != asked[0] and asked[2] == asked[0]


def test_time_queued_for_a_slot_does_not_count_against_the_request_timeout(stub):
    """Each request gets ``timeout_s`` once it is sent: the third of three answered in 0.3 s
    each, one at a time, waits 0.6 s for its slot and must not time out at 0.5 s."""
    state, url = stub
    good = json.dumps({"simplified": "A man rides a bike.", "detailed": "A man rides a bike down a street."})
    state.script, state.delay = [("content", good)], 0.3
    queries = [QUERY, "a woman feeds ducks at a pond", "a dog catches a frisbee"]
    got = _rewriter(url, attempts=1, timeout_s=0.5, concurrency=1).rewrite_batch(queries, CORE)
    assert len(got) == 3 and state.max_in_flight == 1  # no BackendError: none timed out


def test_the_concurrency_setting_says_it_limits_a_server_not_a_backend():
    """``granalign settings`` showed 'per OpenAI-compatible backend' after the limit became one
    per model server, shared by the rewriter and both captioners."""
    from dataclasses import fields

    from graphs.context import Context

    [help_text] = [f.metadata["description"] for f in fields(Context) if f.name == "concurrency"]
    assert (
        "per OpenAI-compatible model server" in help_text and "per OpenAI-compatible backend" not in help_text
    )


def test_backends_of_one_server_share_its_concurrency_limit(stub):
    """Two runs that differ in a timeout get two rewriter objects (and the aware captioner is
    often the agnostic one's server): each had its own semaphore, so a server configured for
    ``concurrency`` 1 got one request per object at once.  The limit is now per server."""
    from concurrent.futures import ThreadPoolExecutor

    state, url = stub
    good = json.dumps({"simplified": "A man rides a bike.", "detailed": "A man rides a bike down a street."})
    state.script, state.delay = [("content", good)], 0.3
    patient = _rewriter(url, attempts=1, timeout_s=5.0, concurrency=1)
    hasty = _rewriter(url, attempts=1, timeout_s=4.0, concurrency=1)
    with ThreadPoolExecutor(2) as pool:
        queries = [QUERY, "a dog catches a frisbee"]
        runs = [pool.submit(r.rewrite_batch, queries, CORE) for r in (patient, hasty)]
        assert [len(run.result()) for run in runs] == [2, 2]
    assert len(state.requests) == 4 and state.max_in_flight == 1


@pytest.mark.parametrize(
    ("script", "kw", "needle", "requests"),
    [
        ([("status", 500)], {"attempts": 3}, "failed", 3),
        ([("status", 400)], {"attempts": 3}, "HTTP 400", 1),  # the caller's mistake: not retried
        ([("sleep", 1.5)], {"attempts": 2, "timeout_s": 0.3}, "timed out 2 time", 2),
    ],
    ids=["http-500", "http-400", "timeout"],
)
def test_server_failures_become_clear_backend_errors(stub, script, kw, needle, requests):
    state, url = stub
    state.script = script
    with pytest.raises(BackendError, match=needle) as err:
        _rewriter(url, **kw).rewrite_batch([QUERY], CORE)
    assert url in str(err.value)
    time.sleep(0.05)
    assert len(state.requests) == requests


def test_a_server_that_is_down_fails_fast():
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.perf_counter()
    with pytest.raises(BackendError, match="not reachable"):
        _rewriter(url, attempts=3).rewrite_batch([QUERY], CORE)
    assert time.perf_counter() - start < 5


def test_focus_keeps_only_terms_grounded_in_the_query(stub):
    state, url = stub
    copied = {"entities": ["man", "blue shirt", "ducks", "pond"], "actions": ["riding a bike", "feeds ducks"]}
    state.script = [("content", json.dumps(copied)), ("content", '{"entities": ["ducks"], "actions": []}')]
    entities, actions, problem = _rewriter(url).extract_focus(QUERY)
    assert (entities, actions, problem) == (["man", "blue shirt"], ["riding a bike"], "")
    assert state.requests[0]["response_format"]["json_schema"]["name"] == "query_focus"
    assert _rewriter(url).extract_focus(QUERY)[2]  # nothing grounded: a problem, not an exception


def test_captioner_sends_base64_frames_within_max_pixels_many_in_flight(stub):
    from PIL import Image

    state, url = stub
    state.script, state.delay = [("content", "  a man\n rides a bike  ")], 0.3
    captioner = make_captioner(f"openai:{url}#qwen2.5-vl", max_pixels=64 * 64, concurrency=4, max_tokens=32)
    assert isinstance(captioner, OpenAICaptioner)
    images = [Image.new("RGB", (640, 272), (i * 20, 0, 0)) for i in range(8)]
    start = time.perf_counter()
    captions = captioner.caption(images, ["Describe."] * 8)
    elapsed = time.perf_counter() - start
    assert captions == ["a man rides a bike"] * 8
    assert state.max_in_flight == 4 and elapsed < 8 * 0.3  # concurrent, bounded by the semaphore
    content = state.requests[0]["messages"][0]["content"]
    url0 = content[1]["image_url"]["url"]
    assert content[0] == {"type": "text", "text": "Describe."} and url0.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url0.split(",", 1)[1])))
    assert image.size[0] * image.size[1] <= 64 * 64 and abs(image.size[0] / image.size[1] - 640 / 272) < 0.1
    assert state.requests[0]["max_tokens"] == 32


def test_captioner_failure_names_how_many_frames_failed(stub):
    from PIL import Image

    state, url = stub
    state.script = [("status", 400)]
    captioner = make_captioner(f"openai:{url}#qwen2.5-vl", attempts=1)
    with pytest.raises(BackendError, match=r"HTTP 400.*\(3 of 3 frames failed\)"):
        captioner.caption([Image.new("RGB", (32, 32))] * 3, ["x"] * 3)


NOT_JSON = {
    "cut-short": b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "mess',
    "html-page": b"<html><body>502 Bad Gateway (nginx)</body></html>",
}


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_a_200_answer_that_is_not_json_is_a_backend_error_not_a_crash(stub, body):
    """A proxy's page or a body cut short with HTTP 200 escaped as a bare JSONDecodeError from
    every openai: backend (a graph run ended in a traceback); now it is a BackendError (retried
    like a 5xx), which the nodes record as a fallback."""
    from PIL import Image

    state, url = stub
    state.script = [("raw", body)]
    with pytest.raises(BackendError, match=r"HTTP 200 .*not JSON") as err:
        _rewriter(url, attempts=2).rewrite_batch([QUERY], CORE)
    assert url in str(err.value) and len(state.requests) == 2
    with pytest.raises(BackendError, match="not JSON"):
        _rewriter(url, attempts=1).extract_focus(QUERY)
    with pytest.raises(BackendError, match=r"not JSON.*\(2 of 2 frames failed\)"):
        make_captioner(f"openai:{url}#qwen", attempts=1).caption([Image.new("RGB", (32, 32))] * 2, ["x"] * 2)
    good = json.dumps({"simplified": "A man rides a bike.", "detailed": "A man rides a bike down a street."})
    state.script = [("raw", body), ("content", good)]  # a passing glitch: the retry gets the answer
    (got,) = _rewriter(url, attempts=2).rewrite_batch([QUERY], CORE)
    assert not got.fallback and got.simplified == "A man rides a bike."


def test_graph_run_falls_back_when_the_rewriter_answers_a_200_that_is_not_json(stub, tmp_path):
    state, url = stub
    state.script = [("raw", NOT_JSON["html-page"])]
    ctx = _caption_only_store(tmp_path).with_overrides(
        rewriter=f"openai:{url}#llama", m=1, request_attempts=1
    )
    out = graph.invoke({"video": "kitchen", "query": "a man is cutting carrots"}, context=ctx)
    assert out["moments"] and any("rewrite core fell back" in n and "not JSON" in n for n in out["notes"])


NO_COMPLETION = {
    "no-choices": json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode(),
    "content-null": _completion(None),
    "choice-without-message": json.dumps({"id": "x", "choices": [{"index": 0}]}).encode(),
    "error-object": json.dumps({"error": {"message": "model overloaded"}}).encode(),
}


@pytest.mark.parametrize("body", NO_COMPLETION.values(), ids=NO_COMPLETION.keys())
def test_a_200_answer_without_a_completion_is_a_backend_error_never_an_empty_caption(stub, body):
    """JSON without a completion's text: the captioner returned "" for every frame (stored at
    ingest as the clip's caption, cached as its aware caption), and a choice without a message
    crashed every backend with AttributeError.  Now it is a BackendError, retried like a 5xx."""
    from PIL import Image

    state, url = stub
    state.script = [("raw", body)]
    captioner = make_captioner(f"openai:{url}#qwen", attempts=2)
    with pytest.raises(BackendError, match=r"HTTP 200 2 time\(s\) without a completion") as err:
        captioner.caption([Image.new("RGB", (32, 32))] * 2, ["x"] * 2)
    assert url in str(err.value) and len(state.requests) == 4
    with pytest.raises(BackendError, match="without a completion"):
        _rewriter(url, attempts=1).rewrite_batch([QUERY], CORE)
    with pytest.raises(BackendError, match="without a completion"):
        _rewriter(url, attempts=1).extract_focus(QUERY)
    state.script = [("raw", body), ("content", "a man rides a bike")]
    assert captioner.caption([Image.new("RGB", (32, 32))], ["x"]) == ["a man rides a bike"]


def test_captioner_spreads_frames_over_replicas_and_survives_one_that_is_down(stub):
    """``openai:URL1,URL2#model`` (README's scale-out spec) outside Ray sent every frame to the
    first host with the path "/v1,http://.../v1/chat/completions" (a 404 on vLLM): an ingest
    without --ray failed and every query's aware captions fell back.  Frames now go to every
    replica; a replica that is down or failing hands its frames to the others."""
    from PIL import Image

    state, url = stub
    state.script = [("content", "a frame")]
    images, prompts = [Image.new("RGB", (32, 32))] * 8, ["x"] * 8
    with stub_server() as (other, url2):
        other.script = [("content", "a frame")]
        both = make_captioner(f"openai:{url},{url2}#qwen", attempts=1)
        assert both.name == make_captioner(f"openai:{url}#qwen").name == "openai:qwen"  # same cache keys
        assert both.caption(images, prompts) == ["a frame"] * 8
        assert len(state.requests) == 4 and len(other.requests) == 4
        other.script = [("status", 500)]  # a replica that fails: its frames go to the healthy one
        assert both.caption(images, prompts) == ["a frame"] * 8
        assert len(state.requests) == 12
    down = f"http://127.0.0.1:{free_port()}/v1"
    survivor = make_captioner(f"openai:{down},{url}#qwen", attempts=1)
    assert survivor.caption(images, prompts) == ["a frame"] * 8 and len(state.requests) == 20
    dead = make_captioner(f"openai:{down},{down.replace('/v1', '/w1')}#qwen", attempts=1)
    with pytest.raises(BackendError, match=r"not reachable.*2 replicas.*\(8 of 8 frames failed\)"):
        dead.caption(images, prompts)


@pytest.mark.parametrize(
    ("script", "status", "misconfigured", "requests"),
    [
        ([("status", 401)], 401, True, 1),  # a wrong API key
        ([("status", 403)], 403, True, 1),
        ([("status", 404)], 404, True, 1),  # a wrong model name or base URL path
        ([("status", 400)], 400, False, 1),
        ([("status", 500)], 500, False, 2),
        ([("limited", 0)], 429, False, 2),
        ([("raw", b"<html>502</html>")], None, False, 2),
    ],
    ids=["401", "403", "404", "400", "500", "429", "200-not-json"],
)
def test_a_server_answer_that_says_the_deployment_is_wrong_is_marked_on_the_error(
    stub, script, status, misconfigured, requests
):
    """A captioner server answering 401/403/404 was a BackendError like a 503's, known only by
    its text, so a folder ingest retried it for every video; the status is now on the error, and
    ``granalign index`` takes 401/403/404 (not 429, 5xx, timeouts) for a deployment failure."""
    from PIL import Image

    from graphs.ingest import is_deployment_failure

    state, url = stub
    state.script = script
    captioner = OpenAICaptioner(ServerSettings(url, "qwen", attempts=2, backoff_s=0.01))
    with pytest.raises(BackendError) as err:
        captioner.caption([Image.new("RGB", (32, 32))], ["x"])
    assert (err.value.status, err.value.misconfigured) == (status, misconfigured)
    assert is_deployment_failure(err.value) is misconfigured and len(state.requests) == requests
    with stub_server() as (other, url2):  # the message of two replicas keeps the last one's status
        other.script = script
        both = make_captioner(f"openai:{url},{url2}#qwen", attempts=1)
        with pytest.raises(BackendError, match="2 replicas tried") as err:
            both.caption([Image.new("RGB", (32, 32))], ["x"])
        assert err.value.status == status and is_deployment_failure(err.value) is misconfigured


@needs_videos
def test_a_captioner_server_refusing_the_key_stops_a_folder_index_at_once_random_weights(
    stub, tmp_path, monkeypatch
):
    """HTTP 401 from the captioner server: the folder run ends at the first video with one error
    (before, every video was ingested up to its first caption and reported the same 401)."""
    import graphs.ingest as ingest_module
    from tests.test_video import make_video
    from tools.cli import app

    state, url = stub
    state.script = [("status", 401)]
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        make_video(folder / name, 1.5)
    started: list[str] = []
    real = ingest_module.ingest_video

    def counted(ctx: Any, video: str, on_event: Any = None) -> dict[str, Any]:
        started.append(video)
        return real(ctx, video, on_event=on_event)

    monkeypatch.setattr(ingest_module, "ingest_video", counted)
    env = {
        "GRANALIGN_STORE": str(tmp_path / "store"),
        "GRANALIGN_VIDEO_ROOTS": str(tmp_path),
        "GRANALIGN_CLIP_MODEL": "local:ViT-S-32",
        "GRANALIGN_CLIP_PRETRAINED": "none",
        "GRANALIGN_CAPTIONER": f"openai:{url}#qwen",
    }
    result = CliRunner().invoke(app, ["index", str(folder), "--jobs", "1"], env=env)
    assert result.exit_code == 2, result.output
    assert len(started) == 1, started
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    text = " ".join(result.output.split())
    assert len(errors) == 1 and "answered HTTP 401" in text, result.output
    assert "2 of 3 videos not attempted" in text and "failed a.mp4" not in text, result.output


# -- graph-level fallbacks with failing servers (local models for the rest) ----------------------


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    return build_tiny_vlm_random_weights(tmp_path_factory.mktemp("models") / "tiny-qwen25vl-random-weights")


@pytest.fixture(scope="module")
def local_ctx(tmp_path_factory, vlm) -> Context:
    work = tmp_path_factory.mktemp("openai-graph")
    ctx = model_context(work / "store", vlm, [VIDEOS, work], request_attempts=1)
    ingest_video(ctx, str(VIDEOS / "bikes.mp4"))
    return ctx


@needs_videos
def test_graph_records_fallbacks_when_model_servers_fail_random_weights(local_ctx, stub):
    state, url = stub
    state.script = [("status", 500)]
    down = f"http://127.0.0.1:{free_port()}/v1"
    ctx = local_ctx.with_overrides(rewriter=f"openai:{url}#llama", aware_captioner=f"openai:{down}#qwen", m=1)
    out = graph.invoke({"video": str(VIDEOS / "bikes.mp4"), "query": QUERY}, context=ctx)
    assert out["mode"] == "full" and out["moments"] and len(out["saliency"]) == 5
    notes = " | ".join(out["notes"])
    assert "rewrite core fell back to the original query" in notes and "HTTP 500" in notes
    assert "query-aware captions unavailable" in notes and "not reachable" in notes
    assert "query focus from the query's keywords" in notes
    # nothing from the failed calls was cached: a healthy server is asked next time
    state.script = [("content", json.dumps({"simplified": "A man rides a bike.", "detailed": QUERY}))]
    again = graph.invoke({"video": str(VIDEOS / "bikes.mp4"), "query": QUERY}, context=ctx)
    assert not any("rewrite core fell back" in n for n in again["notes"])


@needs_videos
def test_an_aware_captioner_refusing_the_key_ends_the_run_naming_its_setting_random_weights(local_ctx, stub):
    """Full mode: a 401 from the query-aware captioner became ``aware_missing`` with a note on
    every query; the run now ends with an error naming the ``aware_captioner`` setting."""
    state, url = stub
    state.script = [("status", 401)]
    ctx = local_ctx.with_overrides(aware_captioner=f"openai:{url}#qwen", m=1)
    with pytest.raises(BackendError) as err:
        graph.invoke({"video": str(VIDEOS / "bikes.mp4"), "query": QUERY}, context=ctx)
    text = str(err.value)
    assert text.startswith(
        f"query-aware captions (aware_captioner): captioner openai:{url}#qwen answered HTTP 401"
    )
    assert "check its API key" in text and err.value.misconfigured


@needs_videos
def test_ingest_with_a_failing_captioner_server_stops_cleanly_random_weights(local_ctx, stub, tmp_path):
    state, url = stub
    state.script = [("content", "a frame"), ("content", "a frame"), ("status", 400)]
    ctx = local_ctx.with_overrides(
        captioner=f"openai:{url}#qwen", ingest_batch=2, store_dir=str(tmp_path / "s")
    )
    with pytest.raises(BackendError, match="HTTP 400"):
        ingest_video(ctx, str(VIDEOS / "bikes.mp4"))
    video_id = content_hash(VIDEOS / "bikes.mp4")
    assert resources.store_for(ctx).video(video_id) is None
    assert unfinished_clips(ctx, video_id, 5) == [2, 3, 4]  # the first batch is kept whole
    with pytest.raises(InputError, match="not in the store"):
        resources.video_captions(ctx, video_id)


# -- transformers serve: a real OpenAI-compatible server process --------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, vlm) -> Iterator[tuple[str, Path, Path]]:
    """``transformers serve`` on loopback with SmolLM2 (saved as a model folder) and the tiny VLM."""
    from transformers import AutoModelForCausalLM

    from granalign.backends.llm_local import _load, resolve_model

    folder = tmp_path_factory.mktemp("served")
    smol = folder / "smollm2-135m-instruct"
    loaded = _load(resolve_model("smollm2"), "cpu")  # the GGUF, dequantised (shared with local:smollm2)
    config = loaded.model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.model.state_dict())
    plain.generation_config = loaded.model.generation_config
    plain.save_pretrained(smol)
    loaded.tokenizer.save_pretrained(smol)
    port = free_port()
    cmd = [str(BIN / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with server(cmd, f"http://127.0.0.1:{port}/health", folder / "serve.log", env={"HF_HUB_OFFLINE": "1"}):
        yield f"http://127.0.0.1:{port}/v1", smol, vlm


def test_rewriter_through_transformers_serve_smollm2(served):
    """One real request (SmolLM2 on a loaded CPU needs seconds per token through the server)."""
    url, smol, _ = served
    rewriter = make_rewriter(f"openai:{url}#{smol}", timeout_s=300)
    (got,) = rewriter.rewrite_batch([QUERY], CORE)
    assert got.pair_id == "core" and got.simplified.strip() and got.detailed.strip()
    if got.fallback:  # SmolLM2 without guided decoding rarely answers JSON: recorded, not raised
        assert any(w in got.reason for w in ("JSON", "simplified:", "detailed:")), got.reason


@needs_videos
def test_full_graph_through_transformers_serve_random_weights(served, tmp_path):
    """Ingest and retrieve with both captioners (agnostic and query-aware) behind the server."""
    url, _, vlm = served
    ctx = model_context(
        tmp_path / "store", vlm, [VIDEOS, tmp_path], captioner=f"openai:{url}#{vlm}", request_timeout=120
    )
    out = graph.invoke({"video": str(VIDEOS / "bigbuckbunny.mp4"), "query": QUERY}, context=ctx)
    assert out["mode"] == "full" and len(out["saliency"]) == 3
    assert all(0 <= s < e <= 5.28 for s, e, _ in out["moments"])
    assert not any("query-aware captions unavailable" in n for n in out["notes"])
    record = resources.store_for(ctx).video(out["video_id"])
    assert record is not None and record.caption_source == f"openai:{vlm}"
    texts = resources.video_captions(ctx, out["video_id"]).captions
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


# -- one client and one semaphore per backend per process; fallbacks never cached ----------------


def _caption_only_store(folder: Path) -> Context:
    """A store holding one caption-only video ('kitchen'), imported with the real MiniLM."""
    from granalign.backends.embedder import make_embedder
    from granalign.io.captions_import import import_captions

    caps = folder / "caps.jsonl"
    rows = {"vid": "kitchen", "clip_len_s": 2, "captions": ["a man cuts carrots", "a dog sleeps"] * 4}
    caps.write_text(json.dumps(rows) + "\n")
    ctx = Context(store_dir=str(folder / "store"))
    import_captions(resources.store_for(ctx), make_embedder(ctx.embedder), caps, source="test")
    return ctx


def test_concurrency_bounds_requests_in_flight_across_50_concurrent_runs(stub, tmp_path):
    """50 graph runs at once, 2 rewrite pairs each: never more than ``concurrency`` requests in flight."""
    state, url = stub
    answer = {"simplified": "a man cuts carrots", "detailed": "a man cuts carrots in a kitchen"}
    state.script, state.delay = [("content", json.dumps(answer))], 0.05
    ctx = _caption_only_store(tmp_path).with_overrides(rewriter=f"openai:{url}#llama", m=2, concurrency=4)
    inputs = [{"video": "kitchen", "query": f"a man cuts carrots, take {i}"} for i in range(50)]
    outs = graph.batch(inputs, config={"max_concurrency": 50}, context=ctx)
    assert len(state.requests) == 100 and all(out["moments"] for out in outs)
    assert 1 <= state.max_in_flight <= 4


def test_unusable_llm_output_is_never_cached(stub, tmp_path):
    """A fallback rewrite or query focus is returned, not stored: the next run asks again."""
    state, url = stub
    good = {"simplified": "a man rides a bike", "detailed": "a man in a blue shirt rides a bike on a street"}
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter=f"openai:{url}#llama", request_attempts=1)
    state.script = [("content", "Sure! Here is the rewrite: a man rides"), ("content", json.dumps(good))]
    first, second, third = (resources.cached_rewrites(ctx, CORE, [QUERY])[0] for _ in range(3))
    assert first.fallback and "invalid JSON" in first.reason
    assert not second.fallback and second.simplified == good["simplified"]
    assert third == second and len(state.requests) == 2  # the usable answer is cached
    focus = {"entities": ["man", "blue shirt", "bike"], "actions": ["rides a bike"]}
    state.script = [("content", "no JSON here"), ("content", json.dumps(focus))]
    fallback, found, cached = (resources.query_focus(ctx, QUERY) for _ in range(3))
    assert fallback.source != "llm" and found.source == "llm" and cached == found
    assert len(state.requests) == 4


def test_an_edited_focus_prompt_is_asked_again_not_answered_from_the_cache(stub, tmp_path, monkeypatch):
    """The focus cache key held the rewriter and the query but not the focus prompt: after an
    edit of prompts/focus/*.txt every query seen before kept its old entities and actions."""
    from granalign.backends import openai_llm

    state, url = stub
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter=f"openai:{url}#llama", request_attempts=1)
    old = {"entities": ["man", "bike"], "actions": ["rides a bike"]}
    new = {"entities": ["blue shirt", "street"], "actions": ["rides down the street"]}
    state.script = [("content", json.dumps(old)), ("content", json.dumps(new))]
    first, cached = (resources.query_focus(ctx, QUERY) for _ in range(2))
    assert first == cached and first.entities == ("man", "bike") and len(state.requests) == 1
    monkeypatch.setattr(openai_llm, "FOCUS_TEMPLATE", openai_llm.FOCUS_TEMPLATE + "\nList colours too.")
    edited = resources.query_focus(ctx, QUERY)
    assert len(state.requests) == 2 and "List colours too." in state.requests[1]["messages"][-1]["content"]
    assert edited.entities == ("blue shirt", "street")
    monkeypatch.undo()  # the old prompt again: its answer is still in the cache
    assert resources.query_focus(ctx, QUERY) == first and len(state.requests) == 2


def test_retries_are_the_backends_and_reach_through_a_graph_run(stub, tmp_path):
    """No node carries a RetryPolicy (it could never fire: backend errors become fallbacks inside
    the node); the backend's own retry is what a graph run gets: HTTP 500, then an answer."""
    from graphs.retrieval import build_retrieval_graph

    builder = build_retrieval_graph().builder
    assert all(spec.retry_policy is None for spec in builder.nodes.values())
    state, url = stub
    answer = {"simplified": "a man cuts carrots", "detailed": "a man cuts carrots on a board"}
    state.script = [("status", 500), ("content", json.dumps(answer))]
    ctx = _caption_only_store(tmp_path).with_overrides(
        rewriter=f"openai:{url}#llama", m=1, request_attempts=2
    )
    out = graph.invoke({"video": "kitchen", "query": "a man is cutting carrots"}, context=ctx)
    assert len(state.requests) == 2 and not any("fell back" in note for note in out["notes"])
    assert answer["detailed"] in {v["detailed"] for v in out["variants"]}


def test_errors_never_show_the_password_of_a_server_url(stub):
    """A base URL may carry credentials (``http://user:pw@host/v1``); its errors reach callers'
    notes and logs, so they name the server without them."""
    state, url = stub
    state.script = [("status", 500)]
    secret = url.replace("http://", "http://bob:s3cret-pw@")
    with pytest.raises(BackendError) as err:
        _rewriter(secret, attempts=2).rewrite_batch([QUERY], CORE)
    text = str(err.value)
    assert "s3cret-pw" not in text and "bob" not in text
    assert "http://***@127.0.0.1:" in text and "HTTP 500" in text
    down = f"http://bob:s3cret-pw@127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match="not reachable") as err:
        _rewriter(down, attempts=1).rewrite_batch([QUERY], CORE)
    assert "s3cret-pw" not in str(err.value)


def test_a_rewriter_spec_with_replicas_is_refused_at_once():
    """Replicas (``URL1,URL2``) are a captioner feature; a rewriter given them sent every request
    to one host under a broken path and fell back on every query."""
    from granalign.backends.rewriter import make_rewriter
    from granalign.errors import ConfigError

    with pytest.raises(ConfigError, match=r"one base URL expected.*replicas is for the captioner"):
        make_rewriter("openai:http://a:8000/v1,http://b:8000/v1#llama")


def test_a_server_that_trickles_its_answer_times_out_as_a_whole_request(stub):
    """Each byte arrives well within the client's per-read timeout, but the answer would take
    minutes: ``request_timeout`` bounds the whole request, as the README says, and it is retried
    and then a BackendError like any timeout."""
    state, url = stub
    state.script = [("trickle", 0.2)]
    start = time.perf_counter()
    with pytest.raises(BackendError, match=r"timed out 2 time\(s\) \(timeout 1 s per request\)"):
        _rewriter(url, timeout_s=1.0, attempts=2).rewrite_batch([QUERY], CORE)
    assert time.perf_counter() - start < 10


# -- a misconfigured server (401/403/404) is an error of the run, not a quiet fallback -----------


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (401, "401 Unauthorized: check its API key ($OPENAI_API_KEY)"),
        (404, "404 Not Found: check the model name"),
    ],
    ids=["401", "404"],
)
def test_a_rewriter_that_refuses_the_key_or_model_ends_the_run_with_one_clear_error(
    stub, tmp_path, status, advice
):
    """A rewriter answering 401/404 fell back to the original query with a note, so every answer
    was quietly caption-only quality and the operator never learned the key or model was wrong;
    the run now ends with one line naming the setting, its spec, the status and what to check."""
    state, url = stub
    state.script = [("status", status)]
    ctx = _caption_only_store(tmp_path).with_overrides(
        rewriter=f"openai:{url}#llama", m=2, request_attempts=3
    )
    with pytest.raises(BackendError) as err:
        graph.invoke({"video": "kitchen", "query": "a man is cutting carrots"}, context=ctx)
    text = str(err.value)
    assert text.startswith(f"rewriter openai:{url}#llama answered HTTP {advice}"), text
    assert "\n" not in text and err.value.misconfigured and err.value.status == status
    assert len(state.requests) == 2  # one per prompt pair: a 401 is not retried


def test_a_focus_request_refused_for_the_key_raises_while_a_busy_server_falls_back(stub, tmp_path):
    """The query focus (same rewriter server) fell back to keywords on a 401 as on a 503."""
    state, url = stub
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter=f"openai:{url}#llama", request_attempts=1)
    state.script = [("status", 503)]
    assert resources.query_focus(ctx, QUERY).source != "llm"
    state.script = [("status", 401)]
    with pytest.raises(
        BackendError, match=r"^rewriter openai:.*answered HTTP 401 Unauthorized: check its API"
    ):
        resources.query_focus(ctx, QUERY)


@pytest.mark.parametrize(
    ("script", "note"),
    [([("status", 500)], "HTTP 500"), ([("limited", 0)], "HTTP 429"), ([("status", 400)], "HTTP 400")],
    ids=["500", "429", "400"],
)
def test_a_busy_or_refusing_rewriter_still_falls_back_with_a_note(stub, tmp_path, script, note):
    state, url = stub
    state.script = script
    ctx = _caption_only_store(tmp_path).with_overrides(
        rewriter=f"openai:{url}#llama", m=1, request_attempts=2
    )
    out = graph.invoke({"video": "kitchen", "query": "a man is cutting carrots"}, context=ctx)
    assert out["moments"] and any("rewrite core fell back" in n and note in n for n in out["notes"])


def test_a_benchmark_pass_stops_at_the_first_misconfigured_error_not_after_every_query(stub, tmp_path):
    """``run_queries`` recorded a 401 as a skipped query and went on: 1,550 queries each asked the
    server, each failed, and the run ended scoring them all as misses.  It now raises the first
    misconfigured error, after the first chunk."""
    from tools.bench import Annotation, run_queries

    state, url = stub
    state.script = [("status", 401)]
    ctx = _caption_only_store(tmp_path).with_overrides(rewriter=f"openai:{url}#llama", m=1)
    anns = [Annotation(i, f"a man cuts carrots, take {i}", "kitchen", 16.0, {}) for i in range(12)]
    with pytest.raises(BackendError, match="answered HTTP 401 Unauthorized") as err:
        run_queries(anns, ctx, chunk=4)
    assert err.value.misconfigured and len(state.requests) == 4
    state.script = [("status", 503)]  # a busy server: the queries are skipped, the pass goes on
    preds, skipped = run_queries(anns, ctx.with_overrides(request_attempts=1), chunk=4)
    assert len(preds) == 12 and not skipped and len(state.requests) == 16


def test_a_benchmark_stops_before_its_graph_pass_when_the_rewriter_refuses_the_key(stub, tmp_path):
    """``bench`` warms the rewrite cache before its graph pass: that is its up-front probe, and a
    401 there ends the run with the same one-line error."""
    from tools.bench import run_benchmark

    state, url = stub
    state.script = [("status", 401)]
    caps = tmp_path / "caps.jsonl"
    caps.write_text(
        json.dumps({"vid": "kitchen", "clip_len_s": 2, "captions": ["a man cuts carrots"] * 8}) + "\n"
    )
    ann = {"qid": 1, "query": "a man cuts carrots", "vid": "kitchen", "duration": 16}
    ann |= {"relevant_windows": [[0, 4]], "relevant_clip_ids": [0, 1], "saliency_scores": [[4, 4, 4]] * 2}
    anns = tmp_path / "anns.jsonl"
    anns.write_text(json.dumps(ann) + "\n")
    ctx = Context(store_dir=str(tmp_path / "store"), rewriter=f"openai:{url}#llama", m=1)
    with pytest.raises(BackendError, match=r"^rewriter openai:.*answered HTTP 401 Unauthorized"):
        run_benchmark(anns, caps, ctx)
    assert len(state.requests) == 1
