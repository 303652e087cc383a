"""The sandbox provider's offline renderer: real PNG pictures and H.264 clips.

Nothing here calls a model. A picture is a "plasma" field (smooth seeded noise
folded through a sine, coloured by a palette ramp) with glowing orbs, thin
rings and a vignette:

* the palette comes from a hash of the prompt alone, so one prompt keeps its
  colours across seeds and different prompts look visibly different;
* the layout (noise, orbs, rings, light direction) comes from the prompt and
  the seed, through a private ``random.Random`` seeded with their hash, so the
  same inputs give byte-identical files.

A clip animates the same scene: the field pans and its bands flow, the orbs
drift and the rings turn. Frames are piped raw (rgb24) into the bundled ffmpeg
and encoded as H.264 yuv420p with ``+faststart``. Frames are drawn at the
requested size and frame rate with Pillow's C operations only, which keeps a
5 s 1280x720 clip at 24 fps to a couple of seconds on two cores.
"""

from __future__ import annotations

import colorsys
import contextlib
import hashlib
import io
import math
import random
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from PIL import Image, ImageDraw, ImageFilter, ImageOps

from plasmaart.errors import InvalidInput
from plasmaart.media.metadata import MediaToolError, ffmpeg_exe

RGB = tuple[int, int, int]
MediaKind = Literal["image", "video"]

# Images about 1024 px on the long side; video in the 1280x720 class. Every
# side is even because H.264 in yuv420p halves the chroma planes.
IMAGE_SIZES: Final[dict[str, tuple[int, int]]] = {
    "1:1": (1024, 1024),
    "16:9": (1024, 576),
    "9:16": (576, 1024),
    "4:3": (1024, 768),
    "3:4": (768, 1024),
}
VIDEO_SIZES: Final[dict[str, tuple[int, int]]] = {
    "1:1": (720, 720),
    "16:9": (1280, 720),
    "9:16": (720, 1280),
    "4:3": (960, 720),
    "3:4": (720, 960),
}
VIDEO_LONG_SIDE: Final = 1280
VIDEO_SHORT_SIDE: Final = 720
MAX_SIDE: Final = 4096
MAX_DURATION_S: Final = 60.0


def size_for(aspect_ratio: str, kind: MediaKind) -> tuple[int, int]:
    """(width, height) the sandbox renders for ``aspect_ratio`` and ``kind``."""
    sizes = IMAGE_SIZES if kind == "image" else VIDEO_SIZES
    if aspect_ratio not in sizes:
        raise InvalidInput(
            f"aspect_ratio must be one of {', '.join(sizes)}", field="params.aspect_ratio"
        )
    return sizes[aspect_ratio]


def size_for_source(width: int, height: int) -> tuple[int, int]:
    """Video size keeping a source image's aspect ratio (image-to-video).

    The frame fits a 1280x720 box turned to the image's orientation, both sides
    even and at least 16 px.
    """
    if width <= 0 or height <= 0:
        raise ValueError("a source image has positive sides")
    long_side, short_side = max(width, height), min(width, height)
    scale = min(VIDEO_LONG_SIDE / long_side, VIDEO_SHORT_SIDE / short_side)
    return (max(16, round(width * scale / 2) * 2), max(16, round(height * scale / 2) * 2))


# --- the scene ----------------------------------------------------------------

# Hue offsets of the five palette stops, darkest to lightest, per colour scheme.
_SCHEMES: Final = (
    (0.0, 0.05, 0.10, -0.05, 0.15),  # analogous
    (0.0, 0.50, 0.04, 0.54, 0.50),  # complementary
    (0.0, 0.333, 0.667, 0.05, 0.38),  # triadic
    (0.0, 0.42, 0.58, 0.03, 0.50),  # split complementary
)
_STOP_VALUES: Final = (0.10, 0.34, 0.58, 0.80, 0.97)
_STOP_SATURATIONS: Final = (0.75, 0.80, 0.72, 0.55, 0.22)


@dataclass(frozen=True, slots=True)
class _Orb:
    x: float  # centre, as fractions of the frame
    y: float
    radius: float  # fraction of the frame's short side
    color: RGB
    strength: float
    drift_x: float
    drift_y: float
    period_s: float
    phase: float


@dataclass(frozen=True, slots=True)
class _Ring:
    x: float
    y: float
    radius: float
    squash: float
    color: RGB
    alpha: int
    width: float  # fraction of the short side
    spin_s: float  # seconds per turn
    phase: float


@dataclass(frozen=True, slots=True)
class _Scene:
    ramp: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # R, G, B lookup tables
    grids: tuple[tuple[int, int, bytes, float], ...]  # noise octaves (w, h, values, weight)
    light_angle: float
    light_weight: float
    bands: float
    flow_s: float  # seconds for the bands to flow one full cycle
    pan_s: float
    orbs: tuple[_Orb, ...]
    rings: tuple[_Ring, ...]


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()


def palette_for(prompt: str) -> tuple[RGB, ...]:
    """Five colours, darkest to lightest, chosen by a hash of the prompt."""
    digest = _digest("palette", prompt)
    base_hue = int.from_bytes(digest[0:2], "big") / 65536
    scheme = _SCHEMES[digest[2] % len(_SCHEMES)]
    colors: list[RGB] = []
    for i, offset in enumerate(scheme):
        hue = (base_hue + offset + (digest[3 + i] - 128) / 4096) % 1.0
        saturation = min(1.0, _STOP_SATURATIONS[i] * (0.8 + digest[8 + i] / 640))
        value = min(1.0, _STOP_VALUES[i] * (0.9 + digest[13 + i] / 1275))
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colors)


def _ramp(palette: Sequence[RGB]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """256-entry lookup tables running through the palette stops."""
    last = len(palette) - 1
    channels: list[list[int]] = [[], [], []]
    for i in range(256):
        position = i / 255 * last
        low = min(int(position), last - 1)
        frac = position - low
        for c in range(3):
            a, b = palette[low][c], palette[low + 1][c]
            channels[c].append(round(a + (b - a) * frac))
    return tuple(channels[0]), tuple(channels[1]), tuple(channels[2])


def _scene(prompt: str, seed: int) -> _Scene:
    palette = palette_for(prompt)
    rng = random.Random(int.from_bytes(_digest("layout", prompt, str(seed)), "big"))  # noqa: S311 - art, not secrets
    grids = []
    for cells, weight in ((3, 0.55), (6, 0.30), (12, 0.15)):
        w, h = cells + rng.randint(0, 1), cells + rng.randint(0, 1)
        grids.append(
            (w + 1, h + 1, bytes(rng.randrange(256) for _ in range((w + 1) * (h + 1))), weight)
        )
    orbs = tuple(
        _Orb(
            x=rng.uniform(0.1, 0.9),
            y=rng.uniform(0.1, 0.9),
            radius=rng.uniform(0.08, 0.32),
            color=palette[rng.choice((2, 3, 4, 4))],
            strength=rng.uniform(0.35, 0.8),
            drift_x=rng.uniform(0.03, 0.12),
            drift_y=rng.uniform(0.03, 0.12),
            period_s=rng.uniform(4.0, 9.0),
            phase=rng.uniform(0, math.tau),
        )
        for _ in range(rng.randint(3, 6))
    )
    rings = tuple(
        _Ring(
            x=rng.uniform(0.2, 0.8),
            y=rng.uniform(0.2, 0.8),
            radius=rng.uniform(0.15, 0.45),
            squash=rng.uniform(0.35, 1.0),
            color=palette[rng.choice((3, 4))],
            alpha=rng.randint(50, 110),
            width=rng.uniform(0.002, 0.008),
            spin_s=rng.uniform(6.0, 14.0) * rng.choice((-1, 1)),
            phase=rng.uniform(0, math.tau),
        )
        for _ in range(rng.randint(1, 4))
    )
    return _Scene(
        ramp=_ramp(palette),
        grids=tuple(grids),
        light_angle=rng.uniform(0, 360),
        light_weight=rng.uniform(0.2, 0.45),
        bands=rng.uniform(1.2, 2.4),
        flow_s=rng.uniform(5.0, 9.0),
        pan_s=rng.uniform(8.0, 14.0),
        orbs=orbs,
        rings=rings,
    )


# --- drawing ------------------------------------------------------------------


def _field(scene: _Scene, size: tuple[int, int]) -> Image.Image:
    """The smooth noise field (mode L) at ``size``: octaves plus a light gradient."""
    octaves = [
        (Image.frombytes("L", (w, h), values).resize(size, Image.Resampling.BICUBIC), weight)
        for w, h, values, weight in scene.grids
    ]
    field, total = octaves[0]
    for octave, weight in octaves[1:]:
        total += weight
        field = Image.blend(field, octave, weight / total)  # a running weighted mean
    light = Image.linear_gradient("L").rotate(scene.light_angle, Image.Resampling.BILINEAR)
    light = light.crop((48, 48, 208, 208)).resize(size, Image.Resampling.BICUBIC)
    return ImageOps.autocontrast(Image.blend(field, light, scene.light_weight))


def _sprite(diameter: int, strength: float) -> Image.Image:
    """A soft round glow (mode L): brightest in the centre, nothing at the rim.

    ``radial_gradient`` is 0 in the centre and 181 at the middle of an edge, so
    the glow is zero on and beyond the inscribed circle: no square seams.
    """
    falloff = [round(255 * strength * max(0.0, 1 - v / 180) ** 2.2) for v in range(256)]
    glow = Image.radial_gradient("L").point(falloff)
    return glow.resize((diameter, diameter), Image.Resampling.BILINEAR)


def _vignette(size: tuple[int, int]) -> Image.Image:
    """Mode L mask: full light in the middle, a gentle darkening at the edges."""
    mask = Image.radial_gradient("L").crop((16, 16, 240, 240)).resize(size)
    return mask.point([round(255 - 110 * max(0.0, v / 255 - 0.45) / 0.55) for v in range(256)])


_FIELD_SCALE: Final = 4


class _Painter:
    """Draws the frames of one scene at one size; the costly parts are made once."""

    def __init__(self, scene: _Scene, size: tuple[int, int], pan: bool) -> None:
        self.scene = scene
        self.size = size
        width, height = size
        self.short = min(size)
        # The field is drawn at a quarter of the size and scaled up after it is
        # coloured: smoother colour steps than folding 8-bit values at full size,
        # and a quarter of the work.
        self.low = (max(4, -(-width // _FIELD_SCALE)), max(4, -(-height // _FIELD_SCALE)))
        self.pad = max(self.low) * 0.08 if pan else 0.0
        pad = math.ceil(self.pad)
        self.field = _field(scene, (self.low[0] + 2 * pad, self.low[1] + 2 * pad))
        self.sprites = [
            _sprite(max(4, round(orb.radius * 2 * self.short)), orb.strength) for orb in scene.orbs
        ]
        self.black = Image.new("RGB", size)
        self.vignette = _vignette(size)

    def frame(self, t: float, base: Image.Image | None = None) -> Image.Image:
        scene, (width, height), (low_w, low_h) = self.scene, self.size, self.low
        if self.pad:
            angle = math.tau * t / scene.pan_s
            dx = self.pad * (1 + math.sin(angle))
            dy = self.pad * (1 + math.sin(angle * 0.7 + 1.3))
            window = self.field.resize(
                self.low, Image.Resampling.BILINEAR, box=(dx, dy, dx + low_w, dy + low_h)
            )
        else:
            window = self.field
        flow = t / scene.flow_s
        fold = [
            round(127.5 + 127.5 * math.sin(math.tau * (scene.bands * v / 255 + flow)))
            for v in range(256)
        ]
        r_lut, g_lut, b_lut = scene.ramp
        frame = Image.merge(
            "RGB",
            (
                window.point([r_lut[f] for f in fold]),
                window.point([g_lut[f] for f in fold]),
                window.point([b_lut[f] for f in fold]),
            ),
        )
        # Softens the 8-bit steps the sine fold magnifies before they are enlarged.
        frame = frame.filter(ImageFilter.GaussianBlur(1.2)).resize(
            self.size, Image.Resampling.BICUBIC
        )
        if base is not None:
            frame = Image.blend(base, frame, 0.3)
        for orb, sprite in zip(scene.orbs, self.sprites, strict=True):
            swing = math.tau * t / orb.period_s + orb.phase
            cx = (orb.x + orb.drift_x * math.sin(swing)) * width
            cy = (orb.y + orb.drift_y * math.cos(swing * 0.8)) * height
            half = sprite.width // 2
            frame.paste(orb.color, (round(cx) - half, round(cy) - half), sprite)
        draw = ImageDraw.Draw(frame, "RGBA")
        for ring in scene.rings:
            turn = ring.phase + math.tau * t / ring.spin_s
            rx = ring.radius * self.short
            ry = rx * (ring.squash + (1 - ring.squash) * 0.25 * (1 + math.sin(turn)))
            cx, cy = ring.x * width, ring.y * height
            draw.ellipse(
                (cx - rx, cy - ry, cx + rx, cy + ry),
                outline=(*ring.color, ring.alpha),
                width=max(1, round(ring.width * self.short)),
            )
        return Image.composite(frame, self.black, self.vignette)


def _check_size(width: int, height: int) -> None:
    if not (16 <= width <= MAX_SIDE and 16 <= height <= MAX_SIDE):
        raise ValueError(f"sides are 16 to {MAX_SIDE} px, not {width}x{height}")


def render_image(prompt: str, seed: int, width: int, height: int) -> bytes:
    """A PNG of ``width`` x ``height`` drawn from ``prompt`` and ``seed``.

    The same arguments give the same bytes (for a given Pillow build).
    """
    _check_size(width, height)
    picture = _Painter(_scene(prompt, seed), (width, height), pan=False).frame(0.0)
    out = io.BytesIO()
    picture.save(out, "PNG", optimize=False, compress_level=6)
    return out.getvalue()


_ZOOM: Final = 1.12  # how far an image-to-video clip pushes into the source image


def _cover(source: bytes, size: tuple[int, int], zoom: float) -> Image.Image:
    """``source`` cropped to ``size``'s aspect ratio and scaled to ``zoom`` times it."""
    with Image.open(io.BytesIO(source)) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = size
    return ImageOps.fit(picture, (round(width * zoom), round(height * zoom)))


def render_video(
    prompt: str,
    seed: int,
    width: int,
    height: int,
    duration_s: float,
    fps: int = 24,
    *,
    source_image: bytes | None = None,
    timeout_s: float = 120.0,
) -> bytes:
    """An MP4 (H.264, yuv420p, ``+faststart``) of the scene for ``prompt`` and ``seed``.

    ``width`` and ``height`` must be even. The clip has ``round(duration_s *
    fps)`` frames; the same arguments give the same bytes (for given Pillow and
    ffmpeg builds). With ``source_image`` (image-to-video; a validated upload)
    the picture slowly zooms into that image under a veil of the scene.
    Raises ``MediaToolError`` if ffmpeg fails or the clip takes longer than
    ``timeout_s`` to make.
    """
    _check_size(width, height)
    if width % 2 or height % 2:
        raise ValueError(f"H.264 in yuv420p needs even sides, not {width}x{height}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration_s is in (0, {MAX_DURATION_S:g}], not {duration_s}")
    if not 1 <= fps <= 60:
        raise ValueError(f"fps is 1 to 60, not {fps}")
    frames = max(1, round(duration_s * fps))
    painter = _Painter(_scene(prompt, seed), (width, height), pan=True)
    zoomed = _cover(source_image, (width, height), _ZOOM) if source_image is not None else None

    with tempfile.TemporaryDirectory(prefix="plasmaart-render-") as tmp:
        target = Path(tmp, "out.mp4")
        command = [
            ffmpeg_exe(),
            "-nostdin",  # no keyboard commands; the frames still come in on stdin
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            str(fps),
            "-i",
            "-",
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            # x264's output depends on its thread count, which defaults to the
            # host's cores; fixed, a seed gives the same clip on any machine.
            "-threads",
            "4",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            "-y",
            str(target),
        ]
        _encode(command, _frames(painter, frames, fps, zoomed), Path(tmp, "ffmpeg.log"), timeout_s)
        return target.read_bytes()


def _frames(painter: _Painter, count: int, fps: int, zoomed: Image.Image | None) -> Iterator[bytes]:
    """The raw rgb24 frames of the clip, one at a time."""
    width, height = painter.size
    for index in range(count):
        base = None
        if zoomed is not None:
            # Ken Burns: from the whole (zoomed-out) picture towards its centre.
            scale = 1 + (_ZOOM - 1) * index / max(1, count - 1)
            crop_w, crop_h = zoomed.width / scale, zoomed.height / scale
            left, top = (zoomed.width - crop_w) / 2, (zoomed.height - crop_h) / 2
            base = zoomed.resize(
                (width, height),
                Image.Resampling.BILINEAR,
                box=(left, top, left + crop_w, top + crop_h),
            )
        yield painter.frame(index / fps, base).tobytes()


def _encode(command: list[str], frames: Iterable[bytes], log_path: Path, timeout_s: float) -> None:
    """Pipe ``frames`` into the ffmpeg ``command``; raise ``MediaToolError`` on failure.

    A watchdog kills ffmpeg at the deadline, which also unblocks a write into a
    pipe ffmpeg stopped reading.
    """
    expired = threading.Event()
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log
        )
        stdin = process.stdin
        assert stdin is not None  # noqa: S101 - opened with stdin=PIPE

        def expire() -> None:
            expired.set()
            process.kill()

        watchdog = threading.Timer(timeout_s, expire)
        watchdog.start()
        try:
            try:
                for frame in frames:
                    stdin.write(frame)
                stdin.close()
            except (BrokenPipeError, ValueError):
                pass  # ffmpeg died or was killed: its exit code and log say why
            code = process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
            with contextlib.suppress(OSError):  # a broken pipe cannot flush
                stdin.close()
    if expired.is_set():
        raise MediaToolError(f"ffmpeg was stopped after the {timeout_s:g} s deadline")
    if code != 0:
        detail = log_path.read_text("utf-8", "replace").strip()[-800:]
        raise MediaToolError(f"ffmpeg exited with {code} while encoding the clip: {detail}")
