"""Propagation over one gRPC stream (``sam2_video_stream``, decoupled): one response per frame.

The request and the parsing of each response are shared; ``stream_sync``/``stream_async`` only
differ in how tritonclient streams (a callback thread, or an async iterator). Each propagation
opens its own gRPC client: tritonclient allows one stream per client, and the ``SAM2Client``'s
connection stays free for other calls meanwhile.
"""

from __future__ import annotations

import queue
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from . import _wire, spec
from . import video_spec as vs
from ._config import triton_client_kwargs
from ._core import SAM2Core
from ._errormap import map_transport_error
from .errors import RequestTimeoutError

OUTPUTS = (vs.FRAME_IDXS, vs.OBJ_IDS, vs.MASKS, vs.DONE)


def stream_request(
    core: SAM2Core, video_id: str, start: int, max_frames: int, reverse: bool
) -> tuple[list[Any], list[Any], dict[str, str]]:
    """Inputs, requested outputs and gRPC metadata of one ``sam2_video_stream`` request."""
    mod = core.mod
    inputs = [
        _wire.bytes_input(mod, vs.VIDEO_OP, b"propagate"),
        _wire.bytes_input(mod, vs.VIDEO_ID, video_id.encode()),
        _wire.data_input(mod, vs.START_FRAME_IDX, np.array([start], np.int32)),
        _wire.data_input(mod, vs.MAX_FRAMES, np.array([max_frames], np.int32)),
        _wire.data_input(mod, vs.REVERSE, np.array([reverse], np.bool_)),
    ]
    headers = {**(core.config.headers or {}), spec.SESSION_ROUTING_HEADER: video_id}
    return inputs, _wire.requested_outputs(mod, OUTPUTS), {k.lower(): v for k, v in headers.items()}


def frame_outputs(result: Any) -> dict[str, np.ndarray] | None:
    """A streamed response's frame tensors; None for the empty final response."""
    masks = result.as_numpy(vs.MASKS)
    if masks is None:
        return None
    return {name: result.as_numpy(name) for name in OUTPUTS}


def reply(
    result: Any, error: BaseException | None, model: str
) -> tuple[dict[str, np.ndarray] | None, bool]:
    """One streamed reply: its frame tensors (None for the empty final response) and whether
    it is the last; a transport or model error is raised, mapped like any other call's."""
    if error is not None:
        raise map_transport_error(error, model) or error
    params = result.get_response().parameters
    final = "triton_final_response" in params and params["triton_final_response"].bool_param
    return frame_outputs(result), final


def stream_sync(
    core: SAM2Core, model: str, video_id: str, start: int, max_frames: int, reverse: bool
) -> Iterator[dict[str, np.ndarray]]:
    """Frames of one propagation as the server sends them (blocking gRPC client)."""
    inputs, outputs, headers = stream_request(core, video_id, start, max_frames, reverse)
    replies: queue.Queue = queue.Queue()
    triton = core.mod.InferenceServerClient(**triton_client_kwargs(core.config, aio=False))
    try:
        triton.start_stream(
            callback=lambda result, error: replies.put((result, error)), headers=headers
        )
        triton.async_stream_infer(model, inputs, outputs=outputs, enable_empty_final_response=True)
        while True:
            try:
                result, error = replies.get(timeout=core.config.timeout_s)
            except queue.Empty:
                raise RequestTimeoutError(
                    f"model {model!r}: no frame within {core.config.timeout_s} s"
                ) from None
            frame, final = reply(result, error, model)
            if frame is not None:
                yield frame
            if final:
                return
    finally:
        triton.stop_stream(cancel_requests=True)
        triton.close()


async def stream_async(
    core: SAM2Core,
    model: str,
    video_id: str,
    start: int,
    max_frames: int,
    reverse: bool,
    num_frames: int,
) -> AsyncIterator[dict[str, np.ndarray]]:
    """``stream_sync`` for asyncio (the whole stream may take ``timeout_s`` per frame)."""
    inputs, outputs, headers = stream_request(core, video_id, start, max_frames, reverse)

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {
            "model_name": model,
            "inputs": inputs,
            "outputs": outputs,
            "enable_empty_final_response": True,
        }

    triton = core.mod.InferenceServerClient(**triton_client_kwargs(core.config, aio=True))
    try:
        responses = triton.stream_infer(
            requests(), stream_timeout=core.config.timeout_s * max(num_frames, 1), headers=headers
        )
        async for result, error in responses:
            frame, final = reply(result, error, model)
            if frame is not None:
                yield frame
            if final:
                return
    finally:
        await triton.close()
