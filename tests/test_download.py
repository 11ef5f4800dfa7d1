"""Video URLs: fetched from a real HTTP server on loopback (scripted routes), every redirect
checked, size-limited, atomic (no partial file survives a failure), fetched once per URL."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from granalign.errors import InputError
from granalign.io.download import MAX_REDIRECTS, DownloadError, download_video, downloaded_name
from graphs.context import Context
from tests.conftest import fixture_path
from tests.servers import free_port, http_stub
from tools.langchain_tool import MomentRetriever, ToolSettings
from tools.safety import check_url

VIDEO = fixture_path("videos", "bikes.mp4").read_bytes()


class Routes:
    """What the stub answers per path, and which paths were asked for."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.base = ""

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        self.hits.append(path)
        if path == "/bikes.mp4":
            self._send(handler, 200, VIDEO)
        elif path == "/moved":
            self._redirect(handler, "/bikes.mp4")
        elif path == "/away":
            self._redirect(handler, "http://elsewhere.invalid/bikes.mp4")
        elif path.startswith("/loop"):
            self._redirect(handler, f"/loop{len(self.hits)}")
        elif path == "/undeclared":  # no Content-Length: the limit is checked while streaming
            handler.send_response(200)
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(VIDEO)
        elif path == "/truncated":  # promises more than it sends, then hangs up
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(VIDEO)))
            handler.end_headers()
            handler.wfile.write(VIDEO[:1000])
            handler.close_connection = True
        elif path == "/empty":
            self._send(handler, 200, b"")
        else:
            self._send(handler, 404, b"not here")

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, body: bytes) -> None:
        handler.send_response(code)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    @staticmethod
    def _redirect(handler: BaseHTTPRequestHandler, location: str) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


@pytest.fixture
def site() -> Iterator[Routes]:
    routes = Routes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            routes.answer(self)

        def log_message(self, *args: object) -> None:
            pass

    with http_stub(Handler) as url:
        routes.base = url
        yield routes


def _fetch(url: str, folder: Path, max_bytes: int = 10 * len(VIDEO)) -> Path:
    return download_video(
        url, folder, check=lambda u: check_url(u, ("127.0.0.1",)), max_bytes=max_bytes, timeout_s=30
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_url_is_fetched_once_and_kept_under_a_hashed_name(site: Routes, tmp_path: Path) -> None:
    url = f"{site.base}/bikes.mp4"
    got = _fetch(url, tmp_path / "dl")
    assert got.read_bytes() == VIDEO
    assert got.name == downloaded_name(url) and got.name.startswith("url-") and got.suffix == ".mp4"
    assert _fetch(url, tmp_path / "dl") == got
    assert site.hits == ["/bikes.mp4"]  # the second call found the finished file
    assert _leftovers(tmp_path / "dl") == [got.name]


def test_a_redirect_to_an_allowed_host_is_followed(site: Routes, tmp_path: Path) -> None:
    assert _fetch(f"{site.base}/moved", tmp_path).read_bytes() == VIDEO
    assert site.hits == ["/moved", "/bikes.mp4"]


def test_a_redirect_to_a_host_nobody_allowed_is_refused(site: Routes, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"redirects to 'http://elsewhere\.invalid/bikes\.mp4'.*not in"):
        _fetch(f"{site.base}/away", tmp_path / "dl")
    assert _leftovers(tmp_path / "dl") == []


def test_a_redirect_loop_stops(site: Routes, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=f"more than {MAX_REDIRECTS} redirects"):
        _fetch(f"{site.base}/loop", tmp_path)
    assert len(site.hits) == MAX_REDIRECTS + 1


@pytest.mark.parametrize(
    "path,message",
    [
        ("/missing.mp4", "answered HTTP 404"),
        ("/bikes.mp4", "larger than the download limit of 1,000 bytes .*declared"),
        ("/undeclared", "larger than the download limit of 1,000 bytes .more bytes sent"),
        ("/truncated", "could not be fetched: RemoteProtocolError"),
        ("/empty", "empty body"),
    ],
)
def test_a_failed_download_names_the_url_and_leaves_no_file(
    site: Routes, tmp_path: Path, path: str, message: str
) -> None:
    folder = tmp_path / "dl"
    with pytest.raises(DownloadError, match=message) as err:
        _fetch(f"{site.base}{path}", folder, max_bytes=1000 if path != "/truncated" else 10**9)
    assert f"{site.base}{path}" in str(err.value)
    assert _leftovers(folder) == []  # nothing a later call could take for a whole video


def test_an_unreachable_host_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/bikes.mp4"
    with pytest.raises(DownloadError, match="could not be fetched: ConnectError"):
        _fetch(url, tmp_path)


def test_the_first_url_is_checked_too(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not in GRANALIGN_URL_ALLOWLIST"):
        _fetch("http://10.0.0.1/x.mp4", tmp_path, max_bytes=1)


def _retriever(tmp_path: Path, **kw: object) -> MomentRetriever:
    ctx = Context(store_dir=str(tmp_path / "store"), auto_ingest=False)
    settings = ToolSettings(context=ctx, roots=(tmp_path / "videos",), url_allowlist=("127.0.0.1",), **kw)
    return MomentRetriever(settings)


def test_the_tool_hands_the_graph_the_downloaded_file_inside_its_roots(site: Routes, tmp_path: Path) -> None:
    """The graph gets past its path check (the download folder joins the roots for this call) and
    stops only because ``auto_ingest`` is off: the same place a local file would stop."""
    (tmp_path / "videos").mkdir()
    retriever = _retriever(tmp_path, download_dir=tmp_path / "dl")
    with pytest.raises(InputError, match="not in the store") as err:
        retriever.run(f"{site.base}/bikes.mp4", "people ride bikes")
    assert "URL" not in str(err.value)
    (got,) = (tmp_path / "dl").iterdir()
    assert got.read_bytes() == VIDEO
    with pytest.raises(InputError, match="larger than the download limit"):
        _retriever(tmp_path, download_dir=tmp_path / "dl2", url_max_mb=0.001).run(
            f"{site.base}/bikes.mp4", "people ride bikes"
        )


def test_a_remote_deployment_refuses_urls_before_calling_it(tmp_path: Path) -> None:
    settings = ToolSettings(graph_url=f"http://127.0.0.1:{free_port()}", url_allowlist=("127.0.0.1",))
    with pytest.raises(InputError, match=r"remote deployment .*GRANALIGN_GRAPH_URL"):
        MomentRetriever(settings).prepare("http://127.0.0.1/bikes.mp4", "a dog", 3)


def test_the_size_limit_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.langchain_tool import _url_max_mb

    monkeypatch.setenv("GRANALIGN_URL_MAX_MB", "nan")
    with pytest.raises(Exception, match=r"GRANALIGN_URL_MAX_MB='nan' must be a number of MiB"):
        _url_max_mb(ToolSettings())
    monkeypatch.setenv("GRANALIGN_URL_MAX_MB", "12.5")
    assert _url_max_mb(ToolSettings()) == 12.5
    assert _url_max_mb(ToolSettings(url_max_mb=3)) == 3  # an explicit setting wins


def test_the_cache_budget_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.langchain_tool import DEFAULT_DOWNLOAD_CACHE_MB, _download_cache_mb

    assert _download_cache_mb(ToolSettings()) == DEFAULT_DOWNLOAD_CACHE_MB
    monkeypatch.setenv("GRANALIGN_DOWNLOAD_CACHE_MB", "-1")
    with pytest.raises(Exception, match=r"GRANALIGN_DOWNLOAD_CACHE_MB='-1' must be a number of MiB"):
        _download_cache_mb(ToolSettings())
    monkeypatch.setenv("GRANALIGN_DOWNLOAD_CACHE_MB", "64")
    assert _download_cache_mb(ToolSettings()) == 64
    with pytest.raises(Exception, match=r"download_cache_mb 0 is out of range"):
        ToolSettings(download_cache_mb=0)


def _aged(path: Path, seconds_ago: float) -> Path:
    import os
    import time

    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))
    return path


def test_the_least_recently_used_downloads_go_when_the_folder_is_over_budget(
    site: Routes, tmp_path: Path
) -> None:
    """Three old downloads of 1,000 bytes and a budget of 2.5 of them: a new fetch keeps itself
    and the most recently used old one; a download being read (used within the call limit) and
    files that are not downloads are never removed."""
    from granalign.io.download import prune_downloads

    folder = tmp_path / "dl"
    folder.mkdir()
    # old[0] least recently used, old[2] most
    old = [_write_aged(folder / downloaded_name(f"http://h/{i}.mp4"), 1000, 1000 - 100 * i) for i in range(3)]
    mine = folder / "notes.txt"
    mine.write_bytes(b"y" * 5000)
    url = f"{site.base}/bikes.mp4"
    got = download_video(
        url,
        folder,
        check=lambda u: check_url(u, ("127.0.0.1",)),
        max_bytes=10 * len(VIDEO),
        timeout_s=30,
        cache_bytes=len(VIDEO) + 1500,
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted([got.name, old[2].name, "notes.txt"])
    # a hit marks the file used: it outlives an older one
    _aged(got, 500)
    assert (
        download_video(
            url, folder, check=lambda u: check_url(u, ("127.0.0.1",)), max_bytes=10**9, timeout_s=30
        )
        == got
    )
    assert prune_downloads(folder, 1000, in_use_s=30) == [old[2]]
    # nothing used within the last in_use_s seconds goes, whatever the budget
    assert prune_downloads(folder, 0, in_use_s=30) == [] and got.exists()
    _aged(got, 60)
    assert prune_downloads(folder, 0, in_use_s=30) == [got]
    assert site.hits == ["/bikes.mp4"]


def test_a_part_file_left_by_a_killed_download_is_removed_once_past_the_deadline(tmp_path: Path) -> None:
    from granalign.io.download import prune_downloads

    name = downloaded_name("http://h/a.mp4")
    live = tmp_path / f".{name}.111.222.part"
    dead = tmp_path / f".{name}.333.444.part"
    live.write_bytes(b"a")
    dead.write_bytes(b"b")
    _aged(dead, 120)
    assert prune_downloads(tmp_path, 10**9, in_use_s=60) == [dead]
    assert live.exists()


def test_the_tool_keeps_its_download_folder_within_the_budget(site: Routes, tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    folder = tmp_path / "dl"
    folder.mkdir()
    stale = _write_aged(folder / downloaded_name("http://h/old.mp4"), len(VIDEO), 7200)
    retriever = _retriever(tmp_path, download_dir=folder, download_cache_mb=1.5 * len(VIDEO) / 2**20)
    with pytest.raises(InputError, match="not in the store"):
        retriever.run(f"{site.base}/bikes.mp4", "people ride bikes")
    assert not stale.exists()
    assert [p.name for p in folder.iterdir()] == [downloaded_name(f"{site.base}/bikes.mp4")]


def _write_aged(path: Path, size: int, seconds_ago: float) -> Path:
    path.write_bytes(b"z" * size)
    return _aged(path, seconds_ago)
