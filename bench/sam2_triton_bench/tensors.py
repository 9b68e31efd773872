"""Bare Triton requests for the measurements, from the public wire contract (``sam2_triton.spec``)
and tritonclient alone: what a click or an encode sends when no SDK code runs around it.

``mod`` is ``tritonclient.grpc`` or ``tritonclient.http``; prompts come as a
``sam2_triton.prompts.DecodeChunk`` (``validate_prompt`` + ``plan_decode``).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from sam2_triton import spec
from sam2_triton.prompts import DecodeChunk

ENCODER_OUTPUTS = (*spec.FEATURE_NAMES, spec.FINGERPRINT)
DECODER_OUTPUTS = (
    spec.LOW_RES_MASKS,
    spec.IOU_PREDICTIONS,
    spec.OBJECT_SCORE_LOGITS,
    spec.FINGERPRINT,
)


def tensor_input(mod: ModuleType, name: str, array: np.ndarray) -> Any:
    from tritonclient.utils import np_to_triton_dtype

    array = np.ascontiguousarray(array)
    inp = mod.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    inp.set_data_from_numpy(array)
    return inp


def bytes_input(mod: ModuleType, name: str, values: Sequence[str]) -> Any:
    inp = mod.InferInput(name, [len(values)], "BYTES")
    inp.set_data_from_numpy(np.array([v.encode() for v in values], dtype=np.object_))
    return inp


def outputs(mod: ModuleType, names: Sequence[str]) -> list[Any]:
    return [mod.InferRequestedOutput(n) for n in names]


def chunk_inputs(mod: ModuleType, chunk: DecodeChunk) -> list[Any]:
    """The prompt inputs of ``sam2_decoder`` (the all-zero mask input included)."""
    return [
        tensor_input(mod, spec.POINT_COORDS, chunk.point_coords),
        tensor_input(mod, spec.POINT_LABELS, chunk.point_labels),
        tensor_input(mod, spec.MASK_INPUT, chunk.mask_input),
        tensor_input(mod, spec.HAS_MASK_INPUT, chunk.has_mask_input),
    ]


def session_decode_inputs(
    mod: ModuleType, image_id: str, chunk: DecodeChunk, multimask: bool | None = None
) -> list[Any]:
    """op "decode" of ``sam2_session``: the id and the prompt (no mask input when there is no
    mask); ``multimask`` asks the model to return only the tokens it selects
    (``spec.SESSION_MULTIMASK``; None: all four)."""
    inputs = [
        bytes_input(mod, spec.SESSION_OP, [spec.SESSION_OP_DECODE]),
        bytes_input(mod, spec.SESSION_IMAGE_ID, [image_id]),
        tensor_input(mod, spec.POINT_COORDS, chunk.point_coords),
        tensor_input(mod, spec.POINT_LABELS, chunk.point_labels),
    ]
    if chunk.has_mask_input.any():
        inputs += [
            tensor_input(mod, spec.MASK_INPUT, chunk.mask_input),
            tensor_input(mod, spec.HAS_MASK_INPUT, chunk.has_mask_input),
        ]
    if multimask is not None:
        inputs.append(tensor_input(mod, spec.SESSION_MULTIMASK, np.array([multimask])))
    return inputs


def model_input_names(client: Any, model: str) -> set[str]:
    """Input names in a model's metadata (a gRPC or HTTP ``InferenceServerClient``)."""
    meta = client.get_model_metadata(model)
    items = meta["inputs"] if isinstance(meta, dict) else meta.inputs
    return {i["name"] if isinstance(i, dict) else i.name for i in items}
