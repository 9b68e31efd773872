"""``sam2_segment``: one-shot segmentation over plain v2 REST (Triton python backend, BLS).

One request: ``image`` (BYTES [1]: an encoded PNG/JPEG/..., raw bytes or base64 text, also as a
``data:image/...;base64,`` URL) and ``prompts`` (BYTES [1]: JSON, see ``parse_prompts``). The SDK
does SAM 2's work on both sides of the wire, exactly as the client does it: the image is decoded
and resized by ``sam2_triton.transforms`` (EXIF orientation applied, SAM2Transforms' resize), the
prompts are checked and mapped by ``sam2_triton.prompts``; ``sam2_encoder`` and ``sam2_decoder``
run through BLS; ``transforms.select_masks``/``postprocess`` give the masks at the image's own
size. Output ``result`` (BYTES [1]) is JSON; masks are COCO compressed RLE
(``pycocotools.mask.encode``: ``{"size": [H, W], "counts": "..."}``) or base64 PNG (1 bit/pixel).
Request handling and config parameters: ``oneshot``.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from sam2_triton import spec, transforms
from sam2_triton.errors import InvalidInputError
from sam2_triton.prompts import WirePrompt, plan_decode, validate_prompt
from sam2_triton.types import Prompt

from ._triton import RequestError
from .oneshot import BLSModels, OneShotModel, decode_image, image_bytes, parse_json_object

__all__ = (
    "TritonPythonModel",
    "decode_image",
    "decode_masks",
    "image_bytes",
    "parse_prompts",
    "png_base64",
    "rle",
    "wire_prompts",
)

MAX_OBJECTS = 256
OBJECT_KEYS = ("points", "labels", "box")
# the SDK's Prompt fields, as the JSON calls them (its messages name the field)
_JSON_NAMES = (("point_coords", "points"), ("point_labels", "labels"))


# --- the request's elements ---------------------------------------------------------------------
def parse_prompts(raw: bytes) -> tuple[list[tuple[str, Prompt]], bool, str]:
    """The ``prompts`` JSON: ``([(where, Prompt), ...], multimask, format)``.

    One object ``{"points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1, y1]}`` or
    several ``{"objects": [{...}, ...]}``; options ``"multimask"`` (bool, default false) and
    ``"format"`` ("rle", default, or "png"). Coordinates are pixels of the image as a viewer
    shows it (EXIF orientation applied); labels 1 = foreground, 0 = background. Only the JSON's
    shape is checked here; :func:`wire_prompts` checks the values once the image size is known.
    """
    doc = parse_json_object(raw, "prompts")
    keys = spec.SEGMENT_PROMPT_KEYS
    unknown = sorted(set(doc) - set(keys))
    if unknown:
        raise RequestError(f"prompts has unknown key(s) {unknown}; allowed: {list(keys)}")
    multimask = doc.get("multimask", False)
    if not isinstance(multimask, bool):
        raise RequestError(f"prompts.multimask must be true or false, got {multimask!r}")
    fmt = doc.get("format", "rle")
    if fmt not in spec.SEGMENT_FORMATS:
        raise RequestError(
            f"prompts.format must be one of {list(spec.SEGMENT_FORMATS)}, got {fmt!r}"
        )
    if "objects" in doc:
        inline = sorted(set(doc) & set(OBJECT_KEYS))
        if inline:
            raise RequestError(
                f"prompts has both 'objects' and {inline}: put every object's "
                "points/labels/box inside 'objects'"
            )
        objects = doc["objects"]
        if not isinstance(objects, list) or not 1 <= len(objects) <= MAX_OBJECTS:
            raise RequestError(f"prompts.objects must be a list of 1 to {MAX_OBJECTS} objects")
        where = [f"prompts.objects[{i}]" for i in range(len(objects))]
    else:
        objects, where = [doc], ["prompts"]
    return [(w, _prompt(o, w)) for o, w in zip(objects, where)], multimask, fmt


def _prompt(obj: Any, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise RequestError(f"{where} must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(OBJECT_KEYS)) if where != "prompts" else []
    if unknown:
        raise RequestError(f"{where} has unknown key(s) {unknown}; allowed: {list(OBJECT_KEYS)}")
    if ("points" in obj) != ("labels" in obj):
        raise RequestError(f"{where}: give 'points' and 'labels' together (one label per point)")
    if "points" not in obj and "box" not in obj:
        raise RequestError(f"{where} has no points and no box: give 'points' + 'labels' or 'box'")
    return Prompt(
        point_coords=obj.get("points"), point_labels=obj.get("labels"), box=obj.get("box")
    )


def wire_prompts(prompts: list[tuple[str, Prompt]], orig_hw: tuple[int, int]) -> list[WirePrompt]:
    """Each prompt checked against the image and mapped to the model frame by the SDK
    (``sam2_triton.prompts.validate_prompt``); its messages name the JSON fields."""
    wire = []
    for where, prompt in prompts:
        try:
            wire.append(validate_prompt(prompt, where, orig_hw))
        except InvalidInputError as exc:
            message = str(exc)
            for sdk_name, json_name in _JSON_NAMES:
                message = message.replace(sdk_name, json_name)
            raise RequestError(message) from None
    return wire


# --- masks ------------------------------------------------------------------------------------
def decode_masks(
    models: BLSModels,
    features: list[Any],
    fingerprint: np.ndarray,
    wire: list[WirePrompt],
    orig_hw: tuple[int, int],
    multimask: bool,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """``SAM2ImagePredictor.predict`` for each prompt on one image's features: per prompt, in
    order, its masks ``[C, H, W]`` bool, their scores ``[C]`` float32 and the object score
    logit (C = 3 with ``multimask``, else 1). Prompts of equal point count share decoder calls
    (``plan_decode``); ``transforms.select_masks``/``postprocess`` do SAM 2's post-processing."""
    results: list[tuple[np.ndarray, np.ndarray, float] | None] = [None] * len(wire)
    for chunk in plan_decode(wire, spec.MAX_PROMPTS_PER_REQUEST):
        low, iou, obj = models.decode(features, fingerprint, chunk)
        low, iou = transforms.select_masks(low, iou, multimask)
        masks, _ = transforms.postprocess(low, orig_hw, return_logits=False)
        for row, i in enumerate(chunk.indices.tolist()):
            results[i] = (masks[row], iou[row], float(obj[row].reshape(-1)[0]))
    return [r for r in results if r is not None]


# --- the masks as JSON ------------------------------------------------------------------------
def rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """Bool masks ``[C, H, W]`` as COCO compressed RLE: ``{"size": [H, W], "counts": str}``."""
    encoded = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8))
    return [
        {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}
        for r in encoded
    ]


def png_base64(masks: np.ndarray) -> list[str]:
    """Bool masks ``[C, H, W]`` as 1-bit PNGs, base64 text."""
    out = []
    for mask in masks:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(
            buf, format="PNG", optimize=True
        )
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


# --- the Triton model -------------------------------------------------------------------------
class TritonPythonModel(OneShotModel):
    """The one-shot segmentation model (see the module docstring)."""

    DEFAULT_NAME = spec.SEGMENT_MODEL
    INPUTS = REQUIRED = (spec.SEGMENT_IMAGE, spec.SEGMENT_PROMPTS)
    RESULT = spec.SEGMENT_RESULT

    def answer(self, *elements: bytes | None) -> dict[str, Any]:
        raw_image, raw_prompts = elements
        return self.segment(raw_image or b"", raw_prompts or b"")

    def segment(self, raw_image: bytes, raw_prompts: bytes) -> dict[str, Any]:
        """Validate, encode, decode, post-process: the ``result`` JSON as a dict."""
        prompts, multimask, fmt = parse_prompts(raw_prompts)
        image01 = decode_image(raw_image)
        orig_hw = (int(image01.shape[0]), int(image01.shape[1]))
        wire = wire_prompts(prompts, orig_hw)
        features, fingerprint = self.models.encode(image01)
        del image01
        encode = rle if fmt == "rle" else png_base64
        results = [
            {
                "masks": encode(masks),
                "scores": [float(s) for s in scores],
                "object_score_logit": obj,
            }
            for masks, scores, obj in decode_masks(
                self.models, features, fingerprint, wire, orig_hw, multimask
            )
        ]
        return {
            "width": orig_hw[1],
            "height": orig_hw[0],
            "format": fmt,
            "multimask": multimask,
            "model_fingerprint": fingerprint.tolist(),
            "objects": results,
        }
