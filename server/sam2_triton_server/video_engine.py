"""SAM2VideoPredictor's state machine in numpy, over the exported per-frame graphs.

``VideoTracker`` holds one video's prompts and per-object memory bank and mirrors
``sam2.sam2_video_predictor.SAM2VideoPredictor`` (SAM 2.1 configs, ``build_sam2_video_predictor``
defaults) method by method; each method names the SAM 2 code it reproduces. The networks run
through a ``GraphRunner`` (BLS inside Triton, onnxruntime in tests), one object per call as
SAM 2.1 does. Masks are returned at low resolution (``[O, 1, 256, 256]`` float32 logits); the
client resizes them to the video exactly as ``_get_orig_video_res_output``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sam2_triton import spec
from sam2_triton import video_spec as vs
from sam2_triton.video_transforms import antialias_resize, round_to_bfloat16

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


class GraphRunner(Protocol):
    """Runs one exported graph: named float/int arrays in, the named outputs out."""

    def __call__(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class FrameFeatures:
    """One frame's encoder outputs, each ``[1, C, H, W]`` float32 (``video_spec`` names)."""

    image_embed: np.ndarray
    high_res_feats_0: np.ndarray
    high_res_feats_1: np.ndarray
    vision_feat: np.ndarray

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.image_embed,
                self.high_res_feats_0,
                self.high_res_feats_1,
                self.vision_feat,
            )
        )


def encode_frame(run: GraphRunner, image: np.ndarray) -> FrameFeatures:
    """Features of one frame ``image`` uint8 ``[3, 1024, 1024]`` (``forward_image`` +
    ``_prepare_backbone_features`` of ``SAM2VideoPredictor._get_image_feature``)."""
    names = [vs.IMAGE_EMBED, vs.HIGH_RES_FEATS_0, vs.HIGH_RES_FEATS_1, vs.VISION_FEAT]
    out = run(vs.VIDEO_IMAGE_ENCODER_MODEL, {vs.IMAGE: image[None]}, names)
    return FrameFeatures(*(np.asarray(out[n], np.float32) for n in names))


@dataclass
class FrameOut:
    """SAM 2's compact per-frame output of one object (``_run_single_frame_inference``)."""

    pred_masks: np.ndarray  # [1, 1, 256, 256] float32
    obj_ptr: np.ndarray  # [1, 256] float32
    object_score_logits: np.ndarray  # [1, 1] float32
    maskmem_bf16: np.ndarray | None = None  # [1, 64, 64, 64] uint16: the bfloat16 bits

    @property
    def maskmem_features(self) -> np.ndarray | None:
        """The memory features as float32 ``[1, 64, 64, 64]`` (exact: bfloat16 widened)."""
        if self.maskmem_bf16 is None:
            return None
        return (self.maskmem_bf16.astype(np.uint32) << 16).view(np.float32)

    @property
    def nbytes(self) -> int:
        mem = 0 if self.maskmem_bf16 is None else self.maskmem_bf16.nbytes
        return self.pred_masks.nbytes + self.obj_ptr.nbytes + self.object_score_logits.nbytes + mem


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
    ) -> None:
        self.run = run
        self.features = features
        self.num_frames = num_frames
        self.obj_ids: list[int] = []
        self.objects: list[ObjectState] = []
        self._no_obj_ptr: np.ndarray | None = None

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
            run_mem_encoder=False,
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
        out = self._frame_inference(
            obj, frame_idx, is_init, None, mask_inputs, reverse, run_mem_encoder=False
        )
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
        run_mem_encoder: bool,
        prev_logits: np.ndarray | None = None,
    ) -> FrameOut:
        """``_run_single_frame_inference`` -> ``SAM2Base.track_step`` for one object."""
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
        if run_mem_encoder:
            out.maskmem_bf16 = self._encode_memory(feats, out, from_points=points is not None)
        return out

    def _decode(
        self,
        feats: FrameFeatures,
        pix_feat: np.ndarray,
        points: Points | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> FrameOut:
        """``_forward_sam_heads`` (prompt encoder, mask decoder, token choice, object pointer)."""
        if points is None:  # "no click": one point (0, 0) labelled -1
            coords, labels = np.zeros((1, 1, 2), np.float32), -np.ones((1, 1), np.int32)
        else:
            coords, labels = points.coords, points.labels
        has_mask = mask_input is not None
        inputs = {
            vs.PIX_FEAT: pix_feat,
            vs.HIGH_RES_FEATS_0: feats.high_res_feats_0,
            vs.HIGH_RES_FEATS_1: feats.high_res_feats_1,
            vs.POINT_COORDS: coords,
            vs.POINT_LABELS: labels,
            vs.MASK_INPUT: mask_input.astype(np.float32)
            if has_mask
            else np.zeros((1, 1, LOW, LOW), np.float32),
            vs.HAS_MASK_INPUT: np.array([1.0 if has_mask else 0.0], np.float32),
            vs.MULTIMASK_OUTPUT: np.array([1.0 if multimask else 0.0], np.float32),
        }
        names = [vs.LOW_RES_MASKS, vs.OBJ_PTR, vs.OBJECT_SCORE_LOGITS]
        res = self.run(vs.VIDEO_MASK_DECODER_MODEL, inputs, names)
        return FrameOut(*(np.asarray(res[n], np.float32) for n in names))

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
        mems, ptrs, t_diff_max = memory_selection(
            frame_idx, obj.cond, obj.non_cond, self.num_frames, reverse
        )
        if len(mems) > vs.MAX_MEMORIES or len(ptrs) > vs.MAX_OBJ_PTRS:
            raise TrackerError(
                "too many conditioning frames",
                f"{len(obj.cond)} frames with prompts for one object; the server attends to at "
                f"most {vs.MAX_COND_FRAMES}",
            )
        inputs = {
            vs.VISION_FEAT: feats.vision_feat,
            vs.MASKMEM_FEATURES: np.stack([out.maskmem_features[0] for _, out in mems])[None],
            vs.MASKMEM_TPOS: np.array([t for t, _ in mems], np.int64),
            vs.OBJ_PTRS: (
                np.stack([out.obj_ptr[0] for _, out in ptrs])[None]
                if ptrs
                else np.zeros((1, 0, vs.HIDDEN_DIM), np.float32)
            ),
            # torch: int64 tensor / python int -> float32 true division
            vs.OBJ_PTR_TPOS: (
                np.array([p for p, _ in ptrs], np.float32) / np.float32(t_diff_max)
                if ptrs
                else np.zeros((0,), np.float32)
            ),
        }
        res = self.run(vs.MEMORY_ATTENTION_MODEL, inputs, [vs.PIX_FEAT_WITH_MEM])
        return np.asarray(res[vs.PIX_FEAT_WITH_MEM], np.float32)

    def _encode_memory(self, feats: FrameFeatures, out: FrameOut, from_points: bool) -> np.ndarray:
        """``_encode_new_memory`` on the upsampled low-res logits, rounded to bfloat16 as SAM 2
        stores them; returned as the bfloat16 bits (uint16, half the bytes of float32)."""
        res = self.run(
            vs.MEMORY_ENCODER_MODEL,
            {
                vs.VISION_FEAT: feats.vision_feat,
                vs.PRED_MASKS: out.pred_masks,
                vs.OBJECT_SCORE_LOGITS: out.object_score_logits,
                vs.BINARIZE_MASK: np.array([1.0 if from_points else 0.0], np.float32),
            },
            [vs.MASKMEM_FEATURES],
        )
        rounded = round_to_bfloat16(np.asarray(res[vs.MASKMEM_FEATURES], np.float32))
        return (rounded.view(np.uint32) >> 16).astype(np.uint16)

    # --- propagation ------------------------------------------------------------------------------
    def preflight(self) -> None:
        """``propagate_in_video_preflight``: encode the memories of the prompted frames and move
        them from the temporary outputs into the memory bank."""
        if not self.objects:
            raise TrackerError(
                vs.VIDEO_NO_PROMPTS, "add points, a box or a mask for an object first"
            )
        for i, obj in enumerate(self.objects):
            for temp, bank in ((obj.temp_non_cond, obj.non_cond), (obj.temp_cond, obj.cond)):
                for frame_idx, out in temp.items():
                    if out.maskmem_bf16 is None:
                        feats = self.features(frame_idx)
                        out.maskmem_bf16 = self._encode_memory(feats, out, from_points=True)
                    bank[frame_idx] = out
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
        ``[O, 1, 256, 256]``."""
        masks = np.empty((len(self.objects), 1, LOW, LOW), np.float32)
        for i, obj in enumerate(self.objects):
            out = obj.cond.get(frame_idx)
            if out is None:
                out = self._frame_inference(
                    obj, frame_idx, False, None, None, reverse, run_mem_encoder=True
                )
                obj.non_cond[frame_idx] = out
            obj.tracked[frame_idx] = reverse
            masks[i] = out.pred_masks[0]
        return masks

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
