"""Wire formats (no transport): model metadata, request tensors, response parsing, shm regions.

Functions that build ``InferInput`` objects take the tritonclient module (``tritonclient.http``,
``tritonclient.grpc`` or their ``aio`` variants): their ``InferInput``/``InferRequestedOutput``
share one API, so sync and async clients build byte-identical requests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from . import spec, transforms
from .errors import EmbeddingMismatchError, InferenceError, InvalidImageError, InvalidInputError
from .prompts import DecodeChunk
from .types import DecodeOptions, ImageEmbedding, Prediction, RemoteEmbedding

logger = logging.getLogger(__name__)

_IMAGE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8))
_FEATURE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


class InferResultLike(Protocol):
    """What both tritonclient ``InferResult`` classes offer."""

    def as_numpy(self, name: str) -> np.ndarray | None: ...


@dataclass(frozen=True)
class EncoderInfo:
    """Discovered from the encoder's metadata/config: wire dtypes and the largest batch."""

    image_dtype: np.dtype
    feature_dtype: np.dtype
    max_batch_size: int


@dataclass(frozen=True)
class DecoderInfo:
    """Discovered from the decoder's metadata: the dtype it expects for the features."""

    feature_dtype: np.dtype


def _tensor_dtype(meta: Mapping[str, Any], kind: str, name: str, model: str) -> np.dtype:
    for tensor in meta.get(kind, []):
        if tensor.get("name") == name:
            return np.dtype(triton_to_np_dtype(tensor.get("datatype", "")))
    raise InferenceError(
        f"model {model!r} has no {kind[:-1]} {name!r}; is it a sam2-triton export? "
        f"(metadata {kind}: {[t.get('name') for t in meta.get(kind, [])]})"
    )


def parse_encoder_info(
    meta: Mapping[str, Any], config: Mapping[str, Any], model: str
) -> EncoderInfo:
    """Parse ``get_model_metadata`` / ``get_model_config`` answers (HTTP dicts or gRPC JSON)."""
    image = _tensor_dtype(meta, "inputs", spec.ENCODER_IMAGE, model)
    feats = _tensor_dtype(meta, "outputs", spec.IMAGE_EMBED, model)
    if image not in _IMAGE_DTYPES or feats not in _FEATURE_DTYPES:
        raise InferenceError(
            f"model {model!r} serves image {image} / features {feats}; this client supports "
            "image float32/float16/uint8 and features float32/float16"
        )
    cfg = config.get("config", config)  # gRPC wraps the config, HTTP does not
    max_batch = int(cfg.get("max_batch_size", 0) or 0)
    return EncoderInfo(image, feats, max(1, max_batch))


def parse_decoder_info(meta: Mapping[str, Any], model: str) -> DecoderInfo:
    feats = _tensor_dtype(meta, "inputs", spec.IMAGE_EMBED, model)
    if feats not in _FEATURE_DTYPES:
        raise InferenceError(f"model {model!r} expects features of dtype {feats}")
    return DecoderInfo(feats)


# --- images ----------------------------------------------------------------------------------
def load_image01(image: object) -> np.ndarray:
    """``load_image`` plus a shape check: ``HxWx3`` float32 in [0, 1]."""
    image01 = transforms.load_image(image)
    if image01.ndim != 3 or image01.shape[2] != 3 or min(image01.shape[:2]) < 1:
        raise InvalidImageError(f"image must decode to HxWx3 pixels, got shape {image01.shape}")
    return image01


to_wire_image = transforms.to_wire_image


# --- requests --------------------------------------------------------------------------------
def data_input(mod: ModuleType, name: str, array: np.ndarray) -> Any:
    array = np.ascontiguousarray(array)
    inp = mod.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    inp.set_data_from_numpy(array)
    return inp


def requested_outputs(mod: ModuleType, names: Sequence[str]) -> list[Any]:
    return [mod.InferRequestedOutput(n) for n in names]


ENCODER_OUTPUTS = (*spec.FEATURE_NAMES, spec.FINGERPRINT)
DECODER_OUTPUTS = (
    spec.LOW_RES_MASKS,
    spec.IOU_PREDICTIONS,
    spec.OBJECT_SCORE_LOGITS,
    spec.FINGERPRINT,
)


def decoder_features(embedding: ImageEmbedding, dtype: np.dtype) -> dict[str, np.ndarray]:
    """The three feature tensors ``[1, ...]`` in the decoder's dtype."""
    return {n: np.ascontiguousarray(a, dtype=dtype) for n, a in embedding.features().items()}


def chunk_inputs(mod: ModuleType, chunk: DecodeChunk, mask_input: Any = None) -> list[Any]:
    """The decoder's prompt inputs of one chunk; ``mask_input``: an ``InferInput`` to send in
    place of the chunk's own mask tensor (e.g. one in shared memory)."""
    return [
        data_input(mod, spec.POINT_COORDS, chunk.point_coords),
        data_input(mod, spec.POINT_LABELS, chunk.point_labels),
        mask_input or data_input(mod, spec.MASK_INPUT, chunk.mask_input),
        data_input(mod, spec.HAS_MASK_INPUT, chunk.has_mask_input),
    ]


# --- responses -------------------------------------------------------------------------------
def _output(result: InferResultLike, name: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = result.as_numpy(name)
    if arr is None:
        raise InferenceError(f"the server's response lacks output {name!r}")
    if arr.size != int(np.prod(shape)):
        raise InferenceError(f"output {name!r} has shape {arr.shape}, expected {shape}")
    return arr.reshape(shape)


def parse_encoder_result(
    result: InferResultLike, hws: Sequence[tuple[int, int]]
) -> list[ImageEmbedding]:
    """Split a ``[B, ...]`` encoder response into ``B`` embeddings.

    ``B > 1``: copies, so that one embedding does not keep the whole batch alive. ``B == 1``:
    the arrays as tritonclient returns them (each output already has a buffer of its own, the
    size of the features), without copying 16.8 MB again.
    """
    b = len(hws)
    feats = {n: _output(result, n, (b, *spec.FEATURE_SHAPES[n])) for n in spec.FEATURE_NAMES}
    fps = _output(result, spec.FINGERPRINT, (b, spec.FINGERPRINT_LEN)).astype(np.int32)
    return [
        ImageEmbedding(
            **{n: np.array(a[i : i + 1], copy=b > 1) for n, a in feats.items()},
            orig_hw=hws[i],
            fingerprint=np.array(fps[i], copy=True),
        )
        for i in range(b)
    ]


def check_fingerprint(
    served: np.ndarray, embedding: ImageEmbedding | RemoteEmbedding, decoder: str
) -> None:
    served = np.asarray(served, dtype=np.int32).reshape(-1)
    if not np.array_equal(served, embedding.fingerprint.reshape(-1)):
        raise EmbeddingMismatchError(
            f"the embedding was computed by other model weights (fingerprint "
            f"{embedding.fingerprint.tolist()}) than decoder {decoder!r} uses "
            f"({served.tolist()}); re-encode the image with this server"
        )


def parse_decoder_result(
    result: InferResultLike,
    n: int,
    embedding: ImageEmbedding | RemoteEmbedding,
    decoder: str,
    options: DecodeOptions,
    tokens: int = spec.NUM_MASK_TOKENS,
) -> list[Prediction]:
    """Check the fingerprint, select masks, upsample: ``n`` predictions in chunk order.

    ``tokens``: mask tokens per prompt in the answer: 4 (all of the decoder's; the masks are
    selected here) or what ``options`` selects (3 or 1: the session model selected them with
    the same ``transforms.select_masks``).
    """
    check_fingerprint(
        _output(result, spec.FINGERPRINT, (spec.FINGERPRINT_LEN,)), embedding, decoder
    )
    lr_shape = (n, tokens, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE)
    low_res = _output(result, spec.LOW_RES_MASKS, lr_shape).astype(np.float32, copy=False)
    iou = _output(result, spec.IOU_PREDICTIONS, (n, tokens)).astype(np.float32)
    obj = _output(result, spec.OBJECT_SCORE_LOGITS, (n,)).astype(np.float32)
    if tokens == spec.NUM_MASK_TOKENS:
        low_res, iou = transforms.select_masks(low_res, iou, options.multimask_output)
    masks, low_clamped = transforms.postprocess(
        low_res, embedding.orig_hw, options.return_logits, mask_threshold=options.mask_threshold
    )
    keep = options.low_res_logits
    return [
        Prediction(
            masks=masks[i],
            scores=np.asarray(iou[i], dtype=np.float32),
            low_res_logits=np.asarray(low_clamped[i], dtype=np.float32) if keep else None,
            object_score_logits=float(obj[i]),
        )
        for i in range(n)
    ]


def parse_session_masks(
    result: InferResultLike,
    n: int,
    embedding: RemoteEmbedding,
    model: str,
    options: DecodeOptions,
) -> list[Prediction]:
    """A session answer holding the masks themselves (``spec.SESSION_MASKS``): ``n``
    predictions without low-res logits."""
    check_fingerprint(_output(result, spec.FINGERPRINT, (spec.FINGERPRINT_LEN,)), embedding, model)
    c = selected_tokens(options)
    blobs = _output(result, spec.SESSION_MASKS, (n, c))
    iou = _output(result, spec.IOU_PREDICTIONS, (n, c)).astype(np.float32)
    obj = _output(result, spec.OBJECT_SCORE_LOGITS, (n,)).astype(np.float32)
    try:
        masks = transforms.decode_mask_bits(blobs, embedding.orig_hw)
    except InvalidInputError as exc:
        raise InferenceError(
            f"model {model!r} answered masks this client cannot read: {exc}"
        ) from exc
    return [
        Prediction(
            masks=masks[i],
            scores=iou[i].copy(),
            low_res_logits=None,
            object_score_logits=float(obj[i]),
        )
        for i in range(n)
    ]


def selected_tokens(options: DecodeOptions) -> int:
    """Mask tokens per prompt that a decode with ``options`` returns: 3 or 1."""
    return spec.NUM_MASK_TOKENS - 1 if options.multimask_output else 1


# --- sessions (sam2_session) -----------------------------------------------------------------
@dataclass(frozen=True)
class SessionInfo:
    """Discovered from the session model's metadata: the dtype of the image it takes, and
    whether "decode" can select the mask tokens (``spec.SESSION_MULTIMASK``)."""

    image_dtype: np.dtype
    selects_tokens: bool = False
    returns_masks: bool = False


def parse_session_info(meta: Mapping[str, Any], model: str) -> SessionInfo:
    """Check that ``model`` speaks the session contract (``spec``); raise InferenceError if not."""
    names = {t.get("name") for t in meta.get("inputs", [])}
    wanted = {t.name for t in spec.session_inputs()}
    wanted -= {spec.SESSION_MULTIMASK, spec.SESSION_MASK_THRESHOLD}  # newer, optional
    if not wanted <= names:
        raise InferenceError(
            f"model {model!r} is not a sam2-triton session model: it lacks input(s) "
            f"{sorted(wanted - names)}"
        )
    image = _tensor_dtype(meta, "inputs", spec.ENCODER_IMAGE, model)
    if image not in _IMAGE_DTYPES:
        raise InferenceError(f"model {model!r} takes images of dtype {image}")
    outputs = {t.get("name") for t in meta.get("outputs", [])}
    return SessionInfo(
        image,
        selects_tokens=spec.SESSION_MULTIMASK in names,
        returns_masks=spec.SESSION_MASK_THRESHOLD in names and spec.SESSION_MASKS in outputs,
    )


session_image_id = spec.session_image_id


def _bytes_input(mod: ModuleType, name: str, values: Sequence[str]) -> Any:
    array = np.array([v.encode() for v in values], dtype=np.object_)
    inp = mod.InferInput(name, [len(values)], "BYTES")
    inp.set_data_from_numpy(array)
    return inp


def bytes_input(mod: ModuleType, name: str, data: bytes) -> Any:
    """A BYTES ``[1]`` input holding ``data`` as it is (an encoded image, a JSON document)."""
    inp = mod.InferInput(name, [1], "BYTES")
    inp.set_data_from_numpy(np.array([data], dtype=np.object_))
    return inp


SESSION_ENCODE_OUTPUTS = (spec.SESSION_IMAGE_ID, spec.SESSION_ORIG_HW, spec.FINGERPRINT)
SESSION_FEATURE_OUTPUTS = ENCODER_OUTPUTS
SESSION_MASK_OUTPUTS = (
    spec.SESSION_MASKS,
    spec.IOU_PREDICTIONS,
    spec.OBJECT_SCORE_LOGITS,
    spec.FINGERPRINT,
)


def session_encode_inputs(
    mod: ModuleType, wires: Sequence[np.ndarray], hws: Sequence[tuple[int, int]]
) -> list[Any]:
    """op "encode": ``wires`` ``[3, 1024, 1024]`` each, stacked to ``[B, 3, 1024, 1024]``."""
    return [
        _bytes_input(mod, spec.SESSION_OP, [spec.SESSION_OP_ENCODE]),
        data_input(mod, spec.ENCODER_IMAGE, np.stack(wires)),
        data_input(mod, spec.SESSION_ORIG_HW, np.asarray(hws, dtype=np.int32).reshape(-1, 2)),
    ]


def session_decode_inputs(
    mod: ModuleType,
    image_id: str,
    chunk: DecodeChunk,
    multimask_output: bool | None = None,
    mask_threshold: float | None = None,
) -> list[Any]:
    """op "decode": the id and one chunk's prompts; the all-zero "no mask" input is left out
    (the session model supplies it), so a click without a mask sends a few hundred bytes.
    ``multimask_output`` (when the server takes it) makes the answer hold only the selected
    mask tokens (see ``spec.SESSION_MULTIMASK``); ``mask_threshold`` too, the masks themselves
    (``spec.SESSION_MASK_THRESHOLD``)."""
    inputs = [
        _bytes_input(mod, spec.SESSION_OP, [spec.SESSION_OP_DECODE]),
        _bytes_input(mod, spec.SESSION_IMAGE_ID, [image_id]),
        data_input(mod, spec.POINT_COORDS, chunk.point_coords),
        data_input(mod, spec.POINT_LABELS, chunk.point_labels),
    ]
    if multimask_output is not None:
        inputs.append(
            data_input(mod, spec.SESSION_MULTIMASK, np.array([bool(multimask_output)], np.bool_))
        )
    if mask_threshold is not None:
        inputs.append(
            data_input(mod, spec.SESSION_MASK_THRESHOLD, np.array([mask_threshold], np.float32))
        )
    if chunk.has_mask_input.any():
        inputs += [
            data_input(mod, spec.MASK_INPUT, chunk.mask_input),
            data_input(mod, spec.HAS_MASK_INPUT, chunk.has_mask_input),
        ]
    return inputs


def session_image_inputs(mod: ModuleType, wire: np.ndarray, orig_hw: tuple[int, int]) -> list[Any]:
    """The image attached to a "decode"/"features" request (used when the id is not held)."""
    return [
        data_input(mod, spec.ENCODER_IMAGE, wire[None]),
        data_input(mod, spec.SESSION_ORIG_HW, np.asarray([orig_hw], dtype=np.int32)),
    ]


def session_features_inputs(mod: ModuleType, image_id: str) -> list[Any]:
    """op "features": the id of a held image."""
    return [
        _bytes_input(mod, spec.SESSION_OP, [spec.SESSION_OP_FEATURES]),
        _bytes_input(mod, spec.SESSION_IMAGE_ID, [image_id]),
    ]


def parse_session_encode(
    result: InferResultLike, n: int
) -> list[tuple[str, tuple[int, int], np.ndarray]]:
    """``(image_id, orig_hw, fingerprint)`` for each of the ``n`` uploaded images."""
    raw_ids = _output(result, spec.SESSION_IMAGE_ID, (n,))
    hws = _output(result, spec.SESSION_ORIG_HW, (n, 2)).astype(np.int64)
    fps = _output(result, spec.FINGERPRINT, (n, spec.FINGERPRINT_LEN)).astype(np.int32)
    out = []
    for i in range(n):
        raw = raw_ids[i]
        image_id = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        if len(image_id) != spec.SESSION_ID_LEN:
            raise InferenceError(f"the session model answered a malformed image id {image_id!r}")
        out.append((image_id, (int(hws[i][0]), int(hws[i][1])), np.array(fps[i], copy=True)))
    return out
