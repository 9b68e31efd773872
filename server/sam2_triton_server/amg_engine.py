"""``SAM2AutomaticMaskGenerator._generate_masks`` over three model calls (any backend).

The order of work, every filter and every float operation is SAM 2's
(``sam2/automatic_mask_generator.py``): crops, grid batches, decoder, the ``sam2_amg_masks``
graph (upsample, IoU and stability filters, boxes, crop-edge filter, uncrop), box NMS per crop,
then NMS across crops. What stays in Python is what is sequential: NMS bookkeeping (vectorised
rows, ``sam2_triton.amg.nms``) and RLE (``pycocotools``, C).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
from pycocotools import mask as coco_mask

from sam2_triton import amg, spec, transforms
from sam2_triton.amg import GeneratorOptions
from sam2_triton.prompts import DecodeChunk

_LOW = spec.LOW_RES_SIZE


class AMGBackend(Protocol):
    """The three models: the image encoder, the prompt decoder and ``sam2_amg_masks``."""

    def encode(self, image01: np.ndarray) -> Any:
        """Features (opaque to the engine) of an ``H x W x 3`` float32 RGB01 image."""

    def decode(self, features: Any, chunk: DecodeChunk) -> tuple[np.ndarray, np.ndarray]:
        """All four tokens: low-res logits ``[n, 4, 256, 256]`` and IoUs ``[n, 4]``, float32."""

    def masks(
        self,
        low_res_masks: np.ndarray,
        iou_predictions: np.ndarray,
        crop_box: np.ndarray,
        orig_hw: np.ndarray,
        thresholds: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``sam2_amg_masks``: ``(keep [K], stability [K], boxes [K, 4], masks_t [K, W, H])``."""


@dataclass
class MaskData:
    """Kept masks (SAM 2's ``MaskData``): ``rles`` (COCO RLE dicts, counts ``bytes``),
    ``areas`` ``[K]`` int64, ``boxes`` ``[K, 4]`` int64 XYXY, ``iou_preds``, ``stability_score``
    ``[K]`` float32, ``points`` ``[K, 2]`` float32, ``crop_boxes`` ``[K, 4]`` int64."""

    rles: list[dict[str, Any]] = field(default_factory=list)
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    iou_preds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    stability_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    crop_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))

    def take(self, index: np.ndarray) -> MaskData:
        """The rows ``index``, in that order (``MaskData.filter``)."""
        return MaskData(
            [self.rles[i] for i in index.tolist()],
            *(getattr(self, n)[index] for n in _ARRAYS),
        )

    @staticmethod
    def cat(parts: list[MaskData]) -> MaskData:
        """All rows of ``parts`` in order (``MaskData.cat``)."""
        if not parts:
            return MaskData()
        return MaskData(
            [r for p in parts for r in p.rles],
            *(np.concatenate([getattr(p, n) for p in parts]) for n in _ARRAYS),
        )


_ARRAYS = tuple(f.name for f in fields(MaskData) if f.name != "rles")


def generate(
    backend: AMGBackend,
    opts: GeneratorOptions,
    orig_hw: tuple[int, int],
    image01: np.ndarray | None = None,
    features: Any = None,
) -> MaskData:
    """``SAM2AutomaticMaskGenerator._generate_masks`` of an image given as pixels (``image01``,
    ``H x W x 3`` float32) or, without crops, as its features."""
    crop_boxes, layers = amg.generate_crop_boxes(
        orig_hw, opts.crop_n_layers, opts.crop_overlap_ratio
    )
    if image01 is None and len(crop_boxes) > 1:
        raise ValueError("crops need the image's pixels, not only its features")
    grids = opts.grids()
    th = amg.graph_thresholds(opts)
    parts = []
    for crop_box, layer in zip(crop_boxes, layers):
        x0, y0, x1, y1 = crop_box
        feats = features if image01 is None else backend.encode(image01[y0:y1, x0:x1])
        parts.append(_process_crop(backend, feats, opts, th, crop_box, grids[layer], orig_hw))
    data = MaskData.cat(parts)
    if len(crop_boxes) > 1:  # prefer masks from smaller crops
        cb = data.crop_boxes
        areas = ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1])).astype(np.float32)
        scores = np.float32(1.0) / areas
        data = data.take(amg.nms(data.boxes.astype(np.float32), scores, opts.crop_nms_thresh))
    return data


def _process_crop(
    backend: AMGBackend,
    features: Any,
    opts: GeneratorOptions,
    th: np.ndarray,
    crop_box: list[int],
    grid: np.ndarray,
    orig_hw: tuple[int, int],
) -> MaskData:
    x0, y0, x1, y1 = crop_box
    crop_hw = (y1 - y0, x1 - x0)
    points = grid * np.array(crop_hw)[None, ::-1]
    batches = [
        _process_batch(
            backend,
            features,
            opts,
            th,
            points[s : s + opts.points_per_batch],
            crop_hw,
            crop_box,
            orig_hw,
        )
        for s in range(0, len(points), opts.points_per_batch)
    ]
    data = MaskData.cat(batches)
    data = data.take(amg.nms(data.boxes.astype(np.float32), data.iou_preds, opts.box_nms_thresh))
    data.boxes = data.boxes + np.array([x0, y0, x0, y0], np.int64)
    data.points = data.points + np.array([x0, y0], np.float32)
    return data


def _process_batch(
    backend: AMGBackend,
    features: Any,
    opts: GeneratorOptions,
    th: np.ndarray,
    points: np.ndarray,
    crop_hw: tuple[int, int],
    crop_box: list[int],
    orig_hw: tuple[int, int],
) -> MaskData:
    pts = points.astype(np.float32)
    low, iou = _decode(backend, features, _model_frame(pts, crop_hw), None)
    low, iou = transforms.select_masks(low, iou, opts.multimask_output)
    per_point = low.shape[1]
    low, iou = low.reshape(-1, _LOW, _LOW), iou.reshape(-1)
    pts = np.repeat(pts, per_point, axis=0)  # points.repeat_interleave
    if opts.use_m2m:  # refine_with_m2m: each mask (clamped as _predict returns it) as mask input
        mask_input = np.clip(low, -spec.LOW_RES_CLAMP, spec.LOW_RES_CLAMP)
        low, iou = _decode(backend, features, _model_frame(pts, crop_hw), mask_input)
        low, iou = transforms.select_masks(low, iou, False)
        low, iou = low[:, 0], iou[:, 0]
    keep, stability, boxes, masks_t = backend.masks(
        np.ascontiguousarray(low),
        np.ascontiguousarray(iou),
        np.array(crop_box, np.int64),
        np.array(orig_hw, np.int64),
        th,
    )
    return MaskData(
        rles=rle_encode(masks_t),
        areas=masks_t.reshape(len(keep), int(np.prod(orig_hw))).sum(axis=1, dtype=np.int64),
        boxes=boxes.astype(np.int64),
        iou_preds=iou[keep],
        stability_score=stability.astype(np.float32),
        points=pts[keep],
        crop_boxes=np.tile(np.array(crop_box, np.int64), (len(keep), 1)),
    )


def _model_frame(points: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
    """``SAM2Transforms.transform_coords(normalize=True)``: ``[n, 1, 2]`` float32 prompts."""
    coords = transforms.transform_coords(points, crop_hw, normalize=True, size=spec.IMAGE_SIZE)
    return np.asarray(coords, np.float32).reshape(-1, 1, 2)


def _decode(
    backend: AMGBackend, features: Any, coords: np.ndarray, mask_input: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """One foreground click per prompt, in decoder calls of at most MAX_PROMPTS_PER_REQUEST."""
    lows, ious = [], []
    for s in range(0, len(coords), spec.MAX_PROMPTS_PER_REQUEST):
        c = coords[s : s + spec.MAX_PROMPTS_PER_REQUEST]
        n = len(c)
        if mask_input is None:
            masks, has = np.zeros((1, 1, _LOW, _LOW), np.float32), np.zeros(1, np.float32)
        else:
            masks = np.ascontiguousarray(mask_input[s : s + n, None], dtype=np.float32)
            has = np.ones(n, np.float32)
        chunk = DecodeChunk(np.arange(s, s + n), c, np.ones((n, 1), np.int32), masks, has)
        low, iou = backend.decode(features, chunk)
        lows.append(low)
        ious.append(iou)
    return np.concatenate(lows), np.concatenate(ious)


def rle_encode(masks_t: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE of ``masks_t`` ``[K, W, H]`` uint8 (transposed masks: their C order
    is the column-major order pycocotools encodes, so no copy is made)."""
    if len(masks_t) == 0:
        return []
    return coco_mask.encode(np.asarray(masks_t, np.uint8).transpose(2, 1, 0))


def records(data: MaskData, output_mode: str) -> list[dict[str, Any]]:
    """SAM 2's ``generate()`` records, ``segmentation`` as COCO RLE (counts ``str``) or, for
    ``"uncompressed_rle"``, as ``mask_to_rle_pytorch``'s ``{"size", "counts": [int]}``."""
    out = []
    for i, rle in enumerate(data.rles):
        if output_mode == "uncompressed_rle":
            segmentation = amg.rle_to_uncompressed(coco_mask.decode(rle).astype(bool))
        else:
            segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}
        out.append(
            {
                "segmentation": segmentation,
                "area": int(data.areas[i]),
                "bbox": amg.box_xyxy_to_xywh(data.boxes[i]),
                "predicted_iou": float(data.iou_preds[i]),
                "point_coords": [[float(v) for v in data.points[i]]],
                "stability_score": float(data.stability_score[i]),
                "crop_box": amg.box_xyxy_to_xywh(data.crop_boxes[i]),
            }
        )
    return out
