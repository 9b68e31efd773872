"""``sam2_amg_masks``: the per-mask work of SAM 2's automatic mask generator as one ONNX graph.

SAM2AutomaticMaskGenerator._process_batch, after the decoder, for one batch of one crop: upsample
the low-res logits to the crop (``SAM2Transforms.postprocess_masks``: bilinear, half-pixel),
filter by predicted IoU, ``calculate_stability_score``, threshold, ``batched_mask_to_box``, drop
boxes ``is_box_near_crop_edge``, ``uncrop_masks``. Written with ``onnx.helper`` (no weights, no
tracing) so every operator is chosen on purpose; it runs in FP32 on every flavour (ONNX Runtime on
CPU or CUDA), never TensorRT FP16: its thresholds must see SAM 2's exact logits.

Tensors: see ``sam2_triton.spec`` (``AMG_*``). ``amg_thresholds`` holds (pred_iou_thresh,
stability_score_thresh, mask_threshold, mask_threshold + offset, mask_threshold - offset), each
the float32 of SAM 2's float64 value; a NaN threshold means "filter off" (SAM 2's ``> 0.0``
checks are made by the caller, in float64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sam2_triton import spec

OPSET = 17
EDGE_ATOL = 20.0  # sam2.utils.amg.is_box_near_crop_edge


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, value: object, dtype: type) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: object) -> str:
        name = out or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name


def build() -> onnx.ModelProto:
    """The ``sam2_amg_masks`` graph (see the module docstring)."""
    g = _Graph()
    i64 = np.int64
    low, iou = spec.LOW_RES_MASKS, spec.IOU_PREDICTIONS
    th = spec.AMG_THRESHOLDS

    def scalar(i: int) -> str:
        return g.op("Gather", th, g.const(i, i64))

    def part(tensor: str, i: int) -> str:  # element i as a [1] tensor
        return g.op("Slice", tensor, g.const([i], i64), g.const([i + 1], i64))

    def passes(value: str, threshold: str, cmp: str) -> str:  # NaN threshold: filter off
        return g.op("Or", g.op("IsNaN", threshold), g.op(cmp, value, threshold))

    t_iou, t_stab, t_mask, t_hi, t_lo = (scalar(i) for i in range(5))
    flat = g.const([-1], i64)

    # 1. predicted IoU (before anything is upsampled)
    idx1 = g.op("Reshape", g.op("NonZero", passes(iou, t_iou, "Greater")), flat)
    low4 = g.op("Unsqueeze", g.op("Gather", low, idx1, axis=0), g.const([1], i64))

    # 2. upsample to the crop: F.interpolate(bilinear, align_corners=False) == half_pixel
    x0, y0, x1, y1 = (part(spec.AMG_CROP_BOX, i) for i in range(4))
    h_img, w_img = part(spec.AMG_ORIG_HW, 0), part(spec.AMG_ORIG_HW, 1)
    ch, cw = g.op("Sub", y1, y0), g.op("Sub", x1, x0)
    lead = g.op("Slice", g.op("Shape", low4), g.const([0], i64), g.const([2], i64))
    sizes = g.op("Concat", lead, ch, cw, axis=0)
    up = g.op(
        "Resize",
        low4,
        "",
        "",
        sizes,
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    up = g.op("Squeeze", up, g.const([1], i64))  # [K1, ch, cw]

    # 3. calculate_stability_score: count(l > t + off) / count(l > t - off), float32 division
    def count(threshold: str) -> str:
        above = g.op("Cast", g.op("Greater", up, threshold), to=TensorProto.INT64)
        total = g.op("ReduceSum", above, g.const([1, 2], i64), keepdims=0)
        return g.op("Cast", total, to=TensorProto.FLOAT)

    stability = g.op("Div", count(t_hi), count(t_lo))
    keep_stab = passes(stability, t_stab, "GreaterOrEqual")

    # 4. threshold and batched_mask_to_box (inclusive max indices; empty masks -> 0, 0, 0, 0)
    binary = g.op("Greater", up, t_mask)
    bin64 = g.op("Cast", binary, to=TensorProto.INT64)
    one = g.const(1, i64)

    def edges(axis: int, length: str) -> tuple[str, str]:
        any_ = g.op("ReduceMax", bin64, axes=[axis], keepdims=0)  # [K1, L]
        n = g.op("Reshape", length, g.const([], i64))
        coords = g.op("Mul", any_, g.op("Range", g.const(0, i64), n, one))
        last = g.op("ReduceMax", coords, axes=[1], keepdims=0)
        first = g.op(
            "ReduceMin",
            g.op("Add", coords, g.op("Mul", g.op("Sub", one, any_), n)),
            axes=[1],
            keepdims=0,
        )
        return first, last

    top, bottom = edges(2, ch)
    left, right = edges(1, cw)
    empty = g.op("Or", g.op("Less", right, left), g.op("Less", bottom, top))
    filled = g.op("Unsqueeze", g.op("Cast", g.op("Not", empty), to=TensorProto.INT64), one)
    cols = [g.op("Unsqueeze", e, one) for e in (left, top, right, bottom)]
    boxes = g.op("Mul", g.op("Concat", *cols, axis=1), filled)  # [K1, 4] crop frame

    # 5. is_box_near_crop_edge (atol 20, rtol 0) on the uncropped boxes, in float32
    offset = g.op("Concat", x0, y0, x0, y0, axis=0)
    ub = g.op("Cast", g.op("Add", boxes, offset), to=TensorProto.FLOAT)
    zero1 = g.const([0], i64)
    crop_f = g.op("Cast", spec.AMG_CROP_BOX, to=TensorProto.FLOAT)
    orig_f = g.op("Cast", g.op("Concat", zero1, zero1, w_img, h_img, axis=0), to=TensorProto.FLOAT)
    atol = g.const(EDGE_ATOL, np.float32)

    def near(ref: str) -> str:
        return g.op("LessOrEqual", g.op("Abs", g.op("Sub", ub, ref)), atol)

    at_edge = g.op("And", near(crop_f), g.op("Not", near(orig_f)))
    at_edge = g.op("ReduceMax", g.op("Cast", at_edge, to=TensorProto.INT64), axes=[1], keepdims=0)
    inside = g.op("Not", g.op("Greater", at_edge, g.const(0, i64)))

    # 6. the kept masks, uncropped (uncrop_masks) and transposed to column-major order
    idx2 = g.op("Reshape", g.op("NonZero", g.op("And", keep_stab, inside)), flat)
    g.op("Gather", idx1, idx2, out=spec.AMG_KEEP)
    g.op("Gather", stability, idx2, out=spec.AMG_STABILITY)
    g.op("Gather", boxes, idx2, axis=0, out=spec.AMG_BOXES)
    kept = g.op("Gather", g.op("Cast", binary, to=TensorProto.UINT8), idx2, axis=0)
    pads = g.op(
        "Concat",
        zero1,
        y0,
        x0,
        zero1,
        g.op("Sub", h_img, y1),
        g.op("Sub", w_img, x1),
        axis=0,
    )
    padded = g.op("Pad", kept, pads, mode="constant")
    g.op("Transpose", padded, perm=[0, 2, 1], out=spec.AMG_MASKS_T)

    onnx_dtype = {
        "float32": TensorProto.FLOAT,
        "int64": TensorProto.INT64,
        "uint8": TensorProto.UINT8,
    }

    def value_info(t: spec.TensorSpec) -> onnx.ValueInfoProto:
        dims = [d if d != -1 else f"{t.name}_{i}" for i, d in enumerate(t.shape)]
        return helper.make_tensor_value_info(t.name, onnx_dtype[t.dtype], dims)

    graph = helper.make_graph(
        g.nodes,
        spec.AMG_MASKS_MODEL,
        [value_info(t) for t in spec.amg_masks_inputs()],
        [value_info(t) for t in spec.amg_masks_outputs()],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="sam2-triton",
        doc_string=__doc__.split("\n\n")[0],
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def export(path: str | Path) -> None:
    """Write the graph to ``path``."""
    onnx.save(build(), str(path))
