"""SAM2VideoPredictor's state machine in numpy, over the exported per-frame graphs.

``VideoTracker`` holds one video's prompts and per-object memory bank and mirrors
``sam2.sam2_video_predictor.SAM2VideoPredictor`` (SAM 2.1 configs, ``build_sam2_video_predictor``
defaults) method by method; each method names the SAM 2 code it reproduces. The networks run
through a ``GraphRunner`` (BLS inside Triton, onnxruntime in tests). Prompts run one object per
call as SAM 2.1 does; propagation (``track_frames``) runs every object of one or several videos
as batched calls (SAM 2.1 loops over objects; batch rows do not interact, so the masks are the
same). Masks are returned at low resolution (``[O, 1, 256, 256]`` float32 logits); the
client resizes them to the video exactly as ``_get_orig_video_res_output``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from sam2_triton import spec
from sam2_triton import video_spec as vs
from sam2_triton.video_transforms import antialias_resize

from .video_graphs import (
    DEFAULT_ATTENTION_BATCH_BYTES,
    DecodeItem,
    FrameFeatures,
    FrameOut,
    GraphRunner,
    MemoryInputs,
    attend,
    decode,
    encode_memories,
)

__all__ = [
    "FrameFeatures",
    "FrameOut",
    "GraphRunner",
    "TrackJob",
    "TrackerError",
    "VideoTracker",
    "memory_selection",
    "track_frames",
]

# SAM 2.1's configs (the same for every size) with build_sam2_video_predictor's overrides
NUM_MASKMEM = vs.NUM_MASKMEM
MEMORY_TEMPORAL_STRIDE = 1  # memory_temporal_stride_for_eval
MAX_OBJ_PTRS_IN_ENCODER = 16
MULTIMASK_MAX_PT_NUM = 1  # multimask_min_pt_num = 0; multimask_output_for_tracking = true
MASK_PROMPT_SCALE, MASK_PROMPT_BIAS = 20.0, -10.0  # _use_mask_as_output's out_scale, out_bias
PREV_LOGITS_CLAMP = 32.0  # add_new_points_or_box clamps the previous logits it feeds back
LOW = spec.LOW_RES_SIZE


class TrackerError(Exception):
    """A request this video cannot honour; ``kind`` is the message prefix (``video_spec``)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass
class Points:
    coords: np.ndarray  # [1, N, 2] float32, model frame
    labels: np.ndarray  # [1, N] int32


@dataclass
class ObjectState:
    """Everything SAM 2 keeps per object index (``*_per_obj`` entries of inference_state)."""

    points: dict[int, Points] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # [1024, 1024] bool
    cond: dict[int, FrameOut] = field(default_factory=dict)
    non_cond: dict[int, FrameOut] = field(default_factory=dict)
    temp_cond: dict[int, FrameOut] = field(default_factory=dict)
    temp_non_cond: dict[int, FrameOut] = field(default_factory=dict)
    tracked: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse

    def prompt_slot(self, frame_idx: int) -> tuple[bool, bool, dict[int, FrameOut]]:
        """For a prompt on ``frame_idx``: whether it is an initial conditioning frame (not tracked
        yet), the direction it was tracked in, and the temporary outputs it goes to
        (``add_all_frames_to_correct_as_cond=False``: corrections stay non-conditioning)."""
        is_init = frame_idx not in self.tracked
        reverse = False if is_init else self.tracked[frame_idx]
        return is_init, reverse, self.temp_cond if is_init else self.temp_non_cond

    def output(self, frame_idx: int) -> FrameOut | None:
        return self.cond.get(frame_idx) or self.non_cond.get(frame_idx)


def memory_selection(
    frame_idx: int,
    cond: dict[int, FrameOut],
    non_cond: dict[int, FrameOut],
    num_frames: int,
    reverse: bool,
) -> tuple[list[tuple[int, FrameOut]], list[tuple[int, FrameOut]], int]:
    """The memories ``(t_pos, out)`` and pointers ``(signed distance, out)`` a tracked frame
    attends to, and the pointer position scale ``t_diff_max``: the selection of
    ``SAM2Base._prepare_memory_conditioned_features`` (eval; ``max_cond_frames_in_attn = -1``
    selects every conditioning frame, ``only_obj_ptrs_in_the_past_for_eval`` and
    ``use_signed_tpos_enc_to_obj_ptrs`` as in SAM 2.1)."""
    selected = dict(cond)  # select_closest_cond_frames with max_cond_frame_num = -1
    mems: list[tuple[int, FrameOut]] = [(0, out) for out in selected.values()]
    stride = MEMORY_TEMPORAL_STRIDE
    for t_pos in range(1, NUM_MASKMEM):
        t_rel = NUM_MASKMEM - t_pos
        if t_rel == 1:
            prev = frame_idx + t_rel if reverse else frame_idx - t_rel
        elif not reverse:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        out = non_cond.get(prev)  # unselected conditioning frames: none with all selected
        if out is not None:
            mems.append((t_pos, out))
    max_ptrs = min(num_frames, MAX_OBJ_PTRS_IN_ENCODER)
    sign = -1 if reverse else 1
    ptrs = [
        ((frame_idx - t) * sign, out)
        for t, out in selected.items()
        if (t >= frame_idx if reverse else t <= frame_idx)
    ]
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if reverse else frame_idx - t_diff
        if t < 0 or t >= num_frames:
            break
        out = non_cond.get(t)
        if out is not None:
            ptrs.append((t_diff, out))
    return mems, ptrs, max_ptrs - 1


class VideoTracker:
    """One video's tracking state (SAM 2's ``inference_state``) and its operations.

    ``features(frame_idx)`` returns a frame's ``FrameFeatures`` (the caller caches them under
    its byte budget and raises ``TrackerError`` for frames it does not hold).
    """

    def __init__(
        self,
        run: GraphRunner,
        features: Callable[[int], FrameFeatures],
        num_frames: int,
        open_ended: bool = False,
        window: int = 0,
        attention_batch_bytes: int = DEFAULT_ATTENTION_BATCH_BYTES,
    ) -> None:
        self.run = run
        self.attention_batch_bytes = attention_batch_bytes
        self.features = features
        self.num_frames = num_frames
        self.open_ended = open_ended  # a live stream: num_frames grows as frames arrive
        self.window = window  # 0: keep every output; else the last `window` tracked frames
        self.released_before = 0  # window: outputs of earlier frames are forgotten
        self.obj_ids: list[int] = []
        self.objects: list[ObjectState] = []

    @property
    def selection_frames(self) -> int:
        """``num_frames`` as the memory selection sees it: an open-ended video (a live stream)
        tracks as SAM 2 does on any video of at least ``MAX_OBJ_PTRS_IN_ENCODER`` frames."""
        if self.open_ended:
            return max(self.num_frames, MAX_OBJ_PTRS_IN_ENCODER)
        return self.num_frames

    # --- object ids (_obj_id_to_idx) ---------------------------------------------------------
    def obj_idx(self, obj_id: int, create: bool = True) -> int:
        if obj_id in self.obj_ids:
            return self.obj_ids.index(obj_id)
        if not create:
            raise TrackerError(
                vs.VIDEO_UNKNOWN_OBJECT, f"{obj_id}; this video's objects are {self.obj_ids}"
            )
        self.obj_ids.append(obj_id)
        self.objects.append(ObjectState())
        return len(self.obj_ids) - 1

    def check_frame(self, frame_idx: int) -> None:
        if not 0 <= frame_idx < self.num_frames:
            raise TrackerError(
                vs.VIDEO_BAD_FRAME, f"frame_idx {frame_idx}; the video has {self.num_frames} frames"
            )
        if frame_idx < self.released_before:
            raise TrackerError(
                vs.VIDEO_FRAME_RELEASED,
                f"frame {frame_idx}: this video keeps its last {self.window} tracked frames "
                f"(window); frames before {self.released_before} were released",
            )

    # --- what is kept (window) -------------------------------------------------------------------
    def retire(self, last_tracked: int) -> int:
        """With a window: forget the outputs of frames more than ``window`` frames before
        ``last_tracked`` (conditioning outputs stay: every later frame attends to them). Forward
        tracking reads the last ``MAX_OBJ_PTRS_IN_ENCODER - 1`` frames (memories of 6, pointers
        of 15), so a window of at least ``video_spec.MIN_VIDEO_WINDOW`` never forgets what the
        next frame reads. Returns the first frame still held."""
        if not self.window:
            return 0
        before = last_tracked - self.window + 1
        if before <= self.released_before:
            return self.released_before
        for obj in self.objects:
            for held in (obj.non_cond, obj.tracked, obj.temp_non_cond):
                for frame_idx in [t for t in held if t < before]:
                    del held[frame_idx]
        self.released_before = before
        return before

    def _check_reads(self, frame_idx: int, reverse: bool) -> None:
        """Refuse to track a frame whose memories were released (never a silently different
        mask): forward tracking reads the ``MAX_OBJ_PTRS_IN_ENCODER - 1`` frames before it."""
        if reverse or not self.released_before:
            return
        if frame_idx - (MAX_OBJ_PTRS_IN_ENCODER - 1) < self.released_before:
            raise TrackerError(
                vs.VIDEO_FRAME_RELEASED,
                f"tracking frame {frame_idx} reads the outputs of frames "
                f"{max(frame_idx - MAX_OBJ_PTRS_IN_ENCODER + 1, 0)}..{frame_idx - 1}; frames "
                f"before {self.released_before} were released (window {self.window})",
            )

    @property
    def nbytes(self) -> int:
        """Bytes of memory bank and masks held for all objects."""
        total = 0
        for obj in self.objects:
            for d in (obj.cond, obj.non_cond, obj.temp_cond, obj.temp_non_cond):
                total += sum(out.nbytes for out in d.values())
            total += sum(m.nbytes for m in obj.masks.values())
        return total

    # --- prompts ------------------------------------------------------------------------------
    def add_new_points_or_box(
        self,
        frame_idx: int,
        obj_id: int,
        coords: np.ndarray,
        labels: np.ndarray,
        clear_old_points: bool = True,
    ) -> np.ndarray:
        """``SAM2VideoPredictor.add_new_points_or_box`` after its coordinate transform:
        ``coords`` float32 ``[N, 2]`` in the 1024 model frame (box corners first, labels 2, 3),
        ``labels`` int32 ``[N]``. Returns the frame's masks ``[O, 1, 256, 256]``."""
        self.check_frame(frame_idx)
        idx = self.obj_idx(obj_id)
        obj = self.objects[idx]
        new = Points(
            coords.reshape(1, -1, 2).astype(np.float32), labels.reshape(1, -1).astype(np.int32)
        )
        old = None if clear_old_points else obj.points.get(frame_idx)
        if old is not None:
            new = Points(
                np.concatenate([old.coords, new.coords], axis=1),
                np.concatenate([old.labels, new.labels], axis=1),
            )
        if new.labels.shape[1] > spec.MAX_PROMPT_POINTS:
            raise TrackerError(
                "too many points",
                f"{new.labels.shape[1]} on frame {frame_idx} for object {obj_id}; at most "
                f"{spec.MAX_PROMPT_POINTS} (box corners + clicks)",
            )
        obj.points[frame_idx] = new
        obj.masks.pop(frame_idx, None)
        is_init, reverse, temp = obj.prompt_slot(frame_idx)
        prev = temp.get(frame_idx) or obj.output(frame_idx)
        prev_logits = None
        if prev is not None:
            prev_logits = np.clip(prev.pred_masks, -PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)
        if not is_init:
            self._check_cond(idx)
        out = self._frame_inference(
            obj,
            frame_idx,
            is_init,
            new,
            None,
            reverse,
            prev_logits=prev_logits,
        )
        temp[frame_idx] = out
        return self.consolidate(frame_idx, is_cond=is_init)

    def add_new_mask(self, frame_idx: int, obj_id: int, mask: np.ndarray) -> np.ndarray:
        """``SAM2VideoPredictor.add_new_mask`` after its resize: ``mask`` bool
        ``[1024, 1024]``. Returns the frame's masks ``[O, 1, 256, 256]``."""
        self.check_frame(frame_idx)
        idx = self.obj_idx(obj_id)
        obj = self.objects[idx]
        mask_inputs = mask.reshape(1, 1, spec.IMAGE_SIZE, spec.IMAGE_SIZE).astype(np.float32)
        obj.masks[frame_idx] = np.array(mask, dtype=bool).reshape(spec.IMAGE_SIZE, spec.IMAGE_SIZE)
        obj.points.pop(frame_idx, None)
        is_init, reverse, temp = obj.prompt_slot(frame_idx)
        out = self._frame_inference(obj, frame_idx, is_init, None, mask_inputs, reverse)
        temp[frame_idx] = out
        return self.consolidate(frame_idx, is_cond=is_init)

    def _check_cond(self, idx: int) -> None:
        obj = self.objects[idx]
        if not obj.cond:
            raise TrackerError(
                vs.VIDEO_NO_PROMPTS,
                f"object {self.obj_ids[idx]} has no conditioning frame to correct from",
            )

    def consolidate(self, frame_idx: int, is_cond: bool) -> np.ndarray:
        """``_consolidate_temp_output_across_obj`` (low resolution): every object's latest mask
        on ``frame_idx``, ``NO_OBJ_SCORE`` where it has none. ``[O, 1, 256, 256]``."""
        out = np.full((len(self.objects), 1, LOW, LOW), vs.NO_OBJ_SCORE, np.float32)
        for i, obj in enumerate(self.objects):
            temp = obj.temp_cond if is_cond else obj.temp_non_cond
            found = temp.get(frame_idx) or obj.output(frame_idx)
            if found is not None:
                out[i] = found.pred_masks[0]
        return out

    # --- one frame of one object (track_step) ---------------------------------------------------
    def _frame_inference(
        self,
        obj: ObjectState,
        frame_idx: int,
        is_init: bool,
        points: Points | None,
        mask_inputs: np.ndarray | None,
        reverse: bool,
        prev_logits: np.ndarray | None = None,
    ) -> FrameOut:
        """``_run_single_frame_inference`` -> ``SAM2Base.track_step`` for one prompted object,
        without the memory encoder (run by the preflight; tracking is ``track_frames``)."""
        feats = self.features(frame_idx)
        if mask_inputs is not None:  # use_mask_input_as_output_without_sam
            out = self._mask_as_output(feats, mask_inputs)
        else:
            if is_init:
                pix_feat = feats.image_embed  # vision_feat + no_mem_embed
            else:
                pix_feat = self._memory_attention(obj, frame_idx, feats, reverse)
            num_pts = 0 if points is None else points.labels.shape[1]
            multimask = num_pts <= MULTIMASK_MAX_PT_NUM  # _use_multimask (2.1 configs)
            out = self._decode(feats, pix_feat, points, prev_logits, multimask)
        return out

    def _decode(
        self,
        feats: FrameFeatures,
        pix_feat: np.ndarray,
        points: Points | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> FrameOut:
        """``_forward_sam_heads`` of one object (``video_graphs.decode``)."""
        mask = None if mask_input is None else mask_input[0]
        return decode(self.run, [decode_item(pix_feat[0], feats, points, mask, multimask)])[0]

    def _mask_as_output(self, feats: FrameFeatures, mask_inputs: np.ndarray) -> FrameOut:
        """``SAM2Base._use_mask_as_output``: the mask prompt is the output (±10 logits,
        antialiased to 256²); the decoder runs on the downsampled mask for the pointer."""
        high = mask_inputs * np.float32(MASK_PROMPT_SCALE) + np.float32(MASK_PROMPT_BIAS)
        low = antialias_resize(high, (LOW, LOW)).astype(np.float32)
        res = self.run(
            vs.MASK_PROMPT_MODEL, {vs.MASK_1024: mask_inputs}, [vs.MASK_DOWNSAMPLED, vs.NO_OBJ_PTR]
        )
        downsampled = np.asarray(res[vs.MASK_DOWNSAMPLED], np.float32)
        no_obj_ptr = np.asarray(res[vs.NO_OBJ_PTR], np.float32).reshape(1, -1)
        decoded = self._decode(feats, feats.vision_feat, None, downsampled, multimask=False)
        appearing = bool((mask_inputs > 0).any())
        score = np.full((1, 1), MASK_PROMPT_SCALE * appearing + MASK_PROMPT_BIAS, np.float32)
        obj_ptr = decoded.obj_ptr if appearing else no_obj_ptr.copy()  # fixed_no_obj_ptr
        return FrameOut(low, obj_ptr, score)

    def _memory_attention(
        self, obj: ObjectState, frame_idx: int, feats: FrameFeatures, reverse: bool
    ) -> np.ndarray:
        """``_prepare_memory_conditioned_features`` for a frame that is not an initial
        conditioning frame: memory attention over the selected memories and pointers."""
        mem = self.memory_inputs(obj, frame_idx, reverse)
        return attend(self.run, [(feats.vision_feat[0], mem)])[0]

    def memory_inputs(self, obj: ObjectState, frame_idx: int, reverse: bool) -> MemoryInputs:
        """The memories and pointers ``memory_selection`` picks, as memory attention's inputs."""
        self._check_reads(frame_idx, reverse)
        mems, ptrs, t_diff_max = memory_selection(
            frame_idx, obj.cond, obj.non_cond, self.selection_frames, reverse
        )
        if len(mems) > vs.MAX_MEMORIES or len(ptrs) > vs.MAX_OBJ_PTRS:
            raise TrackerError(
                "too many conditioning frames",
                f"{len(obj.cond)} frames with prompts for one object; the server attends to at "
                f"most {vs.MAX_COND_FRAMES}",
            )
        return MemoryInputs(
            maskmem=np.stack([out.maskmem_features[0] for _, out in mems]),
            tpos=np.array([t for t, _ in mems], np.int64),
            obj_ptrs=(
                np.stack([out.obj_ptr[0] for _, out in ptrs])
                if ptrs
                else np.zeros((0, vs.HIDDEN_DIM), np.float32)
            ),
            # torch: int64 tensor / python int -> float32 true division
            ptr_tpos=(
                np.array([p for p, _ in ptrs], np.float32) / np.float32(t_diff_max)
                if ptrs
                else np.zeros((0,), np.float32)
            ),
        )

    # --- propagation ------------------------------------------------------------------------------
    def preflight(self) -> None:
        """``propagate_in_video_preflight``: encode the memories of the prompted frames and move
        them from the temporary outputs into the memory bank."""
        if not self.objects:
            raise TrackerError(
                vs.VIDEO_NO_PROMPTS, "add points, a box or a mask for an object first"
            )
        pending = [
            (frame_idx, out)
            for obj in self.objects
            for temp in (obj.temp_non_cond, obj.temp_cond)
            for frame_idx, out in temp.items()
            if out.maskmem_bf16 is None
        ]
        if pending:  # every object's new prompts in batched memory encoder calls
            items = [(self.features(t).vision_feat[0], out, True) for t, out in pending]
            for (_, out), bits in zip(pending, encode_memories(self.run, items)):
                out.maskmem_bf16 = bits
        for i, obj in enumerate(self.objects):
            for temp, bank in ((obj.temp_non_cond, obj.non_cond), (obj.temp_cond, obj.cond)):
                bank.update(temp)
                temp.clear()
            if not obj.cond:
                raise TrackerError(
                    vs.VIDEO_NO_PROMPTS, f"object {self.obj_ids[i]} has no points, box or mask"
                )
            for frame_idx in obj.cond:
                obj.non_cond.pop(frame_idx, None)

    def processing_order(
        self, start_frame_idx: int | None, max_frames: int | None, reverse: bool
    ) -> list[int]:
        """``propagate_in_video``'s frame order (call after ``preflight``)."""
        if start_frame_idx is None:
            start_frame_idx = min(t for obj in self.objects for t in obj.cond)
        self.check_frame(start_frame_idx)
        if max_frames is None:
            max_frames = self.num_frames
        if reverse:
            end = max(start_frame_idx - max_frames, 0)
            return list(range(start_frame_idx, end - 1, -1)) if start_frame_idx > 0 else []
        end = min(start_frame_idx + max_frames, self.num_frames - 1)
        return list(range(start_frame_idx, end + 1))

    def track_frame(self, frame_idx: int, reverse: bool) -> np.ndarray:
        """One step of ``propagate_in_video``: every object on ``frame_idx``,
        ``[O, 1, 256, 256]`` (``track_frames`` of this one video)."""
        job = TrackJob(self, frame_idx, reverse)
        return track_frames(self.run, [job], self.attention_batch_bytes)[0]

    def propagate(
        self,
        start_frame_idx: int | None = None,
        max_frames: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``propagate_in_video``: ``(frame_idx, masks [O, 1, 256, 256])`` per frame."""
        self.preflight()
        for frame_idx in self.processing_order(start_frame_idx, max_frames, reverse):
            yield frame_idx, self.track_frame(frame_idx, reverse)

    # --- removing prompts and objects ------------------------------------------------------------
    def clear_all_prompts_in_frame(
        self, frame_idx: int, obj_id: int, need_output: bool = True
    ) -> np.ndarray | None:
        """``clear_all_prompts_in_frame``: returns the frame's masks ``[O, 1, 256, 256]``."""
        self.check_frame(frame_idx)
        obj = self.objects[self.obj_idx(obj_id)]
        obj.points.pop(frame_idx, None)
        obj.masks.pop(frame_idx, None)
        obj.temp_cond.pop(frame_idx, None)
        obj.temp_non_cond.pop(frame_idx, None)
        out = obj.cond.pop(frame_idx, None)
        if out is not None:  # downgraded to a non-conditioning output
            obj.non_cond[frame_idx] = out
            obj.tracked.pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in o.temp_cond for o in self.objects)
        return self.consolidate(frame_idx, is_cond=is_cond)

    def remove_object(self, obj_id: int, strict: bool = False) -> list[tuple[int, np.ndarray]]:
        """``remove_object``: the frames SAM 2 reports as updated, with their masks."""
        if obj_id not in self.obj_ids:
            if strict:
                raise TrackerError(
                    vs.VIDEO_UNKNOWN_OBJECT, f"{obj_id}; this video's objects are {self.obj_ids}"
                )
            return []
        if len(self.obj_ids) == 1:
            self.reset_state()
            return []
        idx = self.obj_ids.index(obj_id)
        frames = set(self.objects[idx].points) | set(self.objects[idx].masks)
        for frame_idx in frames:
            self.clear_all_prompts_in_frame(frame_idx, obj_id, need_output=False)
        del self.obj_ids[idx]
        del self.objects[idx]
        updated = []
        for frame_idx in frames:  # SAM 2 iterates its set in the same order
            is_cond = any(frame_idx in o.temp_cond for o in self.objects)
            updated.append((frame_idx, self.consolidate(frame_idx, is_cond=is_cond)))
        return updated

    def reset_state(self) -> None:
        """``reset_state``: forget every object, prompt and memory."""
        self.obj_ids.clear()
        self.objects.clear()


def decode_item(
    pix_feat: np.ndarray,
    feats: FrameFeatures,
    points: Points | None,
    mask_input: np.ndarray | None,
    multimask: bool,
) -> DecodeItem:
    """One decoder row; without points, SAM 2's "no click": one point (0, 0) labelled -1."""
    if points is None:
        coords, labels = np.zeros((1, 2), np.float32), -np.ones((1,), np.int32)
    else:
        coords, labels = points.coords[0], points.labels[0]
    return DecodeItem(pix_feat, feats, coords, labels, mask_input, multimask)


@dataclass(frozen=True)
class TrackJob:
    """One frame of one video to track (a step of ``propagate_in_video``)."""

    tracker: VideoTracker
    frame_idx: int
    reverse: bool
    feats: FrameFeatures | None = None  # computed through tracker.features when None


def track_frames(
    run: GraphRunner,
    jobs: Sequence[TrackJob],
    attention_batch_bytes: int = DEFAULT_ATTENTION_BATCH_BYTES,
) -> list[np.ndarray]:
    """A propagation step of several videos at once: each job's masks ``[O, 1, 256, 256]``.

    SAM 2.1's ``propagate_in_video`` runs ``_run_single_frame_inference`` for one object at a
    time; here every object that has no conditioning output on its frame, of every job, goes
    through memory attention (grouped by memory layout), the decoder and the memory encoder in
    batched calls (``video_graphs``; memory attention within ``attention_batch_bytes``). Jobs
    must be of distinct videos.
    """
    masks = [np.empty((len(j.tracker.objects), 1, LOW, LOW), np.float32) for j in jobs]
    units: list[tuple[int, int, ObjectState, FrameFeatures]] = []
    for j, job in enumerate(jobs):
        feats = job.feats
        for i, obj in enumerate(job.tracker.objects):
            out = obj.cond.get(job.frame_idx)
            if out is not None:
                masks[j][i] = out.pred_masks[0]
                continue
            if feats is None:
                feats = job.tracker.features(job.frame_idx)
            units.append((j, i, obj, feats))
    mems = [
        jobs[j].tracker.memory_inputs(obj, jobs[j].frame_idx, jobs[j].reverse)
        for j, _, obj, _ in units
    ]
    pix = attend(
        run,
        [(f.vision_feat[0], m) for (_, _, _, f), m in zip(units, mems)],
        attention_batch_bytes,
    )
    # no points, no mask: _use_multimask is true (0 points <= MULTIMASK_MAX_PT_NUM)
    outs = decode(
        run, [decode_item(p[0], f, None, None, True) for (_, _, _, f), p in zip(units, pix)]
    )
    bits = encode_memories(
        run, [(f.vision_feat[0], o, False) for (_, _, _, f), o in zip(units, outs)]
    )
    for (j, i, obj, _), out, mem in zip(units, outs, bits):
        out.maskmem_bf16 = mem
        obj.non_cond[jobs[j].frame_idx] = out
        masks[j][i] = out.pred_masks[0]
    for job in jobs:
        for obj in job.tracker.objects:
            obj.tracked[job.frame_idx] = job.reverse
    return masks
