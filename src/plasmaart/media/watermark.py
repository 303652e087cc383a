"""The visible PlasmaArt mark on outputs whose plan and owner did not remove it.

The mark is drawn for each picture's size with Pillow (its built-in font; no
system fonts needed): white text with a dark outline on a translucent dark
plaque, so it reads on light and dark pictures alike. It sits in the
bottom-right corner, about 4.5 % of the short side tall. Pictures get it
composited by Pillow; clips get the same picture through ffmpeg's
``overlay`` filter (``drawtext`` would depend on fonts on the host).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin

from plasmaart.media.metadata import probe_mp4, run_ffmpeg

DEFAULT_TEXT: Final = "PlasmaArt"
_HEIGHT_SHARE: Final = 0.045  # text height as a share of the short side
_MARGIN_SHARE: Final = 0.025
_MAX_WIDTH_SHARE: Final = 0.6  # on a narrow (or flat) picture the mark shrinks to fit
_MIN_TEXT_PX: Final = 10
# Clips are re-encoded once to burn the mark in: quality first, still quick.
_VIDEO_PRESET: Final = "veryfast"
_VIDEO_CRF: Final = "20"


def mark_image(width: int, height: int, text: str = DEFAULT_TEXT) -> Image.Image:
    """The mark (mode RGBA, transparent around it) for a ``width`` x ``height`` picture."""
    short = min(width, height)
    text_px = max(_MIN_TEXT_PX, round(short * _HEIGHT_SHARE))
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=text_px)
    except TypeError:  # Pillow 10.0 has no sized default font; scaled below
        font = ImageFont.load_default()
    stroke = max(1, text_px // 14)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    text_w, text_h = round(right - left), round(bottom - top)
    pad_x, pad_y = max(3, text_px // 2), max(2, text_px // 4)
    size = (text_w + 2 * pad_x, text_h + 2 * pad_y)

    plaque = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(plaque).rounded_rectangle(
        (0, 0, size[0] - 1, size[1] - 1), radius=pad_y * 2, fill=(0, 0, 0, 96)
    )
    letters = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(letters).text(
        (pad_x - left, pad_y - top),
        text,
        font=font,
        fill=(255, 255, 255, 235),
        stroke_width=stroke,
        stroke_fill=(0, 0, 0, 170),
    )
    mark = Image.alpha_composite(plaque, letters)

    # Without FreeType Pillow falls back to a small bitmap font that ignores the
    # size asked for; scale the mark to the height it should have.
    wanted_h = text_px + 2 * pad_y
    scale = wanted_h / mark.height if mark.height < wanted_h * 0.8 else 1.0
    scale = min(scale, width * _MAX_WIDTH_SHARE / mark.width, height * 0.5 / mark.height)
    if scale != 1.0:
        resized = (max(1, round(mark.width * scale)), max(1, round(mark.height * scale)))
        mark = mark.resize(resized, Image.Resampling.LANCZOS)
    return mark


def mark_box(width: int, height: int, text: str = DEFAULT_TEXT) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the mark on a ``width`` x ``height`` picture."""
    mark = mark_image(width, height, text)
    left, top = _corner(width, height, mark)
    return (left, top, left + mark.width, top + mark.height)


def _corner(width: int, height: int, mark: Image.Image) -> tuple[int, int]:
    """Top-left of ``mark`` placed in the bottom-right corner of the picture."""
    margin = max(2, round(min(width, height) * _MARGIN_SHARE))
    return width - margin - mark.width, height - margin - mark.height


def watermark_png(image: bytes, text: str = DEFAULT_TEXT) -> bytes:
    """``image`` (PNG, JPEG or WebP) with the mark, as a PNG.

    PNG text chunks (license, provenance) and the ICC profile are kept.
    """
    with Image.open(io.BytesIO(image)) as opened:
        opened.load()
        texts = dict(getattr(opened, "text", {}))
        icc = opened.info.get("icc_profile")
        picture = ImageOps.exif_transpose(opened)
    has_alpha = "A" in picture.getbands() or "transparency" in picture.info
    picture = picture.convert("RGBA" if has_alpha else "RGB")
    mark = mark_image(picture.width, picture.height, text)
    left, top = _corner(picture.width, picture.height, mark)
    if picture.mode == "RGBA":
        picture.alpha_composite(mark, dest=(left, top))
    else:
        picture.paste(mark, (left, top), mark)

    chunks = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        chunks.add_itxt(key, str(value))
    out = io.BytesIO()
    picture.save(out, "PNG", pnginfo=chunks, icc_profile=icc, compress_level=6)
    return out.getvalue()


def watermark_mp4(mp4: bytes, text: str = DEFAULT_TEXT, *, timeout_s: float = 180.0) -> bytes:
    """``mp4`` with the mark burnt into every frame (H.264 yuv420p, ``+faststart``).

    Audio and the file's tags are copied; the video stream is re-encoded.
    Raises ``MediaToolError`` if ffmpeg fails or runs past ``timeout_s``.
    """
    info = probe_mp4(mp4)
    mark = mark_image(info.width, info.height, text)
    left, top = _corner(info.width, info.height, mark)
    with tempfile.TemporaryDirectory(prefix="plasmaart-mark-") as tmp:
        source, overlay, target = Path(tmp, "in.mp4"), Path(tmp, "mark.png"), Path(tmp, "out.mp4")
        source.write_bytes(mp4)
        mark.save(overlay, "PNG")
        run_ffmpeg(
            [
                "-i",
                str(source),
                "-i",
                str(overlay),
                "-filter_complex",
                # A still overlay input repeats its one frame for the whole clip.
                f"[0:v][1:v]overlay={left}:{top}:format=auto,format=yuv420p[marked]",
                "-map",
                "[marked]",
                "-map",
                "0:a?",
                "-c:v",
                "libx264",
                "-preset",
                _VIDEO_PRESET,
                "-crf",
                _VIDEO_CRF,
                "-c:a",
                "copy",
                "-map_metadata",
                "0",
                "-movflags",
                "+faststart+use_metadata_tags",
                "-f",
                "mp4",
                "-y",
                str(target),
            ],
            timeout_s=timeout_s,
        )
        return target.read_bytes()
