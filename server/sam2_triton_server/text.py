"""``sam2_text``: text prompt -> masks in one request, as Lang-SAM does it (python backend, BLS).

``LangSAM.predict`` per image: Grounding DINO (transformers) detects the phrases of the prompt,
``post_process_grounded_object_detection`` keeps boxes by the box and text thresholds, and
``SAM2ImagePredictor.predict(box=boxes, multimask_output=False)`` turns every box into a mask.
Here: the prompt is tokenised and the image preprocessed by ``grounding`` (exactly as
transformers, numpy + ``tokenizers``), the detector graph of the image's canvas runs through
BLS, ``grounding`` post-processes, then the image's SAM 2 features are computed once and every
box is decoded (``segment.decode_masks``). Contract: ``sam2_triton.text_spec``.

Tokenisation runs here, beside the model: it is exact and cheap (~0.1 ms), and the phrase
masks depend on the very vocabulary the graph was exported with (``tokenizer.json``, installed
in this model's version directory by ``sam2-triton export --detector``).

Model config parameters (besides ``oneshot``'s): ``DETECTOR_LANDSCAPE_MODEL`` /
``DETECTOR_PORTRAIT_MODEL`` (BLS targets), ``DETECTOR_SHORTEST_EDGE`` / ``DETECTOR_LONGEST_EDGE``
(the processor's resize; the canvases follow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam2_triton import text_spec
from sam2_triton.errors import InvalidInputError
from sam2_triton.prompts import box_prompts

from . import grounding
from ._triton import RequestError, int_parameter, parameter, pb_utils
from .oneshot import OneShotModel, decode_image, parse_json_object
from .segment import decode_masks, png_base64, rle

__all__ = ("TextOptions", "TritonPythonModel", "parse_options", "parse_text")


@dataclass(frozen=True)
class TextOptions:
    """The ``options`` JSON, checked."""

    box_threshold: float = text_spec.BOX_THRESHOLD  # strict ">" on a query's best token prob
    text_threshold: float = text_spec.TEXT_THRESHOLD  # strict ">" on a token's prob (labels)
    format: str = "rle"  # masks as COCO RLE ("rle") or base64 PNG ("png")


def parse_options(raw: bytes | None) -> TextOptions:
    """The optional ``options`` element; defaults are Lang-SAM's (0.3, 0.25) and RLE masks."""
    doc = parse_json_object(raw, text_spec.TEXT_OPTIONS) if raw else {}
    unknown = sorted(set(doc) - set(text_spec.TEXT_OPTION_KEYS))
    if unknown:
        raise RequestError(
            f"options has unknown key(s) {unknown}; allowed: {list(text_spec.TEXT_OPTION_KEYS)}"
        )
    out: dict[str, Any] = {}
    for key in ("box_threshold", "text_threshold"):
        if key in doc:
            value = doc[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not 0.0 <= value <= 1.0
            ):
                raise RequestError(f"options.{key} must be a number in [0, 1], got {value!r}")
            out[key] = float(value)
    if "format" in doc:
        if doc["format"] not in text_spec.TEXT_FORMATS:
            raise RequestError(
                f"options.format must be one of {list(text_spec.TEXT_FORMATS)}, got "
                f"{doc['format']!r}"
            )
        out["format"] = doc["format"]
    return TextOptions(**out)


def parse_text(raw: bytes) -> str:
    """The ``text`` element as Lang-SAM runs it (``grounding.lang_sam_prompt``: a "." appended
    unless the prompt ends with one)."""
    if len(raw) > text_spec.MAX_TEXT_BYTES:
        raise RequestError(f"text is {len(raw)} bytes; the limit is {text_spec.MAX_TEXT_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"text must be UTF-8: {exc}") from None
    try:
        return grounding.lang_sam_prompt(text)
    except InvalidInputError as exc:
        raise RequestError(str(exc)) from None


class TritonPythonModel(OneShotModel):
    """The text-prompt model (see the module docstring)."""

    DEFAULT_NAME = text_spec.TEXT_MODEL
    INPUTS = (text_spec.TEXT_IMAGE, text_spec.TEXT_PROMPT, text_spec.TEXT_OPTIONS)
    REQUIRED = (text_spec.TEXT_IMAGE, text_spec.TEXT_PROMPT)
    RESULT = text_spec.TEXT_RESULT

    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        config = self._config
        self.detectors = {
            "landscape": parameter(
                config, "DETECTOR_LANDSCAPE_MODEL", text_spec.DETECTOR_MODELS["landscape"]
            ),
            "portrait": parameter(
                config, "DETECTOR_PORTRAIT_MODEL", text_spec.DETECTOR_MODELS["portrait"]
            ),
        }
        self.edges = (
            int_parameter(config, "DETECTOR_SHORTEST_EDGE", text_spec.SHORTEST_EDGE),
            int_parameter(config, "DETECTOR_LONGEST_EDGE", text_spec.LONGEST_EDGE),
        )
        version_dir = Path(args["model_repository"]) / str(args.get("model_version", "1"))
        self.tokenizer = grounding.GroundingTokenizer(version_dir)
        pb_utils.Logger.log_info(
            f"{self._name}: detectors {self.detectors}, resize {self.edges}, tokenizer "
            f"{version_dir / 'tokenizer.json'}"
        )

    def answer(self, *elements: bytes | None) -> dict[str, Any]:
        raw_image, raw_text, raw_options = elements
        return self.segment_text(raw_image or b"", raw_text or b"", parse_options(raw_options))

    def detect(
        self, image_u8: np.ndarray, text: str, box_threshold: float, text_threshold: float
    ) -> tuple[str, dict[str, Any]]:
        """Grounding DINO + transformers' post-processing on one ``H x W x 3`` uint8 image:
        (the detector model used, ``{"scores": [N] float32, "boxes": [N, 4] float32 xyxy
        pixels, "labels": [N] str}``)."""
        hw = (int(image_u8.shape[0]), int(image_u8.shape[1]))
        resized = grounding.resized_size(hw, *self.edges)
        orientation = text_spec.canvas_for(resized, *self.edges)
        canvas = text_spec.canvases(*self.edges)[orientation]
        pixel_values, pixel_mask, _ = grounding.preprocess_images([image_u8], canvas, *self.edges)
        tokens = self.tokenizer([text])
        feeds = {
            text_spec.PIXEL_VALUES: pixel_values,
            text_spec.PIXEL_MASK: pixel_mask,
            **tokens,
        }
        model = self.detectors[orientation]
        out = self.models.call(
            model,
            [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feeds.items()],
            list(text_spec.DETECTOR_OUTPUT_NAMES),
        )
        logits = out[text_spec.LOGITS].as_numpy()
        boxes = out[text_spec.PRED_BOXES].as_numpy()
        (result,) = grounding.post_process_grounded_object_detection(
            logits,
            boxes,
            tokens[text_spec.INPUT_IDS],
            self.tokenizer,
            threshold=box_threshold,
            text_threshold=text_threshold,
            target_sizes=[hw],
        )
        return model, result

    def segment_text(self, raw_image: bytes, raw_text: bytes, opts: TextOptions) -> dict[str, Any]:
        """Validate, detect, encode once, decode every box: the ``result`` JSON as a dict."""
        text = parse_text(raw_text)
        image01 = decode_image(raw_image, text_spec.TEXT_IMAGE)
        orig_hw = (int(image01.shape[0]), int(image01.shape[1]))
        image_u8 = np.rint(image01 * 255.0).astype(np.uint8)  # exact: image01 is uint8 / 255
        model, det = self.detect(image_u8, text, opts.box_threshold, opts.text_threshold)
        del image_u8
        objects: list[dict[str, Any]] = []
        fingerprint = None
        if len(det["labels"]):  # Lang-SAM runs SAM only when something was detected
            features, fp = self.models.encode(image01)
            fingerprint = fp.tolist()
            encode = rle if opts.format == "rle" else png_base64
            wire = box_prompts(det["boxes"], orig_hw)
            decoded = decode_masks(self.models, features, fp, wire, orig_hw, multimask=False)
            for k, (masks, scores, _obj) in enumerate(decoded):
                objects.append(
                    {
                        "label": det["labels"][k],
                        "score": float(det["scores"][k]),
                        "box": [float(v) for v in det["boxes"][k]],
                        "mask_score": float(scores[0]),
                        "mask": encode(masks)[0],
                    }
                )
        return {
            "width": orig_hw[1],
            "height": orig_hw[0],
            "text": text,
            "box_threshold": opts.box_threshold,
            "text_threshold": opts.text_threshold,
            "format": opts.format,
            "model_fingerprint": fingerprint,
            "detector": model,
            "objects": objects,
        }
