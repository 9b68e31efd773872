"""The client SDK against the REAL local tritonserver (CPU flavour), nothing faked.

The session's ``triton_server`` serves the tiny SAM 2.1 export (random weights, seed 0). Two more
servers are started only where a test needs other weights: a seed-1 export (an embedding from
the seed-0 server must be refused by its decoder) and an FP16-features export of the seed-0
weights. What reached Triton is read from Triton itself: its statistics extension
(``get_inference_statistics``: requests that succeeded or failed per model) and its Prometheus
metrics (``nv_inference_count`` / ``nv_inference_exec_count`` for dynamic batching).

Runtime is bounded by the CPU encoder (about 3 s per image): one reference picture is encoded
once per module and re-encoded only where Triton's response cache answers; the decoder takes
about 40 ms per prompt.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc
import tritonclient.http
from PIL import Image

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
    ServerUnavailableError,
    spec,
)
from sam2_triton.transforms import MAX_IMAGE_PIXELS
from sam2_triton_export.verify import synthetic_image

from .conftest import export_args
from .triton_helpers import Requests, metrics_text

pytestmark = pytest.mark.triton

ENC, DEC = spec.ENCODER_MODEL, spec.DECODER_MODEL
PROTOCOLS = ("grpc", "http")
H, W = 96, 128  # the reference picture
SHM_PREFIX = f"sam2_triton_{os.getpid()}_"  # the client's region names (see _shm.FeatureRegion)

# Mixed point counts: 1 point (0, 4, 5), 2 points (1: a box, 3: two clicks), 3 points (2: a box
# and a click): three decoder requests.
PROMPTS = [
    Prompt(point_coords=[[40, 30]], point_labels=[1]),
    Prompt(box=[20, 20, 70, 60]),
    Prompt(box=[60, 40, 120, 90], point_coords=[[100, 60]], point_labels=[0]),
    Prompt(point_coords=[[90, 60], [30, 70]], point_labels=[1, 0]),
    Prompt(point_coords=[[100, 80]], point_labels=[1]),
    Prompt(point_coords=[[10, 10]], point_labels=[0]),
]


def picture(seed: int, h: int = H, w: int = W) -> np.ndarray:
    img = synthetic_image(h, w, seed)
    img.setflags(write=False)
    return img


def sync_client(*args, **kwargs) -> SAM2Client:
    """A client of the features path: ``encode`` returns the encoder's features, each decode
    request carries them (``use_sessions=False``: the session model, when the repository has
    one, is tested elsewhere)."""
    return SAM2Client(*args, use_sessions=False, **kwargs)


def async_client(*args, **kwargs) -> AsyncSAM2Client:
    return AsyncSAM2Client(*args, use_sessions=False, **kwargs)


def url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


# --- what Triton saw -----------------------------------------------------------------------------
def metrics(server) -> str:
    return metrics_text(server.metrics_url)


def shm_leftovers() -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"{SHM_PREFIX}*"))


def registered_regions(server) -> list:
    with tritonclient.grpc.InferenceServerClient(server.grpc_url) as g:
        grpc_status = g.get_system_shared_memory_status(as_json=True)
    h = tritonclient.http.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        http_status = h.get_system_shared_memory_status()
    finally:
        h.close()
    grpc_names = sorted(grpc_status.get("regions", {}))
    http_names = sorted(r["name"] for r in http_status)
    assert grpc_names == http_names  # the same registry seen over both protocols
    return grpc_names


def assert_same_predictions(got: list[Prediction], want: list[Prediction], atol=1e-4) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.masks.shape == w.masks.shape, i
        np.testing.assert_allclose(g.low_res_logits, w.low_res_logits, atol=atol, err_msg=f"{i}")
        np.testing.assert_allclose(g.scores, w.scores, atol=atol, err_msg=f"prompt {i}")
        assert iou(g.masks, w.masks) >= 0.999, i


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# --- fixtures ------------------------------------------------------------------------------------
class Reference:
    """The reference picture encoded once (gRPC) and each of ``PROMPTS`` decoded alone."""

    def __init__(self, server) -> None:
        self.image = picture(7)
        with sync_client(server.grpc_url) as c:
            c.wait_until_ready(120)
            self.embedding = c.encode(self.image)
            self.alone = [c.decode(self.embedding, p) for p in PROMPTS]


@pytest.fixture(scope="module")
def ref(triton_server) -> Reference:
    return Reference(triton_server)


@pytest.fixture(scope="module")
def seed1_server(seed1_repo):
    """The same tiny variant with other random weights (seed 1): another fingerprint."""
    from sam2_triton_serve.launcher import LocalTritonServer

    with LocalTritonServer(seed1_repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def fp16_server(tmp_path_factory):
    """The seed-0 weights exported with FP16 features (encoder outputs, decoder inputs)."""
    from sam2_triton_export import main
    from sam2_triton_serve.launcher import LocalTritonServer

    repo = tmp_path_factory.mktemp("fp16") / "model_repository"
    main.export(
        export_args(
            "--variant",
            "tiny",
            "--random-weights",
            "--seed",
            "0",
            "--embedding-dtype",
            "fp16",
            "--output",
            str(repo),
        )
    )
    with LocalTritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- readiness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wait_until_ready(triton_server, closed_port, protocol):
    with sync_client(url(triton_server, protocol), protocol) as c:
        c.wait_until_ready(30)
    with sync_client(url(triton_server, protocol), protocol, decoder_model="no_such_model") as c:
        with pytest.raises(ModelNotReadyError, match="not ready after 0.5 s.*no_such_model"):
            c.wait_until_ready(0.5)
    with sync_client(f"127.0.0.1:{closed_port}", protocol) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="not ready after 0.5 s"):
            c.wait_until_ready(0.5)
        assert time.monotonic() - t0 < 10

    async def run() -> None:
        async with async_client(url(triton_server, protocol), protocol) as ac:
            await ac.wait_until_ready(30)
        async with async_client(f"127.0.0.1:{closed_port}", protocol) as ac:
            with pytest.raises(ServerUnavailableError):
                await ac.wait_until_ready(0.5)

    asyncio.run(run())


# --- encode and decode, sync and async, both protocols -------------------------------------------
def _check_embedding(emb: ImageEmbedding, ref: Reference) -> None:
    assert emb.orig_hw == (H, W) and emb.dtype == np.float32
    assert emb.image_embed.shape == (1, 256, 64, 64)
    assert emb.high_res_feats_0.shape == (1, 32, 256, 256)
    assert emb.high_res_feats_1.shape == (1, 64, 128, 128)
    assert emb.fingerprint.tolist() == ref.embedding.fingerprint.tolist()
    for name, arr in emb.features().items():
        np.testing.assert_allclose(arr, getattr(ref.embedding, name), atol=1e-5, err_msg=name)


def _check_predictions(preds: list[Prediction], ref: Reference) -> None:
    assert isinstance(preds, list) and len(preds) == len(PROMPTS)
    for p in preds:
        assert p.masks.shape == (3, H, W) and p.masks.dtype == bool  # the image's own size
        assert p.scores.shape == (3,) and p.scores.dtype == np.float32
        assert p.low_res_logits.shape == (3, 256, 256) and p.low_res_logits.dtype == np.float32
        assert isinstance(p.object_score_logits, float)
    assert_same_predictions(preds, ref.alone)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sync_encode_decode(triton_server, ref, protocol):
    headers = {"X-Api-Key": "any"}  # sent along (gRPC metadata keys are lowercased)
    with sync_client(url(triton_server, protocol), protocol, headers=headers) as c:
        emb = c.encode(ref.image)
        _check_embedding(emb, ref)
        _check_predictions(c.decode(emb, PROMPTS), ref)
        single = c.decode(emb, PROMPTS[0], multimask_output=False)
        assert isinstance(single, Prediction) and single.masks.shape == (1, H, W)
        logits = c.decode(emb, PROMPTS[0], return_logits=True)
        assert logits.masks.dtype == np.float32 and logits.masks.shape == (3, H, W)
        np.testing.assert_array_equal(logits.masks > 0, ref.alone[0].masks)
        normalized = c.decode(
            emb, Prompt(point_coords=[[40 / W, 30 / H]], point_labels=[1]), normalize_coords=False
        )
        assert_same_predictions([normalized], ref.alone[:1])
        refined = c.decode(
            emb,
            Prompt(
                point_coords=[[40, 30]],
                point_labels=[1],
                mask_input=ref.alone[0].low_res_logits[:1],
            ),
        )
        assert refined.masks.shape == (3, H, W)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_encode_decode(triton_server, ref, protocol):
    async def run() -> tuple[ImageEmbedding, list[Prediction], list[Prediction]]:
        async with async_client(url(triton_server, protocol), protocol) as ac:
            emb = await ac.encode(ref.image)
            together = await ac.decode(emb, PROMPTS)
            concurrent = await asyncio.gather(*(ac.decode(emb, p) for p in PROMPTS))
            return emb, together, list(concurrent)

    emb, together, concurrent = asyncio.run(run())
    _check_embedding(emb, ref)
    _check_predictions(together, ref)
    _check_predictions(concurrent, ref)


# --- the encoder: batches, Triton's dynamic batching, the client's LRU cache -------------------
def test_concurrent_encodes_are_batched_and_encode_batch_is_one_request(triton_server):
    images = [picture(21, 60, 80), picture(22, 80, 60), picture(23, 50, 50)]  # not in any cache
    requests = Requests(triton_server)
    with sync_client(triton_server.grpc_url) as c, ThreadPoolExecutor(3) as pool:
        singles = list(pool.map(c.encode, images))
    count = requests.settled(ENC, "inferences", expect=3)  # statistics follow the responses
    exec_count = requests.settled(ENC, "executions")
    assert count == 3
    assert exec_count < count, f"3 concurrent encodes ran in {exec_count} executions"
    assert requests.delta(ENC) == 3

    seen = Requests(triton_server)
    with sync_client(triton_server.http_url, "http") as c:  # a fresh client: empty LRU cache
        batch = c.encode_batch(images)
    assert seen.settled(ENC, expect=1) == 1  # one [3, 3, 1024, 1024] request
    assert seen.delta(ENC, "inferences") == 3 and seen.delta(ENC, "executions") == 1
    assert [e.orig_hw for e in batch] == [(60, 80), (80, 60), (50, 50)]
    for one, b in zip(singles, batch):
        assert b.fingerprint.tolist() == one.fingerprint.tolist()
        for name, arr in b.features().items():
            np.testing.assert_allclose(arr, getattr(one, name), atol=1e-4, err_msg=name)


def test_lru_cache_same_image_from_any_source(triton_server, ref, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(ref.image).save(path)
    seen = Requests(triton_server)
    with sync_client(triton_server.grpc_url) as c:
        first = c.encode(path)
        same = [
            c.encode(str(path)),
            c.encode(ref.image),
            c.encode(np.array(ref.image)),
            c.encode(Image.open(path)),
            c.encode(path.read_bytes()),
        ]
        assert all(e is first for e in same)
        stats = c.cache_stats()
        assert (stats.hits, stats.misses, stats.entries) == (5, 1, 1)
        assert stats.nbytes == first.nbytes == 16_777_216
        both = c.encode_batch([ref.image, path])
        assert both[0] is first and both[1] is first
    assert seen.settled(ENC, expect=1) == 1
    _check_embedding(first, ref)

    seen = Requests(triton_server)
    with sync_client(triton_server.grpc_url) as c:  # duplicates inside one batch: sent once
        dup = c.encode_batch([str(path), ref.image])
        assert dup[0] is dup[1]
    assert seen.settled(ENC, expect=1) == 1

    seen = Requests(triton_server)
    with sync_client(triton_server.grpc_url, embedding_cache_bytes=0) as c:  # cache disabled
        c.encode(ref.image)
        c.encode(path)
        assert c.cache_stats().entries == 0
    assert seen.settled(ENC, expect=2) == 2


# --- the decoder: grouping, chunking, order --------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_decode_one_request_per_point_count_in_callers_order(triton_server, ref, protocol):
    seen = Requests(triton_server)
    with sync_client(url(triton_server, protocol), protocol) as c:
        preds = c.decode(ref.embedding, PROMPTS)
    assert seen.settled(DEC, expect=3) == 3  # 1, 2 and 3 points: never padded together
    assert_same_predictions(preds, ref.alone)  # each matches its prompt decoded alone


def test_max_prompts_per_request_chunking(triton_server, ref):
    five = [Prompt(point_coords=[[10 + 20 * i, 15 + 15 * i]], point_labels=[1]) for i in range(5)]
    seen = Requests(triton_server)
    with sync_client(triton_server.grpc_url) as c:
        together = c.decode(ref.embedding, five)
    assert seen.settled(DEC, expect=1) == 1
    seen = Requests(triton_server)
    with sync_client(triton_server.grpc_url, max_prompts_per_request=2) as c:
        chunked = c.decode(ref.embedding, five)
    assert seen.settled(DEC, expect=3) == 3  # 2 + 2 + 1
    assert_same_predictions(chunked, together)


def test_130_prompts_in_bounded_requests(triton_server, ref):
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(0, W, 130), rng.uniform(0, H, 130)])
    prompts = [Prompt(point_coords=[p], point_labels=[1]) for p in points]
    seen = Requests(triton_server)
    with sync_client(triton_server.grpc_url, max_prompts_per_request=64) as c:
        preds = c.decode(ref.embedding, prompts)
        assert seen.settled(DEC, expect=3) == 3  # 64 + 64 + 2
        picks = [0, 63, 64, 127, 128, 129]
        alone = [c.decode(ref.embedding, prompts[i]) for i in picks]
    assert len(preds) == 130
    assert_same_predictions([preds[i] for i in picks], alone)


# --- system shared memory --------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_same_results_and_cleaned_up(triton_server, ref, protocol, caplog):
    """Features in system shared memory: the same results as sending them. One region per
    embedding, registered by its first click and reused by all later ones; released when the
    embedding is garbage-collected, beyond the client's limit (LRU), or at close; registered
    again when the server forgot it."""
    assert shm_leftovers() == []
    with sync_client(url(triton_server, protocol), protocol) as c:
        normal = c.decode(ref.embedding, PROMPTS)
    seen = Requests(triton_server)
    with sync_client(url(triton_server, protocol), protocol, use_shared_memory=True) as c:
        preds = c.decode(ref.embedding, PROMPTS)
        first = registered_regions(triton_server)
        assert len(first) == 1 and len(shm_leftovers()) == 1
        again = [c.decode(ref.embedding, PROMPTS[0]) for _ in range(8)]  # reuse, no new region
        assert registered_regions(triton_server) == first and len(shm_leftovers()) == 1
        # refinement: a real mask_input travels as a tensor; "no mask" is the region's zeros
        refine = Prompt(**{**vars(PROMPTS[0]), "mask_input": preds[0].low_res_logits[:1]})
        refined = c.decode(ref.embedding, refine)
        # a server error with a registered region: Triton rejects the feature shape
        feats = {n: np.zeros((1, *spec.FEATURE_SHAPES[n]), np.float32) for n in spec.FEATURE_NAMES}
        feats[spec.IMAGE_EMBED] = np.zeros((1, 256, 32, 32), np.float32)
        bad = ImageEmbedding(**feats, orig_hw=(H, W), fingerprint=ref.embedding.fingerprint)
        with pytest.raises(InferenceError, match="image_embed"):
            c.decode(bad, PROMPTS[0])
        assert len(registered_regions(triton_server)) == 2
        del bad  # released with its embedding: unregistered by the next call
        gc.collect()
        again.append(c.decode(ref.embedding, PROMPTS[0]))
        assert registered_regions(triton_server) == first and len(shm_leftovers()) == 1
        # more embeddings than the client keeps regions for: the least recently used go
        copies = [
            ImageEmbedding(
                **ref.embedding.features(), orig_hw=(H, W), fingerprint=ref.embedding.fingerprint
            )
            for _ in range(5)
        ]
        for e in copies:
            c.decode(e, PROMPTS[0])
        c.decode(ref.embedding, PROMPTS[0])
        assert len(registered_regions(triton_server)) <= 4 and len(shm_leftovers()) <= 4
        # the server forgets every region (as after a restart): registered again, same answer
        with tritonclient.grpc.InferenceServerClient(triton_server.grpc_url) as g:
            g.unregister_system_shared_memory()
        again.append(c.decode(ref.embedding, PROMPTS[0]))
    assert registered_regions(triton_server) == [] and shm_leftovers() == []  # close releases
    # 3 + 8 + 1 (refinement) + 1 + 5 + 1 + 1; the bad shape and the decode the server could not
    # find the region for were refused before the model ran (not in its statistics)
    assert seen.settled(DEC, expect=20) == 20
    assert not [r for r in caplog.records if "could not unregister" in r.getMessage()]
    with sync_client(url(triton_server, protocol), protocol) as c:
        refined_plain = c.decode(ref.embedding, refine)
    assert_same_predictions([refined], [refined_plain], atol=0)
    for got, want in zip([*preds, *again], [*normal, *[ref.alone[0]] * 10]):  # bit-identical
        np.testing.assert_array_equal(got.masks, want.masks)
        np.testing.assert_array_equal(got.low_res_logits, want.low_res_logits)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert got.object_score_logits == want.object_score_logits


# --- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_unreachable(closed_port, ref, protocol):
    with sync_client(f"127.0.0.1:{closed_port}", protocol, timeout_s=10) as c:
        with pytest.raises(ServerUnavailableError, match="server unavailable"):
            c.encode(ref.image)
        with pytest.raises(ServerUnavailableError):
            c.decode(ref.embedding, PROMPTS[0])

    async def run() -> None:
        async with async_client(f"127.0.0.1:{closed_port}", protocol, timeout_s=10) as ac:
            with pytest.raises(ServerUnavailableError):
                await ac.encode(ref.image)
            with pytest.raises(ServerUnavailableError):
                await ac.decode(ref.embedding, PROMPTS[0])

    asyncio.run(run())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model(triton_server, ref, protocol):
    target = url(triton_server, protocol)
    with sync_client(target, protocol, encoder_model="no_such_encoder") as c:
        with pytest.raises(ModelNotReadyError, match="no_such_encoder"):
            c.encode(ref.image)
    with sync_client(target, protocol, decoder_model="no_such_decoder") as c:
        with pytest.raises(ModelNotReadyError, match="no_such_decoder"):
            c.decode(ref.embedding, PROMPTS[0])

    async def run() -> None:
        async with async_client(target, protocol, encoder_model="no_such_encoder") as ac:
            with pytest.raises(ModelNotReadyError, match="no_such_encoder"):
                await ac.encode(ref.image)

    asyncio.run(run())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_timeout_then_still_usable(triton_server, ref, protocol):
    """An encode (about 3 s on CPU) under a 1.5 s client timeout times out; the same client then
    gets correct answers (not the late response of the timed-out request).

    Not less than about 1 s: even a response-cache hit needs about 0.15 s for the 12 MB image
    here (more on a loaded machine), and the client must succeed with it afterwards.
    """
    slow = picture(31 if protocol == "grpc" else 32)  # in no cache: the encoder must run
    with sync_client(url(triton_server, protocol), protocol) as warm:
        warm.encode(ref.image)  # the reference picture is fresh in Triton's response cache
    seen = Requests(triton_server)
    with sync_client(url(triton_server, protocol), protocol, timeout_s=1.5) as c:
        with pytest.raises(RequestTimeoutError, match="timed out"):
            c.encode(slow)
        # the server finishes the abandoned request (and caches its result)
        assert seen.settled(ENC, expect=1, timeout=120) == 1
        c.wait_until_ready(10)
        emb = c.encode(ref.image)  # a cache hit well within the timeout
        _check_embedding(emb, ref)
        pred = c.decode(emb, PROMPTS[0])
        assert_same_predictions([pred], ref.alone[:1])
        late = c.encode(slow)  # the abandoned request's result is in Triton's cache now
        assert late.orig_hw == (H, W)
        assert not np.allclose(late.image_embed, emb.image_embed)


def test_embedding_from_other_weights_is_refused(seed1_server, ref):
    """The fingerprint comes back with the decoder's first response: that request is made, the
    client raises instead of returning masks and sends none of the other point-count groups."""
    for protocol in PROTOCOLS:
        for shm in (False, True):
            seen = Requests(seed1_server)
            with sync_client(url(seed1_server, protocol), protocol, use_shared_memory=shm) as c:
                result = "not run"
                with pytest.raises(EmbeddingMismatchError, match="other model weights"):
                    result = c.decode(ref.embedding, PROMPTS)
                assert result == "not run"  # no mask is returned
            assert seen.settled(DEC, expect=1) == 1  # 1 of the 3 requests
            assert registered_regions(seed1_server) == [] and shm_leftovers() == []

    async def run() -> None:
        async with async_client(seed1_server.grpc_url, use_shared_memory=True) as ac:
            with pytest.raises(EmbeddingMismatchError):
                await ac.decode(ref.embedding, PROMPTS[0])

    asyncio.run(run())
    assert registered_regions(seed1_server) == [] and shm_leftovers() == []


def test_fp16_features(fp16_server, triton_server, ref):
    with sync_client(fp16_server.grpc_url) as c:
        emb = c.encode(ref.image)
        assert emb.dtype == np.float16 and emb.image_embed.dtype == np.float16
        assert emb.nbytes == ref.embedding.nbytes // 2
        assert emb.fingerprint.tolist() == ref.embedding.fingerprint.tolist()  # same weights
        np.testing.assert_allclose(
            emb.image_embed.astype(np.float32), ref.embedding.image_embed, atol=1e-2, rtol=1e-2
        )
        preds = c.decode(emb, PROMPTS)
        cross = c.decode(ref.embedding, PROMPTS)  # an FP32 embedding is cast for this decoder
    with sync_client(triton_server.grpc_url) as c:
        back = c.decode(emb, PROMPTS)  # and an FP16 one for the FP32 decoder
    for group in (preds, cross, back):
        for p, want in zip(group, ref.alone):
            assert p.masks.shape == (3, H, W)
            for m in range(3):
                assert 0 < want.masks[m].mean() < 1  # IoU of non-trivial masks
                assert iou(p.masks[m], want.masks[m]) >= 0.99
            np.testing.assert_allclose(p.scores, want.scores, atol=1e-3)


# --- bad inputs: typed errors and nothing sent ----------------------------------------------------
def _png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    data = bytearray(_png(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BAD_IMAGES = {
    "corrupt bytes": (b"GIF89a but not really", "not a decodable image"),
    "truncated png": (_png(synthetic_image(64, 64, 3))[:-100], "corrupt or truncated"),
    "empty bytes": (b"", "empty"),
    "0x0 array": (np.zeros((0, 0, 3), np.uint8), "empty"),
    "over MAX_IMAGE_PIXELS": (_png_claiming(MAX_IMAGE_PIXELS // 8000 + 1, 8000), "too large"),
    "unsupported mode": (Image.new("HSV", (8, 8)), "unsupported mode"),
}

BAD_PROMPTS = {
    "point outside": (Prompt(point_coords=[[W + 1, 10]], point_labels=[1]), "outside"),
    "point NaN": (Prompt(point_coords=[[np.nan, 10]], point_labels=[1]), "finite"),
    "point inf": (Prompt(point_coords=[[10, np.inf]], point_labels=[1]), "finite"),
    "label 2": (Prompt(point_coords=[[10, 10]], point_labels=[2]), "labels must be 1"),
    "label -1": (Prompt(point_coords=[[10, 10]], point_labels=[-1]), "labels must be 1"),
    "coords without labels": (Prompt(point_coords=[[10, 10]]), "must be supplied"),
    "length mismatch": (Prompt(point_coords=[[1, 1], [2, 2]], point_labels=[1]), "to match"),
    "coords shape": (Prompt(point_coords=[10, 10], point_labels=[1]), r"\(P, 2\)"),
    "inverted box": (Prompt(box=[50, 50, 10, 60]), "inverted"),
    "degenerate box": (Prompt(box=[10, 10, 10, 60]), "inverted or empty"),
    "box outside": (Prompt(box=[10, 10, W + 5, 60]), "outside"),
    "mask_input shape": (
        Prompt(point_coords=[[10, 10]], point_labels=[1], mask_input=np.zeros((1, 128, 128))),
        r"\(1, 256, 256\)",
    ),
    "no points, no box": (Prompt(), "no points and no box"),
    "mask only": (Prompt(mask_input=np.zeros((256, 256))), "mask_input alone"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_inputs_rejected_and_nothing_sent(triton_server, ref, protocol):
    with sync_client(url(triton_server, protocol), protocol) as c:
        c.decode(ref.embedding, PROMPTS[0])  # model metadata known: only validation is left
        cases: list[tuple[str, Callable, tuple, type, str]] = []
        for name, (image, match) in BAD_IMAGES.items():
            cases.append((name, c.encode, (image,), InvalidImageError, match))
            cases.append(
                (
                    f"batch with {name}",
                    c.encode_batch,
                    ([ref.image, image],),
                    InvalidImageError,
                    match,
                )
            )
        for name, (prompt, match) in BAD_PROMPTS.items():
            cases.append((name, c.decode, (ref.embedding, prompt), InvalidPromptError, match))
            cases.append(
                (
                    f"second of two: {name}",
                    c.decode,
                    (ref.embedding, [PROMPTS[0], prompt]),
                    InvalidPromptError,
                    rf"prompts\[1\].*{match}",
                )
            )
        cases += [
            ("zero prompts", c.decode, (ref.embedding, []), InvalidPromptError, "prompts is empty"),
            (
                "not a Prompt",
                c.decode,
                (ref.embedding, [PROMPTS[0], {"box": [1, 1, 5, 5]}]),
                InvalidPromptError,
                r"prompts\[1\] must be a sam2_triton.Prompt",
            ),
            (
                "not an embedding",
                c.decode,
                (ref.embedding.image_embed, PROMPTS[0]),
                InvalidInputError,
                "ImageEmbedding",
            ),
            ("zero images", c.encode_batch, ([],), InvalidImageError, "images is empty"),
        ]
        seen = Requests(triton_server)
        for name, fn, args, error, match in cases:
            with pytest.raises(error, match=match):
                fn(*args)
                pytest.fail(f"{name}: accepted")
        time.sleep(0.3)
        assert (seen.delta(ENC), seen.delta(DEC)) == (0, 0), "a bad input reached Triton"


def test_async_client_survives_a_new_event_loop(triton_server) -> None:
    """One AsyncSAM2Client used from two asyncio.run calls (a new loop each time)."""
    client = AsyncSAM2Client(triton_server.grpc_url, "grpc", use_sessions=False, timeout_s=600)
    image = np.full((64, 96, 3), 120, np.uint8)

    async def once() -> tuple[int, int]:
        emb = await client.encode(image)
        return emb.orig_hw

    assert asyncio.run(once()) == (64, 96)
    assert asyncio.run(once()) == (64, 96)  # used to fail: "Event loop is closed"
