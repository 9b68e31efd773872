"""``sam2_video``: SAM 2 video tracking sessions (Triton python backend, BLS).

One request is one operation on one video (``sam2_triton.video_spec``): open, add frames,
add points/box/mask, clear a frame, remove an object, reset, propagate (a few frames per
request, continued with "propagate_next" so that a client shows frame 1 while frame 100 is
computing, over HTTP and gRPC alike), track (append frames and track them: live streams, long
videos), close. The state machine is ``video_engine.VideoTracker``; the networks are the
exported graphs, called through BLS; frames, features and memories live in
``video_store.VideoStore`` under ``video_frame_budget_bytes``.

Run exactly one instance: the videos live in its process. Triton's dynamic batcher hands it the
requests that queued while it was busy (``max_batch_size``, every input ragged): they are served
in arrival order, except that the tracking steps of different videos (propagate,
propagate_next, track) that are next to each other run together, one frame of every video per
round, as batched graph calls (``video_engine.track_frames``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam2_triton import video_spec as vs

from ._triton import RequestError, error_response, int_parameter, pb_utils, require_triton
from .video_engine import TrackerError, TrackJob, track_frames
from .video_graphs import DEFAULT_ATTENTION_BATCH_BYTES
from .video_store import Propagation, VideoSession, VideoStore

PARAM_BUDGET = "video_frame_budget_bytes"
PARAM_MAX_VIDEOS = "max_videos"
PARAM_TTL = "video_idle_ttl_s"
PARAM_ATTENTION_BYTES = "attention_batch_bytes"
DEFAULT_BUDGET = 4 * 2**30
TRACK_OPS = ("propagate", "propagate_next", "track")
# error kinds (message prefixes) -> Triton status codes
_CODES = {
    vs.VIDEO_UNKNOWN: "NOT_FOUND",
    vs.VIDEO_OVER_BUDGET: "UNAVAILABLE",
}
Outputs = dict[str, np.ndarray]


@dataclass
class _Steps:
    """A tracking request of the current round-robin: the frames it tracks now, in order."""

    index: int  # position in the batch of requests
    session: VideoSession
    plan: list[int]
    reverse: bool
    finish: Callable[[list[int], list[np.ndarray]], Outputs]
    frames: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)


METRICS = (
    ("sam2_video_open_videos", "Videos open in sam2_video", "GAUGE"),
    ("sam2_video_held_bytes", "Bytes of frames, features and memories sam2_video holds", "GAUGE"),
    ("sam2_video_budget_bytes", f"Byte budget of sam2_video ({PARAM_BUDGET})", "GAUGE"),
    ("sam2_video_frames_tracked_total", "Frames computed by propagation (all objects)", "COUNTER"),
)


def _scalar(inputs: dict[str, np.ndarray], name: str, default: Any = None) -> Any:
    value = inputs.get(name)
    if value is None:
        if default is None:
            raise RequestError(f"input {name!r} is required for this op")
        return default
    if value.size != 1:
        raise RequestError(f"input {name!r} must hold one value, got shape {list(value.shape)}")
    item = value.reshape(-1)[0]
    return (
        item.decode() if isinstance(item, bytes) else item.item() if hasattr(item, "item") else item
    )


class TritonPythonModel:
    """The video session model (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        require_triton()
        config = json.loads(args["model_config"])
        self._name = args.get("model_name", config.get("name", vs.VIDEO_MODEL))
        budget = int_parameter(config, PARAM_BUDGET, DEFAULT_BUDGET)
        self._store = VideoStore(
            self._bls,
            budget_bytes=budget,
            max_videos=int_parameter(config, PARAM_MAX_VIDEOS, 8),
            idle_ttl_s=float(int_parameter(config, PARAM_TTL, 3600)),
            attention_batch_bytes=int_parameter(
                config, PARAM_ATTENTION_BYTES, DEFAULT_ATTENTION_BATCH_BYTES
            ),
        )
        labels = {"model": self._name, "version": str(args.get("model_version", "1"))}
        kinds = pb_utils.MetricFamily
        self._families = [kinds(n, text, getattr(kinds, k)) for n, text, k in METRICS]
        videos, held, budget_m, tracked = self._families
        self._m_videos = videos.Metric(labels=labels)
        self._m_held = held.Metric(labels=labels)
        self._m_tracked = tracked.Metric(labels=labels)
        budget_m.Metric(labels=labels).set(float(budget))
        self._m_budget = budget_m
        pb_utils.Logger.log_info(f"{self._name}: {budget} bytes for frames, features, memories")

    # --- BLS ---------------------------------------------------------------------------------
    def _bls(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=outputs,
            inputs=[pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in inputs.items()],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise RequestError(f"{model} failed: {response.error().message()}", "INTERNAL")
        result = {}
        for n in outputs:
            tensor = pb_utils.get_output_tensor_by_name(response, n)
            if tensor is None:
                raise RequestError(f"{model} returned no {n!r}", "INTERNAL")
            result[n] = tensor.as_numpy()
        return result

    # --- requests ----------------------------------------------------------------------------
    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        wave: dict[str, _Steps] = {}
        for i, request in enumerate(requests):
            try:
                # the batcher's dimension: one request is [1, ...]
                inputs = {t.name(): t.as_numpy()[0] for t in request.inputs()}
                op = _scalar(inputs, vs.VIDEO_OP)
                if op not in vs.VIDEO_OPS:
                    raise RequestError(
                        f"input 'op' must be one of {list(vs.VIDEO_OPS)}, got {op!r}"
                    )
                if op in TRACK_OPS:
                    video_id = str(_scalar(inputs, vs.VIDEO_ID))
                    if video_id in wave:  # one video's requests never share a round
                        self._run_wave(wave, requests, responses)
                    steps = getattr(self, f"_start_{op}")(inputs, i)
                    wave[video_id] = steps
                else:
                    self._run_wave(wave, requests, responses)
                    responses[i] = self._response(request, getattr(self, f"_op_{op}")(inputs))
            except (TrackerError, RequestError) as exc:
                responses[i] = self._error(exc)
            except Exception as exc:  # noqa: BLE001 - every request must get its one response
                responses[i] = self._error(exc)
        self._run_wave(wave, requests, responses)
        self._m_videos.set(float(len(self._store.videos)))
        self._m_held.set(float(self._store.held_bytes()))
        return responses

    def _response(self, request: Any, outputs: Outputs) -> Any:
        names = set(request.requested_output_names() or outputs)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(n, v[None]) for n, v in outputs.items() if n in names]
        )

    def _error(self, exc: Exception) -> Any:
        if isinstance(exc, TrackerError):
            exc = RequestError(str(exc), _CODES.get(exc.kind, "INVALID_ARG"))
        elif not isinstance(exc, RequestError):
            pb_utils.Logger.log_error(f"{self._name}: {exc!r}")
            exc = RequestError(f"internal error: {exc}", "INTERNAL")
        return error_response(self._name, exc)

    # --- tracking, several videos per round ----------------------------------------------------
    def _run_wave(self, wave: dict[str, _Steps], requests: list[Any], responses: list[Any]) -> None:
        """Track the pending requests' frames: each round takes the next frame of every video
        and runs them as one ``track_frames`` (one video at a time if that fails, so that an
        error names its own request); then answers them."""
        pending = list(wave.values())
        wave.clear()
        failed: dict[int, Exception] = {}
        while True:
            active = [p for p in pending if p.index not in failed and len(p.frames) < len(p.plan)]
            if not active:
                break
            jobs = [TrackJob(p.session.tracker, p.plan[len(p.frames)], p.reverse) for p in active]
            budget = self._store.attention_batch_bytes
            try:
                self._store.prefetch([(p.session, job.frame_idx) for p, job in zip(active, jobs)])
                results = track_frames(self._bls, jobs, budget)
            except Exception:  # noqa: BLE001 - retried below, each error to its own request
                # nothing was changed (track_frames writes its outputs last): again one video
                # at a time, so that the error goes to its own request
                results = []
                for p, job in zip(active, jobs):
                    try:
                        results += track_frames(self._bls, [job], budget)
                    except Exception as exc:  # noqa: BLE001 - answered by _error
                        failed[p.index] = exc
                        results.append(None)
            for p, job, masks in zip(active, jobs, results):
                if masks is None:
                    continue
                p.frames.append(job.frame_idx)
                p.masks.append(masks)
                self._m_tracked.increment(1.0)
                if not p.reverse:
                    self._store.release(p.session, job.frame_idx)
        for p in pending:
            try:
                if p.index in failed:
                    raise failed[p.index]
                self._store.check_budget()
                responses[p.index] = self._response(requests[p.index], p.finish(p.frames, p.masks))
            except Exception as exc:  # noqa: BLE001 - every request gets its one response
                responses[p.index] = self._error(exc)

    def _frames_out(self, session: VideoSession, frames: list[int], masks: list) -> Outputs:
        n = len(session.tracker.obj_ids)
        return {
            vs.FRAME_IDXS: np.array(frames, np.int32),
            vs.OBJ_IDS: np.array(session.tracker.obj_ids, np.int32),
            vs.MASKS: np.stack(masks) if masks else np.zeros((0, n, 1, 256, 256), np.float32),
        }

    def _start_propagate(self, inputs: dict[str, np.ndarray], index: int) -> _Steps:
        session = self._session(inputs)
        start = int(_scalar(inputs, vs.START_FRAME_IDX, -1))
        max_frames = int(_scalar(inputs, vs.MAX_FRAMES, -1))
        reverse = bool(_scalar(inputs, vs.REVERSE, False))
        tracker = session.tracker
        tracker.preflight()
        order = tracker.processing_order(
            None if start < 0 else start, None if max_frames < 0 else max_frames, reverse
        )
        session.propagation = Propagation(order, reverse)
        return self._continue(session, inputs, index)

    def _start_propagate_next(self, inputs: dict[str, np.ndarray], index: int) -> _Steps:
        session = self._store.get(str(_scalar(inputs, vs.VIDEO_ID)))
        if session.propagation is None:
            raise RequestError(
                "no propagation in progress for this video (start one with op 'propagate'; "
                "any other operation on the video ends it)"
            )
        return self._continue(session, inputs, index)

    def _continue(self, session: VideoSession, inputs: dict[str, np.ndarray], index: int) -> _Steps:
        steps = int(_scalar(inputs, vs.STEPS, 1))
        if steps < 1:
            raise RequestError(f"input 'steps' must be >= 1, got {steps}")
        prop = session.propagation
        plan = prop.order[prop.position : prop.position + steps]

        def finish(frames: list[int], masks: list[np.ndarray]) -> Outputs:
            prop.position += len(frames)
            done = prop.position >= len(prop.order)
            if done and session.propagation is prop:
                session.propagation = None
            return {**self._frames_out(session, frames, masks), vs.DONE: np.array([done])}

        return _Steps(index, session, plan, prop.reverse, finish)

    def _start_track(self, inputs: dict[str, np.ndarray], index: int) -> _Steps:
        """Append (or upload) ``frames`` at ``frame_idx`` and track them forward; without
        frames, track the one held frame ``frame_idx``."""
        session = self._session(inputs)
        tracker = session.tracker
        if vs.FRAME_IDX in inputs:
            start = int(_scalar(inputs, vs.FRAME_IDX))
        elif tracker.open_ended:
            start = session.num_frames
        else:
            raise RequestError(f"input {vs.FRAME_IDX!r} is required for op track on this video")
        frames = inputs.get(vs.FRAMES)
        if frames is not None:
            self._store.add_frames(session, start, frames)
            plan = list(range(start, start + frames.shape[0]))
        else:
            tracker.check_frame(start)
            plan = [start]
        if not tracker.objects:  # nothing to track yet (a live stream before its first prompt)
            self._store.release(session, plan[-1])
            return _Steps(index, session, [], False, self._track_finish(session, plan))
        tracker.preflight()
        return _Steps(index, session, plan, False, self._track_finish(session, None))

    def _track_finish(
        self, session: VideoSession, untracked: list[int] | None
    ) -> Callable[[list[int], list[np.ndarray]], Outputs]:
        def finish(frames: list[int], masks: list[np.ndarray]) -> Outputs:
            if untracked is not None:
                frames = untracked
                masks = [np.zeros((0, 1, 256, 256), np.float32) for _ in frames]
            return self._frames_out(session, frames, masks)

        return finish

    def _session(self, inputs: dict[str, np.ndarray]) -> VideoSession:
        session = self._store.get(str(_scalar(inputs, vs.VIDEO_ID)))
        session.propagation = None  # any operation ends a propagation in progress
        return session

    @staticmethod
    def _frame_masks(session: VideoSession, frame_idx: int, masks: np.ndarray) -> dict[str, Any]:
        return {
            vs.FRAME_IDXS: np.array([frame_idx], np.int32),
            vs.OBJ_IDS: np.array(session.tracker.obj_ids, np.int32),
            vs.MASKS: masks[None].astype(np.float32),
        }

    def _op_open(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        hw = inputs.get(vs.VIDEO_HW)
        if hw is None or hw.size != 2:
            raise RequestError(f"input {vs.VIDEO_HW!r} [2] (height, width) is required")
        proposed = inputs.get(vs.VIDEO_ID)
        session = self._store.open(
            int(_scalar(inputs, vs.NUM_FRAMES)),
            (int(hw[0]), int(hw[1])),
            None if proposed is None else str(_scalar(inputs, vs.VIDEO_ID)),
            window=int(_scalar(inputs, vs.WINDOW, 0)),
        )
        return {vs.VIDEO_ID: np.array([session.video_id.encode()], np.object_)}

    def _op_add_frames(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        # frames of a propagation in progress may arrive meanwhile (windowed videos)
        session = self._store.get(str(_scalar(inputs, vs.VIDEO_ID)))
        frames = inputs.get(vs.FRAMES)
        if frames is None:
            raise RequestError(f"input {vs.FRAMES!r} is required for op add_frames")
        self._store.add_frames(session, int(_scalar(inputs, vs.FRAME_IDX)), frames)
        return {vs.FRAMES_HELD: np.array([len(session.frames)], np.int32)}

    def _op_add_points(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        session = self._session(inputs)
        coords, labels = inputs.get(vs.PROMPT_COORDS), inputs.get(vs.PROMPT_LABELS)
        if coords is None or labels is None or coords.ndim != 2 or coords.shape[-1] != 2:
            raise RequestError("op add_points needs point_coords [P, 2] and point_labels [P]")
        if labels.reshape(-1).shape[0] != coords.shape[0] or coords.shape[0] == 0:
            raise RequestError(
                f"point_labels has {labels.size} values for {coords.shape[0]} points (>= 1)"
            )
        frame_idx = int(_scalar(inputs, vs.FRAME_IDX))
        masks = session.tracker.add_new_points_or_box(
            frame_idx,
            int(_scalar(inputs, vs.OBJ_ID)),
            coords.astype(np.float32),
            labels.reshape(-1).astype(np.int32),
            clear_old_points=bool(_scalar(inputs, vs.CLEAR_OLD_POINTS, True)),
        )
        return self._frame_masks(session, frame_idx, masks)

    def _op_add_mask(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        session = self._session(inputs)
        mask = inputs.get(vs.PROMPT_MASK)
        if mask is None:
            raise RequestError(f"input {vs.PROMPT_MASK!r} bool [1024, 1024] is required")
        frame_idx = int(_scalar(inputs, vs.FRAME_IDX))
        masks = session.tracker.add_new_mask(frame_idx, int(_scalar(inputs, vs.OBJ_ID)), mask)
        return self._frame_masks(session, frame_idx, masks)

    def _op_clear_frame(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        session = self._session(inputs)
        frame_idx = int(_scalar(inputs, vs.FRAME_IDX))
        obj_id = int(_scalar(inputs, vs.OBJ_ID))
        masks = session.tracker.clear_all_prompts_in_frame(frame_idx, obj_id)
        return self._frame_masks(session, frame_idx, masks)

    def _op_remove_object(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        session = self._session(inputs)
        updated = session.tracker.remove_object(
            int(_scalar(inputs, vs.OBJ_ID)), strict=bool(_scalar(inputs, vs.STRICT, False))
        )
        n = len(session.tracker.obj_ids)
        return {
            vs.OBJ_IDS: np.array(session.tracker.obj_ids, np.int32),
            vs.FRAME_IDXS: np.array([f for f, _ in updated], np.int32),
            vs.MASKS: (
                np.stack([m for _, m in updated]).astype(np.float32)
                if updated
                else np.zeros((0, n, 1, 256, 256), np.float32)
            ),
        }

    def _op_reset(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        session = self._session(inputs)
        session.tracker.reset_state()
        return {vs.OBJ_IDS: np.zeros((0,), np.int32)}

    def _op_close(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        video_id = str(_scalar(inputs, vs.VIDEO_ID))
        self._store.get(video_id)
        self._store.close(video_id)
        return {vs.VIDEO_ID: np.array([video_id.encode()], np.object_)}

    def _op_info(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        session = self._store.get(str(_scalar(inputs, vs.VIDEO_ID)))
        return {
            vs.NUM_FRAMES: np.array([session.num_frames], np.int32),
            vs.VIDEO_HW: np.array(session.video_hw, np.int32),
            vs.FRAMES_HELD: np.array([len(session.frames)], np.int32),
            vs.OBJ_IDS: np.array(session.tracker.obj_ids, np.int32),
            vs.HELD_BYTES: np.array([self._store.video_bytes(session)], np.int64),
            vs.FIRST_HELD_FRAME: np.array([session.tracker.released_before], np.int32),
        }

    def finalize(self) -> None:
        self._store.videos.clear()
