"""Client-side pre- and post-processing of SAM 2.1, in numpy and Pillow only (never torch).

Every function reproduces what ``SAM2ImagePredictor`` (sam2 1.1.0) does around the network:

* :func:`load_image` turns any supported image source into one canonical array, ``RGB01``:
  ``H x W x 3`` float32, C-contiguous, values in ``[0, 1]``.
* :func:`resize_to_model` / :func:`preprocess` produce the encoder input: torchvision's
  ``Resize((1024, 1024))`` (bilinear, antialiased, aspect ratio *not* kept) on ``RGB01``, as a
  ``3 x 1024 x 1024`` float32 array. Mean/std normalisation is *not* applied here: it is part of
  the exported encoder graph (``spec.PIXEL_MEAN`` / ``spec.PIXEL_STD``).
* :func:`transform_coords` / :func:`transform_boxes` map prompts from image pixels to the
  1024 x 1024 model frame (``SAM2Transforms.transform_coords``).
* :func:`select_masks`, :func:`upsample_masks` and :func:`postprocess` turn the decoder's four
  mask tokens into what ``SAM2ImagePredictor.predict`` returns.
"""

from __future__ import annotations

import functools
import io
import os
import threading
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import spec
from .errors import InvalidImageError, InvalidInputError, InvalidPromptError

__all__ = [
    "IMAGE_FORMATS",
    "MAX_IMAGE_PIXELS",
    "SUPPORTED_MODES",
    "ImageSource",
    "load_image",
    "postprocess",
    "preprocess",
    "resize_to_model",
    "decode_mask_bits",
    "encode_mask_bits",
    "select_masks",
    "to_wire_image",
    "transform_boxes",
    "transform_coords",
    "upsample_masks",
]

#: Largest image accepted, in pixels (H * W), for every kind of source. Encoded images are
#: rejected from their header, before any pixel is decoded; this limit applies whatever
#: ``PIL.Image.MAX_IMAGE_PIXELS`` is set to (Pillow's own decompression-bomb error, raised for
#: images above twice its limit, is reported as InvalidImageError too).
MAX_IMAGE_PIXELS = 64_000_000

#: Encoded formats that :func:`load_image` decodes (Pillow format names). Other formats, notably
#: EPS/PS (which Pillow hands to Ghostscript), are refused.
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA", "AVIF")

#: Pillow modes :func:`load_image` accepts (see its docstring for how each is converted).
SUPPORTED_MODES = (
    "RGB", "RGBA", "L", "LA", "1", "P", "PA", "CMYK", "YCbCr",
    "I;16", "I;16L", "I;16B", "I;16N", "I", "F",
)  # fmt: skip

#: Anything :func:`load_image` accepts.
ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

_ACCEPTED_TYPES = (
    "str or os.PathLike (a file path), bytes/bytearray/memoryview (an encoded image), "
    "PIL.Image.Image or numpy.ndarray"
)
_PIL_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, Image.DecompressionBombError)
_F32 = np.float32


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
def load_image(image: ImageSource) -> np.ndarray:
    """Decode or convert ``image`` to ``RGB01``: an ``H x W x 3`` float32 array in ``[0, 1]``.

    The original size is ``result.shape[:2]``. The result is always a new C-contiguous array.

    Sources:

    * ``str`` / ``os.PathLike``: an image file; ``bytes`` / ``bytearray`` / ``memoryview``: an
      encoded image (never a path). Formats: :data:`IMAGE_FORMATS`; only the first frame of
      animated/multi-page files is used. The EXIF orientation tag is applied
      (``ImageOps.exif_transpose``), so the array is the image as a viewer shows it, and
      coordinates refer to that orientation. Decoding is complete (truncated data is an
      error, unless the caller set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``).
    * ``PIL.Image.Image``: used as is (no EXIF transpose: the caller owns the object).
    * ``numpy.ndarray``: ``H x W`` (grayscale), ``H x W x 1``, ``H x W x 3`` (RGB, never BGR)
      or ``H x W x 4`` (RGBA).

    Conversions (numpy dtypes / Pillow modes):

    * uint8 / "RGB", "L", "P", "CMYK", "YCbCr", "1": ``x.astype(float32) / 255``, bit-identical
      to torchvision's ``ToTensor`` as used by ``SAM2ImagePredictor.set_image``.
    * uint16 / "I;16*" / "I" (values must lie in ``[0, 65535]``): ``x.astype(float32) / 65535``.
    * float16/32/64 / "F": must be finite and within ``[0, 1]``, cast to float32.
    * Grayscale ("L", "1", "I;16", "I", "F", ``H x W``, ``H x W x 1``) is replicated to 3
      channels. "P"/"PA" go through their palette; "CMYK"/"YCbCr" through ``convert("RGB")``.
    * Alpha ("RGBA", "LA", "PA", ``H x W x 4``) is dropped, not composited: SAM 2 has no alpha
      input, and fully transparent pixels keep whatever colour they store.

    Raises:
        InvalidImageError: unsupported type, dtype, shape or mode; missing, unreadable, empty,
            corrupt or truncated file/bytes; more than :data:`MAX_IMAGE_PIXELS` pixels;
            NaN/inf or out-of-range values.
    """
    if isinstance(image, np.ndarray):
        return _from_array(image, "image array")
    if isinstance(image, Image.Image):
        return _from_pil(image, "PIL image")
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise InvalidImageError("image bytes are empty (0 bytes)")
        return _decode(io.BytesIO(data), f"image bytes ({len(data)} bytes)")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        what = f"image file {path!r}"
        if ("\0" if isinstance(path, str) else b"\0") in path:
            raise InvalidImageError(f"{what} is not a valid path: it contains a NUL character")
        try:
            if os.stat(path).st_size == 0:
                raise InvalidImageError(f"{what} is empty (0 bytes)")
            with open(path, "rb") as fp:
                return _decode(fp, what)
        except FileNotFoundError:
            raise InvalidImageError(f"{what} does not exist") from None
        except IsADirectoryError:
            raise InvalidImageError(f"{what} is a directory, not a file") from None
        except OSError as e:  # permission denied, I/O error, ...
            raise InvalidImageError(f"{what} cannot be read: {e}") from e
        except UnicodeEncodeError as e:  # e.g. a lone surrogate the file system cannot encode
            raise InvalidImageError(f"{what} is not a valid file name: {e}") from e
    raise InvalidImageError(
        f"unsupported image type {type(image).__name__}; expected {_ACCEPTED_TYPES}"
    )


def resize_to_model(image01: np.ndarray, size: int = spec.IMAGE_SIZE) -> np.ndarray:
    """Resize ``RGB01`` (``H x W x 3`` float32) to the encoder input, ``3 x size x size`` float32.

    Same as torchvision ``Resize((size, size))`` (bilinear, ``antialias=True``) on the float
    tensor, to about 1e-6: torchvision's antialiased kernel is a port of Pillow's, so each channel
    goes through Pillow's float ("F") resampler. Not normalised (the encoder graph does that).
    """
    if not isinstance(image01, np.ndarray):
        raise InvalidImageError(
            f"image01 must be a numpy array (use load_image), got {type(image01).__name__}"
        )
    if image01.ndim != 3 or image01.shape[2] != 3 or image01.dtype != _F32:
        raise InvalidImageError(
            "image01 must be an H x W x 3 float32 array in [0, 1] (use load_image), got shape "
            f"{image01.shape} dtype {image01.dtype}"
        )
    h, w = image01.shape[:2]
    if h == 0 or w == 0:
        raise InvalidImageError(f"image01 is empty (shape {image01.shape})")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0:
        raise InvalidInputError(f"size must be a positive int, got {size!r}")
    size = int(size)
    out = np.empty((3, size, size), dtype=_F32)
    for c in range(3):
        band = Image.fromarray(np.ascontiguousarray(image01[:, :, c]))  # mode "F"
        out[c] = np.asarray(band.resize((size, size), Image.Resampling.BILINEAR))
    return out


def to_wire_image(image01: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The encoder's input for one image: ``[3, 1024, 1024]`` in the encoder's input ``dtype``.

    :func:`resize_to_model` of ``RGB01``, then float32 as is, float16 by a cast, or uint8 as
    ``round(x * 255)`` (the export's ``--image-dtype``). Clients and server-side models build
    the image tensor with this one function, so an image has one id (``spec.session_image_id``).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8)):
        raise InvalidInputError(f"dtype must be float32, float16 or uint8, got {dtype}")
    resized = resize_to_model(image01, size=spec.IMAGE_SIZE)
    if dtype == np.uint8:
        return np.clip(np.round(resized * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(resized, dtype=dtype)


def preprocess(image: ImageSource) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image` then :func:`resize_to_model`.

    Returns the encoder input (``3 x 1024 x 1024`` float32, values in ``[0, 1]``, not
    normalised) and the original ``(H, W)``, which prompts and masks refer to.
    """
    image01 = load_image(image)
    h, w = image01.shape[:2]
    return resize_to_model(image01), (int(h), int(w))


def _check_pixels(h: int, w: int, what: str) -> None:
    if h <= 0 or w <= 0:
        raise InvalidImageError(f"{what} is empty ({h} x {w} pixels)")
    if h * w > MAX_IMAGE_PIXELS:
        raise InvalidImageError(
            f"{what} is too large: {h} x {w} = {h * w} pixels, limit is MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS}"
        )


@functools.cache
def _open_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin, so that IMAGE_FORMATS can be filtered
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def _decode(fp: io.IOBase, what: str) -> np.ndarray:
    """Decode an encoded image from an open binary file object."""
    try:
        img = Image.open(fp, formats=_open_formats())
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"{what} is not a decodable image (corrupt, or not one of {', '.join(IMAGE_FORMATS)})"
        ) from None
    except Image.DecompressionBombError as e:
        raise InvalidImageError(
            f"{what} is too large: {e} (limit is MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} pixels)"
        ) from None
    except _PIL_ERRORS as e:
        raise InvalidImageError(f"{what} is corrupt or truncated: {e}") from e
    with img:
        w, h = img.size
        _check_pixels(h, w, what)  # from the header, before decoding anything
        try:
            img.load()  # full decode: truncated or corrupt data raises here
            ImageOps.exif_transpose(img, in_place=True)
        except _PIL_ERRORS as e:
            raise InvalidImageError(f"{what} is corrupt or truncated: {e}") from e
        return _from_pil(img, what)


def _from_pil(img: Image.Image, what: str) -> np.ndarray:
    w, h = img.size
    _check_pixels(h, w, what)
    mode = img.mode
    if mode not in SUPPORTED_MODES:
        raise InvalidImageError(
            f"{what} has unsupported mode {mode!r}; supported modes: {', '.join(SUPPORTED_MODES)}"
        )
    try:
        if mode in ("RGB", "L", "I", "F") or mode.startswith("I;16"):
            arr = np.asarray(img)
        elif mode in ("RGBA", "LA"):
            arr = np.asarray(img)[:, :, : 3 if mode == "RGBA" else 1]
        elif mode in ("P", "PA"):
            arr = np.asarray(img.convert("RGBA"))[:, :, :3]  # RGBA: no palette-alpha warning
        elif mode == "1":
            arr = np.asarray(img.convert("L"))
        else:  # CMYK, YCbCr
            arr = np.asarray(img.convert("RGB"))
    except _PIL_ERRORS as e:  # a lazily opened PIL image is decoded here
        raise InvalidImageError(f"{what} is corrupt or truncated: {e}") from e
    if mode == "I":  # 32-bit signed container, read as 16-bit data
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise InvalidImageError(
                f"{what} has mode 'I' with values in [{lo}, {hi}]; expected 16-bit data in "
                "[0, 65535]"
            )
        arr = arr.astype(np.uint16)
    return _from_array(arr, what)


def _from_array(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        h, w, c = arr.shape
    elif arr.ndim == 2:
        (h, w), c = arr.shape, 1
    else:
        raise InvalidImageError(
            f"{what} has shape {arr.shape}; expected H x W, H x W x 1, H x W x 3 (RGB) or "
            "H x W x 4 (RGBA)"
        )
    _check_pixels(h, w, what)
    kind, itemsize = arr.dtype.kind, arr.dtype.itemsize
    if kind == "b":
        raise InvalidImageError(
            f"{what} is a boolean array, which is not supported; convert it to uint8 (0/255) "
            "or float (0.0/1.0)"
        )
    if not ((kind == "u" and itemsize in (1, 2)) or kind == "f"):
        raise InvalidImageError(
            f"{what} has unsupported dtype {arr.dtype}; expected uint8, uint16 or float "
            "(values in [0, 1])"
        )
    if arr.ndim == 3:
        arr = arr[:, :, 0] if c == 1 else arr[:, :, :3]  # alpha dropped
    if kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            raise InvalidImageError(
                f"{what} contains {np.count_nonzero(~finite)} non-finite values (NaN or inf); expected values in "
                "[0, 1]"
            )
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InvalidImageError(
                f"{what} is float with values in [{lo:g}, {hi:g}]; expected values in [0, 1] "
                "(divide 8-bit data by 255, or pass it as uint8)"
            )
        out = arr.astype(_F32, order="C", copy=True)
    else:
        out = arr.astype(_F32, order="C")
        out /= _F32(255.0 if itemsize == 1 else 65535.0)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return out


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------
def transform_coords(
    coords: np.ndarray,
    orig_hw: tuple[int, int],
    normalize: bool = True,
    size: int = spec.IMAGE_SIZE,
) -> np.ndarray:
    """Map ``(..., 2)`` (x, y) points to the ``size x size`` model frame; returns float32.

    ``normalize=True``: ``coords`` are pixels of the original image, ``x / W * size``,
    ``y / H * size``. ``normalize=False``: ``coords`` are already in ``[0, 1]``, ``coords * size``.
    Bit-identical to ``SAM2Transforms.transform_coords`` (float32 arithmetic, same order).
    Raises InvalidPromptError (bad shape, non-numeric, NaN/inf) or InvalidInputError (orig_hw).
    """
    arr = _as_float32(coords, "coords", InvalidPromptError)
    if arr.ndim == 0 or arr.shape[-1] != 2:
        raise InvalidPromptError(f"coords must have shape (..., 2) (x, y), got {arr.shape}")
    h, w = _check_hw(orig_hw)
    size = _check_size(size)
    if normalize:
        arr = arr.copy()
        arr[..., 0] = arr[..., 0] / _F32(w)
        arr[..., 1] = arr[..., 1] / _F32(h)
    return arr * _F32(size)


def transform_boxes(
    boxes: np.ndarray,
    orig_hw: tuple[int, int],
    normalize: bool = True,
    size: int = spec.IMAGE_SIZE,
) -> np.ndarray:
    """Map ``(..., 4)`` xyxy boxes to the model frame as corner pairs, ``(B, 2, 2)`` float32.

    Same as ``SAM2Transforms.transform_boxes``: ``boxes.reshape(-1, 2, 2)`` then
    :func:`transform_coords`.
    """
    arr = _as_float32(boxes, "boxes", InvalidPromptError)
    if arr.ndim == 0 or arr.shape[-1] != 4:
        raise InvalidPromptError(
            f"boxes must have shape (..., 4) (x1, y1, x2, y2), got {arr.shape}"
        )
    return transform_coords(arr.reshape(-1, 2, 2), orig_hw, normalize, size)


def _as_float32(x: object, name: str, error: type[InvalidInputError]) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise error(f"{name} must be a numeric array, got {type(x).__name__}: {e}") from None
    if arr.dtype.kind not in "iuf":
        raise error(f"{name} must be a numeric (int or float) array, got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = arr.astype(_F32)  # like torch.as_tensor(x, dtype=torch.float)
    if not np.isfinite(arr).all():
        raise error(f"{name} contains NaN or inf (or values too large for float32)")
    return arr


def _check_hw(orig_hw: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = orig_hw
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok or h <= 0 or w <= 0:
        raise InvalidInputError(f"orig_hw must be (H, W), two positive ints, got {orig_hw!r}")
    return int(h), int(w)


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0:
        raise InvalidInputError(f"size must be a positive int, got {size!r}")
    return int(size)


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------
def select_masks(
    low_res_all: np.ndarray, iou_all: np.ndarray, multimask_output: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pick the returned masks from the decoder's four mask tokens, as ``MaskDecoder`` does.

    ``low_res_all`` ``[N, 4, h, w]`` float32 logits and ``iou_all`` ``[N, 4]`` float32.
    ``multimask_output=True``: tokens 1..3, ``([N, 3, h, w], [N, 3])``. ``False``: ``([N, 1, h, w],
    [N, 1])``, token 0 where its stability score ``count(l > delta) / count(l > -delta)`` (1.0 when
    nothing is above ``-delta``) is ``>= spec.STABILITY_THRESH``, else the token of 1..3 with the
    highest IoU prediction (first on ties): ``MaskDecoder._dynamic_multimask_via_stability``.
    Returns new arrays.
    """
    masks, ious = _check_decoder_outputs(low_res_all, iou_all)
    if multimask_output:
        return masks[:, 1:].copy(), ious[:, 1:].copy()
    n = masks.shape[0]
    rows = np.arange(n)
    best = np.argmax(ious[:, 1:], axis=-1) + 1
    single = masks[:, 0].reshape(n, -1)
    delta = _F32(spec.STABILITY_DELTA)
    area_i = np.count_nonzero(single > delta, axis=-1).astype(_F32)
    area_u = np.count_nonzero(single > -delta, axis=-1).astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        stability = np.where(area_u > 0, area_i / area_u, _F32(1.0))
    stable = stability >= _F32(spec.STABILITY_THRESH)
    token = np.where(stable, 0, best)
    return masks[rows, token][:, None], ious[rows, token][:, None]


def upsample_masks(
    low_res: np.ndarray,
    orig_hw: tuple[int, int],
    threshold: float | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Bilinear resize of ``[N, C, h, w]`` float32 logits to ``[N, C, H, W]``.

    Same as ``torch.nn.functional.interpolate(x, (H, W), mode="bilinear",
    align_corners=False)`` (no antialiasing, also when shrinking), reproducing its float32
    arithmetic including the fused multiply-adds of PyTorch's AVX2/AVX512 CPU kernel: measured
    bit-identical (torch 2.14.1) whenever H or W is at least 128, within a few float32 ULP for
    smaller outputs. ``threshold=None`` returns float32 logits; a float returns
    ``logits > threshold`` as bool, without materialising the float32 logits.

    Large outputs (``N * C * H * W >= 2**20``) are split into bands of output rows computed in
    parallel threads (numpy releases the GIL in these loops; at most ``threads``, default: up
    to 4, one per core); every output value is computed by the same operations either way.
    """
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1
    ):
        raise InvalidInputError(f"threads must be a positive int or None, got {threads!r}")
    x = _check_masks(low_res, "low_res")
    h_out, w_out = _check_hw(orig_hw)
    n, c, h_in, w_in = x.shape
    rows = _linear_weights(h_in, h_out)
    cols = _linear_weights(w_in, w_out)
    out = np.empty((n, c, h_out, w_out), dtype=_F32 if threshold is None else bool)
    bands = _row_bands(h_out, n * c * h_out * w_out, threads)
    if len(bands) == 1:
        _upsample_rows(x, out, rows, cols, threshold, 0, h_out)
        return out
    errors: list[BaseException] = []

    def band(r0: int, r1: int) -> None:
        try:
            _upsample_rows(x, out, rows, cols, threshold, r0, r1)
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(e)

    helpers = [threading.Thread(target=band, args=b, daemon=True) for b in bands[1:]]
    for t in helpers:
        t.start()
    band(*bands[0])
    for t in helpers:
        t.join()
    if errors:
        raise errors[0]
    return out


_PARALLEL_MIN_PIXELS = 1 << 20  # below this, a thread costs more than it saves


def _row_bands(h_out: int, total_pixels: int, threads: int | None) -> list[tuple[int, int]]:
    """Contiguous ``[r0, r1)`` bands of output rows, one per core used (at most 4)."""
    workers = min(os.cpu_count() or 1, 4, max(1, h_out // 64), threads or 4)
    if total_pixels < _PARALLEL_MIN_PIXELS or workers < 2:
        return [(0, h_out)]
    edges = [round(i * h_out / workers) for i in range(workers + 1)]
    return [(edges[i], edges[i + 1]) for i in range(workers)]


def _upsample_rows(
    x: np.ndarray,
    out: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cols: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    threshold: float | None,
    r0: int,
    r1: int,
) -> None:
    """Output rows ``r0:r1`` of :func:`upsample_masks` (all ``N x C`` planes) into ``out``."""
    n, c, _, _ = x.shape
    w_out = out.shape[3]
    h0, h1, a0, a1 = (v[r0:r1] for v in rows)
    w0, w1, b0, b1 = cols
    lo, hi = int(h0[0]), int(h1[-1]) + 1  # the source rows this band reads
    h0, h1 = h0 - lo, h1 - lo
    a0_col = a0[:, None]
    a1_col = a1.astype(_F32)[:, None]
    b1_32 = b1.astype(_F32)
    thr = None if threshold is None else _F32(threshold)
    # row blocks of ~512 KB (float64) keep the vertical pass in cache
    block = max(1, min(r1 - r0, (1 << 16) // w_out))
    t = np.empty((hi - lo, w_out), dtype=_F32)
    buf = np.empty((block, w_out), dtype=_F32)
    for i in range(n):
        for j in range(c):
            plane = x[i, j, lo:hi]
            # width pass, then height pass over row blocks (PyTorch's order of operations)
            _fma_lerp(np.take(plane, w0, axis=1), b0, np.take(plane, w1, axis=1), b1_32, t)
            t64 = t.astype(np.float64)
            dst = out[i, j, r0:r1]
            for r in range(0, r1 - r0, block):
                s = slice(r, min(r + block, r1 - r0))
                dst_rows = dst[s] if thr is None else buf[: s.stop - s.start]
                top = np.take(t64, h0[s], axis=0)
                _fma_lerp(top, a0_col[s], np.take(t, h1[s], axis=0), a1_col[s], dst_rows)
                if thr is not None:
                    np.greater(dst_rows, thr, out=dst[s])


def postprocess(
    low_res_selected: np.ndarray,
    orig_hw: tuple[int, int],
    return_logits: bool,
    mask_threshold: float = spec.MASK_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks at the original size, and low-res logits to feed back, as ``SAM2ImagePredictor``.

    ``low_res_selected`` ``[N, C, 256, 256]`` float32 (from :func:`select_masks`). Returns
    ``masks`` ``[N, C, H, W]``: the upsampled *unclamped* logits (float32) when
    ``return_logits``, else ``logits > mask_threshold`` (bool); and the low-res logits clamped
    to ``[-32, 32]`` (float32, a new array), usable as the next ``mask_input``.
    """
    x = _check_masks(low_res_selected, "low_res_selected")
    masks = upsample_masks(x, orig_hw, None if return_logits else float(mask_threshold))
    lim = _F32(spec.LOW_RES_CLAMP)
    return masks, np.clip(x, -lim, lim)


def encode_mask_bits(masks: np.ndarray) -> np.ndarray:
    """Bool masks ``[N, C, H, W]`` as ``[N, C]`` bytes objects: each mask's pixels in C order,
    8 per byte (``np.packbits``), zlib-compressed. Lossless; a transport encoding of this
    project (the session model's ``masks`` output), not a SAM 2 function."""
    if not isinstance(masks, np.ndarray) or masks.ndim != 4 or masks.dtype != np.bool_:
        desc = f"{masks.dtype} {masks.shape}" if isinstance(masks, np.ndarray) else type(masks)
        raise InvalidInputError(f"masks must be a bool [N, C, H, W] array, got {desc}")
    n, c = masks.shape[:2]
    out = np.empty((n, c), dtype=np.object_)
    for i in range(n):
        for j in range(c):
            out[i, j] = zlib.compress(np.packbits(masks[i, j], axis=None).tobytes(), 6)
    return out


def decode_mask_bits(blobs: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`encode_mask_bits`: ``[N, C]`` bytes to bool ``[N, C, H, W]``."""
    h, w = _check_hw(orig_hw)
    blobs = np.asarray(blobs, dtype=np.object_)
    if blobs.ndim != 2:
        raise InvalidInputError(f"blobs must be [N, C] bytes, got shape {blobs.shape}")
    out = np.empty((*blobs.shape, h, w), dtype=bool)
    nbytes = (h * w + 7) // 8
    for (i, j), blob in np.ndenumerate(blobs):
        try:
            raw = zlib.decompress(bytes(blob))
        except (zlib.error, TypeError) as exc:
            raise InvalidInputError(f"mask [{i}, {j}] is not zlib-compressed bits: {exc}") from None
        if len(raw) != nbytes:
            raise InvalidInputError(
                f"mask [{i}, {j}] holds {len(raw)} bytes, expected {nbytes} for {h} x {w} pixels"
            )
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), count=h * w)
        out[i, j] = bits.reshape(h, w).view(bool)
    return out


def _linear_weights(
    in_size: int, out_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 (intp) and weights l0 (float64 holding float32 values), l1.

    PyTorch's ``compute_source_index_and_lambda`` (align_corners=False) in float32, whose
    ``scale * (i + 0.5) - 0.5`` is one fused multiply-add in the compiled kernel.
    """
    if in_size == out_size:
        i = np.arange(out_size)
        return i, i, np.ones(out_size), np.zeros(out_size)
    scale = _F32(in_size) / _F32(out_size)
    dst = np.arange(out_size, dtype=_F32) + _F32(0.5)
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(_F32)  # exact, one rounding
    src = np.maximum(src, _F32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.intp), in_size - 1)
    l1 = np.clip(src - i0.astype(_F32), _F32(0.0), _F32(1.0))
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (_F32(1.0) - l1).astype(np.float64), l1.astype(np.float64)


def _fma_lerp(
    v0: np.ndarray, w0: np.ndarray, v1: np.ndarray, w1: np.ndarray, out: np.ndarray
) -> None:
    """``out = fma(v0, w0, float32(v1 * w1))`` in float32, as PyTorch's kernel computes it.

    ``v1``, ``w1`` are float32; ``v0``, ``w0`` hold float32 values, at least one as float64 so that
    ``v0 * w0`` is exact; the float64 sum is rounded once into ``out`` (float32). ``v0`` may be
    overwritten.
    """
    p1 = v1 * w1  # float32: rounded, like the kernel's unfused product
    p0 = np.multiply(v0, w0, out=v0 if v0.dtype == np.float64 else None)
    np.add(p0, p1, out=out, casting="same_kind")


def _check_masks(x: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        desc = f"shape {x.shape} dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise InvalidInputError(f"{name} must be an [N, C, h, w] float array, got {desc}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise InvalidInputError(f"{name} has empty spatial size {x.shape[2:]}")
    return x.astype(_F32, copy=False)


def _check_decoder_outputs(
    low_res_all: np.ndarray, iou_all: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    masks = _check_masks(low_res_all, "low_res_all")
    n, k = masks.shape[:2]
    if k != spec.NUM_MASK_TOKENS:
        raise InvalidInputError(
            f"low_res_all must hold {spec.NUM_MASK_TOKENS} mask tokens on axis 1, got shape "
            f"{masks.shape}"
        )
    if not isinstance(iou_all, np.ndarray) or iou_all.shape != (n, k) or iou_all.dtype.kind != "f":
        desc = (
            f"shape {iou_all.shape}" if isinstance(iou_all, np.ndarray) else type(iou_all).__name__
        )
        raise InvalidInputError(f"iou_all must be a float array of shape ({n}, {k}), got {desc}")
    return masks, iou_all.astype(_F32, copy=False)
