"""Export the video modules (``video_modules``) to ONNX and install them atomically.

``export_video_modules(model, out_dir)`` writes ``<name>/1/model.onnx`` for the four graphs into
a staging directory beside ``out_dir``, runs the checks of ``video_verify`` on them and installs
them with ``os.replace`` only when every check passes. It returns the verification report, also
written as ``video_export.json`` (installed last).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from sam2_triton import spec

from . import install
from .errors import ParityError
from .onnx_export import OPSET, check_onnx, torch_export
from .video_modules import MemoryAttention, MemoryEncoder, VideoImageEncoder, VideoMaskDecoder

logger = logging.getLogger(__name__)

IMAGE_ENCODER = "sam2_video_image_encoder"
MEMORY_ATTENTION = "sam2_memory_attention"
MASK_DECODER = "sam2_video_mask_decoder"
MEMORY_ENCODER = "sam2_memory_encoder"
MODEL_FILE = "model.onnx"
REPORT_FILE = "video_export.json"

# (spatial memories M, object pointers P) checked with onnxruntime; the graph is traced once.
MEMORY_CASES = ((1, 0), (1, 1), (4, 5), (7, 16))
# (frames: frame -> conditioning?, current frame, num_frames, reverse) compared with SAM 2
SAM_SCENARIOS = (
    ({0: True, 1: False, 2: False}, 3, 10, False),
    ({2: True, 9: True, 7: False, 8: False}, 6, 10, True),
)
# Max abs difference ONNX vs PyTorch (and wrapper vs SAM 2) per output. Measured on seeded
# random tiny weights (docs/video.md): <= 2e-5 everywhere; 1e-4 is the image path's default
# gate and leaves ~5x headroom. RoPE: the rewrite does the products and sums torch's complex
# multiply does, measured 0 (<= 1 float32 ulp of |x| allowed: 1e-6 on unit-scale inputs).
TOLERANCE = 1e-4
ROPE_TOLERANCE = 1e-6

INPUTS = {
    IMAGE_ENCODER: ["image"],
    MEMORY_ATTENTION: [
        "vision_feat",
        "maskmem_features",
        "maskmem_tpos",
        "obj_ptrs",
        "obj_ptr_tpos",
    ],
    MASK_DECODER: [
        "pix_feat",
        "high_res_feats_0",
        "high_res_feats_1",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "multimask_output",
    ],
    MEMORY_ENCODER: ["vision_feat", "pred_masks", "object_score_logits", "binarize_mask"],
}
OUTPUTS = {
    IMAGE_ENCODER: [
        "image_embed",
        "high_res_feats_0",
        "high_res_feats_1",
        "vision_feat",
        "model_fingerprint",
    ],
    MEMORY_ATTENTION: ["pix_feat_with_mem"],
    MASK_DECODER: ["low_res_masks", "obj_ptr", "object_score_logits"],
    MEMORY_ENCODER: ["maskmem_features"],
}
AXES = {
    IMAGE_ENCODER: {n: {0: "batch"} for n in INPUTS[IMAGE_ENCODER] + OUTPUTS[IMAGE_ENCODER]},
    MEMORY_ATTENTION: {
        "vision_feat": {0: "batch"},
        "maskmem_features": {0: "batch", 1: "num_memories"},
        "maskmem_tpos": {0: "num_memories"},
        "obj_ptrs": {0: "batch", 1: "num_obj_ptrs"},
        "obj_ptr_tpos": {0: "num_obj_ptrs"},
        "pix_feat_with_mem": {0: "batch"},
    },
    MASK_DECODER: {
        **{n: {0: "batch"} for n in INPUTS[MASK_DECODER] + OUTPUTS[MASK_DECODER]},
        "point_coords": {0: "batch", 1: "num_points"},
        "point_labels": {0: "batch", 1: "num_points"},
    },
    MEMORY_ENCODER: {n: {0: "batch"} for n in INPUTS[MEMORY_ENCODER] + OUTPUTS[MEMORY_ENCODER]},
}


# ----------------------------------------------------------------------------------------------
# Random inputs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def memory_attention_example(
    model: torch.nn.Module, b: int, m: int, p: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random memory-attention inputs: B objects, M spatial memories, P object pointers."""
    g = _gen(seed)
    s = model.image_size // model.backbone_stride
    tpos = torch.randint(0, model.num_maskmem, (m,), generator=g, dtype=torch.int64)
    tpos[0] = 0  # SAM 2 always attends to a conditioning frame (t_pos 0)
    t_diff_max = model.max_obj_ptrs_in_encoder - 1
    ptr_pos = torch.randint(-t_diff_max, t_diff_max + 1, (p,), generator=g) / t_diff_max
    return (
        torch.randn(b, model.hidden_dim, s, s, generator=g),
        torch.randn(b, m, model.mem_dim, s, s, generator=g),
        tpos,
        torch.randn(b, p, model.hidden_dim, generator=g),
        ptr_pos.to(torch.float32),
    )


def mask_decoder_example(
    b: int = 2, p: int = 1, multimask: tuple[float, ...] = (1.0, 0.0), seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random decoder inputs; p=0 means "no clicks" (SAM 2's single (0,0) point labelled -1)."""
    g = _gen(seed)
    feats = [torch.randn(b, *spec.FEATURE_SHAPES[n], generator=g) for n in spec.FEATURE_NAMES]
    if p == 0:
        coords = torch.zeros(b, 1, 2)
        labels = -torch.ones(b, 1, dtype=torch.int32)
    else:
        coords = torch.rand(b, p, 2, generator=g) * spec.IMAGE_SIZE
        labels = torch.randint(0, 2, (b, p), generator=g, dtype=torch.int32)
    mask = torch.randn(b, 1, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE, generator=g) * 4
    has_mask = torch.tensor([float(i % 2) for i in range(b)])
    return (*feats, coords, labels, mask, has_mask, torch.tensor(multimask[:b]))


def memory_encoder_example(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random memory-encoder inputs; object present on even items, binarised on odd ones."""
    g = _gen(seed)
    vision = torch.randn(b, *spec.FEATURE_SHAPES[spec.FEATURE_NAMES[0]], generator=g)
    masks = torch.randn(b, 1, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE, generator=g) * 8
    scores = torch.tensor([[3.0 if i % 2 == 0 else -3.0] for i in range(b)])
    binarize = torch.tensor([float(i % 2) for i in range(b)])
    return vision, masks, scores, binarize


# ----------------------------------------------------------------------------------------------
# Export


def _export(module, args, path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch_export(module, args, path, INPUTS[name], OUTPUTS[name], AXES[name])
    check_onnx(path)


def build_modules(model, fingerprint: tuple[int, int], image_dtype: str = "float32") -> dict:
    """The four wrappers (eval mode), by model name."""
    return {
        IMAGE_ENCODER: VideoImageEncoder(model, fingerprint, image_dtype).eval(),
        MEMORY_ATTENTION: MemoryAttention(model).eval(),
        MASK_DECODER: VideoMaskDecoder(model).eval(),
        MEMORY_ENCODER: MemoryEncoder(model).eval(),
    }


def export_example(model, name: str, image_dtype: str = "float32") -> tuple[torch.Tensor, ...]:
    """The example inputs a graph is traced with (sizes unlike any fixed one: 2 objects,
    M=2 memories, P=3 pointers, 3 points)."""
    if name == IMAGE_ENCODER:
        x = torch.rand(1, 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE)
        return ((x * 255).round().to(torch.uint8) if image_dtype == "uint8" else x,)
    if name == MEMORY_ATTENTION:
        return memory_attention_example(model, b=2, m=2, p=3)
    if name == MASK_DECODER:
        return mask_decoder_example(b=2, p=3)
    return memory_encoder_example(b=2)


def export_video_modules(
    model: torch.nn.Module,
    out_dir: Path,
    *,
    fingerprint: tuple[int, int] | None = None,
    image_dtype: str = "float32",
    memory_cases: tuple[tuple[int, int], ...] = MEMORY_CASES,
    sam_scenarios: tuple = SAM_SCENARIOS,
    tolerance: float = TOLERANCE,
    raise_on_failure: bool = True,
) -> dict:
    """Export, verify and install the four video graphs into ``out_dir``; returns the report.

    Raises ``ParityError`` (nothing installed) when a check exceeds its tolerance, unless
    ``raise_on_failure`` is False (then nothing is installed either; the report says why).
    """
    from . import video_verify  # imports this module's names and example inputs
    from .checkpoints import weights_fingerprint

    t0 = time.perf_counter()
    model = model.eval()
    if fingerprint is None:
        fingerprint = weights_fingerprint(model)
    modules = build_modules(model, fingerprint, image_dtype)
    report: dict = {
        "format": 1,
        "opset": OPSET,
        "tolerance": tolerance,
        "rope_tolerance": ROPE_TOLERANCE,
        "fingerprint": list(fingerprint),
        "models": {},
        "onnx_vs_torch": {},
        "vs_sam2": {},
        "rope": {},
        "objects_present": {},
        "seconds": {},
        "failures": [],
    }
    out_dir = Path(out_dir)
    with install.staging_dir(out_dir) as staged, torch.no_grad():
        paths = {}
        for name, module in modules.items():
            rel = f"{name}/1/{MODEL_FILE}"
            start = time.perf_counter()
            _export(module, export_example(model, name, image_dtype), staged / rel, name)
            report["seconds"][f"export.{name}"] = round(time.perf_counter() - start, 1)
            logger.info("exported %s in %.1f s", rel, time.perf_counter() - start)
            paths[name] = staged / rel
            report["models"][name] = {
                "file": rel,
                "bytes": (staged / rel).stat().st_size,
                "inputs": INPUTS[name],
                "outputs": OUTPUTS[name],
            }
        checks = video_verify.verify_modules(model, modules, paths, memory_cases, sam_scenarios)
        report["seconds"].update(checks.pop("seconds"))
        report.update(checks)
        report["failures"] = video_verify.failures(report)
        report["passed"] = not report["failures"]
        report["seconds"]["total"] = round(time.perf_counter() - t0, 1)
        (staged / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if report["passed"]:
            install.install(
                staged, out_dir, [m["file"] for m in report["models"].values()], last=REPORT_FILE
            )
    if not report["passed"] and raise_on_failure:
        raise ParityError("video export failed verification: " + "; ".join(report["failures"]))
    return report
