"""What the one-shot JSON models (``sam2_segment``, ``sam2_everything``) share.

``BLSModels`` runs the encoder, the decoder and the session store's "features" op through BLS.
``OneShotModel`` is a python-backend model whose request is a few BYTES [1] elements and whose
answer is one JSON ``result``: requests run in a bounded thread pool and answer through their
response sender, so one slow image does not hold up the next and the encoder's dynamic batcher
sees concurrent images. A subclass names its inputs and implements ``answer``.

Model config parameters (``string_value``): ``ENCODER_MODEL``/``DECODER_MODEL``/``SESSION_MODEL``
(BLS targets), ``ENCODER_IMAGE_DTYPE`` (float32, float16 or uint8: the encoder's input dtype),
``SEGMENT_MAX_PENDING`` (requests queued or running at once, one thread each; default 64).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from sam2_triton import spec, transforms
from sam2_triton.errors import InvalidImageError
from sam2_triton.prompts import DecodeChunk

from ._triton import (
    RequestError,
    error_response,
    int_parameter,
    parameter,
    pb_utils,
    require_triton,
    send_final,
)

MAX_ENCODED_BYTES = 256 * 2**20
IMAGE_DTYPES = ("float32", "float16", "uint8")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_DATA_URL = re.compile(rb"^data:[\w/+.-]*;base64,")


def image_bytes(raw: bytes) -> bytes:
    """The encoded image from an ``image`` element: raw bytes, base64 text or a data URL."""
    if len(raw) > MAX_ENCODED_BYTES:
        raise RequestError(f"image is {len(raw)} bytes; the limit is {MAX_ENCODED_BYTES}")
    data = _DATA_URL.sub(b"", raw.strip(), count=1)
    compact = re.sub(rb"\s+", b"", data)
    if compact and _BASE64.fullmatch(compact):  # raw PNG/JPEG/... never are pure base64 text
        try:
            return base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(f"image looks like base64 text but does not decode: {exc}") from exc
    if not data:
        raise RequestError("image is empty (0 bytes)")
    return raw


def decode_image(raw: bytes, name: str = spec.SEGMENT_IMAGE) -> np.ndarray:
    """An ``image`` element as ``RGB01`` (``H x W x 3`` float32), by ``transforms.load_image``."""
    data = image_bytes(raw)
    try:
        return transforms.load_image(data)
    except InvalidImageError as exc:
        hint = " (send the file's bytes or their base64 text)" if "decodable" in str(exc) else ""
        raise RequestError(f"input {name!r}: {exc}{hint}") from None


def parse_json_object(raw: bytes, name: str) -> dict[str, Any]:
    """A BYTES element holding a JSON object (UTF-8); errors name the input."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(
            f"{name} must be a JSON object (UTF-8), got invalid JSON: {exc}"
        ) from None
    if not isinstance(doc, dict):
        raise RequestError(f"{name} must be a JSON object, got {type(doc).__name__}")
    return doc


class BLSModels:
    """The encoder, the decoder and the session store, called through BLS (CPU tensors)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.encoder = parameter(config, "ENCODER_MODEL", spec.ENCODER_MODEL)
        self.decoder = parameter(config, "DECODER_MODEL", spec.DECODER_MODEL)
        self.session = parameter(config, "SESSION_MODEL", spec.SESSION_MODEL)
        dtype = parameter(config, "ENCODER_IMAGE_DTYPE", "float32")
        if dtype not in IMAGE_DTYPES:
            raise ValueError(f"ENCODER_IMAGE_DTYPE must be one of {IMAGE_DTYPES}, got {dtype!r}")
        self.image_dtype = np.dtype(dtype)

    def call(self, model: str, inputs: list[Any], outputs: list[str]) -> dict[str, Any]:
        """Run ``model``; its named outputs as ``pb_utils.Tensor`` (RequestError on failure)."""
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=outputs,
            inputs=inputs,
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            message = response.error().message()
            code = "NOT_FOUND" if spec.SESSION_UNKNOWN_IMAGE in message else "INTERNAL"
            raise RequestError(f"{model} failed: {message}", code)
        out = {n: pb_utils.get_output_tensor_by_name(response, n) for n in outputs}
        missing = [n for n, t in out.items() if t is None]
        if missing:
            raise RequestError(f"{model} returned no {missing}", "INTERNAL")
        return out

    def encode(self, image01: np.ndarray) -> tuple[list[Any], np.ndarray]:
        """Features of one ``H x W x 3`` RGB01 image (resized as SAM 2 does) and the fingerprint."""
        image = transforms.to_wire_image(image01, self.image_dtype)[None]
        names = [*spec.FEATURE_NAMES, spec.FINGERPRINT]
        out = self.call(self.encoder, [pb_utils.Tensor(spec.ENCODER_IMAGE, image)], names)
        fingerprint = out[spec.FINGERPRINT].as_numpy().reshape(-1).astype(np.int32)
        return [out[n] for n in spec.FEATURE_NAMES], fingerprint

    def held_features(self, image_id: str) -> tuple[list[Any], np.ndarray, tuple[int, int]]:
        """Features, fingerprint and ``orig_hw`` of an image the session store holds."""
        if not re.fullmatch(f"[0-9a-f]{{{spec.SESSION_ID_LEN}}}", image_id):
            raise RequestError(
                f"image_id must be {spec.SESSION_ID_LEN} lowercase hex characters (the id "
                f"{spec.SESSION_MODEL} returns), got {image_id[:80]!r}"
            )
        inputs = [
            pb_utils.Tensor(spec.SESSION_OP, np.array([spec.SESSION_OP_FEATURES.encode()], object)),
            pb_utils.Tensor(spec.SESSION_IMAGE_ID, np.array([image_id.encode()], object)),
        ]
        names = [*spec.FEATURE_NAMES, spec.FINGERPRINT, spec.SESSION_ORIG_HW]
        out = self.call(self.session, inputs, names)
        fingerprint = out[spec.FINGERPRINT].as_numpy().reshape(-1).astype(np.int32)
        h, w = (int(v) for v in out[spec.SESSION_ORIG_HW].as_numpy().reshape(-1)[:2])
        return [out[n] for n in spec.FEATURE_NAMES], fingerprint, (h, w)

    def decode(
        self, features: list[Any], fingerprint: np.ndarray, chunk: DecodeChunk
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The decoder's four mask tokens for one chunk: low-res logits, IoUs, object scores."""
        prompts = {
            spec.POINT_COORDS: chunk.point_coords,
            spec.POINT_LABELS: chunk.point_labels,
            spec.MASK_INPUT: chunk.mask_input,
            spec.HAS_MASK_INPUT: chunk.has_mask_input,
        }
        names = [t.name for t in spec.decoder_outputs()]
        out = self.call(
            self.decoder,
            [*features, *(pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in prompts.items())],
            names,
        )
        decoder_fp = out[spec.FINGERPRINT].as_numpy().reshape(-1).astype(np.int32)
        if not np.array_equal(decoder_fp, fingerprint):
            raise RequestError(
                f"{self.decoder} has other weights (fingerprint {decoder_fp.tolist()}) than the "
                f"features' ({fingerprint.tolist()}); export both together",
                "INTERNAL",
            )
        n, k, low = len(chunk.indices), spec.NUM_MASK_TOKENS, spec.LOW_RES_SIZE
        masks = out[spec.LOW_RES_MASKS].as_numpy().reshape(n, k, low, low)
        iou = out[spec.IOU_PREDICTIONS].as_numpy().reshape(n, k)
        obj = out[spec.OBJECT_SCORE_LOGITS].as_numpy().reshape(n, 1)
        return masks.astype(np.float32, copy=False), iou.astype(np.float32), obj.astype(np.float32)


class OneShotModel:
    """Base of the one-shot JSON models (see the module docstring)."""

    DEFAULT_NAME = ""
    INPUTS: tuple[str, ...] = ()  # BYTES [1] elements, in ``answer``'s argument order
    REQUIRED: tuple[str, ...] = ()
    RESULT = spec.SEGMENT_RESULT

    def initialize(self, args: dict[str, str]) -> None:
        require_triton()
        config = json.loads(args["model_config"])
        self._name = args.get("model_name", config.get("name", self.DEFAULT_NAME))
        self.models = BLSModels(config)
        self._config = config
        self._max_pending = int_parameter(config, "SEGMENT_MAX_PENDING", 64)
        self._pending = 0
        self._lock = threading.Lock()
        # one thread per admitted request: each mostly waits for the encoder
        self._pool = ThreadPoolExecutor(self._max_pending, thread_name_prefix=self._name)
        pb_utils.Logger.log_info(
            f"{self._name}: BLS to {self.models.encoder!r} and {self.models.decoder!r}, image "
            f"dtype {self.models.image_dtype.name}, up to {self._max_pending} requests at once"
        )

    def answer(self, *elements: bytes | None) -> dict[str, Any]:
        """The ``result`` JSON of one request (RequestError for a bad request)."""
        raise NotImplementedError

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            with self._lock:
                busy = self._pending >= self._max_pending
                if not busy:
                    self._pending += 1
            if busy:
                busy_error = RequestError(
                    f"too many requests in flight ({self._max_pending}); retry later",
                    "UNAVAILABLE",
                )
                send_final(sender, self._error(busy_error))
                continue
            try:
                items = [self._element(request, n) for n in self.INPUTS]
            except RequestError as exc:
                self._done(sender, self._error(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - every request must get its one response
                self._done(sender, self._error(RequestError(f"cannot read the request: {exc}")))
                continue
            self._pool.submit(self._run, sender, *items)
        return None

    def _element(self, request: Any, name: str) -> bytes | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            if name in self.REQUIRED:
                raise RequestError(f"input {name!r} is missing")
            return None
        arr = tensor.as_numpy().reshape(-1)
        if arr.size != 1:
            raise RequestError(f"input {name!r} must hold exactly one element, got {arr.size}")
        value = arr[0]
        return bytes(value) if isinstance(value, (bytes, bytearray)) else str(value).encode()

    def _run(self, sender: Any, *elements: bytes | None) -> None:
        try:
            result = np.array([json.dumps(self.answer(*elements)).encode()], object)
            response = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.RESULT, result)]
            )
        except RequestError as exc:
            response = self._error(exc)
        except Exception as exc:  # noqa: BLE001 - every request must get its one response
            pb_utils.Logger.log_error(f"{self._name}: request failed: {exc!r}")
            response = self._error(RequestError(f"request failed: {exc}", "INTERNAL"))
        self._done(sender, response)

    def _error(self, exc: RequestError) -> Any:
        return error_response(self._name, exc)

    def _done(self, sender: Any, response: Any) -> None:
        try:
            send_final(sender, response)
        finally:
            with self._lock:
                self._pending -= 1

    def finalize(self) -> None:
        self._pool.shutdown(wait=True)
