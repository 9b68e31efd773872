"""``SAM2VideoPredictor`` on Triton: SAM 2's video tracking API, state on the server.

Every operation is a flow on ``_core`` (``Call``/``Compute`` steps), run by a ``SAM2Client``
(``SAM2VideoPredictor``) or an ``AsyncSAM2Client`` (``AsyncSAM2VideoPredictor``), so the two
cannot drift. Frames are resized here as SAM 2's video loader does and uploaded once; the
server (``sam2_video``) keeps them, their features and every object's memory bank, and answers
low-resolution logits, which are resized here to the video's size as SAM 2 does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from . import video_spec as vs
from ._core import Flow
from ._video_stream import stream_async, stream_sync
from .aio import AsyncSAM2Client
from .client import SAM2Client
from .errors import InvalidInputError
from .video_flows import (
    Result,
    VideoState,
    add_mask_flow,
    add_points_flow,
    clear_flow,
    close_flow,
    frame_result,
    init_flow,
    open_stream_flow,
    propagate_step_flow,
    propagation_args,
    remove_flow,
    reset_flow,
    track_frame_flow,
    window_step_flow,
)

__all__ = ["AsyncSAM2VideoPredictor", "SAM2VideoPredictor", "VideoState"]

DEFAULT_TIMEOUT_S = 600.0  # a propagation step runs every object's networks on a frame


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
        *,
        window: int = 0,
    ) -> VideoState:
        """Open ``video_path`` on the server: a folder of JPEG frames (as SAM 2 reads it), a
        video file (decoded by PyAV), or a list of ``H x W x 3`` uint8 RGB frames. The
        ``offload_*``/``async_loading_frames`` options are SAM 2's memory placement switches;
        they do not change results and are accepted for compatibility (frames and state live on
        the server).

        ``window`` (>= ``video_spec.MIN_VIDEO_WINDOW``) is for videos of any length: nothing is
        uploaded up front, frames go up as they are prompted and tracked, and the server keeps
        only the last ``window`` tracked frames (plus every prompted frame's output), so its
        memory does not grow with the video. Tracking gives SAM 2's masks; prompting or
        starting a propagation on a frame behind the window is refused ("frame released")."""
        return self._run(init_flow(self.client._core, self.model, video_path, window))

    def init_stream(
        self, video_height: int, video_width: int, window: int = vs.MIN_VIDEO_WINDOW
    ) -> VideoState:
        """Open a live stream (a camera) of ``video_height x video_width`` frames: send each
        frame with ``track_frame`` as it arrives; prompt any held frame (the last ``window``)
        with ``add_new_points_or_box`` / ``add_new_mask``, objects may join at any time."""
        return self._run(
            open_stream_flow(self.client._core, self.model, (video_height, video_width), window)
        )

    def track_frame(self, inference_state: VideoState, frame: np.ndarray) -> Result:
        """Append the next live frame (``[H, W, 3]`` uint8 RGB) and track every object on it:
        ``(frame_idx, obj_ids, masks [O, 1, H, W])``; O = 0 before the first prompt."""
        return self._run(track_frame_flow(self.client._core, self.model, inference_state, frame))

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
        if inference_state.window:  # frame by frame, uploading each ahead of its step
            first: tuple[int, int, bool] | None = (start, max_frames, reverse)
            last, done = None, False
            while not done:
                frames, done = self._run(
                    window_step_flow(core, self.model, inference_state, first, last, reverse)
                )
                first = None
                for last, masks in frames:
                    yield last, list(inference_state.obj_ids), masks
            return
        if self.stream:
            for out in stream_sync(
                core, self.stream_model, inference_state.video_id, start, max_frames, reverse
            ):
                for frame_idx, masks in self._run(frame_result(inference_state, out)):
                    yield frame_idx, list(inference_state.obj_ids), masks
            return
        first = (start, max_frames, reverse)
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

    async def init_state(self, video_path: object, *, window: int = 0) -> VideoState:
        """See ``SAM2VideoPredictor.init_state``."""
        return await self.client._run(init_flow(self.client._core, self.model, video_path, window))

    async def init_stream(
        self, video_height: int, video_width: int, window: int = vs.MIN_VIDEO_WINDOW
    ) -> VideoState:
        """See ``SAM2VideoPredictor.init_stream``."""
        return await self.client._run(
            open_stream_flow(self.client._core, self.model, (video_height, video_width), window)
        )

    async def track_frame(self, inference_state: VideoState, frame: np.ndarray) -> Result:
        """See ``SAM2VideoPredictor.track_frame``."""
        return await self.client._run(
            track_frame_flow(self.client._core, self.model, inference_state, frame)
        )

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
        if inference_state.window:
            first: tuple[int, int, bool] | None = (start, max_frames, reverse)
            last, done = None, False
            while not done:
                frames, done = await self.client._run(
                    window_step_flow(core, self.model, inference_state, first, last, reverse)
                )
                first = None
                for last, masks in frames:
                    yield last, list(inference_state.obj_ids), masks
            return
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
                for frame_idx, masks in await self.client._run(frame_result(inference_state, out)):
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
