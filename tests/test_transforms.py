"""sam2_triton.transforms against the PyTorch / torchvision / sam2 reference it reimplements."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_triton import spec
from sam2_triton import transforms as T
from sam2_triton.errors import InvalidImageError, InvalidInputError, InvalidPromptError

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")
TF = pytest.importorskip("torchvision.transforms.functional")
pytest.importorskip("sam2")
from sam2.utils.transforms import SAM2Transforms  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

F32 = np.float32
MEAN = np.asarray(spec.PIXEL_MEAN, F32)[:, None, None]
STD = np.asarray(spec.PIXEL_STD, F32)[:, None, None]
# torch's upsample kernel contracts a*b + c into FMAs on these builds; transforms emulates them
FMA_CPU = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.fixture(scope="module")
def ref_transforms() -> SAM2Transforms:
    return SAM2Transforms(resolution=spec.IMAGE_SIZE, mask_threshold=0.0)


@pytest.fixture(scope="module")
def sam2_model():
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _encode(arr_or_img, fmt: str = "PNG", **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims width x height (nothing beyond it is ever decoded)."""
    data = bytearray(_encode(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _torch_resize(image01: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(image01.transpose(2, 0, 1)))
    return TF.resize(t, [spec.IMAGE_SIZE, spec.IMAGE_SIZE], antialias=True).numpy()


def _check_preprocess(source, reference_input, ref_transforms, expected01=None) -> None:
    """Ours (load, resize, normalise) vs SAM2Transforms on ``reference_input``."""
    image01 = T.load_image(source)
    if expected01 is not None:
        np.testing.assert_array_equal(image01, expected01)
    resized, hw = T.preprocess(source)
    assert resized.shape == (3, spec.IMAGE_SIZE, spec.IMAGE_SIZE) and resized.dtype == F32
    assert hw == image01.shape[:2]
    ref = ref_transforms(reference_input).numpy()
    np.testing.assert_allclose((resized - MEAN) / STD, ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(resized, _torch_resize(image01), rtol=0, atol=1e-5)


# --- load_image / preprocess: pixels -----------------------------------------------------------
@pytest.mark.parametrize("hw", [(48, 64), (480, 640), (333, 517), (1080, 1920), (1, 1)])
def test_uint8_rgb_matches_sam2transforms(hw, ref_transforms):
    img = _rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    image01 = T.load_image(img)
    # ToTensor's x / 255 in float32, bit for bit
    np.testing.assert_array_equal(image01, TF.to_tensor(img).permute(1, 2, 0).numpy())
    _check_preprocess(img, img, ref_transforms)


def test_grayscale_rgba_and_single_channel(ref_transforms):
    rng = _rng(1)
    gray = rng.integers(0, 256, (120, 90), dtype=np.uint8)
    rgb_of_gray = np.repeat(gray[:, :, None], 3, axis=2)
    _check_preprocess(gray, rgb_of_gray, ref_transforms, rgb_of_gray.astype(F32) / 255)
    _check_preprocess(gray[:, :, None], rgb_of_gray, ref_transforms, rgb_of_gray.astype(F32) / 255)
    rgba = rng.integers(0, 256, (77, 130, 4), dtype=np.uint8)
    _check_preprocess(rgba, rgba[:, :, :3].copy(), ref_transforms, rgba[:, :, :3].astype(F32) / 255)


def test_uint16_and_float_inputs(ref_transforms):
    rng = _rng(2)
    u16 = rng.integers(0, 65536, (100, 150, 3), dtype=np.uint16)
    expected = u16.astype(F32) / F32(65535)
    _check_preprocess(u16, expected, ref_transforms, expected)
    _check_preprocess(u16.astype(">u2"), expected, ref_transforms, expected)  # big-endian
    f = rng.random((90, 60, 3), dtype=np.float64)
    _check_preprocess(f, f.astype(F32), ref_transforms, f.astype(F32))
    _check_preprocess(f.astype(F32), f.astype(F32), ref_transforms, f.astype(F32))
    out = T.load_image(f.astype(F32))
    assert out.flags.c_contiguous and out.dtype == F32
    bgr_view = (f[:, :, ::-1] * 255).astype(np.uint8)[:, ::2]  # non-contiguous input
    np.testing.assert_array_equal(T.load_image(bgr_view), np.ascontiguousarray(bgr_view) / F32(255))


def test_16bit_png(ref_transforms):
    u16 = _rng(3).integers(0, 65536, (64, 80), dtype=np.uint16)
    data = _encode(u16)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    expected = np.repeat((u16.astype(F32) / F32(65535))[:, :, None], 3, axis=2)
    _check_preprocess(data, expected, ref_transforms, expected)


def test_pil_modes():
    rng = _rng(4)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    as01 = rgb.astype(F32) / 255
    np.testing.assert_array_equal(T.load_image(base), as01)
    np.testing.assert_array_equal(T.load_image(base.convert("RGBA")), as01)
    gray = np.asarray(base.convert("L"))
    gray01 = np.repeat(gray[:, :, None], 3, axis=2).astype(F32) / 255
    np.testing.assert_array_equal(T.load_image(base.convert("L")), gray01)
    np.testing.assert_array_equal(T.load_image(base.convert("LA")), gray01)
    pal = base.convert("P")
    np.testing.assert_array_equal(T.load_image(pal), np.asarray(pal.convert("RGB")) / F32(255))
    for mode in ("CMYK", "YCbCr"):
        im = base.convert(mode)
        np.testing.assert_array_equal(T.load_image(im), np.asarray(im.convert("RGB")) / F32(255))
    bits = base.convert("1")
    assert set(np.unique(T.load_image(bits))) <= {0.0, 1.0}
    i32 = Image.fromarray(rng.integers(0, 65536, (5, 6)).astype(np.int32))
    assert i32.mode == "I"
    np.testing.assert_array_equal(
        T.load_image(i32)[:, :, 1], np.asarray(i32).astype(F32) / F32(65535)
    )
    fl = Image.fromarray(rng.random((5, 6), dtype=np.float32))
    assert fl.mode == "F"
    np.testing.assert_array_equal(T.load_image(fl)[:, :, 2], np.asarray(fl))


def test_encoded_sources_and_exif_orientation(tmp_path: Path):
    rgb = _rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    expected = rgb.astype(F32) / 255
    png = _encode(rgb)
    for source in (png, bytearray(png), memoryview(png)):
        np.testing.assert_array_equal(T.load_image(source), expected)
    path = tmp_path / "a.png"
    path.write_bytes(png)
    np.testing.assert_array_equal(T.load_image(path), expected)
    np.testing.assert_array_equal(T.load_image(str(path)), expected)
    jpeg = _encode(rgb, "JPEG", quality=95)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    np.testing.assert_array_equal(T.load_image(jpeg), decoded / F32(255))
    # EXIF orientation 6 = rotate 90 degrees clockwise for display: applied for files and bytes
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _encode(rgb, "PNG", exif=exif)
    np.testing.assert_array_equal(T.load_image(rotated), np.rot90(expected, k=-1))
    (tmp_path / "r.png").write_bytes(rotated)
    assert T.load_image(tmp_path / "r.png").shape == (30, 20, 3)
    # ... but not for a PIL image the caller already holds
    assert T.load_image(Image.open(io.BytesIO(rotated))).shape == (20, 30, 3)


# --- load_image: bad input -----------------------------------------------------------------------
def _truncated(fmt: str, fraction: float) -> bytes:
    rgb = _rng(6).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    data = _encode(rgb, fmt)
    return data[: int(len(data) * fraction)]


BAD_IMAGES = {
    "empty bytes": (b"", "empty"),
    "garbage bytes": (b"this is not an image at all", "not a decodable image"),
    "eps refused": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a decodable"),
    "truncated png 50%": (_truncated("PNG", 0.5), "truncated"),
    "truncated png 90%": (_truncated("PNG", 0.9), "truncated"),
    "truncated jpeg 50%": (_truncated("JPEG", 0.5), "truncated"),
    "truncated jpeg 95%": (_truncated("JPEG", 0.95), "truncated"),
    "png header only": (_png_header_only(8, 8), "corrupt or truncated"),
    "png too large": (
        _png_header_only(9000, 8000),
        r"too large: 8000 x 9000 = 72000000 .*64000000",
    ),
    "png bomb": (_png_header_only(20000, 20000), r"too large.*64000000"),
    "array too large": (
        np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (8001, 8000, 3)),
        r"8001 x 8000 = 64008000 pixels, limit is MAX_IMAGE_PIXELS = 64000000",
    ),
    "int": (123, r"unsupported image type int; expected str or os.PathLike"),
    "list": ([[0, 1], [1, 0]], "unsupported image type list"),
    "none": (None, "unsupported image type NoneType"),
    "zero rows": (np.zeros((0, 5, 3), np.uint8), r"empty \(0 x 5 pixels\)"),
    "zero-size pil": (Image.new("RGB", (0, 5)), r"empty \(5 x 0 pixels\)"),
    "bool": (np.zeros((4, 4), bool), "boolean array"),
    "int32": (np.zeros((4, 4, 3), np.int32), "unsupported dtype int32"),
    "int8": (np.zeros((4, 4), np.int8), "unsupported dtype int8"),
    "nan": (np.full((4, 4, 3), np.nan, F32), r"48 non-finite values \(NaN or inf\)"),
    "inf": (np.array([[np.inf, 0.5]]), "non-finite"),
    "float 0..255": (
        np.full((4, 4, 3), 255.0),
        r"values in \[255, 255\]; expected values in \[0, 1\]",
    ),
    "float negative": (np.full((4, 4), -0.5, F32), r"\[-0.5, -0.5\]"),
    "two channels": (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\); expected H x W"),
    "chw": (np.zeros((3, 4, 5), np.uint8), r"shape \(3, 4, 5\)"),
    "4d": (np.zeros((1, 4, 4, 3), np.uint8), "shape"),
    "1d": (np.zeros(5, np.uint8), "shape"),
    "pil hsv": (Image.new("HSV", (4, 4)), r"unsupported mode 'HSV'; supported modes: RGB, RGBA"),
    "pil F out of range": (Image.fromarray(np.full((3, 3), 2.0, F32)), r"\[2, 2\]"),
    "pil I negative": (Image.fromarray(np.full((3, 3), -1, np.int32)), r"mode 'I'.*\[-1, -1\]"),
    "pil I 32-bit": (Image.fromarray(np.full((3, 3), 70000, np.int32)), r"\[0, 65535\]"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images(name):
    source, message = BAD_IMAGES[name]
    with pytest.raises(InvalidImageError, match=message):
        T.load_image(source)


def test_pil_limit_does_not_override_ours(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's check disabled
    with pytest.raises(InvalidImageError, match="too large: 20000 x 20000"):
        T.load_image(_png_header_only(20000, 20000))


def test_bad_paths(tmp_path: Path):
    missing = tmp_path / "nope.png"
    with pytest.raises(InvalidImageError, match=r"'.*nope\.png' does not exist"):
        T.load_image(missing)
    with pytest.raises(InvalidImageError, match="is a directory"):
        T.load_image(str(tmp_path))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InvalidImageError, match=r"empty\.png' is empty \(0 bytes\)"):
        T.load_image(tmp_path / "empty.png")
    (tmp_path / "cut.jpg").write_bytes(_truncated("JPEG", 0.5))
    with pytest.raises(InvalidImageError, match=r"cut\.jpg' is corrupt or truncated"):
        T.load_image(tmp_path / "cut.jpg")


def test_resize_to_model_rejects_non_rgb01():
    with pytest.raises(InvalidImageError, match="float32"):
        T.resize_to_model(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InvalidImageError, match=r"shape \(4, 4\)"):
        T.resize_to_model(np.zeros((4, 4), F32))
    with pytest.raises(InvalidImageError, match="numpy array"):
        T.resize_to_model([[0.0]])
    with pytest.raises(InvalidInputError, match="size must be a positive int"):
        T.resize_to_model(np.zeros((4, 4, 3), F32), size=0)
    assert T.resize_to_model(np.zeros((4, 4, 3), F32), size=16).shape == (3, 16, 16)


# --- prompts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(333, 517), (1080, 1920), (7, 3), (1, 1), (4000, 3000)])
def test_transform_coords_bit_exact(hw, ref_transforms):
    rng = _rng(hw[1])
    coords = rng.uniform(-5, max(hw) + 5, (3, 17, 2))  # float64, cast to float32 like torch
    ref = ref_transforms.transform_coords(
        torch.as_tensor(coords, dtype=torch.float), normalize=True, orig_hw=hw
    )
    ours = T.transform_coords(coords, hw)
    assert ours.dtype == F32 and ours.shape == coords.shape
    np.testing.assert_array_equal(ours, ref.numpy())
    unit = rng.random((5, 2)).astype(F32)
    ref = ref_transforms.transform_coords(torch.from_numpy(unit), normalize=False)
    np.testing.assert_array_equal(T.transform_coords(unit, hw, normalize=False), ref.numpy())
    boxes = rng.uniform(0, max(hw), (4, 4))
    ref = ref_transforms.transform_boxes(
        torch.as_tensor(boxes, dtype=torch.float), normalize=True, orig_hw=hw
    )
    ours = T.transform_boxes(boxes, hw)
    assert ours.shape == (4, 2, 2)
    np.testing.assert_array_equal(ours, ref.numpy())
    np.testing.assert_array_equal(T.transform_boxes(boxes[0], hw), ref.numpy()[:1])
    assert T.transform_coords(coords.astype(np.int64), hw).dtype == F32


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: T.transform_coords(np.zeros((2, 3)), (4, 4)),
            InvalidPromptError,
            r"\(\.\.\., 2\)",
        ),
        (lambda: T.transform_coords(np.array(1.0), (4, 4)), InvalidPromptError, r"\(\.\.\., 2\)"),
        (lambda: T.transform_coords([[np.nan, 1]], (4, 4)), InvalidPromptError, "NaN or inf"),
        (lambda: T.transform_coords([[1e300, 1]], (4, 4)), InvalidPromptError, "NaN or inf"),
        (lambda: T.transform_coords([["a", "b"]], (4, 4)), InvalidPromptError, "numeric"),
        (lambda: T.transform_coords([[1, 2], [3]], (4, 4)), InvalidPromptError, "numeric"),
        (lambda: T.transform_coords([[1, 2]], (0, 4)), InvalidInputError, "orig_hw"),
        (lambda: T.transform_coords([[1, 2]], (4.0, 4)), InvalidInputError, "orig_hw"),
        (lambda: T.transform_coords([[1, 2]], 4), InvalidInputError, "orig_hw"),
        (lambda: T.transform_coords([[1, 2]], (4, 4), size=0), InvalidInputError, "size"),
        (lambda: T.transform_boxes(np.zeros((2, 3)), (4, 4)), InvalidPromptError, r"\(\.\.\., 4\)"),
    ],
)
def test_prompt_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- masks ----------------------------------------------------------------------------------------
def _torch_upsample(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return F.interpolate(torch.from_numpy(x), hw, mode="bilinear", align_corners=False).numpy()


@pytest.mark.parametrize(
    ("hw", "c"),
    [
        ((1080, 1920), 3),
        ((1920, 1080), 1),
        ((480, 640), 3),
        ((333, 517), 2),
        ((256, 256), 1),
        ((255, 257), 1),
        ((128, 40), 3),
        ((100, 50), 3),
        ((64, 300), 1),
        ((7, 5), 3),
        ((1, 1), 1),
        ((3000, 4000), 1),
    ],
)
def test_upsample_masks_matches_interpolate(hw, c):
    x = (_rng(hw[0] * 7 + hw[1]).standard_normal((2, c, 256, 256)) * 10).astype(F32)
    ref = _torch_upsample(x, hw)
    ours = T.upsample_masks(x, hw)
    assert ours.shape == ref.shape and ours.dtype == F32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    if FMA_CPU and max(hw) >= 128:  # measured: bit-identical there; tiny outputs take other paths
        np.testing.assert_array_equal(ours, ref)
    masks = T.upsample_masks(x, hw, threshold=0.0)
    assert masks.dtype == bool and masks.shape == ref.shape
    disagree = masks != (ref > 0)
    assert np.all(np.abs(ref[disagree]) < 1e-5)


def test_upsample_masks_other_low_res_sizes_and_errors():
    x = _rng(7).standard_normal((1, 1, 64, 48)).astype(F32)
    np.testing.assert_allclose(
        T.upsample_masks(x, (300, 200)), _torch_upsample(x, (300, 200)), atol=1e-5
    )
    with pytest.raises(InvalidInputError, match=r"low_res must be an \[N, C, h, w\] float array"):
        T.upsample_masks(np.zeros((256, 256), F32), (10, 10))
    with pytest.raises(InvalidInputError, match="orig_hw"):
        T.upsample_masks(np.zeros((1, 1, 256, 256), F32), (10, -1))


def _stability_cases() -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(8)
    n = 20
    masks = np.empty((n, 4, 256, 256), F32)
    for i in range(n):  # std 1..3: unstable (ratio ~0.97), 10..50: stable (>= 0.99)
        masks[i] = rng.standard_normal((4, 256, 256)) * [1, 3, 5, 10, 50][i % 5]
    ious = rng.random((n, 4)).astype(F32)
    delta = F32(spec.STABILITY_DELTA)
    flat = masks[:, 0].reshape(n, -1)
    flat[0] = -1.0  # nothing above -delta: stability 1.0 by definition
    flat[1] = 0.0  # nothing above delta, everything above -delta: stability 0
    flat[2] = -1.0
    flat[2, :49000] = 1.0
    flat[2, 49000:50000] = 0.0  # exactly 49000 / 50000 = 0.98: stable (>=)
    flat[3] = -1.0
    flat[3, :48999] = 1.0
    flat[3, 48999:50000] = 0.0  # just below 0.98
    flat[4] = -1.0  # strict >: +delta is only in the union, -delta in neither: 100 / 200
    flat[4, :100] = delta
    flat[4, 100:200] = -delta
    flat[4, 200:300] = np.nextafter(delta, F32(1))
    flat[5] = np.nextafter(-delta, F32(1))  # just above -delta everywhere: stability 0
    ious[6:9, 1:] = 0.5  # ties among tokens 1..3: the first wins
    ious[7, 3] = 0.7
    return masks, ious


def test_select_masks_matches_mask_decoder(sam2_model):
    decoder = sam2_model.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability and not decoder.training
    assert decoder.dynamic_multimask_stability_delta == spec.STABILITY_DELTA
    assert decoder.dynamic_multimask_stability_thresh == spec.STABILITY_THRESH
    masks, ious = _stability_cases()
    ref_masks, ref_ious = decoder._dynamic_multimask_via_stability(
        torch.from_numpy(masks), torch.from_numpy(ious)
    )
    sel, sel_iou = T.select_masks(masks, ious, multimask_output=False)
    assert sel.shape == (20, 1, 256, 256) and sel_iou.shape == (20, 1)
    np.testing.assert_array_equal(sel, ref_masks.numpy())
    np.testing.assert_array_equal(sel_iou, ref_ious.numpy())
    chosen = [int(np.flatnonzero((masks[i] == sel[i, 0]).all(axis=(1, 2)))[0]) for i in range(20)]
    assert chosen[:3] == [0, int(np.argmax(ious[1, 1:])) + 1, 0]  # 2: exactly at the threshold
    assert chosen[3] != 0 and chosen[4] != 0 and chosen[5] != 0
    assert 0 in chosen[10:] and any(k != 0 for k in chosen[10:])  # both regimes occur
    multi, multi_iou = T.select_masks(masks, ious, multimask_output=True)
    np.testing.assert_array_equal(multi, masks[:, 1:])
    np.testing.assert_array_equal(multi_iou, ious[:, 1:])
    multi[:] = 0  # results never alias the inputs
    assert masks[:, 1:].any()


def test_select_masks_errors():
    with pytest.raises(InvalidInputError, match="4 mask tokens"):
        T.select_masks(np.zeros((2, 3, 8, 8), F32), np.zeros((2, 3), F32), True)
    with pytest.raises(InvalidInputError, match=r"iou_all must be a float array of shape \(2, 4\)"):
        T.select_masks(np.zeros((2, 4, 8, 8), F32), np.zeros((2, 3), F32), False)


@pytest.mark.parametrize("return_logits", [False, True])
def test_postprocess_matches_predictor(return_logits, ref_transforms):
    x = (_rng(9).standard_normal((3, 1, 256, 256)) * 40).astype(F32)
    hw = (333, 517)
    masks, low = T.postprocess(x, hw, return_logits=return_logits)
    ref = ref_transforms.postprocess_masks(torch.from_numpy(x), hw)
    if not return_logits:
        ref = ref > 0.0
    np.testing.assert_allclose(masks, ref.numpy(), atol=1e-5)
    if FMA_CPU:
        np.testing.assert_array_equal(masks, ref.numpy())
    assert masks.dtype == (F32 if return_logits else bool)
    np.testing.assert_array_equal(low, torch.clamp(torch.from_numpy(x), -32.0, 32.0).numpy())
    assert np.abs(x).max() > 32 and np.abs(low).max() == 32  # masks came from unclamped logits
    strict, _ = T.postprocess(x, hw, return_logits=False, mask_threshold=5.0)
    np.testing.assert_array_equal(strict, T.upsample_masks(x, hw) > 5.0)


def test_end_to_end_with_sam2_image_predictor(sam2_model, monkeypatch):
    """Our prompt scaling, mask selection and postprocessing around the real decoder.

    The image features are random instead of ``set_image``'s (6 s on CPU): preprocessing is
    compared with the SAM2Transforms that ``set_image`` calls in the tests above.
    """
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(sam2_model)
    hw = (333, 517)
    gen = torch.Generator().manual_seed(10)
    predictor._features = {
        "image_embed": torch.randn(1, 256, 64, 64, generator=gen),
        "high_res_feats": [
            torch.randn(1, 32, 256, 256, generator=gen),
            torch.randn(1, 64, 128, 128, generator=gen),
        ],
    }
    predictor._orig_hw = [hw]
    predictor._is_image_set = True
    seen = {}

    decoder = sam2_model.sam_mask_decoder
    predict_masks = decoder.predict_masks

    def capture_tokens(*args, **kwargs):
        out = predict_masks(*args, **kwargs)
        seen["all"] = out[0].numpy().copy(), out[1].numpy().copy()
        return out

    monkeypatch.setattr(decoder, "predict_masks", capture_tokens)
    points, labels = np.array([[200.5, 100.25], [30.0, 300.0]]), np.array([1, 0])
    box = np.array([10.0, 20.0, 400.0, 300.0])
    for kwargs in ({"point_coords": points, "point_labels": labels}, {"box": box}):
        for multimask in (True, False):
            for return_logits in (False, True):
                masks, ious, low = predictor.predict(
                    **kwargs, multimask_output=multimask, return_logits=return_logits
                )
                sel, sel_iou = T.select_masks(*seen["all"], multimask_output=multimask)
                ours, ours_low = T.postprocess(sel, hw, return_logits=return_logits)
                np.testing.assert_array_equal(sel_iou[0], ious)
                np.testing.assert_array_equal(ours_low[0], low)
                np.testing.assert_allclose(ours[0].astype(F32), masks, atol=1e-5)
                if FMA_CPU:
                    np.testing.assert_array_equal(ours[0].astype(F32), masks)


def test_client_module_does_not_import_torch():
    code = "import sys, sam2_triton.transforms; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- the masks-only session click's transport encoding ------------------------------------------
@pytest.mark.parametrize("hw", [(1, 1), (7, 9), (480, 640), (333, 517)])
def test_mask_bits_round_trip(hw):
    rng = np.random.default_rng(hw[0])
    masks = rng.random((2, 3, *hw)) > 0.5
    blobs = T.encode_mask_bits(masks)
    assert blobs.shape == (2, 3) and all(isinstance(b, bytes) for b in blobs.ravel())
    np.testing.assert_array_equal(T.decode_mask_bits(blobs, hw), masks)


def test_mask_bits_errors_name_the_problem():
    with pytest.raises(InvalidInputError, match=r"bool \[N, C, H, W\]"):
        T.encode_mask_bits(np.zeros((2, 4, 4), bool))
    blobs = T.encode_mask_bits(np.ones((1, 1, 4, 4), bool))
    with pytest.raises(InvalidInputError, match="holds 2 bytes, expected 3 for 4 x 5 pixels"):
        T.decode_mask_bits(blobs, (4, 5))
    with pytest.raises(InvalidInputError, match="not zlib-compressed"):
        T.decode_mask_bits(np.array([[b"junk"]], dtype=object), (4, 4))
