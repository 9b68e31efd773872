"""``SAM2VideoPredictor`` on Triton: SAM 2's video tracking API, state on the server.

Every operation is a flow on ``_core`` (``Call``/``Compute`` steps), run by a ``SAM2Client``
(``SAM2VideoPredictor``) or an ``AsyncSAM2Client`` (``AsyncSAM2VideoPredictor``), so the two
cannot drift. Frames are resized here as SAM 2's video loader does and uploaded once; the
server (``sam2_video``) keeps them, their features and every object's memory bank, and answers
low-resolution logits, which are resized here to the video's size as SAM 2 does.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _wire, spec
from . import video_spec as vs
from ._core import Compute, Flow, SAM2Core
from ._video_stream import stream_async, stream_sync
from .aio import AsyncSAM2Client
from .client import SAM2Client
from .errors import InferenceError, InvalidInputError
from .video_io import VideoFrames, load_video
from .video_transforms import mask_prompt_to_model, prompt_points, video_res_masks

UPLOAD_BATCH = 2  # frames per add_frames request (6 MB)
DEFAULT_TIMEOUT_S = 600.0  # a propagation step runs every object's networks on a frame

Result = tuple[int, list[int], np.ndarray]


@dataclass
class VideoState:
    """The client's handle of one video on the server (SAM 2's ``inference_state``).

    ``state["num_frames"]``, ``state["video_height"]``, ``state["video_width"]`` and
    ``state["obj_ids"]`` read as in SAM 2. ``frames`` gives the original frames (for overlays).
    """

    video_id: str
    num_frames: int
    video_height: int
    video_width: int
    frames: VideoFrames
    obj_ids: list[int] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        if key not in ("num_frames", "video_height", "video_width", "obj_ids", "video_id"):
            raise KeyError(key)
        return getattr(self, key)

    @property
    def video_hw(self) -> tuple[int, int]:
        return (self.video_height, self.video_width)


# --- flows --------------------------------------------------------------------------------------
def _request(
    core: SAM2Core, model: str, op: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]
) -> Flow[dict[str, np.ndarray]]:
    """One ``sam2_video`` request; its outputs as numpy arrays."""
    tensors = [_wire.bytes_input(core.mod, vs.VIDEO_OP, op.encode())]
    for name, value in inputs.items():
        if name == vs.VIDEO_ID:
            tensors.append(_wire.bytes_input(core.mod, name, str(value).encode()))
        else:
            tensors.append(_wire.data_input(core.mod, name, np.asarray(value)))
    video_id = inputs.get(vs.VIDEO_ID)
    route = None if video_id is None else {spec.SESSION_ROUTING_HEADER: str(video_id)}
    result = yield core.call(
        "infer",
        model,
        extra_headers=route,
        model_name=model,
        inputs=tensors,
        outputs=_wire.requested_outputs(core.mod, outputs),
    )
    out = {}
    for name in outputs:
        value = result.as_numpy(name)
        if value is None:
            raise InferenceError(f"{model} returned no {name!r} for op {op!r}")
        out[name] = value
    return out


def _i32(value: int) -> np.ndarray:
    return np.array([int(value)], np.int32)


def _flag(value: bool) -> np.ndarray:
    return np.array([bool(value)], np.bool_)


def _check_frame(state: VideoState, frame_idx: int, name: str = "frame_idx") -> int:
    if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an int, got {type(frame_idx).__name__}")
    if not 0 <= frame_idx < state.num_frames:
        raise InvalidInputError(
            f"{name} {frame_idx} is out of range: the video has {state.num_frames} frames"
        )
    return int(frame_idx)


def _check_obj(obj_id: int) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
        raise InvalidInputError(f"obj_id must be an int, got {type(obj_id).__name__}")
    if not -(2**31) <= obj_id < 2**31:
        raise InvalidInputError(f"obj_id must fit in int32, got {obj_id}")
    return int(obj_id)


def init_flow(core: SAM2Core, model: str, video_path: object) -> Flow[VideoState]:
    frames = yield Compute(load_video, (video_path,))
    n = len(frames)
    hw = np.array([frames.video_height, frames.video_width], np.int32)
    proposed = secrets.token_hex(vs.VIDEO_ID_LEN // 2)
    out = yield from _request(
        core,
        model,
        "open",
        {vs.VIDEO_ID: proposed, vs.NUM_FRAMES: _i32(n), vs.VIDEO_HW: hw},
        [vs.VIDEO_ID],
    )
    raw = out[vs.VIDEO_ID].reshape(-1)[0]
    video_id = raw.decode() if isinstance(raw, bytes) else str(raw)
    state = VideoState(video_id, n, frames.video_height, frames.video_width, frames)
    for start in range(0, n, UPLOAD_BATCH):
        stop = min(start + UPLOAD_BATCH, n)
        batch = yield Compute(_model_inputs, (frames, start, stop))
        yield from _request(
            core,
            model,
            "add_frames",
            {vs.VIDEO_ID: video_id, vs.FRAME_IDX: _i32(start), vs.FRAMES: batch},
            [vs.FRAMES_HELD],
        )
    return state


def _model_inputs(frames: VideoFrames, start: int, stop: int) -> np.ndarray:
    return np.stack([frames.model_input(i) for i in range(start, stop)])


def _frame_result(
    state: VideoState, out: dict[str, np.ndarray]
) -> Flow[list[tuple[int, np.ndarray]]]:
    state.obj_ids = [int(i) for i in out[vs.OBJ_IDS].reshape(-1)]
    frames = [int(f) for f in out[vs.FRAME_IDXS].reshape(-1)]
    masks = out[vs.MASKS]
    if masks.shape[:2] != (len(frames), len(state.obj_ids)):
        raise InferenceError(
            f"sam2_video returned masks {list(masks.shape)} for {len(frames)} frames and "
            f"{len(state.obj_ids)} objects"
        )
    result = []
    for k, frame_idx in enumerate(frames):
        video_masks = yield Compute(video_res_masks, (masks[k], state.video_hw))
        result.append((frame_idx, video_masks))
    return result


FRAME_OUTPUTS = (vs.FRAME_IDXS, vs.OBJ_IDS, vs.MASKS)


def add_points_flow(
    core: SAM2Core,
    model: str,
    state: VideoState,
    frame_idx: int,
    obj_id: int,
    points: object,
    labels: object,
    clear_old_points: bool,
    normalize_coords: bool,
    box: object,
) -> Flow[Result]:
    frame_idx = _check_frame(state, frame_idx)
    obj_id = _check_obj(obj_id)
    if box is not None and not clear_old_points:
        raise InvalidInputError(
            "cannot add box without clearing old points, since box prompt must be provided "
            "before any point prompt (please use clear_old_points=True instead)"
        )
    coords, labs = prompt_points(points, labels, box, state.video_hw, normalize_coords)
    out = yield from _request(
        core,
        model,
        "add_points",
        {
            vs.VIDEO_ID: state.video_id,
            vs.FRAME_IDX: _i32(frame_idx),
            vs.OBJ_ID: _i32(obj_id),
            vs.PROMPT_COORDS: coords,
            vs.PROMPT_LABELS: labs,
            vs.CLEAR_OLD_POINTS: _flag(clear_old_points),
        },
        FRAME_OUTPUTS,
    )
    ((frame, masks),) = yield from _frame_result(state, out)
    return frame, list(state.obj_ids), masks


def add_mask_flow(
    core: SAM2Core, model: str, state: VideoState, frame_idx: int, obj_id: int, mask: object
) -> Flow[Result]:
    frame_idx = _check_frame(state, frame_idx)
    obj_id = _check_obj(obj_id)
    model_mask = yield Compute(mask_prompt_to_model, (mask,))
    out = yield from _request(
        core,
        model,
        "add_mask",
        {
            vs.VIDEO_ID: state.video_id,
            vs.FRAME_IDX: _i32(frame_idx),
            vs.OBJ_ID: _i32(obj_id),
            vs.PROMPT_MASK: model_mask,
        },
        FRAME_OUTPUTS,
    )
    ((frame, masks),) = yield from _frame_result(state, out)
    return frame, list(state.obj_ids), masks


def clear_flow(
    core: SAM2Core, model: str, state: VideoState, frame_idx: int, obj_id: int
) -> Flow[Result]:
    frame_idx = _check_frame(state, frame_idx)
    out = yield from _request(
        core,
        model,
        "clear_frame",
        {
            vs.VIDEO_ID: state.video_id,
            vs.FRAME_IDX: _i32(frame_idx),
            vs.OBJ_ID: _i32(_check_obj(obj_id)),
        },
        FRAME_OUTPUTS,
    )
    ((frame, masks),) = yield from _frame_result(state, out)
    return frame, list(state.obj_ids), masks


def remove_flow(
    core: SAM2Core, model: str, state: VideoState, obj_id: int, strict: bool
) -> Flow[tuple[list[int], list[tuple[int, np.ndarray]]]]:
    out = yield from _request(
        core,
        model,
        "remove_object",
        {
            vs.VIDEO_ID: state.video_id,
            vs.OBJ_ID: _i32(_check_obj(obj_id)),
            vs.STRICT: _flag(strict),
        },
        FRAME_OUTPUTS,
    )
    updated = yield from _frame_result(state, out)
    return list(state.obj_ids), updated


def reset_flow(core: SAM2Core, model: str, state: VideoState) -> Flow[None]:
    yield from _request(core, model, "reset", {vs.VIDEO_ID: state.video_id}, [vs.OBJ_IDS])
    state.obj_ids = []


def close_flow(core: SAM2Core, model: str, state: VideoState) -> Flow[None]:
    yield from _request(core, model, "close", {vs.VIDEO_ID: state.video_id}, [vs.VIDEO_ID])


def propagation_args(
    state: VideoState, start_frame_idx: int | None, max_frame_num_to_track: int | None
) -> tuple[int, int]:
    """``propagate_in_video``'s arguments on the wire (-1: SAM 2's default), checked."""
    start = (
        -1 if start_frame_idx is None else _check_frame(state, start_frame_idx, "start_frame_idx")
    )
    if max_frame_num_to_track is None:
        return start, -1
    if (
        isinstance(max_frame_num_to_track, (int, np.integer))
        and not isinstance(max_frame_num_to_track, bool)
        and max_frame_num_to_track >= 0
    ):
        return start, int(max_frame_num_to_track)
    raise InvalidInputError(
        f"max_frame_num_to_track must be None or an int >= 0, got {max_frame_num_to_track!r}"
    )


def propagate_step_flow(
    core: SAM2Core,
    model: str,
    state: VideoState,
    first: tuple[int, int, bool] | None,
    steps: int,
) -> Flow[tuple[list[tuple[int, np.ndarray]], bool]]:
    """One stepped propagation request ("propagate" with ``first`` = (start, max_frames,
    reverse), else "propagate_next"): its frames (video-size logits) and whether done."""
    inputs: dict[str, Any] = {vs.VIDEO_ID: state.video_id, vs.STEPS: _i32(steps)}
    if first is not None:
        start, max_frames, reverse = first
        inputs.update(
            {
                vs.START_FRAME_IDX: _i32(start),
                vs.MAX_FRAMES: _i32(max_frames),
                vs.REVERSE: _flag(reverse),
            }
        )
    out = yield from _request(
        core,
        model,
        "propagate" if first is not None else "propagate_next",
        inputs,
        (*FRAME_OUTPUTS, vs.DONE),
    )
    frames = yield from _frame_result(state, out)
    return frames, bool(out[vs.DONE].reshape(-1)[0])


def _streams(protocol: str, stream: bool | None) -> bool:
    if stream and protocol != "grpc":
        raise InvalidInputError(
            "stream=True needs protocol='grpc' (Triton's HTTP endpoint cannot stream); "
            "over HTTP propagation is stepped"
        )
    return protocol == "grpc" and stream is not False


# --- the predictors -----------------------------------------------------------------------------
def _own_client(client: object, cls: type, url: str | None, protocol: str, kwargs: dict) -> Any:
    if client is not None and not isinstance(client, cls):
        raise InvalidInputError(f"client must be a {cls.__name__}, got {type(client).__name__}")
    if client is not None and (url is not None or protocol != "grpc" or kwargs):
        raise InvalidInputError(
            "pass either client= or the options of a new client (url, protocol, ...), not both"
        )
    if client is not None:
        return client
    kwargs.setdefault("timeout_s", DEFAULT_TIMEOUT_S)
    return cls(url, protocol, **kwargs)


class SAM2VideoPredictor:
    """SAM 2's ``SAM2VideoPredictor`` served by Triton: same methods, arguments and results.

    ``SAM2VideoPredictor(url="localhost:8001")`` (or ``client=SAM2Client(...)``); other keyword
    arguments configure a new ``SAM2Client`` (``timeout_s`` defaults to 600 s here). Masks are
    numpy float32 logits ``[O, 1, H, W]`` at the video's size (SAM 2 returns torch tensors).
    Over gRPC, propagation is one stream (``sam2_video_stream``): the server sends every frame
    as soon as it is computed and goes on with the next meanwhile (``stream=False``: stepped
    requests instead). Over HTTP it is stepped: each request computes ``propagate_steps``
    frames (1: every frame is yielded as soon as it is computed).
    """

    def __init__(
        self,
        client: SAM2Client | None = None,
        *,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = vs.VIDEO_MODEL,
        stream_model: str = vs.VIDEO_STREAM_MODEL,
        stream: bool | None = None,
        propagate_steps: int = 1,
        **client_kwargs: Any,
    ) -> None:
        if not isinstance(propagate_steps, int) or propagate_steps < 1:
            raise InvalidInputError(f"propagate_steps must be an int >= 1, got {propagate_steps!r}")
        self._owns_client = client is None
        self.client = _own_client(client, SAM2Client, url, protocol, client_kwargs)
        self.model = model
        self.stream_model = stream_model
        self.stream = _streams(self.client.config.protocol, stream)
        self.propagate_steps = propagate_steps

    def _run(self, flow: Flow[Any]) -> Any:
        return self.client._run(flow)

    def init_state(
        self,
        video_path: object,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
    ) -> VideoState:
        """Open ``video_path`` on the server: a folder of JPEG frames (as SAM 2 reads it), a
        video file (decoded by PyAV), or a list of ``H x W x 3`` uint8 RGB frames. The
        ``offload_*``/``async_loading_frames`` options are SAM 2's memory placement switches;
        they do not change results and are accepted for compatibility (frames and state live on
        the server)."""
        return self._run(init_flow(self.client._core, self.model, video_path))

    def add_new_points_or_box(
        self,
        inference_state: VideoState,
        frame_idx: int,
        obj_id: int,
        points: object = None,
        labels: object = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: object = None,
    ) -> Result:
        """Clicks (``points`` ``[N, 2]`` x, y in video pixels, ``labels`` 1/0) and/or a ``box``
        (x0, y0, x1, y1) for ``obj_id`` on ``frame_idx``: ``(frame_idx, obj_ids, masks)``."""
        return self._run(
            add_points_flow(
                self.client._core,
                self.model,
                inference_state,
                frame_idx,
                obj_id,
                points,
                labels,
                clear_old_points,
                normalize_coords,
                box,
            )
        )

    def add_new_points(self, *args: Any, **kwargs: Any) -> Result:
        """Deprecated in SAM 2: ``add_new_points_or_box``."""
        return self.add_new_points_or_box(*args, **kwargs)

    def add_new_mask(
        self, inference_state: VideoState, frame_idx: int, obj_id: int, mask: object
    ) -> Result:
        """A mask prompt (``H x W`` bool) for ``obj_id`` on ``frame_idx``."""
        return self._run(
            add_mask_flow(self.client._core, self.model, inference_state, frame_idx, obj_id, mask)
        )

    def propagate_in_video(
        self,
        inference_state: VideoState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[Result]:
        """Track every object through the video: yields ``(frame_idx, obj_ids, masks)`` per
        frame as the server computes it."""
        start, max_frames = propagation_args(
            inference_state, start_frame_idx, max_frame_num_to_track
        )
        core = self.client._core
        if self.stream:
            for out in stream_sync(
                core, self.stream_model, inference_state.video_id, start, max_frames, reverse
            ):
                for frame_idx, masks in self._run(_frame_result(inference_state, out)):
                    yield frame_idx, list(inference_state.obj_ids), masks
            return
        first: tuple[int, int, bool] | None = (start, max_frames, reverse)
        done = False
        while not done:
            frames, done = self._run(
                propagate_step_flow(core, self.model, inference_state, first, self.propagate_steps)
            )
            first = None
            for frame_idx, masks in frames:
                yield frame_idx, list(inference_state.obj_ids), masks

    def clear_all_prompts_in_frame(
        self, inference_state: VideoState, frame_idx: int, obj_id: int, need_output: bool = True
    ) -> Result | None:
        """Remove ``obj_id``'s clicks/mask on ``frame_idx``."""
        result = self._run(
            clear_flow(self.client._core, self.model, inference_state, frame_idx, obj_id)
        )
        return result if need_output else None

    def remove_object(
        self,
        inference_state: VideoState,
        obj_id: int,
        strict: bool = False,
        need_output: bool = True,
    ) -> tuple[list[int], list[tuple[int, np.ndarray]]]:
        """Forget ``obj_id``: ``(obj_ids, [(frame_idx, masks), ...])`` of the frames it had
        prompts on (empty with ``need_output=False``)."""
        obj_ids, updated = self._run(
            remove_flow(self.client._core, self.model, inference_state, obj_id, strict)
        )
        return obj_ids, updated if need_output else []

    def reset_state(self, inference_state: VideoState) -> None:
        """Remove every object, prompt and memory (the frames stay on the server)."""
        self._run(reset_flow(self.client._core, self.model, inference_state))

    def close_state(self, inference_state: VideoState) -> None:
        """Free the video on the server (frames, features, memories)."""
        self._run(close_flow(self.client._core, self.model, inference_state))

    def close(self) -> None:
        """Close the client if this predictor created it."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> SAM2VideoPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSAM2VideoPredictor:
    """The asyncio twin of ``SAM2VideoPredictor`` on an ``AsyncSAM2Client`` (same flows);
    ``propagate_in_video`` is an async iterator."""

    def __init__(
        self,
        client: AsyncSAM2Client,
        model: str = vs.VIDEO_MODEL,
        stream_model: str = vs.VIDEO_STREAM_MODEL,
        stream: bool | None = None,
        propagate_steps: int = 1,
    ) -> None:
        if not isinstance(client, AsyncSAM2Client):
            raise InvalidInputError(
                f"client must be an AsyncSAM2Client, got {type(client).__name__}"
            )
        if not isinstance(propagate_steps, int) or propagate_steps < 1:
            raise InvalidInputError(f"propagate_steps must be an int >= 1, got {propagate_steps!r}")
        self.client = client
        self.model = model
        self.stream_model = stream_model
        self.stream = _streams(client.config.protocol, stream)
        self.propagate_steps = propagate_steps

    async def init_state(self, video_path: object) -> VideoState:
        """See ``SAM2VideoPredictor.init_state``."""
        return await self.client._run(init_flow(self.client._core, self.model, video_path))

    async def add_new_points_or_box(
        self,
        inference_state: VideoState,
        frame_idx: int,
        obj_id: int,
        points: object = None,
        labels: object = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: object = None,
    ) -> Result:
        """See ``SAM2VideoPredictor.add_new_points_or_box``."""
        return await self.client._run(
            add_points_flow(
                self.client._core,
                self.model,
                inference_state,
                frame_idx,
                obj_id,
                points,
                labels,
                clear_old_points,
                normalize_coords,
                box,
            )
        )

    async def add_new_mask(
        self, inference_state: VideoState, frame_idx: int, obj_id: int, mask: object
    ) -> Result:
        """See ``SAM2VideoPredictor.add_new_mask``."""
        return await self.client._run(
            add_mask_flow(self.client._core, self.model, inference_state, frame_idx, obj_id, mask)
        )

    async def propagate_in_video(
        self,
        inference_state: VideoState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[Result]:
        """See ``SAM2VideoPredictor.propagate_in_video``."""
        start, max_frames = propagation_args(
            inference_state, start_frame_idx, max_frame_num_to_track
        )
        core = self.client._core
        if self.stream:
            async for out in stream_async(
                core,
                self.stream_model,
                inference_state.video_id,
                start,
                max_frames,
                reverse,
                inference_state.num_frames,
            ):
                for frame_idx, masks in await self.client._run(_frame_result(inference_state, out)):
                    yield frame_idx, list(inference_state.obj_ids), masks
            return
        first: tuple[int, int, bool] | None = (start, max_frames, reverse)
        done = False
        while not done:
            frames, done = await self.client._run(
                propagate_step_flow(core, self.model, inference_state, first, self.propagate_steps)
            )
            first = None
            for frame_idx, masks in frames:
                yield frame_idx, list(inference_state.obj_ids), masks

    async def clear_all_prompts_in_frame(
        self, inference_state: VideoState, frame_idx: int, obj_id: int, need_output: bool = True
    ) -> Result | None:
        """See ``SAM2VideoPredictor.clear_all_prompts_in_frame``."""
        result = await self.client._run(
            clear_flow(self.client._core, self.model, inference_state, frame_idx, obj_id)
        )
        return result if need_output else None

    async def remove_object(
        self,
        inference_state: VideoState,
        obj_id: int,
        strict: bool = False,
        need_output: bool = True,
    ) -> tuple[list[int], list[tuple[int, np.ndarray]]]:
        """See ``SAM2VideoPredictor.remove_object``."""
        obj_ids, updated = await self.client._run(
            remove_flow(self.client._core, self.model, inference_state, obj_id, strict)
        )
        return obj_ids, updated if need_output else []

    async def reset_state(self, inference_state: VideoState) -> None:
        """See ``SAM2VideoPredictor.reset_state``."""
        await self.client._run(reset_flow(self.client._core, self.model, inference_state))

    async def close_state(self, inference_state: VideoState) -> None:
        """See ``SAM2VideoPredictor.close_state``."""
        await self.client._run(close_flow(self.client._core, self.model, inference_state))
