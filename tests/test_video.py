"""Video files: untrusted paths, content ids, probing, frame sampling by seeking (PyAV, no models).

Synthetic videos are made with PyAV in the test: each frame's grey level encodes its index, so
a sampled frame tells which frame the sampler decoded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from granalign.errors import InputError
from granalign.io.video import (
    FrameSampler,
    clip_count,
    clip_times,
    content_hash,
    display_path,
    find_videos,
    looks_like_path,
    parse_roots,
    path_text,
    probe_video,
    resolve_video_path,
    sample_frames,
)
from tests.conftest import VIDEOS, needs_videos

FPS = 25
LEVEL_STEP = 2  # grey level of frame i is (i * LEVEL_STEP) % 256


def make_video(
    path: Path,
    seconds: float,
    *,
    fps: int = FPS,
    gop: int | None = None,
    size: tuple[int, int] = (64, 48),
    faststart: bool = False,
    pattern: str = "index",
) -> Path:
    """An H.264 mp4 whose frame i is a flat grey of level (2 i) % 256 (``pattern='index'``), a
    white left half on black (``'halves'``) or noise."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "0" if pattern == "index" else "30"}
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(round(seconds * fps)):
            if pattern == "index":
                pixels = np.full((size[1], size[0], 3), (i * LEVEL_STEP) % 256, dtype=np.uint8)
            elif pattern == "halves":  # left half white, right half black: shows which way is up
                pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
                pixels[:, : size[0] // 2] = 255
            else:
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        _mux_silence(container, _silent_track(container), 20)
    return path


def _silent_track(container):
    """An AAC mono 16-kHz stream (added before anything is muxed, as containers require)."""
    stream = container.add_stream("aac", rate=16000)
    stream.layout = "mono"
    return stream


def _mux_silence(container, stream, n_frames: int) -> None:
    """``n_frames`` silent 1,024-sample frames on ``stream``, then its encoder's tail."""
    import av

    for i in range(n_frames):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, i * 1024
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def frame_index(image) -> int:
    return round(float(np.asarray(image).mean()) / LEVEL_STEP)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    make_video(folder / "gop5.mp4", 4.8, gop=5)
    make_video(folder / "gop250.mp4", 4.8, gop=250)
    return folder


# -- paths -----------------------------------------------------------------------------------


def test_refuses_urls_escapes_devices_folders_and_missing_files(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    (root / "clip.mp4").write_bytes(b"not empty")
    (root / "empty.mp4").write_bytes(b"")
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"x")
    (root / "link.mp4").symlink_to(outside)
    roots = [root.resolve()]
    monkeypatch.chdir(root)
    assert resolve_video_path("clip.mp4", roots) == (root / "clip.mp4").resolve()
    cases = {
        "http://example.org/v.mp4": "is a URL",
        "file:///etc/passwd": "is a URL",
        "../outside.mp4": "'..' is not allowed",
        str(outside): "outside the allowed video roots",
        "~/clip.mp4": "'~', which is not expanded",
        str(root / "link.mp4"): "outside the allowed video roots",  # a symlink out of the roots
        "missing.mp4": "video file not found",
        str(root): "is a directory",
        "empty.mp4": "is empty",
        "": "empty",
    }
    for raw, needle in cases.items():
        with pytest.raises(InputError, match=needle):
            resolve_video_path(raw, roots)
    with pytest.raises(InputError, match="not a regular file"):
        resolve_video_path("/dev/null", [Path("/")])


def test_roots_come_from_setting_env_or_cwd(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("GRANALIGN_VIDEO_ROOTS", f"{a}{os.pathsep}{b}")
    assert parse_roots("") == (a.resolve(), b.resolve())
    assert parse_roots(str(b)) == (b.resolve(),)
    monkeypatch.delenv("GRANALIGN_VIDEO_ROOTS")
    monkeypatch.chdir(tmp_path)
    assert parse_roots("") == (tmp_path.resolve(),)


@needs_videos
def test_non_utf8_file_name_is_read_and_shown_safely(tmp_path):
    raw = os.fsdecode(b"caf\xe9 \xff.mp4")  # not UTF-8: surrogate escapes
    path = Path(tmp_path, raw)
    shutil.copy(VIDEOS / "bikes.mp4", path)
    resolved = resolve_video_path(str(path), [tmp_path.resolve()])
    assert probe_video(resolved).duration_s == pytest.approx(10.0)
    assert content_hash(resolved) == content_hash(VIDEOS / "bikes.mp4")  # content id, not name
    shown = display_path(resolved)
    shown.encode("utf-8")  # printable and storable
    assert "\\xe9" in shown


@needs_videos
def test_a_file_name_with_terminal_codes_is_shown_escaped_and_stored_as_it_is(tmp_path):
    """A name from an upload folder may hold ESC sequences or a newline: every message shows
    them as \\xNN (they would retitle, recolour or split the operator's terminal lines), FFmpeg's
    own message quoting the name included; the record keeps the name, so the file opens again."""
    raw = "evil\x1b]0;pwned\x07\x1b[31mred\nline.mp4"
    assert display_path(raw) == "evil\\x1b]0;pwned\\x07\\x1b[31mred\\x0aline.mp4"
    assert path_text(raw) == raw
    broken = tmp_path / raw
    broken.write_bytes((VIDEOS / "bikes.mp4").read_bytes()[:1000])
    with pytest.raises(InputError) as err:
        probe_video(broken)
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in str(err.value)), str(err.value)


def test_store_ids_and_paths_are_told_apart():
    assert looks_like_path("clips/a.mp4") and looks_like_path("a.MKV") and looks_like_path("~/v")
    assert not looks_like_path("NUsG9BgSes0_210.0_360.0") and not looks_like_path("sha256-91028f9d6c")


def test_find_videos_recurses_and_skips_hidden(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("a.mp4", "sub/b.MKV", ".hidden/c.mp4", "notes.txt", ".d.mp4"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_videos(tmp_path)] == ["a.mp4", "sub/b.MKV"]


def test_find_videos_follows_linked_folders_inside_the_roots_and_lists_the_others(tmp_path):
    """A library that links in another disk (itself a root) is walked; a link that leads
    outside the roots is listed, so the probe refuses it in one line, and a link loop ends."""
    lib, disk2, elsewhere = tmp_path / "lib", tmp_path / "disk2", tmp_path / "elsewhere"
    for folder in (lib / "own", disk2, elsewhere):
        folder.mkdir(parents=True)
    (lib / "own" / "a.mp4").write_bytes(b"x")
    (disk2 / "b.mp4").write_bytes(b"x")
    (elsewhere / "c.mp4").write_bytes(b"x")
    (lib / "archive").symlink_to(disk2, target_is_directory=True)
    (lib / "secret").symlink_to(elsewhere, target_is_directory=True)
    (lib / "own" / "loop").symlink_to(lib, target_is_directory=True)
    roots = (lib.resolve(), disk2.resolve())
    got = sorted(p.relative_to(lib).as_posix() for p in find_videos(lib, roots))
    assert got == ["archive/b.mp4", "own/a.mp4", "secret"]
    with pytest.raises(InputError, match="symbolic link that leads outside the allowed video roots"):
        resolve_video_path(str(lib / "secret"), roots)
    # without roots, only links that stay inside the folder are walked
    assert sorted(p.relative_to(lib).as_posix() for p in find_videos(lib)) == [
        "archive",
        "own/a.mp4",
        "secret",
    ]


# -- probing ---------------------------------------------------------------------------------


@needs_videos
def test_probe_real_videos():
    bikes = probe_video(VIDEOS / "bikes.mp4")
    assert (bikes.duration_s, bikes.width, bikes.height, bikes.fps) == (10.0, 640, 272, 25.0)
    charades = probe_video(VIDEOS / "charades_univtg_example.mp4")
    assert charades.duration_s == pytest.approx(30.7, abs=0.01)
    assert clip_count(charades.duration_s, 2.0) == 16


@needs_videos
@pytest.mark.parametrize(
    ("maker", "needle"),
    [
        (lambda d: d / "text.mp4", "not a video FFmpeg can read"),
        (lambda d: d / "half.mp4", "not a video FFmpeg can read"),
        (lambda d: make_audio_only(d / "audio.m4a"), "has no video stream"),
    ],
    ids=["text-renamed-mp4", "truncated-bikes", "audio-only"],
)
def test_unusable_files_get_clear_errors(tmp_path, maker, needle):
    (tmp_path / "text.mp4").write_text("this is not a video\n")
    data = (VIDEOS / "bikes.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])  # bikes.mp4 keeps its index at the end
    path = maker(tmp_path)
    with pytest.raises(InputError, match=needle) as err:
        probe_video(path)
    assert path.name in str(err.value)


def test_zero_length_video_is_refused(tmp_path):
    import av

    path = tmp_path / "zero.mp4"
    with av.open(str(path), "w") as container:  # a stream header, no frame at all
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    if not path.exists() or path.stat().st_size == 0:
        path.write_bytes(b"")  # FFmpeg wrote nothing: a zero-byte video
        with pytest.raises(InputError, match="is empty"):
            resolve_video_path(path, [tmp_path.resolve()])
        return
    with pytest.raises(InputError, match=r"no video frames|not a video"):
        probe_video(path)


def test_video_shorter_than_one_clip_is_one_clip(tmp_path):
    path = make_video(tmp_path / "short.mp4", 0.8)
    info = probe_video(path)
    assert info.duration_s == pytest.approx(0.8)
    assert clip_count(info.duration_s, 2.0) == 1
    assert clip_times(info.duration_s, 2.0) == [pytest.approx(0.4)]
    ((_, image),) = list(sample_frames(path, clip_times(info.duration_s, 2.0), clip_len=2.0))
    assert abs(frame_index(image) - 10) <= 1


# -- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gop5.mp4", "gop250.mp4"])
def test_sampled_frame_is_the_clip_centre_frame(synth, name):
    """Short and long GOPs (seek vs decode forward) give the same, correct frames."""
    path = synth / name
    info = probe_video(path)
    times = clip_times(info.duration_s, 0.5)
    got = [frame_index(img) for _, img in sample_frames(path, times, clip_len=0.5, info=info)]
    expected = [round(t * FPS) for t in times]
    assert len(got) == len(times) == 10
    assert all(abs(g - e) <= 1 for g, e in zip(got, expected, strict=True)), (got, expected)


def test_random_access_and_resume_from_a_later_clip(synth):
    path = synth / "gop250.mp4"
    with FrameSampler(path) as sampler:
        got = [frame_index(sampler.frame_at(t)) for t in (3.0, 1.0, 4.7, 0.0, 2.2)]
    assert all(abs(g - e) <= 1 for g, e in zip(got, [75, 25, 117, 0, 55], strict=True)), got
    info = probe_video(path)
    times = clip_times(info.duration_s, 0.5)
    later = [c for c, _ in sample_frames(path, times, clip_len=0.5, clips=[7, 3, 9])]
    assert later == [3, 7, 9]


@needs_videos
def test_frames_are_shrunk_to_max_pixels():
    path = VIDEOS / "bigbuckbunny.mp4"
    ((_, image),) = list(sample_frames(path, [1.0], clip_len=2.0, max_pixels=224 * 224))
    w, h = image.size
    assert w * h <= 224 * 224 and abs(w / h - 1280 / 720) < 0.05


def damaged_copy(path: Path, *, at: float = 0.3, nbytes: int = 2000) -> Path:
    """bikes.mp4 (10 s, H.264, index up front) with ``nbytes`` seeded random bytes from ``at`` of
    its length on: a damaged stretch in the middle of the media data, as a flaky disk or an
    interrupted copy leaves it.  The decoder rejects the packets there."""
    import random

    data = bytearray((VIDEOS / "bikes.mp4").read_bytes())
    rng = random.Random(1)
    start = int(len(data) * at)
    data[start : start + nbytes] = bytes(rng.randrange(256) for _ in range(nbytes))
    path.write_bytes(bytes(data))
    return path


@needs_videos
@pytest.mark.parametrize(("at", "nbytes"), [(0.3, 2000), (0.5, 20000), (0.7, 50000)])
def test_damaged_packets_mid_file_are_skipped_and_reported(tmp_path, at, nbytes):
    """Every clip still gets a frame, and the damage says where it was (it used to fail the file)."""
    from granalign.io.video import FrameSampler

    path = damaged_copy(tmp_path / "damaged.mp4", at=at, nbytes=nbytes)
    info = probe_video(path)
    times = clip_times(info.duration_s, 2.0)
    with FrameSampler(path, info) as sampler:
        images = [sampler.frame_at(t, not_before=i * 2.0) for i, t in enumerate(times)]
        spans = sampler.damage.spans()
        note = sampler.damage.note()
    assert [im.size for im in images] == [(640, 272)] * 5
    assert spans and all(0.0 <= lo <= hi <= info.duration_s for lo, hi in spans)
    assert note is not None and "damaged video packets were skipped" in note
    assert f"at {spans[0][0]:.1f}" in note


@needs_videos
def test_an_undamaged_file_reports_no_damage(tmp_path):
    from granalign.io.video import FrameSampler

    path = VIDEOS / "bikes.mp4"
    info = probe_video(path)
    with FrameSampler(path, info) as sampler:
        for i, t in enumerate(clip_times(info.duration_s, 2.0)):
            sampler.frame_at(t, not_before=i * 2.0)
        assert sampler.damage.note() is None and sampler.damage.spans() == []


def test_truncated_file_with_index_first_fails_at_the_missing_part(tmp_path):
    """An mp4 with its index up front opens fine; the clips past the cut cannot be decoded."""
    full = make_video(tmp_path / "fast.mp4", 12, size=(160, 120), faststart=True, pattern="noise")
    cut = tmp_path / "fast_half.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    info = probe_video(cut)
    assert info.duration_s == pytest.approx(12.0)  # the index still claims 12 s
    frames = sample_frames(cut, clip_times(info.duration_s, 2.0), clip_len=2.0, info=info)
    assert next(frames)[0] == 0  # the first clip is there
    with pytest.raises(InputError, match="truncated or corrupt"):
        list(frames)


@needs_videos
def test_content_hash_is_streamed_and_cached(tmp_path, monkeypatch):
    path = tmp_path / "v.mp4"
    shutil.copy(VIDEOS / "bikes.mp4", path)
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def read(self, n=-1):
            reads.append(n)
            return self.fh.read(n)

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Spy(real_open(p, mode, *a, **k)))
    first = content_hash(path)
    monkeypatch.undo()
    assert first.startswith("sha256-") and len(first) == 7 + 24
    assert reads and all(0 < n <= 1 << 20 for n in reads)  # bounded blocks, never read() of all
    assert content_hash(path) == first


def _video_with_long_audio(path: Path, video_s: float, audio_s: float) -> Path:
    """A Matroska file (no per-stream duration) whose audio track outlasts its video track."""
    import av

    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = _silent_track(container)
        for i in range(round(video_s * FPS)):
            pixels = np.full((48, 64, 3), (i * LEVEL_STEP) % 256, dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        _mux_silence(container, audio, round(audio_s * 16000 / 1024))
    return path


def test_duration_is_the_video_tracks_when_a_longer_audio_track_follows_it(tmp_path):
    """An .mkv whose audio runs 10 s past its 2-s video is a 2-s video, not a truncated 12-s one."""
    path = _video_with_long_audio(tmp_path / "talk.mkv", 2.0, 12.0)
    info = probe_video(path)
    assert info.duration_s == pytest.approx(2.0, abs=0.1)
    frames = list(sample_frames(path, clip_times(info.duration_s, 2.0), clip_len=2.0, info=info))
    assert len(frames) == clip_count(info.duration_s, 2.0) == 1


def _rotate_display_matrix(path: Path) -> Path:
    """Set the mp4 track's display matrix to a 90° rotation (what phones write for portrait video)."""
    import struct

    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0 and data[at + 4] == 0  # a version-0 track header
    matrix = at + 8 + 20 + 8 + 8  # version/flags, times/ids/duration, reserved, layer..volume
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))
    return path


def test_frames_of_a_rotated_video_are_upright(tmp_path):
    """A 64×32 stream with a 90° display matrix is shown 32×64: CLIP and the captioner must see it so.

    The matrix (0, 1, −1, 0) is the one a phone writes for portrait video, which players (and
    ffmpeg's autorotate) turn 90° clockwise: the stream's left half becomes the top half.
    """
    path = _rotate_display_matrix(make_video(tmp_path / "phone.mp4", 1.0, size=(64, 32), pattern="halves"))
    with FrameSampler(path) as sampler:
        image = sampler.frame_at(0.5)
    assert image.size == (32, 64)
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    assert grey[:28].mean() > 200 and grey[36:].mean() < 50  # white on top, black below


def _audio_with_cover(path: Path, *, with_video: bool = False) -> Path:
    """An mp4 holding AAC silence and a JPEG cover (an attached picture, as music and podcast
    files carry), and, with ``with_video``, a 1-s video track before them."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        video = None
        if with_video:
            video = container.add_stream("libx264", rate=FPS)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = _silent_track(container)
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24")
        for packet in [*cover.encode(picture), *cover.encode()]:
            container.mux(packet)
        if video is not None:
            for i in range(FPS):
                pixels = np.full((48, 64, 3), (i * LEVEL_STEP) % 256, dtype=np.uint8)
                for packet in video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
        _mux_silence(container, audio, 100)  # 6.4 s of audio
    return path


def test_an_audio_file_with_cover_art_is_audio_only_and_a_cover_is_never_the_video(tmp_path):
    """A cover picture is demuxed as a one-packet video stream: it is no video to search (it was
    probed as a 6-s video at 90,000 fps, and sampling it failed with a raw PermissionError)."""
    song = _audio_with_cover(tmp_path / "song.m4a")
    with pytest.raises(InputError, match="has no video stream") as err:
        probe_video(song)
    assert "song.m4a" in str(err.value) and "cover picture" in str(err.value)
    clip = _audio_with_cover(tmp_path / "clip.mp4", with_video=True)
    info = probe_video(clip)
    assert (info.codec, info.fps) == ("h264", FPS) and info.duration_s == pytest.approx(1.0, abs=0.05)
    ((_, image),) = list(sample_frames(clip, clip_times(info.duration_s, 2.0), clip_len=2.0, info=info))
    assert abs(frame_index(image) - 12) <= 1


def test_a_video_codec_ffmpeg_cannot_decode_is_refused_in_one_line(tmp_path):
    """A track in a codec the bundled FFmpeg does not know (here an mp4 whose 'avc1' sample entry
    is renamed) has no codec context: probing it failed with a raw AttributeError."""
    data = bytearray(make_video(tmp_path / "plain.mp4", 1.0).read_bytes())
    at = data.rfind(b"avc1")  # the sample entry (the first is a compatible brand in 'ftyp')
    assert at > data.find(b"stsd") > 0
    data[at : at + 4] = b"zzz1"
    path = tmp_path / "new_codec.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="cannot decode") as err:
        probe_video(path)
    assert "new_codec.mp4" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="cannot decode"):
        FrameSampler(path, probe_video(tmp_path / "plain.mp4"))


@pytest.mark.parametrize("name", ["late.flv", "late.mkv"])
def test_a_stream_starting_late_in_a_container_without_stream_durations_keeps_its_tail(tmp_path, name):
    """A 5-s video whose first frame is at 1.5 s (a live recording's dump).  FLV's declared
    duration already leaves out the 1.5 s, Matroska's counts them: subtracting the start from
    both probed the FLV as 3.5 s, and its last 2-s clip (4-5 s) was never ingested."""
    from fractions import Fraction

    import av

    path = tmp_path / name
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flv" if name.endswith(".flv") else "libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(5 * FPS):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * LEVEL_STEP % 256, np.uint8), "rgb24")
            frame.pts, frame.time_base = 1500 + i * 1000 // FPS, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe_video(path)
    assert info.start_s == pytest.approx(1.5) and info.duration_s == pytest.approx(5.0, abs=0.05)
    times = clip_times(info.duration_s, 2.0)
    got = [frame_index(image) for _, image in sample_frames(path, times, clip_len=2.0, info=info)]
    assert len(got) == 3 and all(abs(g - round(t * FPS)) <= 1 for g, t in zip(got, times, strict=True)), got


@pytest.mark.parametrize("gop", [25, None], ids=["gop-1s", "gop-default-250"])
def test_frames_of_an_mpeg_ts_file_are_from_their_clip_centres(tmp_path, gop):
    """MPEG-TS has no index: a seek lands on some packet after the last keyframe, whose frames
    decode only from the next keyframe.  The sampler took that keyframe (up to a GOP late: 1.0 s
    for the 0.5-s clip centre) and, in a GOP longer than the video, refused the whole file as
    'truncated or corrupt'."""
    path = make_video(tmp_path / "broadcast.ts", 4.0, gop=gop)
    info = probe_video(path)
    times = clip_times(info.duration_s, 1.0)
    with FrameSampler(path, info) as sampler:  # every clip, then seeks back (frames already passed)
        got = [frame_index(sampler.frame_at(t, not_before=i * 1.0)) for i, t in enumerate(times)]
        again = [frame_index(sampler.frame_at(t)) for t in (3.5, 0.5, 2.5)]
    expected = [t * FPS for t in times]  # frame 87 or 88 is shown at 3.5 s, level ±1 after YUV
    assert len(got) == 4 and all(abs(g - e) <= 2 for g, e in zip(got, expected, strict=True)), (got, expected)
    assert all(abs(g - e) <= 2 for g, e in zip(again, [87.5, 12.5, 62.5], strict=True)), again


def test_a_raw_stream_without_timestamps_is_refused_for_what_it_is(tmp_path):
    """A raw H.264 stream (a DVR's .h264, renamed .mp4) holds 25 frames with no timestamps: it
    was refused as 'no video frames (zero-length video)', which it is not."""
    import av

    path = tmp_path / "camera.mp4"
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(FPS):
            pixels = np.full((48, 64, 3), i * LEVEL_STEP, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(InputError, match=r"its 25 video packets carry no timestamps \(a raw h264") as err:
        probe_video(path)
    assert "camera.mp4" in str(err.value)
