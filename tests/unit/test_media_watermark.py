"""The visible mark on pictures and clips, and the license/provenance they carry.

"Visible" is measured: pixels inside the mark's box change a lot, pixels
outside it do not. Metadata is read back both by our readers and by an
independent one (Pillow for PNG, ffmpeg for MP4).
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from plasmaart.media.metadata import (
    LICENSE_NOTICES,
    ffmpeg_exe,
    probe_mp4,
    read_mp4_metadata,
    read_png_metadata,
    stamp_mp4,
    stamp_png,
)
from plasmaart.media.sandbox_render import render_image, render_video
from plasmaart.media.watermark import mark_box, watermark_mp4, watermark_png

FIELDS = {"license": "commercial", "generation_id": "gen_01J9", "model": "flux-schnell"}


@pytest.fixture(scope="module")
def picture() -> bytes:
    return render_image("a red fox in snow", 7, 640, 360)


@pytest.fixture(scope="module")
def clip() -> bytes:
    return render_video("a red fox in snow", 7, 640, 360, 2)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def png_of(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def frame_at(mp4: bytes, at_s: float, tmp_path: Path) -> Image.Image:
    path = tmp_path / "clip.mp4"
    path.write_bytes(mp4)
    command = [ffmpeg_exe(), "-loglevel", "error", "-ss", str(at_s), "-i", str(path)]
    png = subprocess.run(
        [*command, "-frames:v", "1", "-f", "image2pipe", "-vcodec", "png", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return decoded(png).convert("RGB")


def ffmpeg_tags(mp4: bytes, tmp_path: Path) -> str:
    path = tmp_path / "tags.mp4"
    path.write_bytes(mp4)
    return subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr


# --- the mark on pictures ------------------------------------------------------


def test_the_mark_is_visible_in_the_bottom_right_and_nowhere_else(picture: bytes) -> None:
    before, after = decoded(picture), decoded(watermark_png(picture))
    assert after.format == "PNG"
    assert after.size == before.size
    box = mark_box(640, 360)
    _, _, right, bottom = box
    assert right > 560
    assert bottom > 320  # bottom-right corner
    assert mean_difference(before.crop(box), after.crop(box)) > 20
    # Outside the box not a single pixel changes.
    outside = Image.new("L", before.size, 255)
    outside.paste(0, box)
    masked_before = Image.composite(before, Image.new("RGB", before.size), outside)
    masked_after = Image.composite(after.convert("RGB"), Image.new("RGB", before.size), outside)
    assert ImageChops.difference(masked_before, masked_after).getbbox() is None


@pytest.mark.parametrize("shade", [0, 255])
def test_the_mark_reads_on_black_and_on_white(shade: int) -> None:
    plain = Image.new("RGB", (800, 600), (shade, shade, shade))
    marked = decoded(watermark_png(png_of(plain))).convert("RGB")
    region = marked.crop(mark_box(800, 600)).convert("L")
    low, high = ImageStat.Stat(region).extrema[0]
    # Light letters and a dark outline/plaque both show on any background.
    assert high - low > 120


def test_a_jpeg_or_transparent_input_comes_out_as_a_marked_png() -> None:
    jpeg = png_of(Image.new("RGB", (300, 200), (40, 90, 160)), "JPEG")
    assert decoded(watermark_png(jpeg)).format == "PNG"
    clear = decoded(watermark_png(png_of(Image.new("RGBA", (300, 200), (0, 0, 0, 0)))))
    assert clear.mode == "RGBA"
    alpha = clear.getchannel("A")
    assert alpha.getpixel((5, 5)) == 0  # transparency kept away from the mark
    assert ImageStat.Stat(alpha.crop(mark_box(300, 200))).extrema[0][1] > 0


def test_a_tiny_picture_still_fits_its_mark() -> None:
    left, top, right, bottom = mark_box(48, 24)
    assert left >= 0
    assert top >= 0
    assert right <= 48
    assert bottom <= 24
    assert decoded(watermark_png(png_of(Image.new("RGB", (48, 24))))).size == (48, 24)


def test_marking_keeps_the_license_chunks(picture: bytes) -> None:
    marked = watermark_png(stamp_png(picture, FIELDS))
    assert read_png_metadata(marked) == FIELDS


# --- the mark on clips ---------------------------------------------------------


def test_the_mark_is_burnt_into_every_frame_of_a_clip(clip: bytes, tmp_path: Path) -> None:
    marked = watermark_mp4(clip)
    info = probe_mp4(marked)
    assert (info.codec, info.width, info.height, info.frames) == ("h264", 640, 360, 48)
    assert abs(info.duration_s - 2.0) <= 0.2
    assert info.faststart
    box = mark_box(640, 360)
    for at_s in (0.0, 1.9):
        before, after = frame_at(clip, at_s, tmp_path), frame_at(marked, at_s, tmp_path)
        assert mean_difference(before.crop(box), after.crop(box)) > 20
        # Elsewhere only re-encoding noise.
        assert mean_difference(before.crop((0, 0, 320, 180)), after.crop((0, 0, 320, 180))) < 3


# --- license and provenance ----------------------------------------------------


def test_png_fields_round_trip_without_touching_the_pixels(picture: bytes) -> None:
    fields = {**FIELDS, "prompt": "un renard roux — dans la neige"}
    stamped = stamp_png(picture, fields)
    assert read_png_metadata(stamped) == fields
    image = decoded(stamped)
    assert image.tobytes() == decoded(picture).tobytes()
    # An independent reader sees the notice and the fields.
    assert image.info["Copyright"] == LICENSE_NOTICES["commercial"]
    assert image.info["plasmaart.generation_id"] == "gen_01J9"
    Image.open(io.BytesIO(stamped)).verify()  # every chunk CRC is right


def test_stamping_again_replaces_the_old_fields(picture: bytes) -> None:
    first = stamp_png(picture, {**FIELDS, "team_id": "team_1"})
    second = stamp_png(first, {"license": "personal", "generation_id": "gen_2"})
    assert read_png_metadata(second) == {"license": "personal", "generation_id": "gen_2"}
    assert decoded(second).info["Copyright"] == LICENSE_NOTICES["personal"]


def test_an_unstamped_file_has_no_fields(picture: bytes) -> None:
    assert read_png_metadata(picture) == {}


@pytest.mark.parametrize(
    "fields",
    [
        {"generation_id": "gen_1"},
        {"license": "free-for-all"},
        {"license": "personal", "Bad Key": "x"},
        {"license": "personal", "note": "nul\x00byte"},
    ],
)
def test_fields_without_a_known_license_or_with_bad_keys_are_refused(
    picture: bytes, fields: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match=r"license|key|NUL"):
        stamp_png(picture, fields)


def test_mp4_fields_round_trip_with_the_streams_copied(clip: bytes, tmp_path: Path) -> None:
    fields = {**FIELDS, "prompt": "a=b; c#d \\ e\nsecond line — ünïcode"}
    stamped = stamp_mp4(clip, fields)
    assert read_mp4_metadata(stamped) == fields
    assert probe_mp4(stamped) == probe_mp4(clip)
    report = ffmpeg_tags(stamped, tmp_path)
    assert LICENSE_NOTICES["commercial"] in report
    assert "plasmaart.generation_id: gen_01J9" in report
    assert read_mp4_metadata(clip) == {}


def test_an_mp4_stamped_again_carries_only_the_new_fields(clip: bytes) -> None:
    first = stamp_mp4(clip, {**FIELDS, "team_id": "team_1"})
    second = stamp_mp4(first, {"license": "personal", "generation_id": "gen_2"})
    assert read_mp4_metadata(second) == {"license": "personal", "generation_id": "gen_2"}


def test_marking_a_clip_keeps_its_tags(clip: bytes) -> None:
    assert read_mp4_metadata(watermark_mp4(stamp_mp4(clip, FIELDS))) == FIELDS


def test_probe_refuses_what_is_not_an_mp4(picture: bytes) -> None:
    with pytest.raises(ValueError, match="MP4"):
        probe_mp4(picture)
    with pytest.raises(ValueError, match="MP4"):
        probe_mp4(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 8)
