"""``sam2_segment``: one-shot segmentation over plain v2 REST (Triton python backend, BLS).

SELF-CONTAINED: this file is installed as ``sam2_segment/1/model.py`` and runs inside any Triton
python backend. It imports the standard library, numpy, ``triton_python_backend_utils`` and
Pillow (for decoding the image and writing PNG masks; imported when the first request comes,
so the model loads, and answers with a clear error, where Pillow is missing -- the NGC Triton
container does not ship it, see SETUP.md). The pre- and post-processing below are copies of
``sam2_triton.transforms`` (the client SDK), so that the masks equal the client's exactly; the
tests compare the two.

One request: ``image`` (BYTES [1]: an encoded PNG/JPEG/..., raw bytes or base64 text, also as a
``data:image/...;base64,`` URL) and ``prompts`` (BYTES [1]: JSON, see ``parse_prompts``). The
image is decoded (EXIF orientation applied), resized to 1024x1024 like SAM2Transforms, encoded by
``sam2_encoder`` and decoded by ``sam2_decoder`` (BLS), and the masks are returned at the image's
own size as JSON (output ``result`` BYTES [1]): COCO compressed RLE (``{"size": [H, W],
"counts": "..."}``, what ``pycocotools.mask.encode`` gives) or base64 PNG (1 bit per pixel).

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

try:  # only importable inside the python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton (tests, docs)
    pb_utils = None

ENCODER_MODEL = "sam2_encoder"
DECODER_MODEL = "sam2_decoder"
IMAGE, PROMPTS, RESULT = "image", "prompts", "result"
FEATURE_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1")
FINGERPRINT = "model_fingerprint"
IMAGE_SIZE = 1024
LOW_RES_SIZE = 256
NUM_MASK_TOKENS = 4
STABILITY_DELTA = 0.05
STABILITY_THRESH = 0.98
MASK_THRESHOLD = 0.0
MAX_PROMPTS_PER_REQUEST = 64
MAX_IMAGE_PIXELS = 64_000_000
MAX_ENCODED_BYTES = 256 * 2**20
MAX_OBJECTS = 256
MAX_POINTS = 64
PROMPT_KEYS = ("points", "labels", "box", "objects", "multimask", "format")
OBJECT_KEYS = ("points", "labels", "box")
FORMATS = ("rle", "png")
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA", "AVIF")
SUPPORTED_MODES = (
    "RGB", "RGBA", "L", "LA", "1", "P", "PA", "CMYK", "YCbCr",
    "I;16", "I;16L", "I;16B", "I;16N", "I", "F",
)  # fmt: skip
_F32 = np.float32
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_DATA_URL = re.compile(rb"^data:[\w/+.-]*;base64,")


class RequestError(Exception):
    """A request that cannot be served as sent; ``code`` names the pb_utils.TritonError code."""

    def __init__(self, message: str, code: str = "INVALID_ARG") -> None:
        super().__init__(message)
        self.code = code


# --- COCO run-length encoding (pycocotools' rleToString / rleFrString, in numpy) --------------
def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2-D mask in column-major order, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    return [0, *runs] if flat[0] else runs


def rle_counts_to_string(counts: list[int]) -> str:
    """COCO's compressed counts string: deltas (from the count two back, for i > 2) in 5-bit
    groups, a continuation bit, offset by 48 into printable ASCII."""
    out = bytearray()
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, like C's on a signed long
            more = x != -1 if c & 0x10 else x != 0
            out.append((c | 0x20 if more else c) + 48)
    return out.decode("ascii")


def rle_string_to_counts(text: str) -> list[int]:
    """Inverse of :func:`rle_counts_to_string`."""
    counts: list[int] = []
    data = text.encode("ascii")
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE counts string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """A 2-D bool mask ``[H, W]`` as COCO compressed RLE: ``{"size": [H, W], "counts": str}``."""
    h, w = np.shape(mask)
    return {"size": [int(h), int(w)], "counts": rle_counts_to_string(rle_counts(mask))}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string or list of counts) back to a bool mask ``[H, W]``."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts.decode() if isinstance(counts, bytes) else counts)
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {h} x {w} = {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((h, w), order="F")


# --- image loading (a copy of sam2_triton.transforms.load_image for encoded bytes) ------------
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


def load_image(data: bytes) -> np.ndarray:
    """Decode an encoded image to ``H x W x 3`` float32 in [0, 1] (``transforms.load_image``)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    what = f"image ({len(data)} bytes)"
    errors = (OSError, SyntaxError, EOFError, ValueError, IndexError, Image.DecompressionBombError)
    Image.init()
    formats = tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)
    try:
        img = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        raise RequestError(
            f"{what} is not a decodable image (corrupt, or not one of "
            f"{', '.join(IMAGE_FORMATS)}; send the file's bytes or their base64 "
            "text)"
        ) from None
    except errors as exc:
        raise RequestError(f"{what} is corrupt, truncated or too large: {exc}") from None
    with img:
        w, h = img.size
        _check_pixels(h, w, what)
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        except errors as exc:
            raise RequestError(f"{what} is corrupt or truncated: {exc}") from None
        return _from_pil(img, what)


def _check_pixels(h: int, w: int, what: str) -> None:
    if h <= 0 or w <= 0:
        raise RequestError(f"{what} is empty ({h} x {w} pixels)")
    if h * w > MAX_IMAGE_PIXELS:
        raise RequestError(
            f"{what} is too large: {h} x {w} = {h * w} pixels, limit is {MAX_IMAGE_PIXELS}"
        )


def _from_pil(img: Any, what: str) -> np.ndarray:
    mode = img.mode
    if mode not in SUPPORTED_MODES:
        raise RequestError(
            f"{what} has unsupported mode {mode!r}; supported modes: {', '.join(SUPPORTED_MODES)}"
        )
    if mode in ("RGB", "L", "I", "F") or mode.startswith("I;16"):
        arr = np.asarray(img)
    elif mode in ("RGBA", "LA"):
        arr = np.asarray(img)[:, :, : 3 if mode == "RGBA" else 1]
    elif mode in ("P", "PA"):
        arr = np.asarray(img.convert("RGBA"))[:, :, :3]
    elif mode == "1":
        arr = np.asarray(img.convert("L"))
    else:  # CMYK, YCbCr
        arr = np.asarray(img.convert("RGB"))
    if mode == "I":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise RequestError(
                f"{what} has mode 'I' with values in [{lo}, {hi}]; expected "
                "16-bit data in [0, 65535]"
            )
        arr = arr.astype(np.uint16)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or float(arr.min()) < 0.0 or float(arr.max()) > 1.0:
            raise RequestError(f"{what} is float with values outside [0, 1] (or NaN/inf)")
        out = arr.astype(_F32, order="C", copy=True)
    else:
        out = arr.astype(_F32, order="C")
        out /= _F32(255.0 if arr.dtype.itemsize == 1 else 65535.0)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return out


def resize_to_model(image01: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """``transforms.resize_to_model``: per channel, Pillow's float bilinear resize."""
    from PIL import Image

    out = np.empty((3, size, size), dtype=_F32)
    for c in range(3):
        band = Image.fromarray(np.ascontiguousarray(image01[:, :, c]))  # mode "F"
        out[c] = np.asarray(band.resize((size, size), Image.Resampling.BILINEAR))
    return out


def to_wire_image(resized: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``_wire.to_wire_image``: the encoder input ``[1, 3, 1024, 1024]`` in ``dtype``."""
    if dtype == np.uint8:
        return np.clip(np.round(resized * 255.0), 0, 255).astype(np.uint8)[None]
    return np.ascontiguousarray(resized, dtype=dtype)[None]


# --- prompts ------------------------------------------------------------------------------------
def parse_prompts(raw: bytes) -> tuple[list[dict[str, Any]], bool, str]:
    """The ``prompts`` JSON: ``(objects, multimask, format)``; shapes checked, bounds not yet.

    One object ``{"points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1, y1]}`` or
    several ``{"objects": [{...}, ...]}``; options ``"multimask"`` (bool, default false) and
    ``"format"`` ("rle", default, or "png"). Coordinates are pixels of the image as a viewer
    shows it (EXIF orientation applied); labels 1 = foreground, 0 = background.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(
            f"prompts must be a JSON object (UTF-8), got invalid JSON: {exc}"
        ) from None
    if not isinstance(doc, dict):
        raise RequestError(f"prompts must be a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(PROMPT_KEYS))
    if unknown:
        raise RequestError(f"prompts has unknown key(s) {unknown}; allowed: {list(PROMPT_KEYS)}")
    multimask = doc.get("multimask", False)
    if not isinstance(multimask, bool):
        raise RequestError(f"prompts.multimask must be true or false, got {multimask!r}")
    fmt = doc.get("format", "rle")
    if fmt not in FORMATS:
        raise RequestError(f"prompts.format must be one of {list(FORMATS)}, got {fmt!r}")
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
    return [_parse_object(o, w) for o, w in zip(objects, where)], multimask, fmt


def _numbers(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if (
        arr is None
        or arr.ndim != len(shape)
        or any(s not in (-1, a) for s, a in zip(shape, arr.shape))
    ):
        want = "[" + ", ".join("n" if s == -1 else str(s) for s in shape) + "]"
        raise RequestError(f"{name} must be a list of numbers of shape {want}, got {value!r}"[:300])
    if not np.isfinite(arr).all():
        raise RequestError(f"{name} contains NaN or infinite values")
    return arr


def _parse_object(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise RequestError(f"{where} must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(OBJECT_KEYS)) if where != "prompts" else []
    if unknown:
        raise RequestError(f"{where} has unknown key(s) {unknown}; allowed: {list(OBJECT_KEYS)}")
    out: dict[str, Any] = {"points": None, "labels": None, "box": None}
    if ("points" in obj) != ("labels" in obj):
        raise RequestError(f"{where}: give 'points' and 'labels' together (one label per point)")
    if "points" in obj:
        points = _numbers(obj["points"], (-1, 2), f"{where}.points")
        labels = _numbers(obj["labels"], (-1,), f"{where}.labels")
        if not 1 <= len(points) <= MAX_POINTS or len(labels) != len(points):
            raise RequestError(
                f"{where}: {len(points)} points and {len(labels)} labels; give 1 "
                f"to {MAX_POINTS} points and one label each"
            )
        bad = np.flatnonzero(~np.isin(labels, (0, 1)))
        if bad.size:
            raise RequestError(
                f"{where}.labels[{int(bad[0])}] = {labels[bad[0]]:g}; labels must "
                "be 1 (foreground) or 0 (background)"
            )
        out["points"], out["labels"] = points, labels.astype(np.int32)
    if "box" in obj:
        box = _numbers(obj["box"], (4,), f"{where}.box")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RequestError(
                f"{where}.box = {box.tolist()} is inverted or empty: expected "
                "[x0, y0, x1, y1] with x0 < x1 and y0 < y1"
            )
        out["box"] = box
    if out["points"] is None and out["box"] is None:
        raise RequestError(f"{where} has no points and no box: give 'points' + 'labels' or 'box'")
    return out


def check_bounds(objects: list[dict[str, Any]], orig_hw: tuple[int, int]) -> None:
    """Every point and box inside the ``W x H`` image (as ``sam2_triton._validate`` checks)."""
    h, w = orig_hw
    for i, obj in enumerate(objects):
        where = f"object {i}"
        for name in ("points", "box"):
            arr = obj[name]
            if arr is None:
                continue
            xy = arr.reshape(-1, 2)
            bad = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
            if bad.any():
                raise RequestError(
                    f"{where}: {name} {arr.tolist()} lies outside the {w}x{h} "
                    f"(width x height) image: expected 0 <= x <= {w} and "
                    f"0 <= y <= {h}"
                )


def wire_prompt(obj: dict[str, Any], orig_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in the 1024 frame (``transforms.transform_coords``), box corners first."""
    h, w = orig_hw
    coords, labels = [], []
    for arr, lab in ((obj["box"], np.array([2, 3], np.int32)), (obj["points"], obj["labels"])):
        if arr is None:
            continue
        xy = arr.astype(_F32).reshape(-1, 2).copy()
        xy[:, 0] = xy[:, 0] / _F32(w)
        xy[:, 1] = xy[:, 1] / _F32(h)
        coords.append(xy * _F32(IMAGE_SIZE))
        labels.append(lab)
    return np.concatenate(coords).astype(_F32), np.concatenate(labels).astype(np.int32)


# --- mask post-processing (copies of sam2_triton.transforms) ----------------------------------
def select_masks(
    masks: np.ndarray, ious: np.ndarray, multimask_output: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``transforms.select_masks``: tokens 1..3, or SAM 2's dynamic stability selection."""
    if multimask_output:
        return masks[:, 1:].copy(), ious[:, 1:].copy()
    n = masks.shape[0]
    rows = np.arange(n)
    best = np.argmax(ious[:, 1:], axis=-1) + 1
    single = masks[:, 0].reshape(n, -1)
    delta = _F32(STABILITY_DELTA)
    area_i = np.count_nonzero(single > delta, axis=-1).astype(_F32)
    area_u = np.count_nonzero(single > -delta, axis=-1).astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        stability = np.where(area_u > 0, area_i / area_u, _F32(1.0))
    token = np.where(stability >= _F32(STABILITY_THRESH), 0, best)
    return masks[rows, token][:, None], ious[rows, token][:, None]


def _linear_weights(in_size: int, out_size: int):
    if in_size == out_size:
        i = np.arange(out_size)
        return i, i, np.ones(out_size), np.zeros(out_size)
    scale = _F32(in_size) / _F32(out_size)
    dst = np.arange(out_size, dtype=_F32) + _F32(0.5)
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(_F32)
    src = np.maximum(src, _F32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.intp), in_size - 1)
    l1 = np.clip(src - i0.astype(_F32), _F32(0.0), _F32(1.0))
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (_F32(1.0) - l1).astype(np.float64), l1.astype(np.float64)


def _fma_lerp(
    v0: np.ndarray, w0: np.ndarray, v1: np.ndarray, w1: np.ndarray, out: np.ndarray
) -> None:
    p1 = v1 * w1
    p0 = np.multiply(v0, w0, out=v0 if v0.dtype == np.float64 else None)
    np.add(p0, p1, out=out, casting="same_kind")


def upsample_masks(
    low_res: np.ndarray, orig_hw: tuple[int, int], threshold: float = MASK_THRESHOLD
) -> np.ndarray:
    """``transforms.upsample_masks``: torch's bilinear (align_corners=False) to ``[N, C, H, W]``,
    thresholded (``logits > threshold``, bool)."""
    x = low_res.astype(_F32, copy=False)
    h_out, w_out = orig_hw
    n, c, h_in, w_in = x.shape
    h0, h1, a0, a1 = _linear_weights(h_in, h_out)
    w0, w1, b0, b1 = _linear_weights(w_in, w_out)
    a0_col = a0[:, None]
    a1_col = a1.astype(_F32)[:, None]
    b1_32 = b1.astype(_F32)
    thr = _F32(threshold)
    out = np.empty((n, c, h_out, w_out), dtype=bool)
    block = max(1, min(h_out, (1 << 16) // w_out))
    t = np.empty((h_in, w_out), dtype=_F32)
    buf = np.empty((block, w_out), dtype=_F32)
    for i in range(n):
        for j in range(c):
            plane = x[i, j]
            _fma_lerp(np.take(plane, w0, axis=1), b0, np.take(plane, w1, axis=1), b1_32, t)
            t64 = t.astype(np.float64)
            dst = out[i, j]
            for r in range(0, h_out, block):
                s = slice(r, min(r + block, h_out))
                rows = buf[: s.stop - s.start]
                top = np.take(t64, h0[s], axis=0)
                _fma_lerp(top, a0_col[s], np.take(t, h1[s], axis=0), a1_col[s], rows)
                np.greater(rows, thr, out=dst[s])
    return out


def png_base64(mask: np.ndarray) -> str:
    """A bool mask as a 1-bit PNG, base64 text."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --- the Triton model -------------------------------------------------------------------------
def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value.strip() if isinstance(value, str) and value.strip() else default


class TritonPythonModel:
    """The one-shot segmentation model (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        if pb_utils is None:
            raise RuntimeError("triton_python_backend_utils is missing: run inside Triton")
        config = json.loads(args["model_config"])
        self._name = args.get("model_name", config.get("name", "sam2_segment"))
        self._encoder = _parameter(config, "ENCODER_MODEL", ENCODER_MODEL)
        self._decoder = _parameter(config, "DECODER_MODEL", DECODER_MODEL)
        dtype = _parameter(config, "ENCODER_IMAGE_DTYPE", "float32")
        if dtype not in ("float32", "float16", "uint8"):
            raise ValueError(
                f"ENCODER_IMAGE_DTYPE must be float32, float16 or uint8, got {dtype!r}"
            )
        self._image_dtype = np.dtype(dtype)
        self._max_pending = int(_parameter(config, "SEGMENT_MAX_PENDING", "64"))
        if self._max_pending < 1:
            raise ValueError("SEGMENT_MAX_PENDING must be >= 1")
        self._pending = 0
        self._lock = threading.Lock()
        # one thread per admitted request: each mostly waits for the encoder
        self._pool = ThreadPoolExecutor(self._max_pending, thread_name_prefix="sam2-segment")
        try:
            import PIL

            pil = f"Pillow {PIL.__version__}"
        except ImportError:
            pil = "Pillow NOT installed: requests will fail until it is (see SETUP.md)"
            pb_utils.Logger.log_warn(f"{self._name}: {pil}")
        pb_utils.Logger.log_info(
            f"{self._name}: BLS to {self._encoder!r} and {self._decoder!r}, "
            f"image dtype {dtype}, up to {self._max_pending} requests at "
            f"once; {pil}"
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            with self._lock:
                busy = self._pending >= self._max_pending
                if not busy:
                    self._pending += 1
            if busy:
                self._send(
                    sender,
                    self._error(
                        RequestError(
                            f"too many requests in flight ({self._max_pending}); retry later",
                            "UNAVAILABLE",
                        )
                    ),
                )
                continue
            try:
                items = [self._element(request, n) for n in (IMAGE, PROMPTS)]
            except RequestError as exc:
                self._done(sender, self._error(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - every request must get its one response
                self._done(sender, self._error(RequestError(f"cannot read the request: {exc}")))
                continue
            self._pool.submit(self._run, sender, *items)
        return None

    def _element(self, request: Any, name: str) -> bytes:
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
            result = self.segment(raw_image, raw_prompts)
            response = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(
                        RESULT, np.array([json.dumps(result).encode()], dtype=np.object_)
                    )
                ]
            )
        except RequestError as exc:
            response = self._error(exc)
        except ImportError as exc:
            response = self._error(
                RequestError(
                    f"Pillow is not installed in this Triton python environment ({exc}); "
                    "sam2_segment needs it to decode images: see SETUP.md",
                    "UNAVAILABLE",
                )
            )
        except Exception as exc:  # noqa: BLE001 - every request must get its one response
            pb_utils.Logger.log_error(f"{self._name}: request failed: {exc!r}")
            response = self._error(RequestError(f"segmentation failed: {exc}", "INTERNAL"))
        self._done(sender, response)

    def segment(self, raw_image: bytes, raw_prompts: bytes) -> dict[str, Any]:
        """Validate, encode, decode, post-process: the ``result`` JSON as a dict."""
        objects, multimask, fmt = parse_prompts(raw_prompts)
        image01 = load_image(image_bytes(raw_image))
        orig_hw = (int(image01.shape[0]), int(image01.shape[1]))
        check_bounds(objects, orig_hw)
        wire = to_wire_image(resize_to_model(image01), self._image_dtype)
        del image01
        features, fingerprint = self._encode(wire)
        prompts = [wire_prompt(o, orig_hw) for o in objects]
        groups: dict[int, list[int]] = {}
        for i, (coords, _) in enumerate(prompts):
            groups.setdefault(len(coords), []).append(i)
        results: list[dict[str, Any] | None] = [None] * len(prompts)
        for members in groups.values():
            for start in range(0, len(members), MAX_PROMPTS_PER_REQUEST):
                chunk = members[start : start + MAX_PROMPTS_PER_REQUEST]
                low, iou, obj = self._decode(
                    features,
                    fingerprint,
                    np.stack([prompts[i][0] for i in chunk]),
                    np.stack([prompts[i][1] for i in chunk]),
                )
                sel_low, sel_iou = select_masks(low, iou, multimask)
                masks = upsample_masks(sel_low, orig_hw)
                for row, i in enumerate(chunk):
                    encode = rle_encode if fmt == "rle" else png_base64
                    results[i] = {
                        "masks": [encode(m) for m in masks[row]],
                        "scores": [float(s) for s in sel_iou[row]],
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

    def _encode(self, wire: np.ndarray) -> tuple[list[Any], np.ndarray]:
        out = self._bls(
            self._encoder, [pb_utils.Tensor(IMAGE, wire)], [*FEATURE_NAMES, FINGERPRINT]
        )
        return [out[n] for n in FEATURE_NAMES], out[FINGERPRINT].as_numpy().reshape(-1).astype(
            np.int32
        )

    def _decode(
        self, features: list[Any], fingerprint: np.ndarray, coords: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prompts = {
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": np.zeros((1, 1, LOW_RES_SIZE, LOW_RES_SIZE), _F32),
            "has_mask_input": np.zeros((1,), _F32),
        }
        names = ["low_res_masks", "iou_predictions", "object_score_logits", FINGERPRINT]
        out = self._bls(
            self._decoder,
            [*features, *(pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in prompts.items())],
            names,
        )
        decoder_fp = out[FINGERPRINT].as_numpy().reshape(-1).astype(np.int32)
        if not np.array_equal(decoder_fp, fingerprint):
            raise RequestError(
                f"{self._decoder} has other weights (fingerprint "
                f"{decoder_fp.tolist()}) than {self._encoder} "
                f"({fingerprint.tolist()}); export both together",
                "INTERNAL",
            )
        n = len(coords)
        low = (
            out["low_res_masks"].as_numpy().reshape(n, NUM_MASK_TOKENS, LOW_RES_SIZE, LOW_RES_SIZE)
        )
        iou = out["iou_predictions"].as_numpy().reshape(n, NUM_MASK_TOKENS).astype(_F32)
        obj = out["object_score_logits"].as_numpy().reshape(n, 1).astype(_F32)
        return low.astype(_F32, copy=False), iou, obj

    def _error(self, exc: RequestError) -> Any:
        code = getattr(pb_utils.TritonError, exc.code, pb_utils.TritonError.INTERNAL)
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self._name}: {exc}", code))

    def _send(self, sender: Any, response: Any) -> None:
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _done(self, sender: Any, response: Any) -> None:
        try:
            self._send(sender, response)
        finally:
            with self._lock:
                self._pending -= 1

    def finalize(self) -> None:
        self._pool.shutdown(wait=True)
