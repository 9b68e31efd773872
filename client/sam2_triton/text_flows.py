"""Text prompts as flows on ``_core`` (``Call``/``Compute`` steps) and their results decoded,
so that ``LangSAM`` and ``AsyncLangSAM`` (``text.py``) cannot drift apart. Transport-free: one
``sam2_text`` request per image (contract: ``text_spec``), its ``result`` document checked and
decoded into a ``TextSegmentation`` or into Lang-SAM's result dict, and the checks every
argument passes before anything is sent.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from . import _wire, text_spec
from ._core import Compute, Flow, SAM2Core, Sleep
from ._everything import encoded_image
from .errors import (
    InferenceError,
    InvalidImageError,
    InvalidInputError,
    InvalidPromptError,
    ModelNotReadyError,
)

logger = logging.getLogger(__name__)


# --- validation --------------------------------------------------------------------------------
def check_text(text: object, what: str = "text") -> str:
    """``text`` if it is a prompt ``sam2_text`` accepts: a non-blank ``str`` of at most
    ``text_spec.MAX_TEXT_BYTES`` UTF-8 bytes. Raises InvalidPromptError (naming ``what``)."""
    if not isinstance(text, str):
        raise InvalidPromptError(f"{what} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InvalidPromptError(f"{what} is empty: give what to find, e.g. 'cat.'")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidPromptError(f"{what} cannot be encoded as UTF-8: {exc}") from None
    if size > text_spec.MAX_TEXT_BYTES:
        raise InvalidPromptError(f"{what} is {size} bytes; the limit is {text_spec.MAX_TEXT_BYTES}")
    return text


def check_threshold(value: object, name: str) -> float:
    """``value`` as a float if it is a real number in ``[0, 1]`` (not a bool, not NaN);
    raises InvalidInputError naming ``name`` otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number in [0, 1], got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise InvalidInputError(f"{name} must be a number in [0, 1], got {value!r}")
    return number


# --- results -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TextSegmentation:
    """What ``sam2_text`` found in one image, decoded. ``N`` objects in the detector's query
    order (as transformers returns them), ``H x W`` the image's size.

    Attributes:
        width, height: the image's size in pixels (``W``, ``H``).
        text: the prompt the detector ran (Lang-SAM's rule: "." appended unless it ends with
            one). box_threshold, text_threshold: the thresholds it ran with.
        labels: ``N`` phrases of the prompt, one per object (transformers' ``text_labels``).
        scores: ``[N]`` float32 detector scores (best token probability of each box).
        boxes: ``[N, 4]`` float32 ``x0, y0, x1, y1`` pixel boxes from the detector.
        mask_scores: ``[N]`` float32 SAM 2's predicted IoU of each mask.
        masks: ``[N, H, W]`` bool, one mask per box (``multimask_output=False``).
        rles: ``N`` COCO compressed RLE ``{"size": [H, W], "counts": str}`` of ``masks``, as
            the server sent them.
        model_fingerprint: the SAM 2 weights' fingerprint (None when nothing was detected:
            SAM 2 did not run). detector: the Triton model that detected the boxes.
    """

    width: int
    height: int
    text: str
    box_threshold: float
    text_threshold: float
    labels: tuple[str, ...]
    scores: np.ndarray
    boxes: np.ndarray
    mask_scores: np.ndarray
    masks: np.ndarray
    rles: tuple[dict[str, Any], ...]
    model_fingerprint: list[int] | None
    detector: str | None

    def __len__(self) -> int:
        return len(self.labels)


def result_document(result: Any, model: str = text_spec.TEXT_MODEL) -> dict[str, Any]:
    """The ``result`` JSON of a ``sam2_text`` response (a tritonclient ``InferResult``)."""
    raw = result.as_numpy(text_spec.TEXT_RESULT)
    if raw is None or raw.size != 1:
        raise InferenceError(f"{model} returned no {text_spec.TEXT_RESULT!r}")
    value = raw.reshape(-1)[0]
    try:
        doc = json.loads(value.decode() if isinstance(value, bytes) else str(value))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InferenceError(f"{model} returned a result that is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InferenceError(f"{model} returned a {type(doc).__name__}, not a JSON object")
    return doc


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def parse_result(doc: dict[str, Any], model: str = text_spec.TEXT_MODEL) -> TextSegmentation:
    """A ``sam2_text`` result document (``text_spec``) checked and decoded (masks from COCO
    RLE with pycocotools). Raises InferenceError when it does not follow the contract."""
    from pycocotools import mask as coco_mask

    try:
        width, height = int(doc["width"]), int(doc["height"])
        objects = doc["objects"]
        if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
            raise TypeError("'objects' must be a list of objects")
        if objects and doc.get("format", "rle") != "rle":
            raise ValueError(f"masks in format {doc.get('format')!r}; asked for 'rle'")
        labels = tuple(o["label"] for o in objects)
        if not all(isinstance(label, str) for label in labels):
            raise TypeError("every label must be a str")
        scores = np.array([_number(o["score"]) for o in objects], np.float32)
        boxes = np.array([[_number(v) for v in o["box"]] for o in objects], np.float32)
        boxes = boxes.reshape(len(objects), 4)
        mask_scores = np.array([_number(o["mask_score"]) for o in objects], np.float32)
        rles = tuple(
            {"size": [int(s) for s in o["mask"]["size"]], "counts": str(o["mask"]["counts"])}
            for o in objects
        )
        if any(r["size"] != [height, width] for r in rles):
            raise ValueError(f"a mask's size differs from the image's {[height, width]}")
        if rles:
            stack = coco_mask.decode([{**r, "counts": r["counts"].encode()} for r in rles])
            masks = np.ascontiguousarray(stack.transpose(2, 0, 1), dtype=bool)
        else:
            masks = np.zeros((0, height, width), bool)
        fingerprint = doc.get("model_fingerprint")
        detector = doc.get("detector")
        logger.debug("%s: %d objects for %r", model, len(objects), doc.get("text"))
        return TextSegmentation(
            width=width,
            height=height,
            text=str(doc.get("text", "")),
            box_threshold=_number(doc["box_threshold"]),
            text_threshold=_number(doc["text_threshold"]),
            labels=labels,
            scores=scores,
            boxes=boxes,
            mask_scores=mask_scores,
            masks=masks,
            rles=rles,
            model_fingerprint=None if fingerprint is None else [int(v) for v in fingerprint],
            detector=None if detector is None else str(detector),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InferenceError(f"{model} returned a malformed result: {exc!r}") from None


def lang_sam_result(segmentation: TextSegmentation) -> dict[str, Any]:
    """One image's result exactly as Lang-SAM's ``LangSAM.predict`` returns it.

    ``{"scores": [N] float32, "boxes": [N, 4] float32, "text_labels": list[str], "labels":
    list[str], "masks": [N, H, W] float32 0/1, "mask_scores": ...}`` (transformers' keys, then
    Lang-SAM's). Lang-SAM's quirks, kept: ``labels`` and ``text_labels`` are the same list
    object (transformers 5 returns it under both keys); with N == 0 SAM 2 does not run and
    ``masks``/``mask_scores`` are empty Python lists ``[]``; ``mask_scores`` is
    ``np.squeeze`` of SAM 2's ``[N, 1]`` IoU predictions: shape ``[N]``, but a 0-d array when
    N == 1 (``SAM2ImagePredictor.predict_batch`` squeezes axis 0 first).
    """
    labels = list(segmentation.labels)
    result: dict[str, Any] = {
        "scores": segmentation.scores,
        "boxes": segmentation.boxes,
        "text_labels": labels,
        "labels": labels,
        "masks": [],
        "mask_scores": [],
    }
    if labels:  # Lang-SAM: ``if result["labels"]:`` runs SAM 2
        result["masks"] = segmentation.masks.astype(np.float32)
        result["mask_scores"] = np.squeeze(segmentation.mask_scores)
    return result


def _lang_sam_from_document(doc: dict[str, Any], model: str) -> dict[str, Any]:
    return lang_sam_result(parse_result(doc, model))


def _image_bytes(image: object) -> bytes:
    """``encoded_image``, with a PIL image sent as Lang-SAM sees it: its pixels as stored, NOT
    turned by an EXIF orientation tag (Lang-SAM hands the PIL image to the detector and
    ``np.asarray`` of it to SAM 2; neither transposes. ``encoded_image`` does not transpose a
    PIL image either, and its PNG carries no EXIF for the server to apply); non-RGB modes
    converted as ``image.convert("RGB")`` does (Lang-SAM needs RGB)."""
    if isinstance(image, Image.Image) and image.mode != "RGB":
        image = image.convert("RGB")
    return encoded_image(image)


# --- flows -------------------------------------------------------------------------------------
def segment_text_flow(
    core: SAM2Core,
    image: object,
    text: str,
    box_threshold: float = text_spec.BOX_THRESHOLD,
    text_threshold: float = text_spec.TEXT_THRESHOLD,
    model: str = text_spec.TEXT_MODEL,
) -> Flow[dict[str, Any]]:
    """One ``sam2_text`` request: its result document (``text_spec``; masks as COCO RLE).

    ``image``: a path or encoded bytes (sent as they are: the server decodes them as
    ``transforms.load_image`` does, EXIF orientation applied), an ``H x W x 3`` uint8 array or
    a PIL image (a lossless PNG of its stored pixels, see ``_image_bytes``).
    """
    text = check_text(text)
    options = {
        "box_threshold": check_threshold(box_threshold, "box_threshold"),
        "text_threshold": check_threshold(text_threshold, "text_threshold"),
        "format": "rle",
    }
    data = yield Compute(_image_bytes, (image,))
    inputs = [
        _wire.bytes_input(core.mod, text_spec.TEXT_IMAGE, data),
        _wire.bytes_input(core.mod, text_spec.TEXT_PROMPT, text.encode("utf-8")),
        _wire.bytes_input(core.mod, text_spec.TEXT_OPTIONS, json.dumps(options).encode()),
    ]
    outputs = _wire.requested_outputs(core.mod, [text_spec.TEXT_RESULT])
    result = yield core.call("infer", model, model_name=model, inputs=inputs, outputs=outputs)
    return (yield Compute(result_document, (result, model)))


def segmentation_flow(
    core: SAM2Core,
    image: object,
    text: str,
    box_threshold: float = text_spec.BOX_THRESHOLD,
    text_threshold: float = text_spec.TEXT_THRESHOLD,
    model: str = text_spec.TEXT_MODEL,
) -> Flow[TextSegmentation]:
    """``segment_text_flow`` decoded into a ``TextSegmentation``."""
    doc = yield from segment_text_flow(core, image, text, box_threshold, text_threshold, model)
    return (yield Compute(parse_result, (doc, model)))


def lang_sam_flow(
    core: SAM2Core,
    image: object,
    text: str,
    box_threshold: float = text_spec.BOX_THRESHOLD,
    text_threshold: float = text_spec.TEXT_THRESHOLD,
    model: str = text_spec.TEXT_MODEL,
) -> Flow[dict[str, Any]]:
    """``segment_text_flow`` as Lang-SAM's result dict (``lang_sam_result``)."""
    doc = yield from segment_text_flow(core, image, text, box_threshold, text_threshold, model)
    return (yield Compute(_lang_sam_from_document, (doc, model)))


def text_ready_flow(core: SAM2Core, model: str, timeout_s: float) -> Flow[None]:
    """Wait until the server, the encoder, the decoder and the text model are ready."""
    deadline = time.monotonic() + timeout_s
    yield from core.ready_flow(timeout_s)
    while True:
        budget = max(0.1, min(core.config.timeout_s, deadline - time.monotonic()))
        if (yield core.call("is_model_ready", model, timeout_s=budget, model_name=model)):
            return
        if time.monotonic() >= deadline:
            raise ModelNotReadyError(
                f"model {model!r} is not ready after {timeout_s:g} s (text prompts need "
                "`sam2-triton export --detector`)"
            )
        yield Sleep(0.25)


def predict_args(
    images_pil: object, texts_prompt: object, box_threshold: object, text_threshold: object
) -> list[tuple[Image.Image, str, float, float]]:
    """``LangSAM.predict``'s arguments checked before anything is sent."""
    lists = []
    for name, value in (("images_pil", images_pil), ("texts_prompt", texts_prompt)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise InvalidInputError(
                f"{name} must be a list (one entry per image), got {type(value).__name__}"
            )
        lists.append(list(value))
    images, texts = lists
    if len(images) != len(texts):
        raise InvalidInputError(
            f"images_pil has {len(images)} images but texts_prompt has {len(texts)} prompts: "
            "give one prompt per image"
        )
    if not images:
        raise InvalidInputError("images_pil is empty: give at least one image")
    bt = check_threshold(box_threshold, "box_threshold")
    tt = check_threshold(text_threshold, "text_threshold")
    out = []
    for i, (image, text) in enumerate(zip(images, texts)):
        if not isinstance(image, Image.Image):
            raise InvalidImageError(
                f"images_pil[{i}] must be a PIL image (Lang-SAM's API; segment() also takes "
                f"paths, bytes and arrays), got {type(image).__name__}"
            )
        out.append((image, check_text(text, f"texts_prompt[{i}]"), bt, tt))
    return out


def check_concurrency(value: object) -> int:
    """``value`` if it is an integer >= 1 (not a bool); raises InvalidInputError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"max_concurrency must be an integer >= 1, got {value!r}")
    return value
