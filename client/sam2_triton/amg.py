"""Automatic mask generation ("segment everything"): SAM 2's parameters, grids, crops and records.

Pure numpy, shared by the server model (``sam2_triton_server.everything``) and the client
(``SAM2AutomaticMaskGenerator``). Each function reproduces the ``sam2.utils.amg`` or
``sam2.automatic_mask_generator`` function it names, with the same float arithmetic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import product

import numpy as np

from .errors import InvalidInputError

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
WIRE_OUTPUT_MODES = ("coco_rle", "uncompressed_rle")  # what the server answers in
MAX_POINTS_PER_SIDE = 256
MAX_CROP_LAYERS = 4
MAX_GRID_POINTS = 65_536  # points over all crop layers' grids
EDGE_ATOL = 20.0  # sam2.utils.amg.is_box_near_crop_edge's atol


@dataclass(frozen=True)
class GeneratorOptions:
    """``SAM2AutomaticMaskGenerator``'s parameters, with its names and defaults.

    ``point_grids`` is a tuple of ``(n, 2)`` float64 arrays in [0, 1] (one per crop layer),
    exclusive with ``points_per_side``. ``min_mask_region_area`` must be 0: SAM 2 implements it
    with its CUDA-only connected-components kernel (``sam2._C``) and silently skips it where that
    kernel is not built, so no result could match SAM 2 on every machine.
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: tuple[np.ndarray, ...] | None = None
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"
    use_m2m: bool = False
    multimask_output: bool = True

    def __post_init__(self) -> None:
        _check_int(self.points_per_batch, "points_per_batch", 1, 4096)
        for name in (
            "pred_iou_thresh",
            "stability_score_thresh",
            "stability_score_offset",
            "mask_threshold",
            "box_nms_thresh",
            "crop_nms_thresh",
            "crop_overlap_ratio",
        ):
            _check_float(getattr(self, name), name)
        if not 0.0 <= self.crop_overlap_ratio < 1.0:
            raise InvalidInputError(
                f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio!r}"
            )
        _check_int(self.crop_n_layers, "crop_n_layers", 0, MAX_CROP_LAYERS)
        _check_int(self.crop_n_points_downscale_factor, "crop_n_points_downscale_factor", 1, 64)
        for name in ("use_m2m", "multimask_output"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(
                    f"{name} must be True or False, got {getattr(self, name)!r}"
                )
        if self.output_mode not in OUTPUT_MODES:
            raise InvalidInputError(
                f"output_mode must be one of {list(OUTPUT_MODES)}, got {self.output_mode!r}"
            )
        _check_int(self.min_mask_region_area, "min_mask_region_area", 0, 2**31)
        if self.min_mask_region_area:
            raise InvalidInputError(
                "min_mask_region_area > 0 is not supported: SAM 2 fills holes and removes "
                "islands with its CUDA-only connected-components kernel (sam2._C) and silently "
                "skips that step where the kernel is not built, so its result depends on the "
                "machine; use 0 (the default)"
            )
        if (self.points_per_side is None) == (self.point_grids is None):
            raise InvalidInputError(
                "exactly one of points_per_side or point_grids must be given (the other None)"
            )
        if self.points_per_side is not None:
            _check_int(self.points_per_side, "points_per_side", 1, MAX_POINTS_PER_SIDE)
            scale = self.crop_n_points_downscale_factor**self.crop_n_layers
            if int(self.points_per_side / scale) < 1:
                raise InvalidInputError(
                    f"points_per_side={self.points_per_side} downscaled by "
                    f"crop_n_points_downscale_factor**{self.crop_n_layers} leaves no point in crop "
                    f"layer {self.crop_n_layers}: raise points_per_side or lower the factor"
                )
        else:
            object.__setattr__(self, "point_grids", _check_grids(self.point_grids))
            if len(self.point_grids) < self.crop_n_layers + 1:
                raise InvalidInputError(
                    f"point_grids holds {len(self.point_grids)} grid(s); crop_n_layers="
                    f"{self.crop_n_layers} needs one per layer ({self.crop_n_layers + 1})"
                )
        total = sum(len(g) for g in self.grids())
        if total > MAX_GRID_POINTS:
            raise InvalidInputError(
                f"the point grids hold {total} points over all crop layers; the limit is "
                f"{MAX_GRID_POINTS}"
            )

    def grids(self) -> list[np.ndarray]:
        """One ``(n, 2)`` float64 grid per crop layer, as SAM 2's constructor builds them."""
        if self.points_per_side is None:
            return list(self.point_grids or ())
        return build_all_layer_point_grids(
            self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
        )

    def to_json(self) -> str:
        """The options as the ``sam2_everything`` model's ``options`` JSON."""
        doc = asdict(self)
        doc.pop("output_mode")  # the client converts; the wire is always COCO RLE
        if self.point_grids is not None:
            doc["point_grids"] = [g.tolist() for g in self.point_grids]
        return json.dumps(doc)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, object], where: str = "options") -> GeneratorOptions:
        """Options from keyword arguments or parsed JSON; unknown names are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise InvalidInputError(
                f"{where} has unknown parameter(s) {unknown}; SAM2AutomaticMaskGenerator takes "
                f"{sorted(names)}"
            )
        kwargs = dict(doc)
        if kwargs.get("point_grids") is not None:
            kwargs["point_grids"] = tuple(kwargs["point_grids"])  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]


def _check_int(value: object, name: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise InvalidInputError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_float(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")


def _check_grids(grids: object) -> tuple[np.ndarray, ...]:
    if not isinstance(grids, (list, tuple)) or not grids:
        raise InvalidInputError("point_grids must be a non-empty list of (n, 2) arrays")
    out = []
    for i, grid in enumerate(grids):
        try:
            arr = np.asarray(grid, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"point_grids[{i}] must be a numeric (n, 2) array") from exc
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
            raise InvalidInputError(
                f"point_grids[{i}] must have shape (n, 2) with n >= 1, got {arr.shape}"
            )
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise InvalidInputError(f"point_grids[{i}] must hold points in [0, 1] (normalized)")
        arr.setflags(write=False)
        out.append(arr)
    return tuple(out)


def graph_thresholds(opts: GeneratorOptions) -> np.ndarray:
    """``amg_thresholds`` ``[5]`` float32 of ``sam2_amg_masks`` (``spec``): SAM 2's float64
    values rounded as torch compares them with float32 tensors; SAM 2's ``if thresh > 0.0`` is
    decided here (NaN: filter off)."""
    nan = np.float32(np.nan)
    return np.array(
        [
            np.float32(opts.pred_iou_thresh) if opts.pred_iou_thresh > 0.0 else nan,
            np.float32(opts.stability_score_thresh) if opts.stability_score_thresh > 0.0 else nan,
            np.float32(opts.mask_threshold),
            np.float32(opts.mask_threshold + opts.stability_score_offset),
            np.float32(opts.mask_threshold - opts.stability_score_offset),
        ],
        np.float32,
    )


# --- sam2.utils.amg ----------------------------------------------------------------------------
def build_point_grid(n_per_side: int) -> np.ndarray:
    """``sam2.utils.amg.build_point_grid``: ``(n*n, 2)`` float64 points in (0, 1), x fastest."""
    offset = 1 / (2 * n_per_side)
    one_side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(one_side[None, :], (n_per_side, 1))
    ys = np.tile(one_side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """``sam2.utils.amg.build_all_layer_point_grids``."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """``sam2.utils.amg.generate_crop_boxes``: XYXY crop boxes and their layer indices."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_side))
        crop_w = crop_len(im_w, n_side, overlap)
        crop_h = crop_len(im_h, n_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def box_xyxy_to_xywh(box: Sequence[int]) -> list[int]:
    """``sam2.utils.amg.box_xyxy_to_xywh`` for one box."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``torchvision.ops.nms`` (CPU kernel): indices ``[K]`` int64 of the kept boxes, by
    decreasing score (ties: lower index first).

    ``boxes`` ``[N, 4]`` float32 XYXY, ``scores`` ``[N]`` float32. IoUs are computed in float32
    with torchvision's formula and compared with the threshold in float64, as torchvision does.
    Greedy suppression is sequential by nature; each step is one vectorised row.
    torchvision itself is not used: it would bring torch into the server image.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    zero = np.float32(0)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(zero, np.minimum(x1[i], x1) - np.maximum(x0[i], x0))
        h = np.maximum(zero, np.minimum(y1[i], y1) - np.maximum(y0[i], y0))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas - inter)
        suppressed |= iou.astype(np.float64) > float(iou_threshold)
    return np.asarray(keep, dtype=np.int64)


def rle_to_uncompressed(mask: np.ndarray) -> dict[str, object]:
    """``sam2.utils.amg.mask_to_rle_pytorch`` for one ``(H, W)`` bool mask:
    ``{"size": [H, W], "counts": [...]}`` over the column-major pixels, starting with a 0-run."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [h * w]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(h), int(w)], "counts": counts}
