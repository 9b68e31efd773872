"""Client SDK unit tests, no server: a fake tritonclient stands in for Triton.

The fake implements the tritonclient methods the SDK calls, reads the request tensors the SDK
built with the real ``InferInput`` classes (from bytes or from system shared memory), and
answers with outputs derived from the inputs, so ordering and grouping can be checked.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import types
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc
import tritonclient.grpc.aio
import tritonclient.http
from PIL import Image
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from sam2_triton import (
    AsyncSAM2Client,
    EmbeddingMismatchError,
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
    ServerBusyError,
    ServerUnavailableError,
    spec,
)
from sam2_triton._cache import EmbeddingCache
from sam2_triton._core import map_transport_error
from sam2_triton._validate import WirePrompt, plan_decode, validate_prompts

H, W = 12, 16  # small images keep mask upsampling cheap
FP = np.array([11, 22], np.int32)


# --- the fake server ---------------------------------------------------------------------------
class FakeResult:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self._arrays = arrays

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self._arrays.get(name)


class FakeServer:
    """Server state shared by all fake tritonclient instances of one test."""

    def __init__(self) -> None:
        self.image_dtype, self.feature_dtype, self.max_batch_size = "FP32", "FP32", 4
        self.encoder_fp, self.decoder_fp = FP.copy(), FP.copy()
        self.calls: list[tuple[str, Any]] = []
        self.headers: list[dict[str, str] | None] = []
        self.requests: list[dict[str, np.ndarray]] = []
        self.fail: dict[str, BaseException] = {}
        self.shm: dict[str, str] = {}  # registered region name -> key
        self.model_ready = True

    # reading what the SDK built with the real InferInput classes
    def _read(self, inp: Any) -> np.ndarray:
        dtype = triton_to_np_dtype(inp.datatype())
        params = inp._input.parameters if hasattr(inp, "_input") else {}
        if "shared_memory_region" in params:
            region = params["shared_memory_region"].string_param
            size = params["shared_memory_byte_size"].int64_param
            offset = params["shared_memory_offset"].int64_param
            mem = shared_memory.SharedMemory(self.shm[region].lstrip("/"))
            try:
                data = bytes(mem.buf[offset : offset + size])
            finally:
                mem.close()
        else:
            data = inp._raw_content if hasattr(inp, "_raw_content") else inp._raw_data
        return np.frombuffer(data, dtype=dtype).reshape(inp.shape())

    def handle(self, method: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append((method, kwargs.get("model_name") or kwargs.get("name")))
        self.headers.append(kwargs.get("headers"))
        if method in self.fail:
            raise self.fail[method]
        if method == "get_model_metadata":
            enc = kwargs["model_name"] == spec.ENCODER_MODEL
            dt = self.feature_dtype
            if enc:
                return {
                    "inputs": [{"name": "image", "datatype": self.image_dtype}],
                    "outputs": [{"name": "image_embed", "datatype": dt}],
                }
            return {"inputs": [{"name": "image_embed", "datatype": dt}], "outputs": []}
        if method == "get_model_config":
            return {"config": {"max_batch_size": self.max_batch_size}}
        if method in ("is_server_ready", "is_server_live"):
            return True
        if method == "is_model_ready":
            return self.model_ready
        if method == "register_system_shared_memory":
            self.shm[kwargs["name"]] = kwargs["key"]
            return None
        if method == "unregister_system_shared_memory":
            self.shm.pop(kwargs["name"])
            return None
        if method == "infer":
            arrays = {i.name(): self._read(i) for i in kwargs["inputs"]}
            self.requests.append({"model": kwargs["model_name"], **arrays})
            if kwargs["model_name"] == spec.ENCODER_MODEL:
                return self._encode(arrays)
            return self._decode(arrays)
        raise AssertionError(f"unexpected call {method}")

    def _encode(self, a: dict[str, np.ndarray]) -> FakeResult:
        image = a["image"]
        b = image.shape[0]
        dt = triton_to_np_dtype(self.feature_dtype)
        out = {n: np.ones((b, *spec.FEATURE_SHAPES[n]), dt) for n in spec.FEATURE_NAMES}
        mean = image.reshape(b, -1).mean(1).reshape(b, 1, 1, 1)
        out["image_embed"] = (out["image_embed"] * mean).astype(dt)
        out["model_fingerprint"] = np.tile(self.encoder_fp, (b, 1))
        return FakeResult(out)

    def _decode(self, a: dict[str, np.ndarray]) -> FakeResult:
        coords, masks, has = a["point_coords"], a["mask_input"], a["has_mask_input"]
        n, p = coords.shape[:2]
        first_x = coords[:, 0, 0] if p else np.full(n, -1.0, np.float32)
        # iou identifies the prompt (first x in the model frame); tokens add 0, .1, .2, .3
        iou = (first_x[:, None] + np.arange(4, dtype=np.float32) / 10).astype(np.float32)
        m = masks[:, 0] * has[:, None, None]
        low = np.broadcast_to(
            m[:, None] + 1.0 if len(has) == n else m[:1, None] + 1.0, (n, 4, 256, 256)
        )  # read-only, like tritonclient's as_numpy
        return FakeResult(
            {
                "low_res_masks": low.astype(np.float32, copy=False),
                "iou_predictions": iou,
                "object_score_logits": np.full((n, 1), float(p), np.float32),
                "model_fingerprint": self.decoder_fp,
            }
        )

    def client_class(self, aio: bool = False) -> type:
        server = self

        class Fake:
            def __init__(self, url: str, **kwargs: Any) -> None:
                self.kwargs = kwargs

            def __getattr__(self, method: str) -> Any:
                if method == "close":
                    return (lambda: asyncio.sleep(0)) if aio else (lambda: None)
                if aio:

                    async def acall(**kw: Any) -> Any:
                        return server.handle(method, kw)

                    return acall
                return lambda **kw: server.handle(method, kw)

        return Fake

    def count(self, method: str, model: str | None = None) -> int:
        return sum(1 for m, x in self.calls if m == method and (model is None or x == model))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    srv = FakeServer()
    monkeypatch.setattr(tritonclient.grpc, "InferenceServerClient", srv.client_class())
    monkeypatch.setattr(tritonclient.http, "InferenceServerClient", srv.client_class())
    monkeypatch.setattr(tritonclient.grpc.aio, "InferenceServerClient", srv.client_class(True))
    return srv


@pytest.fixture
def client(server: FakeServer):
    with SAM2Client("localhost:8001") as c:
        yield c


def image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def embedding(fp: np.ndarray = FP, hw: tuple[int, int] = (H, W), size: int = 1) -> ImageEmbedding:
    feats = {n: np.zeros((1, *spec.FEATURE_SHAPES[n]), np.float32) for n in spec.FEATURE_NAMES}
    if size != 1:  # tiny fake features for cache tests
        feats = {n: np.zeros(size // 4 // 3, np.float32) for n in spec.FEATURE_NAMES}
    return ImageEmbedding(**feats, orig_hw=hw, fingerprint=fp)


def pt(x: float, y: float, label: int = 1) -> Prompt:
    return Prompt(point_coords=[[x, y]], point_labels=[label])


# --- validation: nothing is sent ----------------------------------------------------------------
BAD_PROMPTS = [
    (Prompt(point_coords=[[W + 0.5, 1]], point_labels=[1]), r"point_coords\[0\].*outside.*16x12"),
    (Prompt(point_coords=[[1, -0.1]], point_labels=[1]), r"point_coords\[0\] = \(1, -0.1\)"),
    (Prompt(point_coords=[[np.nan, 1]], point_labels=[1]), "finite"),
    (Prompt(point_coords=[[np.inf, 1]], point_labels=[1]), "finite"),
    (Prompt(point_coords=[[1, 1]], point_labels=[2]), r"point_labels\[0\] = 2.*1 \(foreground\)"),
    (Prompt(point_coords=[[1, 1]], point_labels=[-1]), r"point_labels\[0\] = -1"),
    (Prompt(point_coords=[[1, 1]], point_labels=[0.5]), "point_labels"),
    (Prompt(point_coords=[[1, 1]]), "point_labels must be supplied"),
    (Prompt(point_labels=[1]), "point_labels given without point_coords"),
    (Prompt(point_coords=[[1, 1], [2, 2]], point_labels=[1]), r"shape \(2,\) to match"),
    (Prompt(point_coords=[1, 1], point_labels=[1]), r"shape \(P, 2\)"),
    (Prompt(point_coords=[[1, 1, 1]], point_labels=[1]), r"shape \(P, 2\)"),
    (Prompt(point_coords="ab", point_labels=[1]), "numeric"),
    (Prompt(box=[5, 1, 2, 8]), "inverted or empty"),
    (Prompt(box=[1, 1, 1, 8]), "inverted or empty"),
    (Prompt(box=[1, 5, 8, 5]), "inverted or empty"),
    (Prompt(box=[1, 1, W + 1, 8]), "box.*outside"),
    (Prompt(box=[-1, 1, 5, 8]), "box.*outside"),
    (Prompt(box=[1, 1, 5]), r"box must have shape \(4,\)"),
    (Prompt(box=[1, np.nan, 5, 8]), "finite"),
    (Prompt(mask_input=np.zeros((1, 64, 64))), r"mask_input must have shape \(1, 256, 256\)"),
    (Prompt(mask_input=np.zeros((2, 256, 256))), "mask_input must have shape"),
    (Prompt(mask_input=np.full((256, 256), np.nan)), "finite"),
    (Prompt(), "empty"),
]


@pytest.mark.parametrize(("prompt", "match"), BAD_PROMPTS)
def test_bad_prompt_is_rejected_before_sending(client, server, prompt, match):
    with pytest.raises(InvalidPromptError, match=match):
        client.decode(embedding(), prompt)
    with pytest.raises(InvalidPromptError, match=r"prompts\[1\]"):
        client.decode(embedding(), [pt(1, 1), prompt])
    assert server.calls == []


def test_closed_range_and_normalized_coords_are_accepted(client, server):
    corners = Prompt(point_coords=[[0, 0], [W, H]], point_labels=[1, 0], box=[0, 0, W, H])
    assert isinstance(client.decode(embedding(), corners), Prediction)
    client.decode(embedding(), pt(0.5, 1.0), normalize_coords=False)
    with pytest.raises(InvalidPromptError, match=r"normalized range \[0, 1\]"):
        client.decode(embedding(), pt(2, 1), normalize_coords=False)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.decode(embedding(), []), InvalidPromptError, "prompts is empty"),
        (lambda c: c.decode("emb", pt(1, 1)), InvalidInputError, "ImageEmbedding"),
        (lambda c: c.decode(embedding(), [pt(1, 1), "x"]), InvalidPromptError, "Prompt"),
        (lambda c: c.decode(embedding(), "p"), InvalidInputError, "Prompt"),
        (lambda c: c.encode_batch([]), InvalidImageError, "empty"),
        (lambda c: c.encode_batch("a.png"), InvalidImageError, "list of images"),
        (lambda c: c.encode(np.zeros((0, 4, 3), np.uint8)), InvalidImageError, "0"),
        (lambda c: c.encode("/nonexistent/x.png"), InvalidImageError, "does not exist"),
    ],
)
def test_bad_calls_are_rejected_before_sending(client, server, call, error, match):
    with pytest.raises(error, match=match):
        call(client)
    assert server.count("infer") == 0


def test_bad_client_options():
    with pytest.raises(InvalidInputError, match="protocol"):
        SAM2Client(protocol="ftp")
    with pytest.raises(InvalidInputError, match="max_prompts_per_request"):
        SAM2Client(max_prompts_per_request=0)
    with pytest.raises(InvalidInputError, match="embedding_cache_bytes"):
        SAM2Client(embedding_cache_bytes=-1)


# --- request planning ---------------------------------------------------------------------------
def test_prompts_grouped_by_point_count_never_padded(client, server):
    prompts = [
        pt(1, 1),
        Prompt(box=[1, 1, 5, 5]),
        pt(2, 2),
        Prompt(box=[1, 1, 5, 5], point_coords=[[3, 3]], point_labels=[0]),
        Prompt(mask_input=np.ones((256, 256))),
    ]
    preds = client.decode(embedding(), prompts)
    decodes = [r for r in server.requests if r["model"] == spec.DECODER_MODEL]
    shapes = sorted(r["point_coords"].shape for r in decodes)
    assert shapes == [(1, 0, 2), (1, 2, 2), (1, 3, 2), (2, 1, 2)]
    for r in decodes:
        assert (r["point_labels"] != -1).all()
    box_pt = next(r for r in decodes if r["point_coords"].shape[1] == 3)
    assert box_pt["point_labels"].tolist() == [[2, 3, 0]]  # box corners before the click
    np.testing.assert_allclose(box_pt["point_coords"][0, 2], [3 / W * 1024, 3 / H * 1024])
    assert [p.object_score_logits for p in preds] == [1, 2, 1, 3, 0]


def _random_point_prompts(n: int, seed: int = 0) -> tuple[list[Prompt], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, counts = rng.uniform(0, W, n), rng.integers(1, 4, n)
    prompts = [
        Prompt(point_coords=[[x, 1.0]] * c, point_labels=[1] * c) for x, c in zip(xs, counts)
    ]
    return prompts, xs, counts


def test_ten_thousand_prompts_make_bounded_requests():
    prompts, _, counts = _random_point_prompts(10_000)
    chunks = plan_decode(validate_prompts(prompts, (H, W)), 64)
    sizes = [len(c.indices) for c in chunks]
    assert max(sizes) == 64 and sum(sizes) == 10_000
    assert len(chunks) == sum(-(-int((counts == c).sum()) // 64) for c in (1, 2, 3))
    seen = np.concatenate([c.indices for c in chunks])
    assert sorted(seen.tolist()) == list(range(10_000))
    for c in chunks:  # one point count per request, never padded
        assert (counts[c.indices] == c.point_coords.shape[1]).all()
        assert c.point_labels.min() >= 0


def test_many_prompts_order_restored(server):
    prompts, xs, counts = _random_point_prompts(1_000, seed=1)
    with SAM2Client(max_prompts_per_request=100) as client:
        preds = client.decode(embedding(), prompts, multimask_output=False)
    decodes = [r for r in server.requests if r["model"] == spec.DECODER_MODEL]
    assert max(len(r["point_coords"]) for r in decodes) == 100
    assert sum(len(r["point_coords"]) for r in decodes) == 1_000
    for r in decodes:  # no prompt has a mask: one shared "no mask" input
        assert r["mask_input"].shape == (1, 1, 256, 256) and r["has_mask_input"].tolist() == [0]
    want_x = xs.astype(np.float32) / np.float32(W) * np.float32(1024)
    got_x = np.array([p.scores[0] for p in preds])  # the fake's iou: first x (+ token / 10)
    assert np.all((got_x - want_x >= -1e-3) & (got_x - want_x <= 0.3 + 1e-3))
    assert [p.object_score_logits for p in preds] == counts.tolist()


def test_plan_decode_masks_shared_or_per_prompt():
    z = np.zeros((1, 2), np.float32)
    lab = np.ones(1, np.int32)
    m1, m2 = np.ones((256, 256), np.float32), np.full((256, 256), 2.0, np.float32)
    (shared,) = plan_decode([WirePrompt(z, lab, m1), WirePrompt(z, lab, m1.copy())], 64)
    assert shared.mask_input.shape == (1, 1, 256, 256) and shared.has_mask_input.tolist() == [1]
    (mixed,) = plan_decode(
        [WirePrompt(z, lab, m1), WirePrompt(z, lab, None), WirePrompt(z, lab, m2)], 64
    )
    assert mixed.mask_input.shape == (3, 1, 256, 256)
    assert mixed.has_mask_input.tolist() == [1, 0, 1]
    assert mixed.mask_input[2, 0, 0, 0] == 2 and mixed.mask_input[1].max() == 0


def test_mask_inputs_reach_their_prompts(client, server):
    masks = [np.full((1, 256, 256), v, np.float32) for v in (3.0, 5.0)]
    prompts = [
        pt(1, 1),
        Prompt(point_coords=[[2, 2]], point_labels=[1], mask_input=masks[0]),
        Prompt(point_coords=[[2, 3]], point_labels=[1], mask_input=masks[1][0]),
    ]
    preds = client.decode(embedding(), prompts, return_logits=True)
    assert [float(p.low_res_logits.max()) for p in preds] == [1.0, 4.0, 6.0]
    assert preds[0].masks.dtype == np.float32 and preds[0].masks.shape == (3, H, W)


def test_prediction_shapes_and_dtypes(client):
    pred = client.decode(embedding(), pt(1, 1))
    assert pred.masks.shape == (3, H, W) and pred.masks.dtype == bool
    assert pred.scores.shape == (3,) and pred.scores.dtype == np.float32
    assert pred.low_res_logits.shape == (3, 256, 256) and pred.low_res_logits.dtype == np.float32
    single = client.decode(embedding(), pt(1, 1), multimask_output=False)
    assert single.masks.shape == (1, H, W)


def test_fingerprint_mismatch_raises(client, server):
    server.decoder_fp = np.array([1, 2], np.int32)
    with pytest.raises(EmbeddingMismatchError, match="other model weights"):
        client.decode(embedding(), pt(1, 1))


# --- encoding and the cache ---------------------------------------------------------------------
def test_encode_batch_one_request_and_cache_by_pixels(client, server, tmp_path: Path):
    imgs = [image(i) for i in range(3)]
    path = tmp_path / "a.png"
    Image.fromarray(imgs[0]).save(path)
    embs = client.encode_batch(imgs)
    assert server.count("infer", spec.ENCODER_MODEL) == 1
    assert server.requests[0]["image"].shape == (3, 3, 1024, 1024)
    assert [e.orig_hw for e in embs] == [(H, W)] * 3
    assert embs[0].image_embed.shape == (1, 256, 64, 64) and not embs[0].image_embed.flags.writeable
    assert embs[0].fingerprint.tolist() == FP.tolist()
    assert len({float(e.image_embed[0, 0, 0, 0]) for e in embs}) == 3
    assert client.encode(str(path)) is embs[0]  # same pixels from a file: cache hit
    assert client.encode(Image.open(path)) is embs[0]
    assert server.count("infer", spec.ENCODER_MODEL) == 1
    assert client.cache_stats().hits == 2


def test_encode_batch_splits_by_max_batch_size_and_dedupes(client, server):
    server.max_batch_size = 2
    imgs = [image(i) for i in range(5)] + [image(0)]
    embs = client.encode_batch(imgs)
    sizes = [r["image"].shape[0] for r in server.requests]
    assert sizes == [2, 2, 1] and embs[5] is embs[0]


@pytest.mark.parametrize(("image_dt", "feat_dt"), [("UINT8", "FP16"), ("FP16", "FP32")])
def test_encoder_dtypes_from_metadata(client, server, image_dt, feat_dt):
    from sam2_triton.transforms import load_image, resize_to_model

    server.image_dtype, server.feature_dtype = image_dt, feat_dt
    emb = client.encode(image(7))
    sent = server.requests[0]["image"]
    resized = resize_to_model(load_image(image(7)))
    if image_dt == "UINT8":
        np.testing.assert_array_equal(sent[0], np.round(resized * 255).astype(np.uint8))
    else:
        np.testing.assert_array_equal(sent[0], resized.astype(np.float16))
    assert emb.dtype == triton_to_np_dtype(feat_dt)
    client.decode(emb, pt(1, 1))
    assert server.requests[-1]["image_embed"].dtype == triton_to_np_dtype(feat_dt)


def test_cache_disabled(server):
    with SAM2Client(embedding_cache_bytes=0) as c:
        c.encode(image(1))
        c.encode(image(1))
    assert server.count("infer", spec.ENCODER_MODEL) == 2


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
    assert cache.stats().nbytes == 2400 and cache.stats().entries == 2
    cache.put(b"big", big)  # larger than the whole budget: not stored, nothing evicted
    assert b"big" not in cache and len(cache) == 2
    cache.put(b"a", a)  # re-insert does not double count
    assert cache.stats().nbytes == 2400


# --- errors ------------------------------------------------------------------------------------
def _ise(msg: str, status: str) -> InferenceServerException:
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


ERROR_TABLE = [
    (_ise("failed to connect to all addresses", "StatusCode.UNAVAILABLE"), ServerUnavailableError),
    (_ise("Socket closed", "StatusCode.UNAVAILABLE"), ServerUnavailableError),
    (
        _ise("DNS resolution failed for nohost:8001", "StatusCode.UNAVAILABLE"),
        ServerUnavailableError,
    ),
    (_ise("Exceeds maximum queue size", "StatusCode.UNAVAILABLE"), ServerBusyError),
    (_ise("Exceeds maximum queue size", "503"), ServerBusyError),
    (_ise("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), RequestTimeoutError),
    (_ise("Request timeout expired", "StatusCode.UNAVAILABLE"), RequestTimeoutError),
    (_ise("Request timeout expired", "400"), RequestTimeoutError),
    (
        _ise("Request for unknown model: 'm' is not found", "StatusCode.NOT_FOUND"),
        ModelNotReadyError,
    ),
    (_ise("Request for unknown model: 'm' is not found", "400"), ModelNotReadyError),
    (
        _ise("Request for unknown model: 'm' has no available versions", "StatusCode.UNAVAILABLE"),
        ModelNotReadyError,
    ),
    (
        _ise("Request for unknown model: 'm' version 1 is not at ready state", "400"),
        ModelNotReadyError,
    ),
    (_ise("model 'm' is not ready", "503"), ModelNotReadyError),
    (
        _ise("unexpected shape for input 'point_coords'", "StatusCode.INVALID_ARGUMENT"),
        InferenceError,
    ),
    (_ise("onnxruntime: Non-zero status code", "500"), InferenceError),
    (_ise("inference request batch-size must be <= 4", "400"), InferenceError),
    (ConnectionRefusedError(111, "Connection refused"), ServerUnavailableError),
    (ConnectionResetError(104, "Connection reset by peer"), ServerUnavailableError),
    (BrokenPipeError(32, "Broken pipe"), ServerUnavailableError),
    (socket.gaierror(-2, "Name or service not known"), ServerUnavailableError),
    (TimeoutError("timed out"), RequestTimeoutError),
    (asyncio.TimeoutError(), RequestTimeoutError),
    (_gevent("timeout"), RequestTimeoutError),
    (_gevent("closed"), ServerUnavailableError),
    (_aiohttp("connector"), ServerUnavailableError),
    (_aiohttp("ServerDisconnectedError"), ServerUnavailableError),
    (_aiohttp("ServerTimeoutError"), RequestTimeoutError),
]


@pytest.mark.parametrize(("exc", "expected"), ERROR_TABLE, ids=lambda v: repr(v)[:60])
def test_error_mapping(exc, expected):
    mapped = map_transport_error(exc, "sam2_decoder")
    assert type(mapped) is expected and mapped.__cause__ is exc


def test_unrelated_errors_are_not_mapped():
    assert map_transport_error(ValueError("bug")) is None
    assert map_transport_error(KeyError("bug")) is None


def test_inference_error_keeps_server_message(client, server):
    server.fail["infer"] = _ise("unexpected shape for input 'point_coords'", "400")
    with pytest.raises(InferenceError, match="unexpected shape for input 'point_coords'") as info:
        client.decode(embedding(), pt(1, 1))
    assert isinstance(info.value.__cause__, InferenceServerException)


def test_wait_until_ready(client, server):
    client.wait_until_ready(1)
    server.model_ready = False
    with pytest.raises(ModelNotReadyError, match="not ready after"):
        client.wait_until_ready(0.3)
    server.fail["is_server_ready"] = _ise("failed to connect", "StatusCode.UNAVAILABLE")
    with pytest.raises(ServerUnavailableError):
        client.wait_until_ready(0.3)


# --- shared memory ------------------------------------------------------------------------------
def test_shared_memory_registered_used_and_released(server):
    with SAM2Client(use_shared_memory=True) as c:
        emb = c.encode(image(2))
        c.decode(emb, [pt(1, 1), pt(2, 2, 0)])
        assert server.count("register_system_shared_memory") == 1
        assert server.shm == {}  # unregistered after the call
        np.testing.assert_array_equal(server.requests[-1]["image_embed"], emb.image_embed)
        server.fail["infer"] = _ise("boom", "500")
        with pytest.raises(InferenceError):
            c.decode(emb, pt(1, 1))
        assert server.count("unregister_system_shared_memory") == 2 and server.shm == {}
    leftovers = [p.name for p in Path("/dev/shm").glob("sam2_triton_*")]
    assert leftovers == []


# --- http, async, predictor ---------------------------------------------------------------------
def test_http_protocol_uses_same_requests(server):
    with SAM2Client(protocol="http") as c:
        pred = c.decode(embedding(), pt(4, 3))
    assert c.config.url == "localhost:8000"
    assert pred.scores.tolist() == pytest.approx([256.1, 256.2, 256.3])  # x=4 -> 256, token 1..3


def test_headers_sent_with_every_call(server):
    with SAM2Client(headers={"X-Api-Key": "k"}) as c:  # gRPC metadata keys must be lowercase
        c.decode(c.encode(image(1)), pt(1, 1))
    assert server.headers and all(h == {"x-api-key": "k"} for h in server.headers)
    server.headers.clear()
    with SAM2Client(protocol="http", headers={"X-Api-Key": "k"}) as c:
        c.decode(embedding(), pt(1, 1))
    assert all(h == {"Accept-Encoding": "identity", "X-Api-Key": "k"} for h in server.headers)


def test_async_client_matches_sync(client, server):
    sync_pred = client.decode(embedding(), [pt(1, 1), Prompt(box=[1, 1, 5, 5])])

    async def run() -> list[Prediction]:
        async with AsyncSAM2Client() as ac:
            emb = await ac.encode(image(3))
            assert emb.orig_hw == (H, W)
            return await ac.decode(embedding(), [pt(1, 1), Prompt(box=[1, 1, 5, 5])])

    async_pred = asyncio.run(run())
    for a, b in zip(sync_pred, async_pred):
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_async_validation_and_signature_parity(server):
    for name in ("__init__", "encode", "encode_batch", "decode", "wait_until_ready"):
        assert inspect.signature(getattr(SAM2Client, name)) == inspect.signature(
            getattr(AsyncSAM2Client, name)
        ), name

    async def run() -> None:
        async with AsyncSAM2Client() as ac:
            with pytest.raises(InvalidPromptError):
                await ac.decode(embedding(), Prompt())

    asyncio.run(run())
    assert server.calls == []


def test_predictor_matches_sam2_shapes(client, server):
    pred = SAM2ImagePredictor(client)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict(point_coords=[[1, 1]], point_labels=[1])
    pred.set_image(image(4))
    assert pred._is_image_set and pred._orig_hw == [(H, W)]
    masks, iou, low = pred.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    assert masks.shape == (3, H, W) and masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert iou.shape == (3,) and low.shape == (3, 256, 256)
    masks, iou, low = pred.predict(
        box=np.array([[1, 1, 5, 5], [2, 2, 8, 8]]), multimask_output=False
    )
    assert masks.shape == (2, 1, H, W) and iou.shape == (2, 1) and low.shape == (2, 1, 256, 256)
    masks, _, _ = pred.predict(
        point_coords=np.ones((4, 2, 2)),
        point_labels=np.ones((4, 2)),
        mask_input=low[:1],
        return_logits=True,
    )
    assert masks.shape == (4, 3, H, W)
    assert pred.get_image_embedding().shape == (1, 256, 64, 64)
    with pytest.raises(InvalidPromptError, match="same number of objects"):
        pred.predict(
            point_coords=np.ones((3, 1, 2)),
            point_labels=np.ones((3, 1)),
            box=np.array([[1, 1, 5, 5], [2, 2, 8, 8]]),
        )
    with pytest.raises(RuntimeError, match="set_image_batch"):
        pred.predict_batch([np.ones((1, 2))], [np.ones(1)])
    pred.set_image_batch([image(5), image(6, 20, 30)])
    m, i, lr = pred.predict_batch([np.ones((1, 2)), np.ones((1, 2))], [np.ones(1), np.ones(1)])
    assert [x.shape for x in m] == [(3, H, W), (3, 20, 30)]
    pred.reset_predictor()
    assert not pred._is_image_set and pred._orig_hw is None
    with pytest.raises(InvalidInputError, match="not supported"):
        SAM2ImagePredictor(client, max_hole_area=10)
