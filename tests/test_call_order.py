"""Calls in the wrong order, and decode options as one value (no server needed).

Every wrong-order case raises a typed ``SAM2TritonError`` that is also the built-in SAM 2
raises there (``RuntimeError``), so SAM 2 code catches it unchanged, and its message says what
to call first. The embedding-from-other-weights case needs a server: tests/test_client_server.py.
"""

from __future__ import annotations

import asyncio
import inspect
import socket

import numpy as np
import pytest

import sam2_triton
from sam2_triton import (
    AsyncSAM2Client,
    ClientClosedError,
    DecodeOptions,
    EmbeddingMismatchError,
    ImageEmbedding,
    ImageNotSetError,
    InvalidInputError,
    Prompt,
    SAM2Client,
    SAM2ImagePredictor,
    SAM2TritonError,
    UsageError,
    errors,
)


@pytest.fixture()
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _embedding() -> ImageEmbedding:
    return ImageEmbedding(
        image_embed=np.zeros((1, 256, 64, 64), np.float32),
        high_res_feats_0=np.zeros((1, 32, 256, 256), np.float32),
        high_res_feats_1=np.zeros((1, 64, 128, 128), np.float32),
        orig_hw=(48, 64),
        fingerprint=np.zeros(2, np.int32),
    )


def test_usage_errors_are_sam2s_runtime_error_and_typed() -> None:
    for cls in (UsageError, ImageNotSetError, ClientClosedError, EmbeddingMismatchError):
        assert issubclass(cls, SAM2TritonError) and issubclass(cls, RuntimeError), cls
    assert issubclass(EmbeddingMismatchError, ValueError)  # as it was before
    # every usage error class says when it is raised
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, UsageError):
            assert cls.__doc__ and len(cls.__doc__) > 40, cls


def test_predictor_before_set_image(closed_port: int) -> None:
    with SAM2ImagePredictor(url=f"127.0.0.1:{closed_port}") as predictor:
        calls = {
            "predict": lambda: predictor.predict(point_coords=[[1, 1]], point_labels=[1]),
            "get_image_embedding": predictor.get_image_embedding,
            "predict_batch": lambda: predictor.predict_batch([np.ones((1, 2))], [np.ones(1)]),
        }
        for name, call in calls.items():
            with pytest.raises(ImageNotSetError, match=r"set_image") as info:
                call()
            assert isinstance(info.value, RuntimeError), name


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.encode(np.zeros((8, 8, 3), np.uint8)),
        lambda c: c.encode_batch([np.zeros((8, 8, 3), np.uint8)]),
        lambda c: c.decode(_embedding(), Prompt(point_coords=[[1, 1]], point_labels=[1])),
        lambda c: c.fetch_embedding(_embedding()),
        lambda c: c.wait_until_ready(0.1),
    ],
    ids=["encode", "encode_batch", "decode", "fetch_embedding", "wait_until_ready"],
)
def test_closed_client(closed_port: int, call) -> None:
    client = SAM2Client(f"127.0.0.1:{closed_port}")
    client.close()
    client.close()  # closing twice is fine
    with pytest.raises(ClientClosedError, match="closed: create a new"):
        call(client)


def test_closed_async_client(closed_port: int) -> None:
    async def run() -> None:
        client = AsyncSAM2Client(f"127.0.0.1:{closed_port}")
        await client.close()
        with pytest.raises(ClientClosedError, match="closed: create a new"):
            await client.encode(np.zeros((8, 8, 3), np.uint8))
        with pytest.raises(RuntimeError):  # what SAM 2-style code catches
            await client.decode(_embedding(), Prompt(point_coords=[[1, 1]], point_labels=[1]))

    asyncio.run(run())


def test_predictor_on_a_closed_client(closed_port: int) -> None:
    client = SAM2Client(f"127.0.0.1:{closed_port}")
    client.close()
    predictor = SAM2ImagePredictor(client)
    with pytest.raises(ClientClosedError):
        predictor.set_image(np.zeros((8, 8, 3), np.uint8))


def test_predictor_refuses_client_options_it_would_ignore(closed_port: int) -> None:
    with SAM2Client(f"127.0.0.1:{closed_port}") as client:
        with pytest.raises(InvalidInputError, match="url"):
            SAM2ImagePredictor(client, url="elsewhere:8001")
        with pytest.raises(InvalidInputError, match="timeout_s"):
            SAM2ImagePredictor(client, timeout_s=3)


# --- decode options: one value ------------------------------------------------------------------
def test_decode_options_defaults_are_sam2s() -> None:
    sig = inspect.signature(SAM2ImagePredictor.predict).parameters
    opts = DecodeOptions()
    assert opts.multimask_output is sig["multimask_output"].default
    assert opts.return_logits is sig["return_logits"].default
    assert opts.normalize_coords is sig["normalize_coords"].default
    assert opts.mask_threshold == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"multimask_output": "yes"}, "multimask_output must be True or False"),
        ({"return_logits": 1}, "return_logits must be True or False"),
        ({"mask_threshold": float("nan")}, "mask_threshold must be finite"),
        ({"mask_threshold": "0"}, "mask_threshold must be a number"),
    ],
)
def test_decode_options_validate(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        DecodeOptions(**kwargs)


def test_decode_takes_options_or_keywords_not_both(closed_port: int) -> None:
    prompt = Prompt(point_coords=[[1, 1]], point_labels=[1])
    with SAM2Client(f"127.0.0.1:{closed_port}") as client:
        with pytest.raises(InvalidInputError, match="not both"):
            client.decode(_embedding(), prompt, multimask_output=False, options=DecodeOptions())
        with pytest.raises(InvalidInputError, match="must be a DecodeOptions"):
            client.decode(_embedding(), prompt, options={"multimask_output": False})


def test_decode_options_travel_as_one_value() -> None:
    """No internal signature carries the loose trio any more: the flows take ``options``."""
    from sam2_triton import _core, _wire

    for fn in (
        _core.SAM2Core.decode_flow,
        _core.SAM2Core._session_decode,
        _wire.parse_decoder_result,
    ):
        params = inspect.signature(fn).parameters
        assert "options" in params, fn
        assert not {"multimask_output", "return_logits", "mask_threshold"} & set(params), fn


def test_public_names_exported() -> None:
    for name in ("DecodeOptions", "UsageError", "ImageNotSetError", "ClientClosedError"):
        assert name in sam2_triton.__all__ and getattr(sam2_triton, name)
