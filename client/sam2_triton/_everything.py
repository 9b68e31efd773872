"""The segment-everything flow (``sam2_everything``), on the core's ``Call``/``Compute`` steps."""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any

import numpy as np
from PIL import Image

from . import _wire, spec, transforms
from ._core import Compute, Flow, SAM2Core
from .amg import GeneratorOptions
from .errors import InferenceError, InvalidImageError, InvalidInputError, UnknownImageError
from .types import RemoteEmbedding

logger = logging.getLogger(__name__)


def encoded_image(image: object) -> bytes:
    """The bytes to upload: a file's own bytes (the server decodes them exactly as
    ``transforms.load_image`` does here), or a lossless PNG of an ``H x W x 3`` uint8 array
    (SAM 2's ``generate`` input) or of a PIL image."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as fp:
                return fp.read()
        except OSError as exc:
            raise InvalidImageError(f"cannot read image file {os.fspath(image)!r}: {exc}") from exc
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidImageError(
                "image must be an H x W x 3 uint8 array (SAM2AutomaticMaskGenerator.generate's "
                f"input), got dtype {image.dtype} shape {image.shape}"
            )
        pixels = image
    elif isinstance(image, Image.Image):
        rgb01 = transforms.load_image(image)  # as is: no EXIF transpose for PIL
        pixels = np.clip(np.rint(rgb01 * 255.0), 0, 255).astype(np.uint8)
    else:
        raise InvalidImageError(
            "image must be an H x W x 3 uint8 array, a PIL image, a path or encoded bytes, got "
            f"{type(image).__name__}"
        )
    transforms.load_image(pixels)  # the SDK's size and content checks, before any upload
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def generate_flow(
    core: SAM2Core, image: object, options: GeneratorOptions, model: str
) -> Flow[dict[str, Any]]:
    """One ``sam2_everything`` request: the result JSON (``masks`` in COCO RLE)."""
    doc = json.loads(options.to_json())
    headers = None
    inputs = []
    if isinstance(image, RemoteEmbedding):
        if options.crop_n_layers:
            raise InvalidInputError(
                "crop_n_layers > 0 needs the image's pixels: pass the image, not a RemoteEmbedding"
            )
        doc[spec.EVERYTHING_IMAGE_ID_KEY] = image.image_id
        headers = {spec.SESSION_ROUTING_HEADER: image.image_id}
    else:
        data = yield Compute(encoded_image, (image,))
        inputs.append(_wire.bytes_input(core.mod, spec.EVERYTHING_IMAGE, data))
    inputs.append(_wire.bytes_input(core.mod, spec.EVERYTHING_OPTIONS, json.dumps(doc).encode()))
    outputs = _wire.requested_outputs(core.mod, [spec.EVERYTHING_RESULT])
    call = core.call(
        "infer", model, extra_headers=headers, model_name=model, inputs=inputs, outputs=outputs
    )
    try:
        result = yield call
    except UnknownImageError:
        if not isinstance(image, RemoteEmbedding):
            raise
        logger.info("server does not hold image %s: uploading it again", image.image_id[:12])
        yield from core.upload_flow(image.wire_image, image.orig_hw)
        result = yield call
    raw = result.as_numpy(spec.EVERYTHING_RESULT)
    if raw is None or raw.size != 1:
        raise InferenceError(f"{model} returned no {spec.EVERYTHING_RESULT!r}")
    value = raw.reshape(-1)[0]
    return json.loads(value.decode() if isinstance(value, bytes) else str(value))
