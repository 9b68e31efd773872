"""The video predictors' operations as flows on ``_core`` (``Call``/``Compute`` steps), so that
``SAM2VideoPredictor`` and ``AsyncSAM2VideoPredictor`` cannot drift. Every request goes to
``sam2_video`` (``video_spec``); frames are resized here as SAM 2's video loader does, and the
low-resolution logits it answers are resized to the video's size as SAM 2 does.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _wire, spec
from . import video_spec as vs
from ._core import Compute, Flow, SAM2Core
from .errors import InferenceError, InvalidInputError
from .video_io import VideoFrames, frame_model_input, load_video
from .video_transforms import mask_prompt_to_model, prompt_points, video_res_masks

UPLOAD_BATCH = 2  # frames per add_frames request (6 MB)

Result = tuple[int, list[int], np.ndarray]


@dataclass
class VideoState:
    """The client's handle of one video on the server (SAM 2's ``inference_state``).

    ``state["num_frames"]``, ``state["video_height"]``, ``state["video_width"]`` and
    ``state["obj_ids"]`` read as in SAM 2. ``frames`` gives the original frames (for overlays;
    None for a live stream). A video opened with a ``window`` is uploaded frame by frame as it
    is prompted and tracked, and the server forgets frames behind the window.
    """

    video_id: str
    num_frames: int
    video_height: int
    video_width: int
    frames: VideoFrames | None  # None: a live stream (frames are sent as they come)
    obj_ids: list[int] = field(default_factory=list)
    window: int = 0  # > 0: the server keeps the last `window` tracked frames (video_spec)
    uploaded: set[int] = field(default_factory=set)  # frames the server holds

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
    """One ``sam2_video`` request; its outputs as numpy arrays (each tensor travels with
    Triton's batch dimension, ``[1, ...]``: ``video_spec``)."""
    tensors = [_wire.data_input(core.mod, vs.VIDEO_OP, np.array([[op.encode()]], np.object_))]
    for name, value in inputs.items():
        if name == vs.VIDEO_ID:
            value = np.array([str(value).encode()], np.object_)
        tensors.append(_wire.data_input(core.mod, name, np.asarray(value)[None]))
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
        if value is None or value.shape[:1] != (1,):
            raise InferenceError(f"{model} returned no {name!r} [1, ...] for op {op!r}")
        out[name] = value[0]
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


def _check_window(window: int) -> int:
    if (
        isinstance(window, bool)
        or not isinstance(window, (int, np.integer))
        or (window != 0 and not vs.MIN_VIDEO_WINDOW <= window <= vs.MAX_VIDEO_FRAMES)
    ):
        raise InvalidInputError(
            f"window must be 0 (keep every frame) or an int >= {vs.MIN_VIDEO_WINDOW} (tracking "
            f"a frame reads the {vs.MIN_VIDEO_WINDOW - 1} frames before it), got {window!r}"
        )
    return int(window)


def _open(
    core: SAM2Core, model: str, num_frames: int, video_hw: tuple[int, int], window: int
) -> Flow[str]:
    out = yield from _request(
        core,
        model,
        "open",
        {
            vs.VIDEO_ID: secrets.token_hex(vs.VIDEO_ID_LEN // 2),
            vs.NUM_FRAMES: _i32(num_frames),
            vs.VIDEO_HW: np.array(video_hw, np.int32),
            vs.WINDOW: _i32(window),
        },
        [vs.VIDEO_ID],
    )
    raw = out[vs.VIDEO_ID].reshape(-1)[0]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def init_flow(core: SAM2Core, model: str, video_path: object, window: int = 0) -> Flow[VideoState]:
    window = _check_window(window)
    frames = yield Compute(load_video, (video_path,))
    n = len(frames)
    hw = (frames.video_height, frames.video_width)
    video_id = yield from _open(core, model, n, hw, window)
    state = VideoState(video_id, n, *hw, frames, window=window)
    if window:
        return state  # frames go up as they are prompted and tracked (ensure_frame_flow)
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
    state.uploaded.update(range(n))
    return state


def ensure_frame_flow(core: SAM2Core, model: str, state: VideoState, frame_idx: int) -> Flow[None]:
    """Upload frame ``frame_idx`` of a windowed video unless the server holds it."""
    if state.frames is None or frame_idx in state.uploaded:
        return
    batch = yield Compute(_model_inputs, (state.frames, frame_idx, frame_idx + 1))
    yield from _request(
        core,
        model,
        "add_frames",
        {vs.VIDEO_ID: state.video_id, vs.FRAME_IDX: _i32(frame_idx), vs.FRAMES: batch},
        [vs.FRAMES_HELD],
    )
    state.uploaded.add(frame_idx)


def _released(state: VideoState, last_tracked: int) -> None:
    """What the server forgot after tracking ``last_tracked`` forward (``video_store``)."""
    if state.window:
        state.uploaded = {t for t in state.uploaded if t > last_tracked - state.window}


def window_step_flow(
    core: SAM2Core,
    model: str,
    state: VideoState,
    first: tuple[int, int, bool] | None,
    last: int | None,
    reverse: bool,
) -> Flow[tuple[list[tuple[int, np.ndarray]], bool]]:
    """One frame of a windowed video's propagation: upload the frame the server tracks next
    (after ``last``; the first one was prompted or is ``start``), then step."""
    if first is not None and first[0] >= 0:
        yield from ensure_frame_flow(core, model, state, first[0])
    elif last is not None and 0 <= (nxt := last - 1 if reverse else last + 1) < state.num_frames:
        yield from ensure_frame_flow(core, model, state, nxt)
    frames, done = yield from propagate_step_flow(core, model, state, first, 1)
    if frames and not reverse:
        _released(state, frames[-1][0])
    return frames, done


def open_stream_flow(
    core: SAM2Core, model: str, video_hw: tuple[int, int], window: int
) -> Flow[VideoState]:
    window = _check_window(window)
    h, w = (int(v) for v in video_hw)
    video_id = yield from _open(core, model, 0, (h, w), window)
    return VideoState(video_id, 0, h, w, None, window=window)


def track_frame_flow(
    core: SAM2Core, model: str, state: VideoState, frame: np.ndarray
) -> Flow[tuple[int, list[int], np.ndarray]]:
    """Append a live frame ``[H, W, 3]`` uint8 RGB and track it: ``(frame_idx, obj_ids,
    masks [O, 1, H, W])`` (O = 0 before the first prompt)."""
    if state.frames is not None:
        raise InvalidInputError("track_frame is for live streams (init_stream), not files")
    image = yield Compute(frame_model_input, (frame, state.video_hw))
    out = yield from _request(
        core, model, "track", {vs.VIDEO_ID: state.video_id, vs.FRAMES: image[None]}, FRAME_OUTPUTS
    )
    ((frame_idx, masks),) = yield from frame_result(state, out)
    state.num_frames = max(state.num_frames, frame_idx + 1)
    state.uploaded.add(frame_idx)
    _released(state, frame_idx)
    return frame_idx, list(state.obj_ids), masks


def _model_inputs(frames: VideoFrames, start: int, stop: int) -> np.ndarray:
    return np.stack([frames.model_input(i) for i in range(start, stop)])


def frame_result(
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
    yield from ensure_frame_flow(core, model, state, frame_idx)
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
    ((frame, masks),) = yield from frame_result(state, out)
    return frame, list(state.obj_ids), masks


def add_mask_flow(
    core: SAM2Core, model: str, state: VideoState, frame_idx: int, obj_id: int, mask: object
) -> Flow[Result]:
    frame_idx = _check_frame(state, frame_idx)
    obj_id = _check_obj(obj_id)
    model_mask = yield Compute(mask_prompt_to_model, (mask,))
    yield from ensure_frame_flow(core, model, state, frame_idx)
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
    ((frame, masks),) = yield from frame_result(state, out)
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
    ((frame, masks),) = yield from frame_result(state, out)
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
    updated = yield from frame_result(state, out)
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
    frames = yield from frame_result(state, out)
    return frames, bool(out[vs.DONE].reshape(-1)[0])
