"""The arguments each fal model takes: our request as fal's input.

``FAL_INPUTS`` has one row of data per fal endpoint: which of our params it
takes under the same name, how it sizes its output (``image_size`` presets or
``aspect_ratio``), how it spells a duration, whether it makes several images
per request, and which of our params it has no input for. An endpoint without
a row gets a generic mapping (``inputs_for``). ``fal_arguments`` turns a
``ProviderRequest`` into the endpoint to submit to and its input, refusing
(``ProviderRejected``) what the endpoint cannot take.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from plasmaart.catalog import ModelSpec
from plasmaart.generation.providers.base import ProviderRejected, ProviderRequest
from plasmaart.media.uploads import sniff_type

# Our aspect ratios as fal's ``image_size`` presets (the Flux family and others).
IMAGE_SIZE_PRESETS: Final[Mapping[str, str]] = {
    "1:1": "square_hd",
    "16:9": "landscape_16_9",
    "9:16": "portrait_16_9",
    "4:3": "landscape_4_3",
    "3:4": "portrait_4_3",
}


@dataclass(frozen=True)
class FalInputs:
    """How one fal endpoint takes our request.

    ``passes``: our params sent under the same name (``None``: all of them).
    ``size``: the input our ``aspect_ratio`` becomes (``image_size`` takes
    presets). ``duration``: the format of fal's ``duration`` input made from our
    ``duration_s`` (fal spells it ``"5"`` or ``"8s"``). ``ignores``: our params
    the endpoint has no input for; they are left out. Any other param is refused,
    so a catalog that drifts from this table fails loudly instead of silently.
    """

    passes: frozenset[str] | None = frozenset()
    size: Literal["image_size", "aspect_ratio"] | None = None
    duration: str | None = None
    num_images: bool = False
    image_input: str | None = None
    ignores: frozenset[str] = frozenset()
    # Where to send a request that comes without an input image, for endpoints
    # that edit an image and have a text-only sibling.
    without_image: str | None = None


def _image_model(*passes: str, size: Literal["image_size", "aspect_ratio"]) -> FalInputs:
    return FalInputs(passes=frozenset(passes), size=size, num_images=True)


def _video_model(
    *passes: str,
    size: Literal["aspect_ratio"] | None = "aspect_ratio",
    duration: str | None = "{}",
    image: bool = False,
    ignores: Iterable[str] = (),
) -> FalInputs:
    return FalInputs(
        passes=frozenset(passes),
        size=size,
        duration=duration,
        image_input="image_url" if image else None,
        ignores=frozenset(ignores),
    )


FAL_INPUTS: Final[Mapping[str, FalInputs]] = {
    "fal-ai/flux/schnell": _image_model("seed", "num_inference_steps", size="image_size"),
    "fal-ai/flux/dev": _image_model(
        "seed", "num_inference_steps", "guidance_scale", size="image_size"
    ),
    "fal-ai/flux-pro/v1.1": _image_model("seed", size="image_size"),
    "fal-ai/flux-pro/kontext": FalInputs(
        passes=frozenset({"seed", "guidance_scale"}),
        size="aspect_ratio",
        num_images=True,
        image_input="image_url",
        without_image="fal-ai/flux-pro/kontext/text-to-image",
    ),
    "fal-ai/imagen4/preview": _image_model("seed", "negative_prompt", size="aspect_ratio"),
    "fal-ai/bytedance/seedream/v3/text-to-image": _image_model(
        "seed", "guidance_scale", size="image_size"
    ),
    "fal-ai/stable-diffusion-v3-medium": _image_model(
        "seed", "negative_prompt", "num_inference_steps", "guidance_scale", size="image_size"
    ),
    "fal-ai/veo3": _video_model("seed", "negative_prompt", "generate_audio", duration="{}s"),
    "fal-ai/kling-video/v2.1/master/text-to-video": _video_model(
        "negative_prompt", ignores={"seed"}
    ),
    "fal-ai/kling-video/v2.1/master/image-to-video": _video_model(
        "negative_prompt", size=None, image=True, ignores={"seed"}
    ),
    "fal-ai/pixverse/v4.5/text-to-video": _video_model("seed", "negative_prompt"),
    "fal-ai/pixverse/v4.5/image-to-video": _video_model(
        "seed", "negative_prompt", size=None, image=True
    ),
    # Hailuo-02 Pro makes one fixed length at one resolution and takes no seed.
    "fal-ai/minimax/hailuo-02/pro/text-to-video": _video_model(
        size=None, duration=None, ignores={"aspect_ratio", "duration_s", "seed"}
    ),
    "fal-ai/minimax/hailuo-02/pro/image-to-video": _video_model(
        size=None, duration=None, image=True, ignores={"duration_s", "seed"}
    ),
    "fal-ai/bytedance/seedance/v1/pro/text-to-video": _video_model("seed"),
    "fal-ai/bytedance/seedance/v1/pro/image-to-video": _video_model("seed", size=None, image=True),
    # Wan Pro makes one fixed length and takes neither a ratio nor a negative prompt.
    "fal-ai/wan-pro/text-to-video": _video_model(
        "seed", size=None, duration=None, ignores={"aspect_ratio", "duration_s", "negative_prompt"}
    ),
    "fal-ai/wan-pro/image-to-video": _video_model(
        "seed", size=None, duration=None, image=True, ignores={"duration_s", "negative_prompt"}
    ),
}


def inputs_for(model: ModelSpec) -> FalInputs:
    """The row of ``FAL_INPUTS`` for ``model``'s endpoint, or a generic one:
    params by their own names, ``aspect_ratio`` as is, ``duration`` in seconds."""
    known = FAL_INPUTS.get(model.provider_model)
    if known is not None:
        return known
    return FalInputs(
        passes=None,
        size="aspect_ratio",
        duration="{}",
        num_images=model.kind == "text-to-image",
        image_input="image_url",
    )


def fal_arguments(request: ProviderRequest) -> tuple[str, dict[str, object]]:
    """The fal endpoint to submit ``request`` to, and its input."""
    model = request.model
    inputs = inputs_for(model)
    endpoint = model.provider_model
    image_ref = request.image_url
    if image_ref is None and request.image is not None:
        # fal fetches inputs by URL; some endpoints take a data URI instead.
        image_ref = _data_uri(request.image)
    if image_ref is None and model.inputs.image == "required":
        raise ProviderRejected(f"{model.id} needs an input image")
    if image_ref is None and inputs.without_image is not None:
        endpoint = inputs.without_image

    arguments: dict[str, object] = {"prompt": request.prompt}
    if inputs.num_images:
        arguments["num_images"] = request.num_outputs
    elif request.num_outputs != 1:
        raise ProviderRejected(f"fal endpoint {endpoint} makes one output per request")
    if image_ref is not None:
        if inputs.image_input is None:
            raise ProviderRejected(f"fal endpoint {endpoint} takes no input image")
        arguments[inputs.image_input] = image_ref

    for name, value in request.params.items():
        if name == "aspect_ratio" and inputs.size == "image_size":
            preset = IMAGE_SIZE_PRESETS.get(str(value))
            if preset is None:
                raise ProviderRejected(f"fal endpoint {endpoint} has no image size for {value!r}")
            arguments["image_size"] = preset
        elif name == "aspect_ratio" and inputs.size == "aspect_ratio":
            arguments["aspect_ratio"] = value
        elif name == "duration_s" and inputs.duration is not None:
            arguments["duration"] = inputs.duration.format(value)
        elif name in inputs.ignores:
            continue
        elif inputs.passes is None or name in inputs.passes:
            arguments[name] = value
        else:
            raise ProviderRejected(f"fal endpoint {endpoint} has no input for params.{name}")
    return endpoint, arguments


def _data_uri(data: bytes) -> str:
    content_type = sniff_type(data) or "application/octet-stream"
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"
