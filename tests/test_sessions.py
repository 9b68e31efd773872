"""Sessions (``sam2_session``) and one-shot REST segmentation (``sam2_segment``).

Unit tests of ``sam2_triton_server`` without Triton (the feature store, request checks, JSON
prompts through the SDK's validation, COCO RLE by pycocotools, the segmentation pipeline on a
fake decoder) and tests against the real local tritonserver: masks equal to the features path,
``multimask_output`` selecting the tokens, eviction under a small byte budget with transparent
re-upload, a restart mid-use, concurrent first requests sharing one encoder run, the budget
under load, clear errors, and REST segmentation equal to the client's masks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from sam2_triton import (
    ImageEmbedding,
    InvalidInputError,
    ModelNotReadyError,
    Prompt,
    RemoteEmbedding,
    SAM2Client,
    SAM2ImagePredictor,
    UnknownImageError,
    spec,
    transforms,
)
from sam2_triton._core import map_transport_error
from sam2_triton.samples import sample_image
from sam2_triton.spec import session_image_id as image_id
from sam2_triton_serve import repository
from sam2_triton_server import segment
from sam2_triton_server._triton import RequestError
from sam2_triton_server.segment import image_bytes, parse_prompts, wire_prompts
from sam2_triton_server.session_wire import check_image_id, check_inputs
from sam2_triton_server.store import Entry, FeatureStore

from .triton_helpers import Requests, metric, metrics_text

T = 600.0  # client timeout: CPU encodes on a busy 2-core machine can take a minute
FEATURE_BYTES = sum(int(np.prod(s)) * 4 for s in spec.FEATURE_SHAPES.values())  # 16.8 MB
PROMPTS = [
    Prompt(point_coords=[[60, 40]], point_labels=[1]),
    Prompt(box=[10, 20, 150, 100]),
    Prompt(point_coords=[[90, 50], [20, 30]], point_labels=[1, 0], box=[5, 5, 170, 110]),
]


def picture(seed: int, h: int = 120, w: int = 180) -> np.ndarray:
    """A small smooth RGB picture (uint8), different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / (7 + seed % 5)), np.cos(yy / 9.0), np.sin((xx + yy) / 13.0)], -1)
    noisy = 127.5 * (1 + base) + rng.normal(0, 12, (h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def rle_decode(rle: dict) -> np.ndarray:
    """A COCO RLE of the JSON result back to a bool mask, by pycocotools."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def same_predictions(a, b) -> None:
    for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
        np.testing.assert_array_equal(x.masks, y.masks)
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.low_res_logits, y.low_res_logits)


# =============================================================================================
# unit tests: no server
# =============================================================================================
def _masks() -> Iterator[np.ndarray]:
    rng = np.random.default_rng(0)
    for h, w in ((1, 1), (1, 7), (9, 1), (5, 4), (37, 61), (240, 320)):
        yield np.zeros((h, w), bool)
        yield np.ones((h, w), bool)
        yield rng.random((h, w)) < 0.5
        yield rng.random((h, w)) < 0.02
        yy, xx = np.mgrid[0:h, 0:w]
        yield (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 3) ** 2


@pytest.mark.parametrize("index", range(6))
def test_rle_of_a_mask_stack_round_trips(index: int) -> None:
    """``segment.rle`` hands a [C, H, W] stack to pycocotools in its layout (H x W x C, Fortran)."""
    masks = list(_masks())[index * 5 : index * 5 + 5]
    stack = np.stack(masks)
    encoded = segment.rle(stack)
    assert len(encoded) == len(masks)
    for rle, mask in zip(encoded, masks):
        assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
        np.testing.assert_array_equal(rle_decode(rle), mask)
    json.dumps(encoded)  # plain JSON


def _entry(nbytes: int, tag: int = 0) -> Entry:
    return Entry({"image_embed": np.full(3, tag)}, (10, 20), np.array([1, 2], np.int32), nbytes)


def test_feature_store_is_an_lru_bounded_by_bytes() -> None:
    events: list[tuple[str, dict]] = []
    store = FeatureStore(100, lambda event, **v: events.append((event, v)))
    for key in "abc":
        assert store.claim(key)[0] == "mine"
        store.finish(key, _entry(40))
    assert len(store) == 2 and store.nbytes == 80  # "a" evicted for "c"
    assert store.get("a", "decode") is None
    assert store.get("b", "decode") is not None  # b is now the most recently used
    state, _ = store.claim("d")
    store.finish("d", _entry(40))
    assert store.get("c", "decode") is None and store.get("b", "decode") is not None
    assert [e for e, _ in events].count("evict") == 2
    sizes = [v for e, v in events if e == "size"]
    assert all(v["nbytes"] <= 100 for v in sizes) and sizes[-1] == {"images": 2, "nbytes": 80}
    hits = [v["op"] for e, v in events if e == "hit"]
    misses = [v["op"] for e, v in events if e == "miss"]
    assert hits == ["decode", "decode"] and misses.count("encode") == 4


def test_feature_store_coalesces_concurrent_claims() -> None:
    store = FeatureStore(100)
    assert store.claim("a")[0] == "mine"
    state, pending = store.claim("a")
    assert state == "wait" and not pending.done.is_set()
    waiter = threading.Thread(target=pending.done.wait)
    waiter.start()
    store.finish("a", _entry(10, tag=7))
    waiter.join(5)
    assert pending.entry.tensors["image_embed"][0] == 7
    assert store.claim("a")[0] == "held"


def test_feature_store_reports_errors_to_waiters_and_refuses_oversized_entries() -> None:
    store = FeatureStore(100)
    store.claim("a")
    _, pending = store.claim("a")
    store.finish("a", None, RequestError("encoder down", "INTERNAL"))
    assert pending.error is not None and "encoder down" in str(pending.error)
    assert store.claim("a")[0] == "mine"  # a failed encode is not remembered
    _, pending = store.claim("a")
    store.finish("a", _entry(101))
    assert "more than the whole session store" in str(pending.error) and len(store) == 0
    with pytest.raises(ValueError, match="> 0"):
        FeatureStore(0)


def test_image_id_is_the_documented_sha256() -> None:
    """The id recipe of docs/sessions.md (spec.session_image_id, which server and client use)."""
    wire = np.random.default_rng(1).random((3, 8, 8), dtype=np.float32)
    want = hashlib.sha256(
        spec.SESSION_ID_SALT + wire.tobytes() + np.array([480, 640], "<i4").tobytes()
    ).hexdigest()
    assert image_id(wire, (480, 640)) == want and len(want) == spec.SESSION_ID_LEN
    assert image_id(wire, (480, 641)) != want  # the size is part of the id


@pytest.mark.parametrize(
    "bad", [b"", b"abc", b"A" * 64, b"g" * 64, "é" * 64, b"0" * 65, b"0" * 100_000]
)
def test_malformed_ids_are_rejected(bad) -> None:
    with pytest.raises(RequestError, match="64 lowercase hex characters") as info:
        check_image_id(bad)
    assert len(str(info.value)) < 300  # a 100 kB id is not echoed back
    assert check_image_id(b"0123456789abcdef" * 4) == "0123456789abcdef" * 4


def _parse_and_check(raw: bytes, orig_hw: tuple[int, int] = (30, 40)):
    prompts, multimask, fmt = parse_prompts(raw)
    return wire_prompts(prompts, orig_hw), multimask, fmt


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        (b"not json", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"point": [[1, 2]]}', "unknown key"),
        (b'{"points": [[1, 2]]}', "together"),
        (b'{"points": [[1, 2, 3]], "labels": [1]}', r"prompts.points must have shape \(P, 2\)"),
        (b'{"points": "ab", "labels": [1]}', "prompts.points must be a numeric"),
        (b'{"points": [[1, 2], [3]], "labels": [1, 1]}', "prompts.points must be a numeric"),
        (b'{"points": [[1, 2], [3, 4]], "labels": [1]}', r"prompts.labels must have shape \(2,\)"),
        (b'{"points": [[1, 2]], "labels": [2]}', r"prompts.labels\[0\] = 2; labels must be 1"),
        (b'{"points": [[1, NaN]], "labels": [1]}', r"prompts.points\[0, 1\] is nan.*NaN"),
        (b'{"points": [[50, 5]], "labels": [1]}', "outside the 40x30"),
        (json.dumps({"points": [[1, 1]] * 65, "labels": [1] * 65}).encode(), "holds 65 points"),
        (b'{"box": [5, 5, 1, 9]}', "inverted"),
        (b'{"objects": [{"box": [0, 0, 1]}]}', r"prompts.objects\[0\].box must have shape"),
        (b'{"multimask": "yes", "box": [0, 0, 1, 1]}', "true or false"),
        (b'{"format": "tiff", "box": [0, 0, 1, 1]}', "format"),
        (b"{}", "no points and no box"),
        (b'{"points": [[1, 1]], "labels": [1], "objects": []}', "both 'objects'"),
        (b'{"objects": [], "multimask": true}', "1 to"),
        (b'{"objects": [{"box": [0, 0, 1, 1]}], "box": [0, 0, 1, 1]}', "both 'objects'"),
        (b'{"objects": [{"box": [0, 0, 1, 1], "mask": 1}]}', r"objects\[0\] has unknown key"),
    ],
)
def test_segment_prompt_errors_name_the_field(prompts: bytes, match: str) -> None:
    """JSON checks here, value checks by the SDK's validate_prompt, in the JSON's own names."""
    with pytest.raises(RequestError, match=match) as info:
        _parse_and_check(prompts)
    assert "point_coords" not in str(info.value) and "point_labels" not in str(info.value)
    assert info.value.code == "INVALID_ARG"


def test_segment_prompts_defaults_and_objects() -> None:
    wire, multimask, fmt = _parse_and_check(b'{"points": [[3, 4]], "labels": [1]}')
    assert (len(wire), multimask, fmt) == (1, False, "rle")
    doc = {
        "objects": [{"box": [0, 0, 5, 5]}, {"points": [[1, 1]], "labels": [0]}],
        "multimask": True,
        "format": "png",
    }
    wire, multimask, fmt = _parse_and_check(json.dumps(doc).encode(), (10, 20))
    assert (len(wire), multimask, fmt) == (2, True, "png")
    # the SDK's wire frame: box corners as labels 2, 3; x * 1024 / W, y * 1024 / H
    np.testing.assert_array_equal(wire[0].labels, [2, 3])
    np.testing.assert_allclose(wire[0].coords, [[0, 0], [256, 512]])
    np.testing.assert_allclose(wire[1].coords, [[51.2, 102.4]], rtol=1e-6)
    assert wire[1].labels.tolist() == [0]


def test_segment_image_element_accepts_raw_base64_and_data_urls() -> None:
    raw = png(picture(0, 4, 5))
    b64 = base64.b64encode(raw)
    assert image_bytes(raw) == raw
    assert image_bytes(b64) == raw
    assert image_bytes(b64[:20] + b"\n" + b64[20:]) == raw  # wrapped base64 (no -w0)
    assert image_bytes(b"data:image/png;base64," + b64) == raw
    with pytest.raises(RequestError, match="empty"):
        image_bytes(b"")


def _decode_inputs(**extra: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "image_id": np.array([b"0" * 64], object),
        "point_coords": np.zeros((2, 1, 2), np.float32),
        "point_labels": np.ones((2, 1), np.int32),
        **extra,
    }


def test_session_decode_checks_multimask_output() -> None:
    inputs = _decode_inputs(multimask_output=np.array([True]))
    check_inputs("decode", inputs, max_images=4)
    assert inputs["multimask_output"] is True and inputs["image_id"] == "0" * 64
    inputs = _decode_inputs(multimask_output=np.array([False]))
    check_inputs("decode", inputs, max_images=4)
    assert inputs["multimask_output"] is False
    with pytest.raises(RequestError, match="'multimask_output' must be one BOOL, got int32"):
        check_inputs("decode", _decode_inputs(multimask_output=np.array([1], np.int32)), 4)
    with pytest.raises(RequestError, match="exactly one id"):
        check_inputs("decode", _decode_inputs(image_id=np.array([b"0" * 64] * 2, object)), 4)


def test_session_decode_refuses_prompts_beyond_the_contract() -> None:
    """The largest prompt and call are spec's (the decoder's TensorRT profile): larger ones get
    INVALID_ARG naming the limit, never a GPU-only shape error."""
    n, p = spec.MAX_PROMPTS_PER_REQUEST, spec.MAX_PROMPT_POINTS

    def prompts(n: int, p: int) -> dict[str, np.ndarray]:
        return _decode_inputs(
            point_coords=np.zeros((n, p, 2), np.float32), point_labels=np.ones((n, p), np.int32)
        )

    check_inputs("decode", prompts(n, p), 4)  # the largest accepted
    for shape in ((n + 1, 1), (1, p + 1)):
        with pytest.raises(RequestError, match="MAX_PROMPTS_PER_REQUEST") as info:
            check_inputs("decode", prompts(*shape), 4)
        assert info.value.code == "INVALID_ARG"


def test_segment_pipeline_is_the_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``segment()`` on a fake encoder/decoder: the masks are the SDK's select_masks and
    postprocess of the decoder's tokens, each object in its place (two decoder calls: the
    objects have 1, 2 and 1 points)."""
    rng = np.random.default_rng(3)
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    answers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def fake_decode(features, fingerprint, chunk):
        n = len(chunk.indices)
        calls.append((chunk.indices, chunk.point_labels))
        low = rng.normal(0, 3, (n, 4, 256, 256)).astype(np.float32)
        answers.append((low, rng.random((n, 4), np.float32), rng.normal(size=(n, 1))))
        return answers[-1]

    images: list[np.ndarray] = []

    def fake_encode(image01: np.ndarray):
        images.append(image01)
        return [], np.array([7, 9], np.int32)

    model = segment.TritonPythonModel()
    model.models = SimpleNamespace(encode=fake_encode, decode=fake_decode)
    image = picture(2, 37, 53)
    doc = {
        "objects": [
            {"points": [[10, 10]], "labels": [1]},
            {"box": [1, 2, 40, 30]},
            {"points": [[5, 5]], "labels": [0]},
        ],
        "multimask": False,
    }
    result = model.segment(png(image), json.dumps(doc).encode())
    assert (result["width"], result["height"], result["model_fingerprint"]) == (53, 37, [7, 9])
    np.testing.assert_array_equal(images[0], transforms.load_image(png(image)))
    assert [c[0].tolist() for c in calls] == [[0, 2], [1]]
    for (indices, _), (low, iou, obj) in zip(calls, answers):
        sel_low, sel_iou = transforms.select_masks(low, iou, False)
        masks, _ = transforms.postprocess(sel_low, (37, 53), return_logits=False)
        for row, i in enumerate(indices.tolist()):
            got = result["objects"][i]
            assert got["scores"] == [float(v) for v in sel_iou[row]]
            assert got["object_score_logit"] == float(obj[row, 0])
            np.testing.assert_array_equal(rle_decode(got["masks"][0]), masks[row, 0])


def test_unknown_image_error_is_mapped_before_not_found() -> None:
    exc = InferenceServerException(
        "sam2_session: unknown image id 'ab': never encoded", status="StatusCode.NOT_FOUND"
    )
    assert isinstance(map_transport_error(exc, "sam2_session"), UnknownImageError)
    other = InferenceServerException("Request for unknown model", status="StatusCode.NOT_FOUND")
    assert isinstance(map_transport_error(other, "sam2_session"), ModelNotReadyError)


def test_use_sessions_is_validated() -> None:
    with pytest.raises(InvalidInputError, match="use_sessions"):
        SAM2Client("localhost:1", use_sessions=1)  # type: ignore[arg-type]


# =============================================================================================
# against the real local tritonserver
# =============================================================================================
def _session_infer(server, arrays: dict[str, np.ndarray], outputs: list[str] | None = None):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, arr in arrays.items():
        dt = "BYTES" if arr.dtype == object else np_to_triton_dtype(arr.dtype)
        inp = grpcclient.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    wanted = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    try:
        return client.infer(spec.SESSION_MODEL, inputs, outputs=wanted)
    finally:
        client.close()


def _op(name: str) -> np.ndarray:
    return np.array([name.encode()], dtype=object)


def _wire_image(seed: int) -> tuple[np.ndarray, tuple[int, int]]:
    return transforms.preprocess(picture(seed))


@pytest.fixture(scope="module")
def features_client(triton_server) -> Iterator[SAM2Client]:
    with SAM2Client(triton_server.grpc_url, use_sessions=False, timeout_s=T) as client:
        yield client


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_session_masks_equal_the_features_path(
    triton_server, features_client, protocol: str
) -> None:
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    image = picture(1)
    with SAM2Client(url, protocol, timeout_s=T) as client:  # use_sessions=None: detected
        remote = client.encode(image)
        assert isinstance(remote, RemoteEmbedding) and remote.orig_hw == (120, 180)
        local = features_client.encode(image)
        assert isinstance(local, ImageEmbedding)
        np.testing.assert_array_equal(remote.fingerprint, local.fingerprint)
        for multimask in (True, False):
            same_predictions(
                client.decode(remote, PROMPTS, multimask_output=multimask),
                features_client.decode(local, PROMPTS, multimask_output=multimask),
            )
        first = client.decode(remote, PROMPTS[0])
        refine = Prompt(
            point_coords=[[60, 40]], point_labels=[1], mask_input=first.low_res_logits[:1]
        )
        same_predictions(client.decode(remote, refine), features_client.decode(local, refine))
        fetched = client.fetch_embedding(remote)
        for name in spec.FEATURE_NAMES:
            np.testing.assert_array_equal(getattr(fetched, name), getattr(local, name))


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_client_uses_sessions(triton_server, features_client, protocol: str) -> None:
    import asyncio

    from sam2_triton import AsyncSAM2Client

    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url

    async def run():
        async with AsyncSAM2Client(url, protocol, timeout_s=T) as client:
            remote = await client.encode(picture(2))
            preds = await client.decode(remote, PROMPTS)
            fetched = await client.fetch_embedding(remote)
            return remote, preds, fetched

    remote, preds, fetched = asyncio.run(run())
    assert isinstance(remote, RemoteEmbedding)
    local = features_client.encode(picture(2))
    same_predictions(preds, features_client.decode(local, PROMPTS))
    np.testing.assert_array_equal(fetched.image_embed, local.image_embed)


@pytest.mark.triton
def test_predictor_uses_sessions(triton_server) -> None:
    image = picture(1)
    with (
        SAM2ImagePredictor(url=triton_server.grpc_url, timeout_s=T) as ours,
        SAM2ImagePredictor(url=triton_server.grpc_url, use_sessions=False, timeout_s=T) as ref,
    ):
        ours.set_image(image)
        ref.set_image(image)
        assert isinstance(ours._embeddings[0], RemoteEmbedding)
        args = {"point_coords": np.array([[60, 40]]), "point_labels": np.array([1])}
        for a, b in zip(ours.predict(**args), ref.predict(**args)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ours.get_image_embedding(), ref.get_image_embedding())


def test_a_click_carries_only_the_id_and_the_prompt() -> None:
    """What the session path sends per click: no features, no all-zero mask."""
    from sam2_triton import _wire
    from sam2_triton.prompts import plan_decode, validate_prompt

    chunk = plan_decode([validate_prompt(PROMPTS[0], "p", (120, 180))], 64)[0]
    inputs = _wire.session_decode_inputs(grpcclient, "0" * 64, chunk)
    names = [i.name() for i in inputs]
    assert names[:4] == ["op", "image_id", "point_coords", "point_labels"]
    assert set(names[4:]) <= {spec.SESSION_MULTIMASK, spec.SESSION_MASK_THRESHOLD}  # 1-4 bytes
    assert sum(len(i._get_content() or b"") for i in inputs) < 200


@pytest.mark.triton
@pytest.mark.parametrize("multimask", [True, False])
def test_a_masks_only_click_gets_the_same_masks_in_under_1_percent(triton_server, multimask):
    """``DecodeOptions(low_res_logits=False)``: the session model computes the masks with the
    SDK's own functions and answers them (packed bits, zlib) instead of low-res logits: the same
    masks, scores and object scores, and request + response under 1 % of the bytes of the same
    click sending the features (1200 x 1800, as the benchmark's click)."""
    from sam2_triton import DecodeOptions
    from sam2_triton_bench.wirebytes import CountingProxy

    image = sample_image(1200, 1800)
    click = Prompt(point_coords=[[700, 500]], point_labels=[1])
    full = DecodeOptions(multimask_output=multimask)
    lean = DecodeOptions(multimask_output=multimask, low_res_logits=False)
    host, port = triton_server.grpc_url.rsplit(":", 1)
    with CountingProxy(host, int(port)) as relay:
        with SAM2Client(relay.address, timeout_s=T) as client:
            remote = client.encode(image)
            want = client.decode(remote, click, options=full)
            relay.reset()
            got = client.decode(remote, click, options=lean)
            time.sleep(0.2)
            lean_bytes = sum(relay.counts())
        with SAM2Client(relay.address, use_sessions=False, timeout_s=T) as client:
            features = client.encode(image)
            relay.reset()
            client.decode(features, click, options=full)
            time.sleep(0.2)
            features_bytes = sum(relay.counts())
    assert got.low_res_logits is None and want.low_res_logits is not None
    assert got.masks.dtype == bool and got.masks.shape == want.masks.shape
    assert got.masks.shape[0] == (3 if multimask else 1)
    np.testing.assert_array_equal(got.masks, want.masks)  # bit for bit
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.object_score_logits == want.object_score_logits
    assert 0.05 < got.masks.mean() < 0.999  # masks with content, not trivially compressible
    assert lean_bytes < 0.01 * features_bytes, (lean_bytes, features_bytes)


def test_masks_only_needs_the_threshold_and_multimask() -> None:
    from sam2_triton_server.session_wire import outputs_of

    with pytest.raises(RequestError, match="needs the input 'mask_threshold'"):
        outputs_of("decode", [spec.SESSION_MASKS], _decode_inputs())
    # every output requested (a client naming none): all but the masks
    every = [t.name for t in spec.session_outputs()]
    assert spec.SESSION_MASKS not in outputs_of("decode", every, _decode_inputs())
    with pytest.raises(RequestError, match="needs 'multimask_output'"):
        check_inputs(
            "decode", _decode_inputs(mask_threshold=np.array([0.0], np.float32)), max_images=4
        )
    with pytest.raises(RequestError, match="one finite FP32"):
        check_inputs(
            "decode",
            _decode_inputs(
                multimask_output=np.array([True]), mask_threshold=np.array([np.nan], np.float32)
            ),
            max_images=4,
        )


@pytest.mark.triton
def test_session_requests_carry_the_routing_header(triton_server) -> None:
    """Every request about an image names it in a header a gateway can hash on."""
    from sam2_triton_bench.wirebytes import CountingProxy

    host, port = triton_server.http_url.removeprefix("http://").rsplit(":", 1)
    with CountingProxy(host, int(port), capture=True) as relay:
        with SAM2Client(relay.address, "http", timeout_s=T) as client:
            remote = client.encode(picture(1))
            client.decode(remote, PROMPTS[0])
        time.sleep(0.2)
        header = f"{spec.SESSION_ROUTING_HEADER}: {remote.image_id}".encode()
        infers = relay.captured.count(b"POST /v2/models/sam2_session/infer")
        assert infers == 2 and relay.captured.lower().count(header.lower()) == 2


@pytest.mark.triton
def test_concurrent_first_requests_run_the_encoder_once(triton_server) -> None:
    wire, hw = _wire_image(77)
    before = metrics_text(triton_server.metrics_url)
    requests = Requests(triton_server)
    arrays = {"op": _op("encode"), "image": wire[None], "orig_hw": np.array([hw], np.int32)}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _session_infer(triton_server, arrays), range(8)))
    ids = {r.as_numpy("image_id")[0] for r in results}
    assert ids == {image_id(wire, hw).encode()}
    requests.settled(spec.SESSION_MODEL, expect=8)  # statistics follow the responses
    after = metrics_text(triton_server.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("sam2_session_misses_total", op="encode") == 1
    assert delta("sam2_session_hits_total", op="encode") == 7
    assert delta("nv_inference_request_success", model=spec.ENCODER_MODEL) == 1
    held = metric(after, "sam2_session_images")
    assert held >= 1 and metric(after, "sam2_session_bytes") == held * FEATURE_BYTES


@pytest.mark.triton
def test_a_click_is_not_held_up_by_an_encode(triton_server) -> None:
    """The session model answers from a thread pool: a decode overtakes a running encode."""
    wire, hw = _wire_image(3)
    held = _session_infer(
        triton_server,
        {"op": _op("encode"), "image": wire[None], "orig_hw": np.array([hw], np.int32)},
    )
    held_id = held.as_numpy("image_id")
    finished: dict[str, float] = {}

    def encode_new() -> None:
        new, new_hw = _wire_image(int(time.time() * 1000) % 100_000 + 1000)
        _session_infer(
            triton_server,
            {"op": _op("encode"), "image": new[None], "orig_hw": np.array([new_hw], np.int32)},
        )
        finished["encode"] = time.monotonic()

    thread = threading.Thread(target=encode_new)
    thread.start()
    time.sleep(0.3)
    _session_infer(
        triton_server,
        {
            "op": _op("decode"),
            "image_id": held_id,
            "point_coords": np.array([[[300.0, 200.0]]], np.float32),
            "point_labels": np.array([[1]], np.int32),
        },
    )
    finished["decode"] = time.monotonic()
    thread.join(120)
    assert finished["decode"] < finished["encode"]


@pytest.mark.triton
@pytest.mark.parametrize(
    ("arrays", "status", "match"),
    [
        (
            {
                "op": _op("decode"),
                "image_id": np.array([b"0" * 64], object),
                "point_coords": np.zeros((1, 1, 2), np.float32),
                "point_labels": np.ones((1, 1), np.int32),
            },
            "NOT_FOUND",
            "unknown image id '0000",
        ),
        (
            {"op": _op("features"), "image_id": np.array([b"0" * 64], object)},
            "NOT_FOUND",
            "unknown image id",
        ),
        (
            {
                "op": _op("decode"),
                "image_id": np.array([b"xyz"], object),
                "point_coords": np.zeros((1, 1, 2), np.float32),
                "point_labels": np.ones((1, 1), np.int32),
            },
            "INVALID_ARGUMENT",
            "64 lowercase hex characters.*'xyz' \\(3 characters\\)",
        ),
        (
            {"op": _op("features"), "image_id": np.array([b"f" * 1_000_000], object)},
            "INVALID_ARGUMENT",
            "1000000 characters",
        ),
        (
            {"op": _op("features"), "image_id": np.array([b"0" * 64, b"1" * 64], object)},
            "INVALID_ARGUMENT",
            "exactly one id",
        ),
        ({"op": _op("fly")}, "INVALID_ARGUMENT", "must be one of"),
        ({"image_id": np.array([b"0" * 64], object)}, "INVALID_ARGUMENT", "'op' is missing"),
        (
            {"op": _op("decode"), "image_id": np.array([b"0" * 64], object)},
            "INVALID_ARGUMENT",
            "needs input",
        ),
        (
            {
                "op": _op("features"),
                "image_id": np.array([b"0" * 64], object),
                "point_labels": np.ones((1, 1), np.int32),
            },
            "INVALID_ARGUMENT",
            "does not use input",
        ),
        (
            {
                "op": _op("features"),
                "image_id": np.array([b"0" * 64], object),
                "orig_hw": np.array([[1, 1]], np.int32),
            },
            "INVALID_ARGUMENT",
            "both 'image' and 'orig_hw'",
        ),
        (
            {
                "op": _op("features"),
                "image_id": np.array([b"0" * 64], object),
                "image": np.zeros((1, 3, 1024, 1024), np.float32),
                "orig_hw": np.array([[4, 4]], np.int32),
            },
            "INVALID_ARGUMENT",
            "is not the id of the attached image",
        ),
        (
            {
                "op": _op("encode"),
                "image": np.zeros((1, 3, 1024, 1024), np.float32),
                "orig_hw": np.array([[0, 5]], np.int32),
            },
            "INVALID_ARGUMENT",
            "is not an image size",
        ),
        (
            {
                "op": _op("encode"),
                "image": np.full((1, 3, 1024, 1024), np.nan, np.float32),
                "orig_hw": np.array([[5, 5]], np.int32),
            },
            "INVALID_ARGUMENT",
            "NaN",
        ),
        (
            {
                "op": _op("encode"),
                "image": np.zeros((1, 3, 2048, 2048), np.float32),
                "orig_hw": np.array([[5, 5]], np.int32),
            },
            "INVALID_ARGUMENT",
            "image",
        ),
        (
            {
                "op": _op("encode"),
                "image": np.zeros((9, 3, 1024, 1024), np.float32),
                "orig_hw": np.ones((9, 2), np.int32),
            },
            "INVALID_ARGUMENT",
            "holds 9 images",
        ),
        (
            {
                "op": _op("decode"),
                "image_id": np.array([b"0" * 64], object),
                "point_coords": np.zeros((1, 1, 2), np.float32),
                "point_labels": np.full((1, 1), 7, np.int32),
            },
            "INVALID_ARGUMENT",
            "labels outside",
        ),
        (
            {
                "op": _op("features"),
                "image_id": np.array([b"0" * 64], object),
                "multimask_output": np.array([True]),
            },
            "INVALID_ARGUMENT",
            "does not use input.*multimask_output",
        ),
        (
            {
                "op": _op("decode"),
                "image_id": np.array([b"0" * 64], object),
                "point_coords": np.zeros((1, 1, 2), np.float32),
                "point_labels": np.ones((1, 1), np.int32),
                "multimask_output": np.array([True, False]),
            },
            "INVALID_ARGUMENT",
            "multimask_output",
        ),
    ],
)
def test_bad_session_requests_get_clear_errors(triton_server, arrays, status, match) -> None:
    with pytest.raises(InferenceServerException, match=match) as info:
        _session_infer(triton_server, arrays)
    assert info.value.status() == f"StatusCode.{status}"


@pytest.mark.triton
def test_decode_with_multimask_output_returns_the_selected_tokens(triton_server) -> None:
    """With ``multimask_output`` the session model answers select_masks of the four tokens the
    same request gets without it (not clamped), and a smaller response."""
    wire, hw = _wire_image(5)
    encoded = _session_infer(
        triton_server,
        {"op": _op("encode"), "image": wire[None], "orig_hw": np.array([hw], np.int32)},
    )
    request = {
        "op": _op("decode"),
        "image_id": encoded.as_numpy("image_id"),
        "point_coords": np.array(
            [[[300.0, 200.0], [90.0, 700.0]], [[10.0, 20.0], [800.0, 1000.0]]], np.float32
        ),
        "point_labels": np.array([[1, 0], [2, 3]], np.int32),
    }
    names = [spec.LOW_RES_MASKS, spec.IOU_PREDICTIONS, spec.OBJECT_SCORE_LOGITS, spec.FINGERPRINT]
    everything = _session_infer(triton_server, request, names)
    low4, iou4 = everything.as_numpy(spec.LOW_RES_MASKS), everything.as_numpy(spec.IOU_PREDICTIONS)
    assert low4.shape == (2, 4, 256, 256) and iou4.shape == (2, 4)
    full_size = everything.get_response().ByteSize()
    for multimask, tokens in ((True, 3), (False, 1)):
        flag = np.array([multimask], dtype=bool)
        got = _session_infer(triton_server, {**request, "multimask_output": flag}, names)
        want_low, want_iou = transforms.select_masks(low4, iou4, multimask)
        assert got.as_numpy(spec.LOW_RES_MASKS).shape == (2, tokens, 256, 256)
        np.testing.assert_array_equal(got.as_numpy(spec.LOW_RES_MASKS), want_low)
        np.testing.assert_array_equal(got.as_numpy(spec.IOU_PREDICTIONS), want_iou)
        for name in (spec.OBJECT_SCORE_LOGITS, spec.FINGERPRINT):
            np.testing.assert_array_equal(got.as_numpy(name), everything.as_numpy(name))
        assert got.get_response().ByteSize() < full_size * (tokens + 0.1) / 4


@pytest.mark.triton
def test_unknown_id_is_reuploaded_by_the_client(triton_server, features_client) -> None:
    """A RemoteEmbedding whose image this server never saw (uploaded to another replica, say):
    the client re-sends the click with its kept image attached."""
    local = features_client.encode(picture(4))
    wire, hw = transforms.preprocess(picture(4))
    unseen = RemoteEmbedding(
        image_id=image_id(wire, hw), orig_hw=hw, fingerprint=local.fingerprint, wire_image=wire
    )
    before = metrics_text(triton_server.metrics_url)
    with SAM2Client(triton_server.grpc_url, use_sessions=True, timeout_s=T) as client:
        for prompt in PROMPTS[:2]:  # one request each
            same_predictions(client.decode(unseen, prompt), features_client.decode(local, prompt))
    after = metrics_text(triton_server.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # the first click: missed, re-sent with the image (missed again, so encoded); the second
    # click's image is held
    assert delta("sam2_session_misses_total", op="decode") == 2
    assert delta("sam2_session_misses_total", op="encode") == 1
    assert delta("sam2_session_hits_total", op="decode") == 1


@pytest.mark.triton
def test_forced_sessions_without_a_session_model(triton_server) -> None:
    with SAM2Client(
        triton_server.grpc_url, use_sessions=True, session_model="no_such_model", timeout_s=T
    ) as client:
        with pytest.raises(ModelNotReadyError, match="use_sessions=True"):
            client.encode(picture(1))
    with SAM2Client(triton_server.grpc_url, session_model="no_such_model", timeout_s=T) as client:
        assert isinstance(client.encode(picture(1)), ImageEmbedding)  # automatic: features


@pytest.mark.triton
def test_session_metrics_on_the_dashboard_are_exposed(triton_server) -> None:
    import re

    from .test_deploy import SESSION_METRICS, _dashboard, _targets, promql_metric_names

    used = set().union(*(promql_metric_names(t["expr"]) for _, t in _targets(_dashboard())))
    assert used & SESSION_METRICS == SESSION_METRICS
    text = metrics_text(triton_server.metrics_url)
    types = dict(re.findall(r"^# TYPE (sam2_session_\w+) (\w+)$", text, re.M))
    assert types == {
        name: "counter" if name.endswith("_total") else "gauge" for name in SESSION_METRICS
    }
    assert metric(text, "sam2_session_budget_bytes", model=spec.SESSION_MODEL) == (
        repository.RepositoryOptions().session_cache_bytes
    )


# --- one-shot REST segmentation ---------------------------------------------------------------
def _segment(server, image: bytes | str, prompts: dict | str) -> tuple[int, dict]:
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [image if isinstance(image, str) else base64.b64encode(image).decode()],
            },
            {
                "name": "prompts",
                "shape": [1],
                "datatype": "BYTES",
                "data": [prompts if isinstance(prompts, str) else json.dumps(prompts)],
            },
        ]
    }
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/{spec.SEGMENT_MODEL}/infer",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            out = json.loads(response.read())
            return response.status, json.loads(out["outputs"][0]["data"][0])
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.triton
@pytest.mark.parametrize("fmt", ["rle", "png"])
def test_rest_segmentation_equals_the_client(triton_server, features_client, fmt: str) -> None:
    image = picture(6, 97, 131)  # odd size: the upsampling is exercised
    prompts = {
        "objects": [
            {"points": [[60, 40]], "labels": [1]},
            {"box": [10, 20, 120, 90]},
            {"points": [[30, 50], [20, 30]], "labels": [1, 0], "box": [5, 5, 125, 95]},
        ],
        "multimask": fmt == "png",
        "format": fmt,
    }
    status, result = _segment(triton_server, png(image), prompts)
    assert status == 200, result
    assert (result["width"], result["height"], result["format"]) == (131, 97, fmt)
    ours = [
        Prompt(point_coords=[[60, 40]], point_labels=[1]),
        Prompt(box=[10, 20, 120, 90]),
        Prompt(point_coords=[[30, 50], [20, 30]], point_labels=[1, 0], box=[5, 5, 125, 95]),
    ]
    preds = features_client.decode(
        features_client.encode(png(image)), ours, multimask_output=fmt == "png"
    )
    for obj, pred in zip(result["objects"], preds):
        assert obj["scores"] == [float(s) for s in pred.scores]
        assert obj["object_score_logit"] == pred.object_score_logits
        for mask, want in zip(obj["masks"], pred.masks):
            if fmt == "rle":
                got = rle_decode(mask)
            else:
                got = np.asarray(Image.open(io.BytesIO(base64.b64decode(mask)))).astype(bool)
            np.testing.assert_array_equal(got, want)


@pytest.mark.triton
def test_rest_segmentation_of_a_jpeg_with_exif_orientation(triton_server, features_client) -> None:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the viewer shows it 90 degrees turned
    Image.fromarray(picture(8, 80, 120)).save(buf, format="JPEG", quality=90, exif=exif)
    status, result = _segment(triton_server, buf.getvalue(), {"box": [10, 10, 70, 100]})
    assert status == 200, result
    assert (result["width"], result["height"]) == (80, 120)  # as the viewer shows it
    pred = features_client.decode(
        features_client.encode(buf.getvalue()),
        Prompt(box=[10, 10, 70, 100]),
        multimask_output=False,
    )
    np.testing.assert_array_equal(rle_decode(result["objects"][0]["masks"][0]), pred.masks[0])


@pytest.mark.triton
@pytest.mark.parametrize(
    ("image", "prompts", "match"),
    [
        (png(picture(0, 30, 40)), '{"points": [[50, 5]], "labels": [1]}', "outside the 40x30"),
        (png(picture(0, 30, 40)), "{broken", "invalid JSON"),
        ("bm90IGFuIGltYWdl", '{"box": [0, 0, 5, 5]}', "not a decodable image"),
        ("%%%", '{"box": [0, 0, 5, 5]}', "not a decodable image"),
    ],
)
def test_rest_segmentation_errors(triton_server, image, prompts, match) -> None:
    status, body = _segment(triton_server, image, prompts)
    assert status == 400, body
    assert match in body["error"] and spec.SEGMENT_MODEL in body["error"]


@pytest.mark.triton
def test_client_recovers_from_a_server_restart(
    exported_repo: Path, repo_copy: Path, features_client
) -> None:
    """Restart on the same repository: the image is sent again. Then a restart on a repository
    without the session model: the client falls back to the features path by itself."""
    from sam2_triton_serve.launcher import LocalTritonServer

    for model in (spec.SESSION_MODEL, spec.SEGMENT_MODEL):
        shutil.rmtree(repo_copy / model)

    first = LocalTritonServer(exported_repo, http_port=0, grpc_port=0, metrics_port=0)
    ports = {
        "http_port": first.http_port,
        "grpc_port": first.grpc_port,
        "metrics_port": first.metrics_port,
    }
    with first, SAM2Client(first.grpc_url, timeout_s=T) as client:
        remote = client.encode(picture(30))
        before = client.decode(remote, PROMPTS)
        first.stop()
        with LocalTritonServer(exported_repo, **ports) as second:
            assert metric(metrics_text(second.metrics_url), "sam2_session_images") == 0
            client.wait_until_ready(60)
            after = client.decode(remote, PROMPTS)  # unknown -> sent again with the image
            text = metrics_text(second.metrics_url)
            assert metric(text, "sam2_session_misses_total", op="decode") == 2  # and re-sent
            assert metric(text, "sam2_session_misses_total", op="encode") == 1
            assert metric(text, "sam2_session_images") == 1
        with LocalTritonServer(repo_copy, **ports):
            client.wait_until_ready(60)
            without = client.decode(remote, PROMPTS)  # no session model: encoded, then decoded
            assert isinstance(client.encode(picture(31)), ImageEmbedding)
    same_predictions(after, before)
    same_predictions(without, before)


# --- a server with a small byte budget --------------------------------------------------------
SMALL_BUDGET = int(2.5 * FEATURE_BYTES)  # holds two images


def _small_budget_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    # encoder batches of at most 2: four concurrent images need less memory on a small host
    opts = repository.RepositoryOptions(session_cache_bytes=SMALL_BUDGET, cpu_max_batch_size=2)
    for rel, text in repository.config_files(opts).items():
        (dst / rel).write_text(text)
    return dst


@pytest.fixture(scope="module")
def small_server(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    from sam2_triton_serve.launcher import LocalTritonServer

    repo = _small_budget_repo(exported_repo, tmp_path_factory.mktemp("small") / "repo")
    with LocalTritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


@pytest.mark.triton
def test_eviction_then_transparent_reupload(small_server, features_client) -> None:
    text = metrics_text(small_server.metrics_url)
    assert metric(text, "sam2_session_budget_bytes") == SMALL_BUDGET
    with SAM2Client(small_server.grpc_url, embedding_cache_bytes=0, timeout_s=T) as client:
        first = client.encode(picture(10))
        for seed in (11, 12):  # two more images push the first one out
            client.encode(picture(seed))
        text = metrics_text(small_server.metrics_url)
        assert metric(text, "sam2_session_evictions_total") >= 1
        assert metric(text, "sam2_session_images") == 2
        with pytest.raises(InferenceServerException, match="unknown image id"):
            _session_infer(
                small_server,
                {"op": _op("features"), "image_id": np.array([first.image_id.encode()], object)},
            )
        before = metric(text, "sam2_session_misses_total", op="encode")
        preds = client.decode(first, PROMPTS)  # unknown -> upload again -> decode
        text = metrics_text(small_server.metrics_url)
        assert metric(text, "sam2_session_misses_total", op="encode") == before + 1
    same_predictions(preds, features_client.decode(features_client.encode(picture(10)), PROMPTS))


@pytest.mark.triton
def test_byte_budget_holds_under_load(small_server) -> None:
    stop = threading.Event()
    seen: list[tuple[float, float]] = []

    def watch() -> None:
        while not stop.is_set():
            text = metrics_text(small_server.metrics_url)
            seen.append((metric(text, "sam2_session_bytes"), metric(text, "sam2_session_images")))
            time.sleep(0.05)

    def work(seed: int) -> int:
        with SAM2Client(small_server.grpc_url, embedding_cache_bytes=0, timeout_s=T) as client:
            remote = client.encode(picture(seed))
            for _ in range(2):
                client.decode(remote, PROMPTS[0])
        return seed

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            assert sorted(pool.map(work, range(20, 26))) == list(range(20, 26))
    finally:
        stop.set()
        watcher.join()
    assert seen and max(b for b, _ in seen) <= SMALL_BUDGET
    assert max(n for _, n in seen) <= 2
    text = metrics_text(small_server.metrics_url)
    assert metric(text, "sam2_session_bytes") <= SMALL_BUDGET
    assert metric(text, "sam2_session_evictions_total") >= 4
