"""Media files: what PlasmaArt makes, marks and accepts, as pure functions over bytes.

* ``sandbox_render``: the sandbox provider's offline renderer, real PNG pictures and
  H.264 MP4 clips drawn from a prompt and a seed (deterministic for a seed).
* ``watermark``: the visible PlasmaArt mark on every output whose plan and
  owner did not remove it.
* ``metadata``: the license (``personal`` or ``commercial``) and provenance
  written into PNG chunks and MP4 tags and read back; the MP4 facts (codec,
  size, duration) read from the file's boxes; the bundled ffmpeg runner.
* ``uploads``: which uploaded images are accepted (PNG/JPEG/WebP by content,
  10 MiB, 4096 px a side, no decompression bombs, no corrupt files).

No database and no web here: callers pass bytes and plain data and store what
comes back. ffmpeg is the binary shipped in the ``imageio-ffmpeg`` wheel;
nothing is ever downloaded at run time.
"""
