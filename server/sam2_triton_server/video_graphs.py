"""The exported video graphs, called in batches of objects (B = rows of one call).

Each function takes a list of per-object items, runs them as calls of at most
``video_spec.MAX_OBJECTS_PER_CALL`` rows and returns one result per item, in order. Rows of a
batch do not interact in any of the graphs (SAM 2 runs the same networks with B = number of
objects in ``SAM2Base.track_step``), so an item's result does not depend on its batch mates.
Memory attention takes its temporal positions once per call, so only items with the same
memory layout share a call (``MemoryInputs.layout``), and its calls are also bounded by the bytes
of their attention matrices (``attention_batch_bytes``): on a CPU it is compute-bound and a
batch only adds memory, on a GPU a batch fills the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from sam2_triton import spec
from sam2_triton import video_spec as vs
from sam2_triton.video_transforms import round_to_bfloat16

LOW = spec.LOW_RES_SIZE
PTR_TOKENS = vs.HIDDEN_DIM // vs.MEM_DIM  # an object pointer is 4 memory tokens of 64
DEFAULT_ATTENTION_BATCH_BYTES = 2**30
T = TypeVar("T")


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


@dataclass(frozen=True)
class MemoryInputs:
    """What memory attention reads for one object on one frame (SAM 2's selection)."""

    maskmem: np.ndarray  # [M, 64, 64, 64] float32
    tpos: np.ndarray  # [M] int64
    obj_ptrs: np.ndarray  # [P, 256] float32
    ptr_tpos: np.ndarray  # [P] float32

    @property
    def attention_bytes(self) -> int:
        """Bytes of this object's cross-attention matrix (queries x keys, float32)."""
        queries = vs.FEAT_SIZE**2
        keys = self.maskmem.shape[0] * queries + self.obj_ptrs.shape[0] * PTR_TOKENS
        return queries * keys * 4

    @property
    def layout(self) -> tuple[bytes, bytes]:
        """Items with equal layouts can share one memory attention call."""
        return self.tpos.tobytes(), self.ptr_tpos.tobytes()


@dataclass(frozen=True)
class DecodeItem:
    """One object's mask decoder input (``_forward_sam_heads``)."""

    pix_feat: np.ndarray  # [256, 64, 64] float32
    feats: FrameFeatures
    coords: np.ndarray  # [N, 2] float32, model frame
    labels: np.ndarray  # [N] int32
    mask_input: np.ndarray | None  # [1, 256, 256] float32 logits
    multimask: bool


def chunks(items: Sequence[T], size: int = vs.MAX_OBJECTS_PER_CALL) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_frames(run: GraphRunner, images: Sequence[np.ndarray]) -> list[FrameFeatures]:
    """Features of frames ``images`` uint8 ``[3, 1024, 1024]`` each (``forward_image`` +
    ``_prepare_backbone_features`` of ``SAM2VideoPredictor._get_image_feature``)."""
    names = [vs.IMAGE_EMBED, vs.HIGH_RES_FEATS_0, vs.HIGH_RES_FEATS_1, vs.VISION_FEAT]
    result: list[FrameFeatures] = []
    for part in chunks(images):
        out = run(vs.VIDEO_IMAGE_ENCODER_MODEL, {vs.IMAGE: np.stack(part)}, names)
        arrays = [np.asarray(out[n], np.float32) for n in names]
        result += [FrameFeatures(*(a[i : i + 1] for a in arrays)) for i in range(len(part))]
    return result


def attend(
    run: GraphRunner,
    items: Sequence[tuple[np.ndarray, MemoryInputs]],
    max_batch_bytes: int = DEFAULT_ATTENTION_BATCH_BYTES,
) -> list[np.ndarray]:
    """Memory attention of ``(vision_feat [256, 64, 64], memories)`` items: ``pix_feat_with_mem``
    ``[1, 256, 64, 64]`` each. Items of one memory layout share calls of at most
    ``MAX_OBJECTS_PER_CALL`` rows and ``max_batch_bytes`` of attention matrices (one row at
    least)."""
    result: list[np.ndarray | None] = [None] * len(items)
    groups: dict[tuple[bytes, bytes], list[int]] = {}
    for i, (_, mem) in enumerate(items):
        groups.setdefault(mem.layout, []).append(i)
    for members in groups.values():
        per_row = items[members[0]][1].attention_bytes
        rows = max(1, min(vs.MAX_OBJECTS_PER_CALL, max_batch_bytes // per_row))
        for part in chunks(members, rows):
            mems = [items[i][1] for i in part]
            inputs = {
                vs.VISION_FEAT: np.stack([items[i][0] for i in part]),
                vs.MASKMEM_FEATURES: np.stack([m.maskmem for m in mems]),
                vs.MASKMEM_TPOS: mems[0].tpos,
                vs.OBJ_PTRS: np.stack([m.obj_ptrs for m in mems]),
                vs.OBJ_PTR_TPOS: mems[0].ptr_tpos,
            }
            res = run(vs.MEMORY_ATTENTION_MODEL, inputs, [vs.PIX_FEAT_WITH_MEM])
            out = np.asarray(res[vs.PIX_FEAT_WITH_MEM], np.float32)
            for row, i in enumerate(part):
                result[i] = out[row : row + 1]
    return result  # type: ignore[return-value]


def decode(run: GraphRunner, items: Sequence[DecodeItem]) -> list[FrameOut]:
    """The prompt encoder, mask decoder, token choice and object pointer
    (``_forward_sam_heads``); items with the same point count share a call (padding points are
    not neutral)."""
    result: list[FrameOut | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.labels.shape[0], []).append(i)
    names = [vs.LOW_RES_MASKS, vs.OBJ_PTR, vs.OBJECT_SCORE_LOGITS]
    for members in groups.values():
        for part in chunks(members):
            rows = [items[i] for i in part]
            inputs = {
                vs.PIX_FEAT: np.stack([r.pix_feat for r in rows]),
                vs.HIGH_RES_FEATS_0: np.concatenate([r.feats.high_res_feats_0 for r in rows]),
                vs.HIGH_RES_FEATS_1: np.concatenate([r.feats.high_res_feats_1 for r in rows]),
                vs.POINT_COORDS: np.stack([r.coords for r in rows]).astype(np.float32),
                vs.POINT_LABELS: np.stack([r.labels for r in rows]).astype(np.int32),
                vs.MASK_INPUT: np.stack(
                    [
                        np.zeros((1, LOW, LOW), np.float32)
                        if r.mask_input is None
                        else r.mask_input
                        for r in rows
                    ]
                ).astype(np.float32),
                vs.HAS_MASK_INPUT: np.array(
                    [0.0 if r.mask_input is None else 1.0 for r in rows], np.float32
                ),
                vs.MULTIMASK_OUTPUT: np.array(
                    [1.0 if r.multimask else 0.0 for r in rows], np.float32
                ),
            }
            res = run(vs.VIDEO_MASK_DECODER_MODEL, inputs, names)
            arrays = [np.asarray(res[n], np.float32) for n in names]
            for row, i in enumerate(part):
                result[i] = FrameOut(*(a[row : row + 1] for a in arrays))
    return result  # type: ignore[return-value]


def encode_memories(
    run: GraphRunner, items: Sequence[tuple[np.ndarray, FrameOut, bool]]
) -> list[np.ndarray]:
    """``_encode_new_memory`` of ``(vision_feat [256, 64, 64], output, from_points)`` items on
    the upsampled low-res logits, rounded to bfloat16 as SAM 2 stores them; returned as the
    bfloat16 bits (uint16 ``[1, 64, 64, 64]``, half the bytes of float32)."""
    result: list[np.ndarray] = []
    for part in chunks(items):
        res = run(
            vs.MEMORY_ENCODER_MODEL,
            {
                vs.VISION_FEAT: np.stack([v for v, _, _ in part]),
                vs.PRED_MASKS: np.concatenate([o.pred_masks for _, o, _ in part]),
                vs.OBJECT_SCORE_LOGITS: np.concatenate([o.object_score_logits for _, o, _ in part]),
                vs.BINARIZE_MASK: np.array([1.0 if b else 0.0 for _, _, b in part], np.float32),
            },
            [vs.MASKMEM_FEATURES],
        )
        rounded = round_to_bfloat16(np.asarray(res[vs.MASKMEM_FEATURES], np.float32))
        bits = (rounded.view(np.uint32) >> 16).astype(np.uint16)
        result += [bits[row : row + 1] for row in range(len(part))]
    return result
