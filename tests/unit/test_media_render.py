"""The sandbox renderer: real PNGs and H.264 MP4s, deterministic per seed.

Clips are checked twice: by ``probe_mp4`` (our box reader) and by ffmpeg's own
report of the file, so a bug in the reader cannot hide a bad file.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from plasmaart.errors import InvalidInput
from plasmaart.media.metadata import MediaToolError, ffmpeg_exe, probe_mp4
from plasmaart.media.sandbox_render import (
    palette_for,
    render_image,
    render_video,
    size_for,
    size_for_source,
)


@dataclass(frozen=True)
class FfmpegReport:
    codec: str
    pix_fmt: str
    size: tuple[int, int]
    duration_s: float


def ffmpeg_report(mp4: bytes, tmp_path: Path) -> FfmpegReport:
    """Codec, pixel format, size and duration as ffmpeg itself reads the file."""
    path = tmp_path / "probe.mp4"
    path.write_bytes(mp4)
    # Without an output ffmpeg exits 1 after printing the input's description.
    report = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    duration = re.search(r"Duration: (\d+):(\d+):([\d.]+)", report)
    video = re.search(r"Video: (\w+).*?, (yuv\w+)\(?.*?, (\d+)x(\d+)", report)
    assert duration is not None, report
    assert video is not None, report
    hours, minutes, seconds = duration.groups()
    return FfmpegReport(
        codec=video.group(1),
        pix_fmt=video.group(2),
        size=(int(video.group(3)), int(video.group(4))),
        duration_s=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
    )


def decode_frame(mp4: bytes, at_s: float, tmp_path: Path) -> Image.Image:
    path = tmp_path / "frame.mp4"
    path.write_bytes(mp4)
    command = [ffmpeg_exe(), "-loglevel", "error", "-ss", str(at_s), "-i", str(path)]
    png = subprocess.run(
        [*command, "-frames:v", "1", "-f", "image2pipe", "-vcodec", "png", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return Image.open(io.BytesIO(png)).convert("RGB")


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def png_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- sizes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aspect_ratio", "image", "video"),
    [
        ("1:1", (1024, 1024), (720, 720)),
        ("16:9", (1024, 576), (1280, 720)),
        ("9:16", (576, 1024), (720, 1280)),
        ("4:3", (1024, 768), (960, 720)),
        ("3:4", (768, 1024), (720, 960)),
    ],
)
def test_sizes_follow_the_aspect_ratio(
    aspect_ratio: str, image: tuple[int, int], video: tuple[int, int]
) -> None:
    assert size_for(aspect_ratio, "image") == image
    assert size_for(aspect_ratio, "video") == video
    width, height = (int(side) for side in aspect_ratio.split(":"))
    for w, h in (image, video):
        assert w % 2 == 0
        assert h % 2 == 0
        assert abs(w / h - width / height) < 0.01


def test_an_unknown_aspect_ratio_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as refused:
        size_for("21:9", "image")
    assert refused.value.extra["errors"][0]["field"] == "params.aspect_ratio"


@pytest.mark.parametrize(
    ("source", "expected"),
    [((4000, 3000), (960, 720)), ((1000, 1000), (720, 720)), ((300, 2000), (192, 1280))],
)
def test_image_to_video_keeps_the_source_aspect_ratio(
    source: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert size_for_source(*source) == expected


# --- pictures -------------------------------------------------------------------


def test_the_same_prompt_and_seed_give_the_same_bytes() -> None:
    first = render_image("a red fox in snow", 7, 512, 288)
    assert render_image("a red fox in snow", 7, 512, 288) == first


def test_a_picture_is_a_real_png_of_the_requested_size() -> None:
    image = png_image(render_image("a red fox in snow", 7, 1024, 576))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (1024, 576))
    # Not a flat fill: the picture has real contrast.
    assert min(ImageStat.Stat(image).stddev) > 25


def test_different_prompts_look_different() -> None:
    fox = png_image(render_image("a red fox in snow", 7, 256, 256))
    city = png_image(render_image("neon city at night", 7, 256, 256))
    assert palette_for("a red fox in snow") != palette_for("neon city at night")
    assert mean_difference(fox, city) > 30


def test_a_prompt_keeps_its_palette_across_seeds_but_not_its_layout() -> None:
    first = png_image(render_image("a red fox in snow", 1, 256, 256))
    second = png_image(render_image("a red fox in snow", 2, 256, 256))
    assert mean_difference(first, second) > 30
    assert palette_for("a red fox in snow") == palette_for("a red fox in snow")


def test_sides_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="sides"):
        render_image("x", 1, 8, 512)
    with pytest.raises(ValueError, match="even"):
        render_video("x", 1, 641, 360, 1)


# --- clips ----------------------------------------------------------------------


def test_a_five_second_720p_clip_is_h264_of_that_size_and_length(tmp_path: Path) -> None:
    started = time.perf_counter()
    mp4 = render_video("a red fox in snow", 7, 1280, 720, 5)
    elapsed = time.perf_counter() - started

    report = ffmpeg_report(mp4, tmp_path)
    assert (report.codec, report.pix_fmt, report.size) == ("h264", "yuv420p", (1280, 720))
    assert abs(report.duration_s - 5.0) <= 0.2
    info = probe_mp4(mp4)
    assert (info.codec, info.width, info.height, info.frames) == ("h264", 1280, 720, 120)
    assert abs(info.duration_s - 5.0) <= 0.2
    assert info.faststart
    # Generous bound: a few seconds on two cores, with room for a busy machine.
    assert elapsed < 20


@pytest.mark.parametrize("aspect_ratio", ["1:1", "9:16", "4:3", "3:4"])
def test_clips_come_in_every_aspect_ratio(aspect_ratio: str, tmp_path: Path) -> None:
    width, height = size_for(aspect_ratio, "video")
    mp4 = render_video("ocean waves", 3, width, height, 1, fps=12)
    report = ffmpeg_report(mp4, tmp_path)
    assert (report.codec, report.size) == ("h264", (width, height))
    assert abs(report.duration_s - 1.0) <= 0.2


def test_the_same_prompt_and_seed_give_the_same_clip() -> None:
    first = render_video("ocean waves", 3, 320, 180, 1)
    assert render_video("ocean waves", 3, 320, 180, 1) == first
    assert render_video("desert dunes", 3, 320, 180, 1) != first


def test_a_clip_moves(tmp_path: Path) -> None:
    mp4 = render_video("ocean waves", 3, 320, 180, 3)
    start, end = decode_frame(mp4, 0, tmp_path), decode_frame(mp4, 2.9, tmp_path)
    assert mean_difference(start, end) > 10


def test_image_to_video_starts_from_the_source_image(tmp_path: Path) -> None:
    source = io.BytesIO()
    Image.new("RGB", (400, 300), (230, 20, 20)).save(source, "PNG")
    mp4 = render_video("ocean waves", 3, 320, 240, 1, source_image=source.getvalue())
    red, green, blue = ImageStat.Stat(decode_frame(mp4, 0, tmp_path)).mean
    assert red > green + 60
    assert red > blue + 60


def test_a_clip_past_its_deadline_is_an_error() -> None:
    with pytest.raises(MediaToolError, match="deadline"):
        render_video("ocean waves", 3, 1280, 720, 10, timeout_s=0.05)
