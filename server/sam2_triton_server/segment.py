"""``sam2_segment``: one-shot segmentation over plain v2 REST (Triton python backend, BLS).

One request: ``image`` (BYTES [1]: an encoded PNG/JPEG/..., raw bytes or base64 text, also as a
``data:image/...;base64,`` URL) and ``prompts`` (BYTES [1]: JSON, see ``parse_prompts``). The SDK
does SAM 2's work on both sides of the wire, exactly as the client does it: the image is decoded
and resized by ``sam2_triton.transforms`` (EXIF orientation applied, SAM2Transforms' resize), the
prompts are checked and mapped by ``sam2_triton.prompts``; ``sam2_encoder`` and ``sam2_decoder``
run through BLS; ``transforms.select_masks``/``postprocess`` give the masks at the image's own
size. Output ``result`` (BYTES [1]) is JSON; masks are COCO compressed RLE
(``pycocotools.mask.encode``: ``{"size": [H, W], "counts": "..."}``) or base64 PNG (1 bit/pixel).

Requests run in a thread pool and answer through the response sender, so one slow image does
not hold up the next; the encoder's dynamic batcher sees concurrent images.

Model config parameters (``string_value``): ``ENCODER_MODEL``/``DECODER_MODEL`` (BLS targets),
``ENCODER_IMAGE_DTYPE`` (float32, float16 or uint8: the encoder's input dtype),
``SEGMENT_MAX_PENDING`` (requests queued or running at once, one thread each; default 64).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from sam2_triton import spec, transforms
from sam2_triton.errors import InvalidImageError, InvalidInputError
from sam2_triton.prompts import DecodeChunk, WirePrompt, plan_decode, validate_prompt
from sam2_triton.types import Prompt

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
MAX_OBJECTS = 256
OBJECT_KEYS = ("points", "labels", "box")
IMAGE_DTYPES = ("float32", "float16", "uint8")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_DATA_URL = re.compile(rb"^data:[\w/+.-]*;base64,")
# the SDK's Prompt fields, as the JSON calls them (its messages name the field)
_JSON_NAMES = (("point_coords", "points"), ("point_labels", "labels"))


# --- the request's elements ---------------------------------------------------------------------
def image_bytes(raw: bytes) -> bytes:
    """The encoded image from the ``image`` element: raw bytes, base64 text or a data URL."""
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


def decode_image(raw: bytes) -> np.ndarray:
    """The ``image`` element as ``RGB01`` (``H x W x 3`` float32), by ``transforms.load_image``."""
    data = image_bytes(raw)
    try:
        return transforms.load_image(data)
    except InvalidImageError as exc:
        hint = " (send the file's bytes or their base64 text)" if "decodable" in str(exc) else ""
        raise RequestError(f"input {spec.SEGMENT_IMAGE!r}: {exc}{hint}") from None


def parse_prompts(raw: bytes) -> tuple[list[tuple[str, Prompt]], bool, str]:
    """The ``prompts`` JSON: ``([(where, Prompt), ...], multimask, format)``.

    One object ``{"points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1, y1]}`` or
    several ``{"objects": [{...}, ...]}``; options ``"multimask"`` (bool, default false) and
    ``"format"`` ("rle", default, or "png"). Coordinates are pixels of the image as a viewer
    shows it (EXIF orientation applied); labels 1 = foreground, 0 = background. Only the JSON's
    shape is checked here; :func:`wire_prompts` checks the values once the image size is known.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(
            f"prompts must be a JSON object (UTF-8), got invalid JSON: {exc}"
        ) from None
    if not isinstance(doc, dict):
        raise RequestError(f"prompts must be a JSON object, got {type(doc).__name__}")
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
class TritonPythonModel:
    """The one-shot segmentation model (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        require_triton()
        config = json.loads(args["model_config"])
        self._name = args.get("model_name", config.get("name", spec.SEGMENT_MODEL))
        self._encoder = parameter(config, "ENCODER_MODEL", spec.ENCODER_MODEL)
        self._decoder = parameter(config, "DECODER_MODEL", spec.DECODER_MODEL)
        dtype = parameter(config, "ENCODER_IMAGE_DTYPE", "float32")
        if dtype not in IMAGE_DTYPES:
            raise ValueError(f"ENCODER_IMAGE_DTYPE must be one of {IMAGE_DTYPES}, got {dtype!r}")
        self._image_dtype = np.dtype(dtype)
        self._max_pending = int_parameter(config, "SEGMENT_MAX_PENDING", 64)
        self._pending = 0
        self._lock = threading.Lock()
        # one thread per admitted request: each mostly waits for the encoder
        self._pool = ThreadPoolExecutor(self._max_pending, thread_name_prefix="sam2-segment")
        pb_utils.Logger.log_info(
            f"{self._name}: BLS to {self._encoder!r} and {self._decoder!r}, image dtype "
            f"{dtype}, up to {self._max_pending} requests at once"
        )

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
                items = [
                    self._element(request, n) for n in (spec.SEGMENT_IMAGE, spec.SEGMENT_PROMPTS)
                ]
            except RequestError as exc:
                self._done(sender, self._error(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - every request must get its one response
                self._done(sender, self._error(RequestError(f"cannot read the request: {exc}")))
                continue
            self._pool.submit(self._run, sender, *items)
        return None

    @staticmethod
    def _element(request: Any, name: str) -> bytes:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise RequestError(f"input {name!r} is missing")
        arr = tensor.as_numpy().reshape(-1)
        if arr.size != 1:
            raise RequestError(f"input {name!r} must hold exactly one element, got {arr.size}")
        value = arr[0]
        return bytes(value) if isinstance(value, (bytes, bytearray)) else str(value).encode()

    def _run(self, sender: Any, raw_image: bytes, raw_prompts: bytes) -> None:
        try:
            result = np.array([json.dumps(self.segment(raw_image, raw_prompts)).encode()], object)
            response = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(spec.SEGMENT_RESULT, result)]
            )
        except RequestError as exc:
            response = self._error(exc)
        except Exception as exc:  # noqa: BLE001 - every request must get its one response
            pb_utils.Logger.log_error(f"{self._name}: request failed: {exc!r}")
            response = self._error(RequestError(f"segmentation failed: {exc}", "INTERNAL"))
        self._done(sender, response)

    def segment(self, raw_image: bytes, raw_prompts: bytes) -> dict[str, Any]:
        """Validate, encode, decode, post-process: the ``result`` JSON as a dict."""
        prompts, multimask, fmt = parse_prompts(raw_prompts)
        image01 = decode_image(raw_image)
        orig_hw = (int(image01.shape[0]), int(image01.shape[1]))
        wire = wire_prompts(prompts, orig_hw)
        image = transforms.to_wire_image(image01, self._image_dtype)[None]
        del image01
        features, fingerprint = self._encode(image)
        encode = rle if fmt == "rle" else png_base64
        results: list[dict[str, Any] | None] = [None] * len(wire)
        for chunk in plan_decode(wire, spec.MAX_PROMPTS_PER_REQUEST):
            low, iou, obj = self._decode(features, fingerprint, chunk)
            low, iou = transforms.select_masks(low, iou, multimask)
            masks, _ = transforms.postprocess(low, orig_hw, return_logits=False)
            for row, i in enumerate(chunk.indices.tolist()):
                results[i] = {
                    "masks": encode(masks[row]),
                    "scores": [float(s) for s in iou[row]],
                    "object_score_logit": float(obj[row].reshape(-1)[0]),
                }
        return {
            "width": orig_hw[1],
            "height": orig_hw[0],
            "format": fmt,
            "multimask": multimask,
            "model_fingerprint": fingerprint.tolist(),
            "objects": results,
        }

    def _bls(self, model: str, inputs: list[Any], outputs: list[str]) -> dict[str, Any]:
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=outputs,
            inputs=inputs,
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise RequestError(f"{model} failed: {response.error().message()}", "INTERNAL")
        out = {n: pb_utils.get_output_tensor_by_name(response, n) for n in outputs}
        missing = [n for n, t in out.items() if t is None]
        if missing:
            raise RequestError(f"{model} returned no {missing}", "INTERNAL")
        return out

    def _encode(self, image: np.ndarray) -> tuple[list[Any], np.ndarray]:
        names = [*spec.FEATURE_NAMES, spec.FINGERPRINT]
        out = self._bls(self._encoder, [pb_utils.Tensor(spec.ENCODER_IMAGE, image)], names)
        fingerprint = out[spec.FINGERPRINT].as_numpy().reshape(-1).astype(np.int32)
        return [out[n] for n in spec.FEATURE_NAMES], fingerprint

    def _decode(
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
        out = self._bls(
            self._decoder,
            [*features, *(pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in prompts.items())],
            names,
        )
        decoder_fp = out[spec.FINGERPRINT].as_numpy().reshape(-1).astype(np.int32)
        if not np.array_equal(decoder_fp, fingerprint):
            raise RequestError(
                f"{self._decoder} has other weights (fingerprint {decoder_fp.tolist()}) than "
                f"{self._encoder} ({fingerprint.tolist()}); export both together",
                "INTERNAL",
            )
        n, k, low = len(chunk.indices), spec.NUM_MASK_TOKENS, spec.LOW_RES_SIZE
        masks = out[spec.LOW_RES_MASKS].as_numpy().reshape(n, k, low, low)
        iou = out[spec.IOU_PREDICTIONS].as_numpy().reshape(n, k)
        obj = out[spec.OBJECT_SCORE_LOGITS].as_numpy().reshape(n, 1)
        return masks.astype(np.float32, copy=False), iou.astype(np.float32), obj.astype(np.float32)

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
