"""Client SDK tests that need no server at all: pure functions and local value types.

Nothing here fakes or patches tritonclient. Everything that talks to Triton lives in
``test_client_server.py`` and runs against the real local tritonserver. Where a test goes
through ``SAM2Client``/``AsyncSAM2Client`` here, the client points at a closed port: a bad
argument must raise its typed input error (``InvalidImageError``/``InvalidPromptError``) before
any connection is attempted, while a valid one reaches the network and gets
``ServerUnavailableError`` (the control that proves the port really is closed).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import math
import socket
import struct
import threading
import types
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from sam2_triton import (
    AsyncSAM2Client,
    CacheStats,
    ImageEmbedding,
    InferenceError,
    InvalidImageError,
    InvalidInputError,
    InvalidPromptError,
    ModelNotReadyError,
    Prediction,
    Prompt,
    RequestTimeoutError,
    SAM2Client,
    SAM2ImagePredictor,
    SAM2TritonError,
    ServerBusyError,
    ServerUnavailableError,
    UnknownImageError,
    spec,
)
from sam2_triton._cache import EmbeddingCache, image_key
from sam2_triton._errormap import map_transport_error
from sam2_triton.predictor import prompts_from_sam2_args
from sam2_triton.prompts import WirePrompt, plan_decode, validate_prompt, validate_prompts
from sam2_triton.transforms import MAX_IMAGE_PIXELS, load_image

H, W = 12, 16  # the image size prompts are validated against
FP = np.array([11, 22], np.int32)


def embedding(hw: tuple[int, int] = (H, W), size: int | None = None) -> ImageEmbedding:
    """A locally built embedding (the value type only; no encoder involved)."""
    if size is None:
        feats = {n: np.zeros((1, *spec.FEATURE_SHAPES[n]), np.float32) for n in spec.FEATURE_NAMES}
    else:  # ``size`` bytes of features in total, for cache budget tests
        feats = {n: np.zeros(size // 4 // 3, np.float32) for n in spec.FEATURE_NAMES}
    return ImageEmbedding(**feats, orig_hw=hw, fingerprint=FP)


def pt(x: float, y: float, label: int = 1) -> Prompt:
    return Prompt(point_coords=[[x, y]], point_labels=[label])


def rgb(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["grpc", "http"])
def offline_client(request, closed_port):
    with SAM2Client(f"127.0.0.1:{closed_port}", protocol=request.param, timeout_s=5) as c:
        yield c


# --- prompt validation ---------------------------------------------------------------------------
BAD_PROMPTS = {
    "point right of image": (
        Prompt(point_coords=[[W + 0.5, 1]], point_labels=[1]),
        r"point_coords\[0\].*outside.*16x12",
    ),
    "point above image": (
        Prompt(point_coords=[[1, -0.1]], point_labels=[1]),
        r"point_coords\[0\] = \(1, -0.1\)",
    ),
    "second point below image": (
        Prompt(point_coords=[[1, 1], [1, H + 1]], point_labels=[1, 0]),
        r"point_coords\[1\].*outside",
    ),
    "NaN x": (Prompt(point_coords=[[np.nan, 1]], point_labels=[1]), "finite"),
    "inf y": (Prompt(point_coords=[[1, np.inf]], point_labels=[1]), "finite"),
    "-inf x": (Prompt(point_coords=[[-np.inf, 1]], point_labels=[1]), "finite"),
    "label 2": (
        Prompt(point_coords=[[1, 1]], point_labels=[2]),
        r"point_labels\[0\] = 2.*1 \(foreground\)",
    ),
    "label -1": (Prompt(point_coords=[[1, 1]], point_labels=[-1]), r"point_labels\[0\] = -1"),
    "label 0.5": (Prompt(point_coords=[[1, 1]], point_labels=[0.5]), "point_labels"),
    "label str": (Prompt(point_coords=[[1, 1]], point_labels=["a"]), "point_labels"),
    "coords without labels": (Prompt(point_coords=[[1, 1]]), "point_labels must be supplied"),
    "labels without coords": (Prompt(point_labels=[1]), "point_labels given without point_coords"),
    "more coords than labels": (
        Prompt(point_coords=[[1, 1], [2, 2]], point_labels=[1]),
        r"shape \(2,\) to match",
    ),
    "more labels than coords": (
        Prompt(point_coords=[[1, 1]], point_labels=[1, 0]),
        r"shape \(1,\) to match",
    ),
    "labels 2-d": (Prompt(point_coords=[[1, 1]], point_labels=[[1]]), r"shape \(1,\) to match"),
    "coords 1-d": (Prompt(point_coords=[1, 1], point_labels=[1]), r"shape \(P, 2\)"),
    "coords xyz": (Prompt(point_coords=[[1, 1, 1]], point_labels=[1]), r"shape \(P, 2\)"),
    "coords empty": (Prompt(point_coords=np.zeros((0, 2)), point_labels=[]), r"P >= 1"),
    "coords 3-d": (Prompt(point_coords=[[[1, 1]]], point_labels=[1]), r"shape \(P, 2\)"),
    "coords not numeric": (Prompt(point_coords="ab", point_labels=[1]), "numeric"),
    "box inverted x": (Prompt(box=[5, 1, 2, 8]), "inverted or empty"),
    "box inverted y": (Prompt(box=[1, 8, 5, 2]), "inverted or empty"),
    "box zero width": (Prompt(box=[1, 1, 1, 8]), "inverted or empty"),
    "box zero height": (Prompt(box=[1, 5, 8, 5]), "inverted or empty"),
    "box right of image": (Prompt(box=[1, 1, W + 1, 8]), "box.*outside"),
    "box below image": (Prompt(box=[1, 1, 5, H + 0.01]), "box.*outside"),
    "box negative": (Prompt(box=[-1, 1, 5, 8]), "box.*outside"),
    "box 3 values": (Prompt(box=[1, 1, 5]), r"box must have shape \(4,\)"),
    "box 2 boxes": (Prompt(box=[[1, 1, 5, 5], [2, 2, 6, 6]]), r"box must have shape \(4,\)"),
    "box NaN": (Prompt(box=[1, np.nan, 5, 8]), "finite"),
    "box inf": (Prompt(box=[1, 1, np.inf, 8]), "finite"),
    "mask 64x64": (
        Prompt(point_coords=[[1, 1]], point_labels=[1], mask_input=np.zeros((1, 64, 64))),
        r"mask_input must have shape \(1, 256, 256\)",
    ),
    "mask 2 maps": (
        Prompt(box=[1, 1, 5, 5], mask_input=np.zeros((2, 256, 256))),
        "mask_input must have shape",
    ),
    "mask 4-d": (
        Prompt(box=[1, 1, 5, 5], mask_input=np.zeros((1, 1, 256, 256))),
        "mask_input must have shape",
    ),
    "mask NaN": (
        Prompt(point_coords=[[1, 1]], point_labels=[1], mask_input=np.full((256, 256), np.nan)),
        "finite",
    ),
    "nothing": (Prompt(), "no points and no box"),
    "mask only": (
        Prompt(mask_input=np.zeros((256, 256), np.float32)),
        "a mask_input alone is not supported",
    ),
}


@pytest.mark.parametrize(("prompt", "match"), BAD_PROMPTS.values(), ids=BAD_PROMPTS.keys())
def test_bad_prompt_rejected_and_named(prompt, match):
    with pytest.raises(InvalidPromptError, match=match) as info:
        validate_prompts([prompt], (H, W))
    assert "prompts[0]" in str(info.value)
    with pytest.raises(InvalidPromptError, match=r"prompts\[2\]"):  # the offender is named
        validate_prompts([pt(1, 1), Prompt(box=[1, 1, 5, 5]), prompt], (H, W))


@pytest.mark.parametrize("bad", [None, "x", 3, {"point_coords": [[1, 1]]}, [pt(1, 1)]])
def test_non_prompt_objects_rejected(bad):
    with pytest.raises(InvalidPromptError, match=r"prompts\[1\] must be a sam2_triton.Prompt"):
        validate_prompts([pt(1, 1), bad], (H, W))


def test_zero_prompts_rejected():
    with pytest.raises(InvalidPromptError, match="prompts is empty"):
        validate_prompts([], (H, W))


def test_valid_prompt_in_model_frame():
    """Closed range accepted; box corners (labels 2, 3) before the clicks; x*1024/W, y*1024/H."""
    corners = Prompt(point_coords=[[0, 0], [W, H]], point_labels=[1, 0], box=[0, 0, W, H])
    (wire,) = validate_prompts([corners], (H, W))
    assert wire.labels.tolist() == [2, 3, 1, 0] and wire.labels.dtype == np.int32
    np.testing.assert_allclose(wire.coords, [[0, 0], [1024, 1024], [0, 0], [1024, 1024]])
    assert wire.coords.dtype == np.float32 and wire.mask is None
    (wire,) = validate_prompts([Prompt(point_coords=[[4, 3]], point_labels=[True])], (H, W))
    np.testing.assert_allclose(wire.coords, [[4 / W * 1024, 3 / H * 1024]])
    mask = np.arange(256 * 256, dtype=np.float64).reshape(1, 256, 256)
    wire = validate_prompt(Prompt(box=np.array([[1, 2, 5, 6]]), mask_input=mask), "p", (H, W))
    assert wire.mask.shape == (256, 256) and wire.mask.dtype == np.float32
    np.testing.assert_array_equal(wire.mask, mask[0])


def test_normalized_coords():
    (wire,) = validate_prompts([pt(0.5, 1.0)], (H, W), normalize_coords=False)
    np.testing.assert_allclose(wire.coords, [[512, 1024]])
    with pytest.raises(InvalidPromptError, match=r"normalized range \[0, 1\]"):
        validate_prompts([pt(2, 1)], (H, W), normalize_coords=False)
    with pytest.raises(InvalidPromptError, match=r"normalized range \[0, 1\]"):
        validate_prompts([Prompt(box=[0, 0, 1.5, 1])], (H, W), normalize_coords=False)


# --- request planning ----------------------------------------------------------------------------
def _wire(n_points: int, x: float = 1.0, mask: np.ndarray | None = None) -> WirePrompt:
    coords = np.full((n_points, 2), x, np.float32)
    return WirePrompt(coords, np.ones(n_points, np.int32), mask)


def test_plan_groups_by_point_count_without_padding():
    prompts = [
        pt(1, 1),
        Prompt(box=[1, 1, 5, 5]),
        pt(2, 2),
        Prompt(box=[1, 1, 5, 5], point_coords=[[3, 3]], point_labels=[0]),
        Prompt(point_coords=[[4, 4], [5, 5]], point_labels=[1, 0]),
        pt(6, 6, 0),
    ]
    wire = validate_prompts(prompts, (H, W))
    chunks = plan_decode(wire, 64)
    by_p = {c.point_coords.shape[1]: c for c in chunks}
    assert sorted(by_p) == [1, 2, 3] and len(chunks) == 3
    assert by_p[1].indices.tolist() == [0, 2, 5]  # caller's order kept inside a group
    assert by_p[2].indices.tolist() == [1, 4]
    assert by_p[3].indices.tolist() == [3]
    for c in chunks:
        assert (c.point_labels != -1).all()  # never padded
        assert c.point_coords.dtype == np.float32 and c.point_labels.dtype == np.int32
        assert (
            c.point_coords.shape[:2]
            == c.point_labels.shape
            == (len(c.indices), c.point_coords.shape[1])
        )
        for row, i in enumerate(c.indices):  # each row is exactly the caller's prompt
            np.testing.assert_array_equal(c.point_coords[row], wire[i].coords)
            np.testing.assert_array_equal(c.point_labels[row], wire[i].labels)
    assert by_p[3].point_labels.tolist() == [[2, 3, 0]]  # box corners before the click
    assert by_p[2].point_labels.tolist() == [[2, 3], [1, 0]]


def test_plan_mask_inputs():
    m3, m5 = np.full((256, 256), 3.0, np.float32), np.full((256, 256), 5.0, np.float32)
    none = plan_decode([_wire(1), _wire(1)], 64)[0]  # no masks: one all-zero map, unused
    assert none.mask_input.shape == (1, 1, 256, 256) and not none.mask_input.any()
    assert none.has_mask_input.tolist() == [0.0]
    shared = plan_decode([_wire(1, mask=m3), _wire(1, mask=m3.copy())], 64)[0]
    assert shared.mask_input.shape == (1, 1, 256, 256) and shared.has_mask_input.tolist() == [1.0]
    mixed = plan_decode([_wire(1, mask=m3), _wire(1), _wire(1, mask=m5)], 64)[0]
    assert mixed.mask_input.shape == (3, 1, 256, 256)
    assert mixed.has_mask_input.tolist() == [1.0, 0.0, 1.0]
    assert [float(mixed.mask_input[i].max()) for i in range(3)] == [3.0, 0.0, 5.0]
    assert all(c.mask_input.dtype == np.float32 for c in (none, shared, mixed))


@pytest.mark.parametrize(
    ("n", "limit", "sizes"),
    [(5, 2, [2, 2, 1]), (130, 64, [64, 64, 2]), (64, 64, [64]), (1, 1, [1])],
)
def test_plan_chunks_one_group(n, limit, sizes):
    chunks = plan_decode([_wire(1, x=i) for i in range(n)], limit)
    assert [len(c.indices) for c in chunks] == sizes
    assert np.concatenate([c.indices for c in chunks]).tolist() == list(range(n))


def test_plan_10000_prompts_bounded_and_order_restored():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 6, 10_000)  # 1..5 points per prompt, interleaved
    wire = [_wire(int(p), x=i) for i, p in enumerate(counts)]
    chunks = plan_decode(wire, 64)
    sizes = [len(c.indices) for c in chunks]
    assert max(sizes) <= 64 and sum(sizes) == 10_000
    groups = Counter(int(p) for p in counts)
    assert len(chunks) == sum(math.ceil(g / 64) for g in groups.values())
    # every chunk holds one point count; restoring by ``indices`` gives the caller's order back
    restored: list[float | None] = [None] * len(wire)
    for c in chunks:
        p = c.point_coords.shape[1]
        assert all(counts[i] == p for i in c.indices)
        for row, i in enumerate(c.indices.tolist()):
            assert restored[i] is None  # each prompt planned exactly once
            restored[i] = float(c.point_coords[row, 0, 0])
    assert restored == [float(i) for i in range(10_000)]


# --- error mapping ---------------------------------------------------------------------------
def _ise(msg: str, status: str | None) -> InferenceServerException:
    return InferenceServerException(msg=msg, status=status)


def _aiohttp(name: str) -> BaseException:
    import aiohttp

    if name == "connector":
        key = types.SimpleNamespace(host="localhost", port=1, ssl=None)
        return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    return getattr(aiohttp, name)()


def _gevent(name: str) -> BaseException:
    if name == "timeout":
        import gevent

        return gevent.Timeout()
    from geventhttpclient.response import HTTPConnectionClosed

    return HTTPConnectionClosed("connection closed")


ERROR_TABLE = {  # id -> (exception as raised by tritonclient or its transport, mapped type)
    "grpc refused": (
        _ise("failed to connect to all addresses; Connection refused", "StatusCode.UNAVAILABLE"),
        ServerUnavailableError,
    ),
    "grpc socket closed": (_ise("Socket closed", "StatusCode.UNAVAILABLE"), ServerUnavailableError),
    "grpc dns": (
        _ise("DNS resolution failed for nohost:8001", "StatusCode.UNAVAILABLE"),
        ServerUnavailableError,
    ),
    "grpc unavailable": (_ise("", "StatusCode.UNAVAILABLE"), ServerUnavailableError),
    "http 502": (_ise("Bad Gateway", "502"), ServerUnavailableError),
    "grpc queue full": (
        _ise("Exceeds maximum queue size", "StatusCode.UNAVAILABLE"),
        ServerBusyError,
    ),
    "http queue full": (_ise("Exceeds maximum queue size", "503"), ServerBusyError),
    "grpc exhausted": (_ise("quota", "StatusCode.RESOURCE_EXHAUSTED"), ServerBusyError),
    "http 429": (_ise("slow down", "429"), ServerBusyError),
    "grpc deadline": (
        _ise("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"),
        RequestTimeoutError,
    ),
    "grpc queue timeout": (
        _ise("Request timeout expired", "StatusCode.UNAVAILABLE"),
        RequestTimeoutError,
    ),
    "http queue timeout": (_ise("Request timeout expired", "400"), RequestTimeoutError),
    "http 504": (_ise("Gateway Timeout", "504"), RequestTimeoutError),
    "grpc unknown model": (
        _ise("Request for unknown model: 'm' is not found", "StatusCode.NOT_FOUND"),
        ModelNotReadyError,
    ),
    "http unknown model": (
        _ise("Request for unknown model: 'm' is not found", "400"),
        ModelNotReadyError,
    ),
    "grpc no versions": (
        _ise("Request for unknown model: 'm' has no available versions", "StatusCode.UNAVAILABLE"),
        ModelNotReadyError,
    ),
    "http not ready": (
        _ise("Request for unknown model: 'm' version 1 is not at ready state", "400"),
        ModelNotReadyError,
    ),
    "http 503 not ready": (_ise("model 'm' is not ready", "503"), ModelNotReadyError),
    "grpc unknown image id": (
        _ise(
            "unknown image id 'ab12': not held (evicted or never uploaded)", "StatusCode.NOT_FOUND"
        ),
        UnknownImageError,
    ),
    "http unknown image id": (_ise("unknown image id 'ab12'", "404"), UnknownImageError),
    "grpc lost shm region": (  # NOT_FOUND, but the model is there: re-register, not rediscover
        _ise("Unable to find shared memory region: 'sam2_triton_1_ab'", "StatusCode.NOT_FOUND"),
        InferenceError,
    ),
    "http lost shm region": (
        _ise("Unable to find shared memory region: 'sam2_triton_1_ab'", "400"),
        InferenceError,
    ),
    "grpc bad shape": (
        _ise("unexpected shape for input 'point_coords'", "StatusCode.INVALID_ARGUMENT"),
        InferenceError,
    ),
    "http model error": (_ise("onnxruntime: Non-zero status code", "500"), InferenceError),
    "http bad batch": (_ise("inference request batch-size must be <= 4", "400"), InferenceError),
    "no status": (_ise("something odd", None), InferenceError),
    "refused": (ConnectionRefusedError(111, "Connection refused"), ServerUnavailableError),
    "reset": (ConnectionResetError(104, "Connection reset by peer"), ServerUnavailableError),
    "broken pipe": (BrokenPipeError(32, "Broken pipe"), ServerUnavailableError),
    "dns": (socket.gaierror(-2, "Name or service not known"), ServerUnavailableError),
    "TimeoutError": (TimeoutError("timed out"), RequestTimeoutError),
    "asyncio timeout": (asyncio.TimeoutError(), RequestTimeoutError),
    "gevent timeout": (_gevent("timeout"), RequestTimeoutError),
    "geventhttpclient closed": (_gevent("closed"), ServerUnavailableError),
    "aiohttp connector": (_aiohttp("connector"), ServerUnavailableError),
    "aiohttp disconnected": (_aiohttp("ServerDisconnectedError"), ServerUnavailableError),
    "aiohttp timeout": (_aiohttp("ServerTimeoutError"), RequestTimeoutError),
}


@pytest.mark.parametrize(("exc", "expected"), ERROR_TABLE.values(), ids=ERROR_TABLE.keys())
def test_error_mapping(exc, expected):
    mapped = map_transport_error(exc, "sam2_decoder")
    assert type(mapped) is expected and mapped.__cause__ is exc
    assert isinstance(mapped, SAM2TritonError)


def test_error_mapping_keeps_the_server_message():
    exc = _ise("unexpected shape for input 'point_coords'", "StatusCode.INVALID_ARGUMENT")
    mapped = map_transport_error(exc, "sam2_decoder")
    assert "sam2_decoder" in str(mapped) and "unexpected shape for input 'point_coords'" in str(
        mapped
    )


@pytest.mark.parametrize(
    "name, never_ran",
    [
        ("grpc queue timeout", True),
        ("http queue timeout", True),
        ("grpc deadline", False),
        ("http 504", False),
        ("TimeoutError", False),
        ("asyncio timeout", False),
    ],
)
def test_only_the_servers_queue_timeout_never_ran(name: str, never_ran: bool):
    assert map_transport_error(ERROR_TABLE[name][0]).never_ran is never_ran


def test_unrelated_errors_are_not_mapped():
    assert map_transport_error(ValueError("bug")) is None
    assert map_transport_error(KeyError("bug")) is None
    assert map_transport_error(RuntimeError("bug")) is None


def test_error_hierarchy():
    assert issubclass(ServerUnavailableError, ConnectionError)
    assert issubclass(RequestTimeoutError, TimeoutError)
    assert issubclass(InvalidPromptError, ValueError) and issubclass(InvalidImageError, ValueError)


# --- the embedding cache -------------------------------------------------------------------------
def test_lru_byte_budget_eviction():
    cache = EmbeddingCache(max_bytes=3000)
    a, b, c = (embedding(size=1200) for _ in range(3))
    big = embedding(size=4000)
    assert a.nbytes == 1200
    cache.put(b"a", a)
    cache.put(b"b", b)
    assert cache.get(b"a") is a  # a is now the most recently used
    cache.put(b"c", c)  # 3600 > 3000: evict the least recently used, b
    assert b"b" not in cache and cache.get(b"a") is a and cache.get(b"c") is c
    assert cache.stats() == CacheStats(hits=3, misses=0, entries=2, nbytes=2400, max_bytes=3000)
    cache.put(b"big", big)  # larger than the whole budget: not stored, nothing evicted
    assert b"big" not in cache and len(cache) == 2
    cache.put(b"a", a)  # re-insert does not double count
    assert cache.stats().nbytes == 2400
    assert cache.get(b"b") is None and cache.stats().misses == 1
    cache.clear()
    assert len(cache) == 0 and cache.stats().nbytes == 0 and cache.stats().hits == 3


def test_cache_disabled():
    cache = EmbeddingCache(0)
    assert not cache.enabled
    cache.put(b"a", embedding(size=12))
    assert len(cache) == 0 and cache.get(b"a") is None


def test_cache_thread_safety():
    cache = EmbeddingCache(max_bytes=10 * 1200)
    embs = [embedding(size=1200) for _ in range(40)]
    gets = 0
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(seed: int) -> None:
        nonlocal gets
        rng = np.random.default_rng(seed)
        barrier.wait()
        n = 0
        for _ in range(2000):
            k = int(rng.integers(0, 40))
            if rng.random() < 0.5:
                cache.put(str(k).encode(), embs[k])
            else:
                got = cache.get(str(k).encode())
                assert got is None or got is embs[k]
                n += 1
        with lock:
            gets += n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = cache.stats()
    assert st.hits + st.misses == gets
    assert st.entries == len(cache) <= 10 and st.nbytes == 1200 * st.entries <= st.max_bytes


def test_image_key_same_pixels_any_source(tmp_path: Path):
    """The cache key is over decoded pixels: path, bytes, PIL and array of one picture agree."""
    arr = rgb(3, 20, 30)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    keys = {
        image_key(load_image(src))
        for src in (arr, str(path), path, path.read_bytes(), Image.open(path))
    }
    assert len(keys) == 1
    assert image_key(load_image(rgb(4, 20, 30))) not in keys
    assert image_key(load_image(arr[:, :29])) not in keys  # shape is part of the key
    assert image_key(load_image(arr.reshape(30, 20, 3))) not in keys


# --- value types ---------------------------------------------------------------------------------
def test_image_embedding():
    feats = {n: np.ones((1, *spec.FEATURE_SHAPES[n]), np.float16) for n in spec.FEATURE_NAMES}
    emb = ImageEmbedding(**feats, orig_hw=(np.int64(5), 7.0), fingerprint=np.array([1, -1]))
    assert emb.orig_hw == (5, 7) and all(type(v) is int for v in emb.orig_hw)
    assert emb.dtype == np.float16
    assert emb.nbytes == 2 * (256 * 64 * 64 + 32 * 256 * 256 + 64 * 128 * 128)
    assert list(emb.features()) == list(spec.FEATURE_NAMES)
    for name in (*spec.FEATURE_NAMES, "fingerprint"):
        assert not getattr(emb, name).flags.writeable
    assert feats["image_embed"].flags.writeable  # the caller's arrays keep their flags
    with pytest.raises(ValueError):
        emb.image_embed[0, 0, 0, 0] = 2
    with pytest.raises(AttributeError):
        emb.orig_hw = (1, 1)
    assert "fingerprint=00000001ffffffff" in repr(emb) and "float16" in repr(emb)
    assert embedding().nbytes == 4 * (256 * 64 * 64 + 32 * 256 * 256 + 64 * 128 * 128)


def test_prediction_and_prompt():
    pred = Prediction(
        masks=np.zeros((3, H, W), bool),
        scores=np.array([0.5, 0.25, 0.125], np.float32),
        low_res_logits=np.zeros((3, 256, 256), np.float32),
        object_score_logits=1.5,
    )
    assert repr(pred) == (
        "Prediction(masks=bool[3, 12, 16], scores=[0.5, 0.25, 0.125], object_score_logits=1.5)"
    )
    with pytest.raises(AttributeError):
        pred.masks = None
    p = Prompt(box=[1, 2, 3, 4])
    assert p.point_coords is None and p.point_labels is None and p.mask_input is None
    with pytest.raises(AttributeError):
        p.box = None


# --- sync / async API parity ---------------------------------------------------------------------
def _public(cls: type) -> dict[str, object]:
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_") or n == "__init__"}


def test_sync_async_api_parity():
    sync_api, async_api = _public(SAM2Client), _public(AsyncSAM2Client)
    assert set(sync_api) == set(async_api)
    for name, method in sync_api.items():
        assert inspect.signature(method) == inspect.signature(async_api[name]), name
    for name in ("wait_until_ready", "encode", "encode_batch", "decode", "close"):
        assert inspect.iscoroutinefunction(async_api[name]), name
        assert not inspect.iscoroutinefunction(sync_api[name]), name
    for name in ("cache_stats", "clear_cache"):
        assert not inspect.iscoroutinefunction(async_api[name]), name
    assert hasattr(SAM2Client, "__enter__") and hasattr(AsyncSAM2Client, "__aenter__")


# --- client options ------------------------------------------------------------------------------
def test_bad_client_options():
    with pytest.raises(InvalidInputError, match="protocol"):
        SAM2Client(protocol="ftp")
    with pytest.raises(InvalidInputError, match="max_prompts_per_request"):
        SAM2Client(max_prompts_per_request=0)
    with pytest.raises(InvalidInputError, match="embedding_cache_bytes"):
        SAM2Client(embedding_cache_bytes=-1)
    with pytest.raises(InvalidInputError, match="timeout_s"):
        SAM2Client(timeout_s=0)
    with pytest.raises(InvalidInputError, match="headers"):
        SAM2Client(headers={"x": 1})
    with pytest.raises(InvalidInputError, match="url is empty"):
        SAM2Client("http://")


def test_url_schemes_and_default_ports():
    with SAM2Client(protocol="http") as c:
        assert c.config.url == "localhost:8000" and not c.config.ssl
    with SAM2Client() as c:
        assert c.config.url == "localhost:8001" and c.config.protocol == "grpc"
    with SAM2Client("http://example:9000/", protocol="http") as c:
        assert c.config.url == "example:9000" and not c.config.ssl
    cfg = AsyncSAM2Client("grpcs://example:9001").config
    assert cfg.url == "example:9001" and cfg.ssl


# --- bad inputs are rejected before any connection (closed port) --------------------------------
def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims ``width x height`` (nothing beyond it is decoded)."""
    data = bytearray(_png_bytes(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


BAD_IMAGES = {
    "corrupt bytes": (lambda: b"this is not an image", "not a decodable image"),
    "truncated png": (lambda: _png_bytes(rgb(1, 64, 64))[:-40], "corrupt or truncated"),
    "empty bytes": (lambda: b"", "empty"),
    "0-sized array": (lambda: np.zeros((0, 4, 3), np.uint8), "empty"),
    "0-width array": (lambda: np.zeros((4, 0), np.uint8), "empty"),
    "over the pixel limit": (
        lambda: _png_claiming(MAX_IMAGE_PIXELS // 8000 + 1, 8000),
        rf"too large: 8000 x 8001 = 64008000 pixels, limit is MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}",
    ),
    "unsupported PIL mode": (lambda: Image.new("HSV", (4, 4)), "unsupported mode 'HSV'"),
    "bool array": (lambda: np.zeros((4, 4, 3), bool), "boolean"),
    "int64 array": (lambda: np.zeros((4, 4, 3), np.int64), "unsupported dtype"),
    "2 channels": (lambda: np.zeros((4, 4, 2), np.uint8), "shape"),
    "NaN float": (lambda: np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    "float > 1": (lambda: np.full((4, 4, 3), 2.0, np.float32), r"\[0, 1\]"),
    "missing file": (lambda: "/nonexistent/x.png", "does not exist"),
    "not an image type": (lambda: 42, "unsupported image type"),
}


@pytest.mark.parametrize(("make", "match"), BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
def test_bad_image_rejected_before_connecting(offline_client, make, match):
    with pytest.raises(InvalidImageError, match=match):
        offline_client.encode(make())
    with pytest.raises(InvalidImageError, match=match):  # one bad image fails the whole batch
        offline_client.encode_batch([make(), rgb(1)])


def test_bad_calls_rejected_before_connecting(offline_client):
    with pytest.raises(InvalidImageError, match="images is empty"):
        offline_client.encode_batch([])
    with pytest.raises(InvalidImageError, match="list of images"):
        offline_client.encode_batch("a.png")
    with pytest.raises(InvalidInputError, match="ImageEmbedding"):
        offline_client.decode("emb", pt(1, 1))
    with pytest.raises(InvalidInputError, match="a Prompt or a list of Prompts"):
        offline_client.decode(embedding(), "p")
    with pytest.raises(InvalidPromptError, match="prompts is empty"):
        offline_client.decode(embedding(), [])
    for prompt, match in BAD_PROMPTS.values():
        with pytest.raises(InvalidPromptError, match=match):
            offline_client.decode(embedding(), prompt)
    # the control: valid arguments do reach the (closed) port
    with pytest.raises(ServerUnavailableError):
        offline_client.encode(rgb(1))
    with pytest.raises(ServerUnavailableError):
        offline_client.decode(embedding(), pt(1, 1))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_bad_inputs_rejected_before_connecting(closed_port, protocol):
    async def run() -> None:
        url = f"127.0.0.1:{closed_port}"
        async with AsyncSAM2Client(url, protocol=protocol, timeout_s=5) as ac:
            with pytest.raises(InvalidImageError, match="not a decodable image"):
                await ac.encode(b"not an image")
            with pytest.raises(InvalidPromptError, match="no points and no box"):
                await ac.decode(embedding(), Prompt())
            with pytest.raises(ServerUnavailableError):
                await ac.encode(rgb(1))

    asyncio.run(run())


def test_closed_client_refuses_calls(closed_port):
    c = SAM2Client(f"127.0.0.1:{closed_port}")
    c.close()
    with pytest.raises(RuntimeError, match="closed"):
        c.encode(rgb(1))


# --- SAM2ImagePredictor argument handling (pure) --------------------------------------------------
def test_predictor_prompts_from_sam2_args():
    one = prompts_from_sam2_args(np.array([[1, 2], [3, 4]]), np.array([1, 0]), None, None)
    assert len(one) == 1 and one[0].point_coords.shape == (2, 2) and one[0].box is None
    many = prompts_from_sam2_args(
        None, None, np.array([[1, 1, 5, 5], [2, 2, 8, 8]]), np.zeros((1, 256, 256))
    )
    assert len(many) == 2 and all(p.mask_input.shape == (1, 256, 256) for p in many)
    with pytest.raises(InvalidPromptError, match="same number of objects"):
        prompts_from_sam2_args(
            np.ones((3, 1, 2)), np.ones((3, 1)), np.array([[1, 1, 5, 5], [2, 2, 8, 8]]), None
        )
    with pytest.raises(InvalidPromptError, match="point_labels must be supplied"):
        prompts_from_sam2_args(np.ones((1, 2)), None, None, None)
    with pytest.raises(InvalidPromptError, match="holds 3 masks for 2 objects"):
        prompts_from_sam2_args(None, None, np.ones((2, 4)), np.zeros((3, 1, 256, 256)))


def test_predictor_state_errors(closed_port):
    with pytest.raises(InvalidInputError, match="not supported"):
        SAM2ImagePredictor(url=f"127.0.0.1:{closed_port}", max_hole_area=10)
    with pytest.raises(InvalidInputError, match="must be a SAM2Client"):
        SAM2ImagePredictor("127.0.0.1:1")
    with SAM2ImagePredictor(url=f"127.0.0.1:{closed_port}") as pred:
        with pytest.raises(RuntimeError, match="set_image"):
            pred.predict(point_coords=[[1, 1]], point_labels=[1])
        with pytest.raises(RuntimeError, match="set_image"):
            pred.get_image_embedding()
        with pytest.raises(RuntimeError, match="set_image_batch"):
            pred.predict_batch([np.ones((1, 2))], [np.ones(1)])
        with pytest.raises(InvalidImageError, match="list of images"):
            pred.set_image_batch((rgb(1),))
        with pytest.raises(InvalidImageError):
            pred.set_image(b"junk")


# --- the largest prompt: one constant for the SDK, the server models and the TRT profile ------
def test_largest_prompt_is_checked_before_sending():
    hw = (100, 100)
    n = spec.MAX_CLICKS_PER_PROMPT
    ok = Prompt(point_coords=np.ones((n, 2)), point_labels=np.ones(n), box=[1, 1, 9, 9])
    (wire,) = validate_prompts([ok], hw)
    assert wire.coords.shape == (spec.MAX_PROMPT_POINTS, 2)  # the decoder's largest P
    big = Prompt(point_coords=np.ones((n + 1, 2)), point_labels=np.ones(n + 1))
    with pytest.raises(InvalidPromptError, match=f"at most spec.MAX_CLICKS_PER_PROMPT = {n}"):
        validate_prompts([big], hw)
    with pytest.raises(InvalidInputError, match="max_prompts_per_request must be 1 to"):
        SAM2Client(max_prompts_per_request=spec.MAX_PROMPTS_PER_REQUEST + 1)
