"""Export the video modules (``video_modules``) to ONNX and install them atomically.

``stage_video_modules(model, staged)`` writes ``<name>/1/model.onnx`` for the five graphs
(``video_spec.VIDEO_GRAPHS``) into a staging directory and runs the checks of ``video_verify``
on them; ``sam2-triton export --video`` installs them together with the image models.
``export_video_modules(model, out_dir)`` does the same on its own: staging directory beside
``out_dir``, then ``os.replace`` only when every check passes. Both return the verification
report, also written as ``video_export.json`` (installed before the manifest).

Names and shapes are the one contract of ``sam2_triton_serve.repository.video_graph_inputs`` /
``video_graph_outputs`` (tensor names from ``sam2_triton.video_spec``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sam2_triton import spec, video_spec
from sam2_triton_serve import repository

from . import install
from .errors import ParityError
from .onnx_export import OPSET, _annotate_outputs, check_onnx, torch_export
from .video_modules import (
    MaskPrompt,
    MemoryAttention,
    MemoryEncoder,
    VideoImageEncoder,
    VideoMaskDecoder,
)

logger = logging.getLogger(__name__)

IMAGE_ENCODER = video_spec.VIDEO_IMAGE_ENCODER_MODEL
MEMORY_ATTENTION = video_spec.MEMORY_ATTENTION_MODEL
MASK_DECODER = video_spec.VIDEO_MASK_DECODER_MODEL
MEMORY_ENCODER = video_spec.MEMORY_ENCODER_MODEL
MASK_PROMPT = video_spec.MASK_PROMPT_MODEL
MODEL_FILE = repository.MODEL_FILENAME
REPORT_FILE = "video_export.json"
# frames travel as uint8 RGB (video_spec.IMAGE, SAM 2's video loader divides by 255)
IMAGE_DTYPE = repository.VIDEO_IMAGE_DTYPE

# (spatial memories M, object pointers P) checked with onnxruntime; the graph is traced once.
MEMORY_CASES = ((1, 0), (1, 1), (4, 5), (7, 16))
# (frames: frame -> conditioning?, current frame, num_frames, reverse) compared with SAM 2
SAM_SCENARIOS = (
    ({0: True, 1: False, 2: False}, 3, 10, False),
    ({2: True, 9: True, 7: False, 8: False}, 6, 10, True),
)
# The smaller set (``sam2-triton export --video --video-quick-verify``, the test suite): memory
# lengths 1 (no pointers, batch 2) and 7 (16 pointers) with onnxruntime, and the reverse SAM 2
# scenario (M=4, two conditioning frames); about half the verification time on CPU.
QUICK_MEMORY_CASES = ((1, 0), (7, 16))
QUICK_SAM_SCENARIOS = SAM_SCENARIOS[1:]
# Max abs difference ONNX vs PyTorch (and wrapper vs SAM 2) per output. Measured on seeded
# random tiny weights (docs/video.md): <= 2e-5 everywhere; 1e-4 is the image path's default
# gate and leaves ~5x headroom. RoPE: the rewrite does the products and sums torch's complex
# multiply does, measured 0 (<= 1 float32 ulp of |x| allowed: 1e-6 on unit-scale inputs).
TOLERANCE = 1e-4
ROPE_TOLERANCE = 1e-6

INPUTS = {
    name: [t.name for t in repository.video_graph_inputs(name)] for name in video_spec.VIDEO_GRAPHS
}
OUTPUTS = {
    name: [t.name for t in repository.video_graph_outputs(name)] for name in video_spec.VIDEO_GRAPHS
}
AXES = {
    IMAGE_ENCODER: {n: {0: "batch"} for n in INPUTS[IMAGE_ENCODER] + OUTPUTS[IMAGE_ENCODER]},
    MEMORY_ATTENTION: {
        video_spec.VISION_FEAT: {0: "batch"},
        video_spec.MASKMEM_FEATURES: {0: "batch", 1: "num_memories"},
        video_spec.MASKMEM_TPOS: {0: "num_memories"},
        video_spec.OBJ_PTRS: {0: "batch", 1: "num_obj_ptrs"},
        video_spec.OBJ_PTR_TPOS: {0: "num_obj_ptrs"},
        video_spec.PIX_FEAT_WITH_MEM: {0: "batch"},
    },
    MASK_DECODER: {
        **{n: {0: "batch"} for n in INPUTS[MASK_DECODER] + OUTPUTS[MASK_DECODER]},
        video_spec.POINT_COORDS: {0: "batch", 1: "num_points"},
        video_spec.POINT_LABELS: {0: "batch", 1: "num_points"},
    },
    MEMORY_ENCODER: {n: {0: "batch"} for n in INPUTS[MEMORY_ENCODER] + OUTPUTS[MEMORY_ENCODER]},
    MASK_PROMPT: {video_spec.MASK_1024: {0: "batch"}, video_spec.MASK_DOWNSAMPLED: {0: "batch"}},
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


def mask_prompt_example(b: int = 2, seed: int = 0) -> tuple[torch.Tensor]:
    """Random 0/1 prompt masks [B,1,1024,1024]: blobs of a coarse random field (not noise), the
    last one empty (an object removed by its mask)."""
    g = _gen(seed)
    coarse = torch.rand(b, 1, 16, 16, generator=g)
    mask = (F.interpolate(coarse, size=(spec.IMAGE_SIZE,) * 2, mode="bilinear") > 0.6).float()
    mask[-1] = 0.0
    return (mask,)


# ----------------------------------------------------------------------------------------------
# Export


def _name_constant_outputs(path: Path, names: list[str]) -> None:
    """Constant folding turns an output that is a constant of the weights (``no_obj_ptr``)
    into an initializer, and the exporter then names the output after it: give it its name
    back through an Identity node."""
    import onnx

    model = onnx.load(str(path))
    renamed = False
    for out, name in zip(model.graph.output, names):
        if out.name != name:
            model.graph.node.append(onnx.helper.make_node("Identity", [out.name], [name]))
            out.name = name
            renamed = True
    if renamed:
        onnx.save(model, str(path))


def _export(module, args, path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch_export(module, args, path, INPUTS[name], OUTPUTS[name], AXES[name])
    _name_constant_outputs(path, OUTPUTS[name])
    # the contract's output shapes (the tracer loses them after reshapes), as the image path
    _annotate_outputs(path, repository.video_graph_outputs(name), AXES[name])
    check_onnx(path)


def build_modules(model, fingerprint: tuple[int, int], image_dtype: str = IMAGE_DTYPE) -> dict:
    """The five wrappers (eval mode), by model name (``video_spec.VIDEO_GRAPHS`` order)."""
    return {
        IMAGE_ENCODER: VideoImageEncoder(model, fingerprint, image_dtype).eval(),
        MEMORY_ATTENTION: MemoryAttention(model).eval(),
        MASK_DECODER: VideoMaskDecoder(model).eval(),
        MEMORY_ENCODER: MemoryEncoder(model).eval(),
        MASK_PROMPT: MaskPrompt(model).eval(),
    }


def export_example(model, name: str, image_dtype: str = IMAGE_DTYPE) -> tuple[torch.Tensor, ...]:
    """The example inputs a graph is traced with (sizes unlike any fixed one: 2 objects,
    M=2 memories, P=3 pointers, 3 points)."""
    if name == IMAGE_ENCODER:
        x = torch.rand(1, 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE)
        return ((x * 255).round().to(torch.uint8) if image_dtype == "uint8" else x,)
    if name == MEMORY_ATTENTION:
        return memory_attention_example(model, b=2, m=2, p=3)
    if name == MASK_DECODER:
        return mask_decoder_example(b=2, p=3)
    if name == MASK_PROMPT:
        return mask_prompt_example(b=2)
    return memory_encoder_example(b=2)


def stage_video_modules(
    model: torch.nn.Module,
    staged: Path,
    *,
    fingerprint: tuple[int, int] | None = None,
    image_dtype: str = IMAGE_DTYPE,
    memory_cases: tuple[tuple[int, int], ...] = MEMORY_CASES,
    sam_scenarios: tuple = SAM_SCENARIOS,
    tolerance: float = TOLERANCE,
    progress=None,
) -> dict:
    """Export the five video graphs into ``staged`` (a staging directory: nothing is installed)
    and verify them; returns the report (also written to ``staged / REPORT_FILE``), whose
    ``passed`` says whether every check is within its tolerance. ``progress(text)`` is called
    before each step (the CLI prints it)."""
    from . import video_verify  # imports this module's names and example inputs
    from .checkpoints import weights_fingerprint

    say = progress or (lambda _text: None)
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
        "image_dtype": image_dtype,
        "memory_cases": [list(c) for c in memory_cases],
        "sam_scenarios": len(sam_scenarios),
        "models": {},
        "onnx_vs_torch": {},
        "vs_sam2": {},
        "rope": {},
        "objects_present": {},
        "seconds": {},
        "failures": [],
    }
    staged = Path(staged)
    paths = {}
    with torch.no_grad():
        for name, module in modules.items():
            rel = f"{name}/1/{MODEL_FILE}"
            say(f"Exporting {rel} ...")
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
        say("Verifying the video graphs with onnxruntime against PyTorch and SAM 2 ...")
        checks = video_verify.verify_modules(model, modules, paths, memory_cases, sam_scenarios)
    report["seconds"].update(checks.pop("seconds"))
    report.update(checks)
    report["failures"] = video_verify.failures(report)
    report["passed"] = not report["failures"]
    report["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    (staged / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def video_files(report: dict) -> list[str]:
    """The files a staged video export installs (relative paths), the report last."""
    return [*(m["file"] for m in report["models"].values()), REPORT_FILE]


def export_video_modules(
    model: torch.nn.Module,
    out_dir: Path,
    *,
    fingerprint: tuple[int, int] | None = None,
    image_dtype: str = IMAGE_DTYPE,
    memory_cases: tuple[tuple[int, int], ...] = MEMORY_CASES,
    sam_scenarios: tuple = SAM_SCENARIOS,
    tolerance: float = TOLERANCE,
    raise_on_failure: bool = True,
) -> dict:
    """Export, verify and install the five video graphs into ``out_dir``; returns the report.

    Only the ONNX files and ``video_export.json``: ``sam2-triton export --video`` is what writes
    a servable repository (configs, ``sam2_video``, manifest). Raises ``ParityError`` (nothing
    installed) when a check exceeds its tolerance, unless ``raise_on_failure`` is False (then
    nothing is installed either; the report says why).
    """
    out_dir = Path(out_dir)
    with install.staging_dir(out_dir) as staged:
        report = stage_video_modules(
            model,
            staged,
            fingerprint=fingerprint,
            image_dtype=image_dtype,
            memory_cases=memory_cases,
            sam_scenarios=sam_scenarios,
            tolerance=tolerance,
        )
        if report["passed"]:
            files = video_files(report)
            install.install(staged, out_dir, files[:-1], last=files[-1])
    if not report["passed"] and raise_on_failure:
        raise ParityError("video export failed verification: " + "; ".join(report["failures"]))
    return report
