"""``sam2_everything``: ``SAM2AutomaticMaskGenerator.generate`` in one request (python backend, BLS).

Inputs (BYTES [1], both optional): ``image`` (an encoded PNG/JPEG/..., raw or base64, as for
``sam2_segment``) and ``options`` (JSON: SAM 2's generator parameters, checked by
``sam2_triton.amg.GeneratorOptions``; ``"image_id"`` to use an image ``sam2_session`` holds
instead of ``image`` (no crops then: they need pixels); ``"output_mode"``: ``"coco_rle"``
(default) or ``"uncompressed_rle"``). Output ``result`` (BYTES [1]): JSON ``{"width", "height",
"model_fingerprint", "output_mode", "masks": [SAM 2's records]}``.

The work is ``amg_engine.generate``: the encoder per crop, the decoder per batch of grid points,
the ``sam2_amg_masks`` graph per batch (on the GPU in the GPU flavour), NMS and RLE here.
Config parameters: those of ``oneshot`` plus ``AMG_MASKS_MODEL``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam2_triton import amg, spec
from sam2_triton.errors import InvalidInputError
from sam2_triton.prompts import DecodeChunk

from . import amg_engine
from ._triton import RequestError, parameter, pb_utils
from .oneshot import BLSModels, OneShotModel, decode_image, parse_json_object


def parse_options(raw: bytes | None) -> tuple[amg.GeneratorOptions, str | None, str]:
    """``(GeneratorOptions, image_id or None, output_mode)`` from the ``options`` element."""
    doc = parse_json_object(raw, "options") if raw else {}
    image_id = doc.pop(spec.EVERYTHING_IMAGE_ID_KEY, None)
    if image_id is not None and not isinstance(image_id, str):
        raise RequestError(f"options.image_id must be a string, got {type(image_id).__name__}")
    output_mode = doc.pop(spec.EVERYTHING_OUTPUT_MODE_KEY, "coco_rle")
    if output_mode not in amg.WIRE_OUTPUT_MODES:
        raise RequestError(
            f"options.output_mode must be one of {list(amg.WIRE_OUTPUT_MODES)}, got "
            f"{output_mode!r} (binary masks: decode the RLE, as the SDK does)"
        )
    try:
        opts = amg.GeneratorOptions.from_mapping(doc, "options")
    except InvalidInputError as exc:
        raise RequestError(str(exc)) from None
    except TypeError as exc:  # a JSON value of a type no parameter takes (e.g. a list)
        raise RequestError(f"options: {exc}") from None
    return opts, image_id, output_mode


class TritonBackend:
    """``amg_engine.AMGBackend`` over BLS; remembers the weights' fingerprint."""

    def __init__(self, models: BLSModels, masks_model: str) -> None:
        self.models = models
        self.masks_model = masks_model
        self.fingerprint: np.ndarray | None = None

    def encode(self, image01: np.ndarray) -> Any:
        features, fingerprint = self.models.encode(image01)
        self.fingerprint = fingerprint
        return features, fingerprint

    def decode(self, features: Any, chunk: DecodeChunk) -> tuple[np.ndarray, np.ndarray]:
        low, iou, _ = self.models.decode(*features, chunk)
        return low, iou

    def masks(
        self,
        low_res_masks: np.ndarray,
        iou_predictions: np.ndarray,
        crop_box: np.ndarray,
        orig_hw: np.ndarray,
        thresholds: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        values = (low_res_masks, iou_predictions, crop_box, orig_hw, thresholds)
        inputs = [pb_utils.Tensor(t.name, v) for t, v in zip(spec.amg_masks_inputs(), values)]
        names = [t.name for t in spec.amg_masks_outputs()]
        out = self.models.call(self.masks_model, inputs, names)
        keep, stability, boxes, masks_t = (out[n].as_numpy() for n in names)
        return keep.reshape(-1), stability.reshape(-1), boxes.reshape(-1, 4), masks_t


class TritonPythonModel(OneShotModel):
    """The segment-everything model (see the module docstring)."""

    DEFAULT_NAME = spec.EVERYTHING_MODEL
    INPUTS = (spec.EVERYTHING_IMAGE, spec.EVERYTHING_OPTIONS)
    REQUIRED = ()
    RESULT = spec.EVERYTHING_RESULT

    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        self._masks_model = parameter(self._config, "AMG_MASKS_MODEL", spec.AMG_MASKS_MODEL)

    def answer(self, *elements: bytes | None) -> dict[str, Any]:
        raw_image, raw_options = elements
        opts, image_id, output_mode = parse_options(raw_options)
        if (raw_image is None) == (image_id is None):
            raise RequestError(
                f"give exactly one of input {spec.EVERYTHING_IMAGE!r} (an encoded image) or "
                "options.image_id (an image the session model holds)"
            )
        backend = TritonBackend(self.models, self._masks_model)
        if image_id is not None:
            if opts.crop_n_layers:
                raise RequestError(
                    "crop_n_layers > 0 needs the image's pixels: send input 'image' instead of "
                    "options.image_id"
                )
            features, fingerprint, orig_hw = self.models.held_features(image_id)
            backend.fingerprint = fingerprint
            data = amg_engine.generate(backend, opts, orig_hw, features=(features, fingerprint))
        else:
            image01 = decode_image(raw_image or b"", spec.EVERYTHING_IMAGE)
            orig_hw = (int(image01.shape[0]), int(image01.shape[1]))
            data = amg_engine.generate(backend, opts, orig_hw, image01=image01)
        fingerprint = [] if backend.fingerprint is None else backend.fingerprint.tolist()
        return {
            "width": orig_hw[1],
            "height": orig_hw[0],
            "model_fingerprint": fingerprint,
            "output_mode": output_mode,
            "masks": amg_engine.records(data, output_mode),
        }
