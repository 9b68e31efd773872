"""Fuzzing the client's input handling with hypothesis (issue 6).

Every generated image (numpy arrays of any shape and dtype, NaN/inf, Pillow images of any
mode, encoded bytes and files, mutated and truncated, other Python objects) and every prompt
(random shapes, dtypes, NaN/inf, huge values, ragged lists, wrong types) must give a correct
result or a documented ``SAM2TritonError`` subclass, nothing else. Where an input is known to
be valid it must be accepted, and accepted results are checked, not just survived.

Most examples run the client's validation without a server (``transforms.load_image``,
``prompts.validate_prompts``); a client pointed at a closed port shows that bad prompts are
refused before anything is sent; a few valid cases go end to end through the real server.
Run with ``-s`` to see how many inputs of each kind were tried (``SAM2_TRITON_FUZZ_REPORT=path``
also writes the counts as JSON).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from sam2_triton import ImageEmbedding, Prompt, SAM2Client, spec
from sam2_triton.errors import (
    InvalidImageError,
    InvalidInputError,
    InvalidPromptError,
    SAM2TritonError,
    ServerUnavailableError,
)
from sam2_triton.prompts import plan_decode, validate_prompts
from sam2_triton.transforms import MAX_IMAGE_PIXELS, SUPPORTED_MODES, load_image
from sam2_triton_serve.launcher import find_free_ports

TRIED: Counter[str] = Counter()


def fuzz(examples: int, fixture: bool = False) -> settings:
    """Bounded example counts (the whole module stays under a minute); no deadline."""
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    if fixture:  # module-scoped fixtures, shared on purpose
        checks.append(HealthCheck.function_scoped_fixture)
    return settings(max_examples=examples, deadline=None, suppress_health_check=checks)


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(TRIED.values())
    print(f"\nfuzz: {total} inputs tried")
    for key, n in sorted(TRIED.items()):
        print(f"  {key:40s} {n}")
    path = os.environ.get("SAM2_TRITON_FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps(dict(sorted(TRIED.items())), indent=2) + "\n")


def _check_rgb01(out: np.ndarray, hw: tuple[int, int]) -> None:
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (*hw, 3) and out.flags.c_contiguous
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def _load(kind: str, image: object) -> np.ndarray | None:
    """``load_image(image)``; None when refused with InvalidImageError (anything else fails)."""
    try:
        out = load_image(image)
    except InvalidImageError as exc:
        assert str(exc), "errors carry a message"
        TRIED[f"image {kind}: refused"] += 1
        return None
    TRIED[f"image {kind}: accepted"] += 1
    return out


# --- images: numpy arrays --------------------------------------------------------------------
DTYPES = [
    np.bool_,
    np.uint8,
    np.uint16,
    np.uint32,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
]
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    st.tuples(st.integers(1, 33), st.integers(1, 33), st.sampled_from([1, 2, 3, 4, 5])),
    st.tuples(st.integers(1, 33), st.integers(1, 33)),
)


def _array_verdict(arr: np.ndarray) -> bool:
    """Independent statement of what load_image accepts (see its docstring)."""
    if arr.ndim == 2:
        h, w = arr.shape
    elif arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        h, w = arr.shape[:2]
    else:
        return False
    if h == 0 or w == 0 or h * w > MAX_IMAGE_PIXELS:
        return False
    kind = arr.dtype.kind
    if kind == "u":
        return arr.dtype.itemsize in (1, 2)
    if kind == "f":
        rgb = arr if arr.ndim == 2 else arr[:, :, :3]
        return bool(np.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 1)
    return False


@fuzz(1000)
@given(hnp.arrays(dtype=st.sampled_from(DTYPES), shape=SHAPES))
def test_arrays(arr: np.ndarray) -> None:
    out = _load("array", arr)
    assert (out is not None) == _array_verdict(arr), (arr.dtype, arr.shape)
    if out is None:
        return
    _check_rgb01(out, arr.shape[:2])
    rgb = arr if arr.ndim == 2 else arr[:, :, :3]
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        rgb = rgb[:, :, 0]
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if arr.dtype.kind == "u":
        scale = np.float32(255.0 if arr.dtype.itemsize == 1 else 65535.0)
        expected = rgb.astype(np.float32) / scale
    else:
        expected = rgb.astype(np.float32)
    np.testing.assert_array_equal(out, expected)


def test_huge_arrays_are_refused_without_converting_them() -> None:
    side = int(MAX_IMAGE_PIXELS**0.5) + 1  # a read-only broadcast view: no memory behind it
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(np.broadcast_to(np.uint8(0), (side, side, 3)))


# --- images: Pillow modes ---------------------------------------------------------------------
PIL_MODES = sorted({*SUPPORTED_MODES, "HSV", "LAB", "RGBX", "RGBa", "La", "I;16B", "BGR;24"})


def _pil_image(mode: str, h: int, w: int, seed: int, unit: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "F":  # values in [0, 1] (valid) or in [0, 255] (not)
        data = rng.random((h, w), dtype=np.float32) * (1 if unit else 255)
        return Image.fromarray(data, "F")
    if mode == "I":
        return Image.fromarray(
            rng.integers(
                -70000 if not unit else 0, 70000 if not unit else 65536, (h, w), dtype=np.int32
            ),
            "I",
        )
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    try:
        return rgb.convert(mode)
    except ValueError:
        return Image.new(mode, (w, h))


@fuzz(400)
@given(
    st.sampled_from(PIL_MODES),
    st.integers(1, 24),
    st.integers(1, 24),
    st.integers(0, 99),
    st.booleans(),
)
def test_pil_images(mode: str, h: int, w: int, seed: int, unit: bool) -> None:
    try:
        img = _pil_image(mode, h, w, seed, unit)
    except ValueError:  # a mode this Pillow cannot even create
        return
    out = _load(f"PIL {img.mode}", img)
    if img.mode not in SUPPORTED_MODES:
        assert out is None
        return
    arr = np.asarray(img)
    if img.mode == "F":
        assert (out is not None) == bool(arr.min() >= 0 and arr.max() <= 1)
    elif img.mode == "I":
        assert (out is not None) == bool(arr.min() >= 0 and arr.max() <= 65535)
    else:
        assert out is not None, img.mode
    if out is not None:
        _check_rgb01(out, (h, w))
        if img.mode == "RGB":
            np.testing.assert_array_equal(out, arr.astype(np.float32) / np.float32(255))


# --- images: encoded bytes and files ----------------------------------------------------------
FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA", "EPS"]


def _encode(fmt: str, h: int, w: int, seed: int) -> bytes:
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def encoded_images(draw) -> tuple[bytes, tuple[int, int] | None]:
    """(bytes, (h, w) if the bytes are an unmodified supported encoding else None)."""
    fmt = draw(st.sampled_from(FORMATS))
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    try:
        data = _encode(fmt, h, w, draw(st.integers(0, 9)))
    except OSError:  # EPS needs Ghostscript to write: junk that starts like EPS
        data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" + b"x" * 64
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "junk", "random"]))
    if mutation == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif mutation == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        data = bytes(out)
    elif mutation == "junk":
        data = data + draw(st.binary(min_size=1, max_size=64))
    elif mutation == "random":
        data = draw(st.binary(max_size=256))
    valid = mutation in ("none", "junk") and fmt != "EPS"
    return data, ((h, w) if valid and mutation == "none" else None)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="sam2-fuzz-") as d:
        yield Path(d)


@fuzz(600, fixture=True)
@given(encoded_images(), st.sampled_from(["bytes", "bytearray", "memoryview", "path"]))
def test_encoded_images(scratch: Path, case, how: str) -> None:
    data, hw = case
    if how == "path":
        path = scratch / "image"
        path.write_bytes(data)
        image: object = str(path)
    else:
        image = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[how](data)
    out = _load(f"encoded/{how}", image)
    if hw is not None:
        assert out is not None, "an unmodified supported encoding must decode"
        _check_rgb01(out, hw)
    elif out is not None:
        assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.float32
        assert np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))


def test_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(_png_header(100_000, 100_000))


@fuzz(300)
@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.complex_numbers(),
        st.text(max_size=12),
        st.lists(st.integers(0, 255), max_size=6),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
        st.tuples(st.integers(), st.integers()),
        st.just(object()),
    )
)
def test_other_objects(value) -> None:
    assert _load("other object", value) is None or isinstance(value, str)


# --- prompts ---------------------------------------------------------------------------------
JUNK = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.lists(st.lists(st.floats(), max_size=3), max_size=3),  # ragged, NaN, inf
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    hnp.arrays(
        dtype=st.sampled_from(
            [np.float32, np.float64, np.int64, np.int8, np.bool_, np.complex64, np.uint16]
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ),
    st.sampled_from(
        [
            [[1e300, 1e300]],
            [[float("nan"), 1.0]],
            [[1.0, float("inf")]],
            [[3.5e38, 0.0]],
            [["1", "2"]],
            [[1, 2], [3]],
        ]
    ),
)


@st.composite
def prompt_cases(draw, hw: tuple[int, int]) -> tuple[Prompt, bool]:
    """A prompt and whether it is certainly valid for an image of ``hw`` (pixel coords)."""
    h, w = hw
    if draw(st.booleans()):  # built to be valid
        coords = labels = box = mask = None
        parts = draw(st.sampled_from(["points", "box", "both"]))
        if parts in ("points", "both"):
            n = draw(st.integers(1, 4))
            coords = [[draw(st.floats(0, w)), draw(st.floats(0, h))] for _ in range(n)]
            labels = [draw(st.integers(0, 1)) for _ in range(n)]
            if draw(st.booleans()):
                coords, labels = np.asarray(coords, np.float32), np.asarray(labels, np.int64)
        if parts in ("box", "both"):
            x0, y0 = draw(st.floats(0, w / 2)), draw(st.floats(0, h / 2))
            box = [
                x0,
                y0,
                draw(st.floats(x0 + w / 4 + 0.01, w)),
                draw(st.floats(y0 + h / 4 + 0.01, h)),
            ]
        if draw(st.booleans()):
            mask = np.full((1, 256, 256), draw(st.floats(-40, 40)), np.float32)
        return Prompt(point_coords=coords, point_labels=labels, box=box, mask_input=mask), True
    fields = {}
    for name in ("point_coords", "point_labels", "box", "mask_input"):
        fields[name] = draw(st.one_of(st.none(), JUNK)) if draw(st.booleans()) else None
    return Prompt(**fields), False


def _validate(kind: str, prompts: list[object], hw: tuple[int, int]) -> list | None:
    try:
        wire = validate_prompts(prompts, hw)
    except InvalidPromptError as exc:
        assert str(exc)
        TRIED[f"prompts {kind}: refused"] += 1
        return None
    TRIED[f"prompts {kind}: accepted"] += 1
    return wire


HWS = st.sampled_from([(1, 1), (7, 3), (480, 640), (2000, 30)])


@fuzz(1500)
@given(st.data(), HWS, st.integers(1, 8))
def test_prompts(data, hw: tuple[int, int], max_prompts: int) -> None:
    cases = data.draw(st.lists(prompt_cases(hw), min_size=0, max_size=5))
    extra = data.draw(st.sampled_from([[], [None], ["prompt"], [{"point_coords": [[1, 1]]}]]))
    prompts = [p for p, _ in cases] + extra
    wire = _validate("list", prompts, hw)
    if cases and not extra and all(ok for _, ok in cases):
        assert wire is not None, "valid prompts were refused"
    if wire is None:
        return
    assert len(wire) == len(prompts)
    for p, w in zip(prompts, wire):
        assert w.coords.dtype == np.float32 and w.coords.ndim == 2 and w.coords.shape[1] == 2
        assert np.isfinite(w.coords).all()
        assert (w.coords >= 0).all() and (w.coords <= spec.IMAGE_SIZE * (1 + 1e-6)).all()
        assert w.labels.dtype == np.int32 and set(w.labels.tolist()) <= {0, 1, 2, 3}
        n_box = 0 if p.box is None else 2
        assert list(w.labels[:n_box]) == [2, 3][:n_box]  # box corners first, as SAM 2
        assert w.mask is None or (w.mask.shape == (256, 256) and np.isfinite(w.mask).all())
    chunks = plan_decode(wire, max_prompts)
    seen = sorted(i for c in chunks for i in c.indices.tolist())
    assert seen == list(range(len(wire)))
    for c in chunks:
        n, points = len(c.indices), c.point_coords.shape[1]
        assert 1 <= n <= max_prompts and c.point_coords.shape == (n, points, 2)
        assert all(wire[i].coords.shape[0] == points for i in c.indices.tolist())
        assert c.mask_input.shape[0] in (1, n) and c.has_mask_input.shape == (
            c.mask_input.shape[0],
        )


# --- through a client, before anything is sent --------------------------------------------------
def _fake_embedding(hw: tuple[int, int]) -> ImageEmbedding:
    feats = {n: np.zeros((1, *spec.FEATURE_SHAPES[n]), np.float32) for n in spec.FEATURE_NAMES}
    return ImageEmbedding(**feats, orig_hw=hw, fingerprint=np.zeros(spec.FINGERPRINT_LEN, np.int32))


@pytest.fixture(scope="module")
def nowhere():
    """Clients of a port nothing listens on: every request would fail as unavailable."""
    port = find_free_ports(1)[0]
    clients = {
        p: SAM2Client(f"127.0.0.1:{port}", p, timeout_s=5, use_sessions=False)
        for p in ("grpc", "http")
    }
    yield clients
    for c in clients.values():
        c.close()


@fuzz(300, fixture=True)
@given(st.data(), HWS, st.sampled_from(["grpc", "http"]))
def test_bad_prompts_are_refused_before_sending(nowhere, data, hw, protocol: str) -> None:
    cases = data.draw(st.lists(prompt_cases(hw), min_size=1, max_size=3))
    prompts = [p for p, _ in cases]
    try:
        validate_prompts(prompts, hw)
        valid = True
    except InvalidPromptError:
        valid = False
    single = data.draw(st.booleans()) and len(prompts) == 1
    try:
        nowhere[protocol].decode(_fake_embedding(hw), prompts[0] if single else prompts)
    except InvalidPromptError:
        TRIED["client decode: refused before sending"] += 1
        assert not valid
    except ServerUnavailableError:
        TRIED["client decode: sent (valid)"] += 1
        assert valid, "an invalid prompt reached the network"


@fuzz(200, fixture=True)
@given(
    st.one_of(
        hnp.arrays(dtype=st.sampled_from(DTYPES), shape=SHAPES),
        st.binary(max_size=64),
        st.none(),
        st.integers(),
    ),
    st.sampled_from(["grpc", "http"]),
)
def test_bad_images_are_refused_before_sending(nowhere, image, protocol: str) -> None:
    valid = isinstance(image, np.ndarray) and _array_verdict(image)
    try:
        nowhere[protocol].encode(image)
    except InvalidImageError:
        TRIED["client encode: refused before sending"] += 1
        assert not valid
    except ServerUnavailableError:
        TRIED["client encode: sent (valid)"] += 1
        assert valid


@pytest.mark.parametrize("bad", [[], (), "not a list", 3])
def test_bad_prompt_containers(nowhere, bad) -> None:
    with pytest.raises((InvalidPromptError, InvalidInputError)):
        nowhere["grpc"].decode(_fake_embedding((4, 4)), bad)


# --- end to end, valid inputs ----------------------------------------------------------------
ODD_IMAGES = {
    "1x1 gray uint8": np.full((1, 1), 200, np.uint8),
    "2x700 uint16": np.random.default_rng(1).integers(0, 65536, (2, 700), dtype=np.uint16),
    "5x7 RGBA float64": np.random.default_rng(2).random((5, 7, 4)),
}


@pytest.fixture(scope="module")
def served(triton_server):
    """The odd images encoded by the real server (default client path)."""
    client = SAM2Client(triton_server.grpc_url, "grpc", timeout_s=300)
    embeddings = {k: client.encode(v) for k, v in ODD_IMAGES.items()}
    yield client, embeddings
    client.close()


@pytest.mark.triton
@fuzz(12, fixture=True)
@given(st.data(), st.sampled_from(sorted(ODD_IMAGES)), st.booleans())
def test_valid_inputs_end_to_end(served, data, name: str, multimask: bool) -> None:
    client, embeddings = served
    emb = embeddings[name]
    hw = ODD_IMAGES[name].shape[:2]
    assert tuple(emb.orig_hw) == hw
    cases = data.draw(st.lists(prompt_cases(hw).filter(lambda c: c[1]), min_size=1, max_size=3))
    prompts = [p for p, _ in cases]
    try:
        preds = client.decode(emb, prompts, multimask_output=multimask)
    except SAM2TritonError as exc:  # a valid request must not fail
        pytest.fail(f"{type(exc).__name__}: {exc}")
    TRIED["end to end: decoded"] += len(prompts)
    channels = 3 if multimask else 1
    for p in preds:
        assert p.masks.shape == (channels, *hw) and p.masks.dtype == np.bool_
        assert p.scores.shape == (channels,) and np.isfinite(p.scores).all()
        assert p.low_res_logits.shape == (channels, 256, 256)
        assert np.abs(p.low_res_logits).max() <= 32
        assert np.isfinite(p.object_score_logits)
    again = client.decode(emb, prompts, multimask_output=multimask)  # deterministic
    for a, b in zip(preds, again):
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.low_res_logits, b.low_res_logits)
