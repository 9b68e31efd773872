"""Grounding DINO (transformers ``GroundingDinoForObjectDetection``) -> ONNX, one graph per canvas.

``load_detector(model_dir)`` reads a local ``save_pretrained`` directory (never the network);
``export_detector`` writes one graph for a static canvas (contract: ``text_spec``);
``stage_detector`` exports both canvases into a staging directory, verifies them
(``detector_verify``) and stages the tokenizer files ``sam2_text`` runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict

import torch

from sam2_triton import text_spec

from .errors import ExportError

logger = logging.getLogger(__name__)

OPSET = 17
MODEL_FILE = "model.onnx"
REPORT_FILE = "detector_export.json"
REQUIRED_FILES = ("config.json", "model.safetensors", *text_spec.TOKENIZER_FILES)
# the processor settings sam2_text reproduces (sam2_triton_server.grounding); others are refused
_PROCESSOR = {
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
    "do_pad": True,
    "rescale_factor": text_spec.RESCALE_FACTOR,
    "image_mean": list(text_spec.IMAGE_MEAN),
    "image_std": list(text_spec.IMAGE_STD),
}


class DetectorInfo(TypedDict):
    """What the repository configs need from a detector."""

    shortest_edge: int  # the processor's resize
    longest_edge: int
    num_queries: int
    transformers: str  # its version (post-processing semantics changed across versions)


def load_detector(model_dir: str | Path) -> tuple[torch.nn.Module, object, DetectorInfo]:
    """``GroundingDinoForObjectDetection`` (eval), ``GroundingDinoProcessor`` and their
    :class:`DetectorInfo` from a local directory (``save_pretrained`` layout with
    ``model.safetensors``, e.g. ``huggingface-cli download IDEA-Research/grounding-dino-base
    --local-dir DIR``). Never downloads, never unpickles (safetensors only).

    Raises:
        ExportError: a missing file, a processor whose settings sam2_text does not reproduce,
            or a tokenizer whose special-token ids differ from those the model hard-codes.
    """
    import transformers
    from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

    transformers.utils.logging.disable_progress_bar()  # the CLI prints its own progress

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ExportError(f"--detector {model_dir}: not a directory")
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ExportError(
            f"--detector {model_dir} lacks {missing}: give a transformers save_pretrained "
            "directory of a Grounding DINO model (config, model.safetensors, tokenizer files)"
        )
    try:
        model = GroundingDinoForObjectDetection.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True
        ).eval()
        processor = GroundingDinoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ExportError(f"--detector {model_dir}: transformers cannot load it: {exc}") from exc
    ip = processor.image_processor
    wrong = {}
    for key, want in _PROCESSOR.items():
        got = getattr(ip, key, None)
        got = list(got) if isinstance(got, (list, tuple)) else got
        if got != want:
            wrong[key] = got
    size = dict(ip.size or {})
    if set(size) != {"shortest_edge", "longest_edge"}:
        wrong["size"] = size
    if wrong:
        raise ExportError(
            f"--detector {model_dir}: image processor settings {wrong} differ from what "
            f"sam2_text reproduces ({_PROCESSOR}, size with shortest_edge/longest_edge)"
        )
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(text_spec.SPECIAL_TOKENS))
    if tuple(ids) != tuple(text_spec.SPECIAL_TOKENS.values()):
        raise ExportError(
            f"--detector {model_dir}: tokenizer ids of {list(text_spec.SPECIAL_TOKENS)} are "
            f"{ids}, but Grounding DINO hard-codes {list(text_spec.SPECIAL_TOKENS.values())}"
        )
    if model.config.max_text_len != text_spec.MAX_TEXT_LEN:
        raise ExportError(
            f"--detector {model_dir}: max_text_len {model.config.max_text_len} != "
            f"{text_spec.MAX_TEXT_LEN} (the logits' width sam2_text expects)"
        )
    info = DetectorInfo(
        shortest_edge=int(size["shortest_edge"]),
        longest_edge=int(size["longest_edge"]),
        num_queries=int(model.config.num_queries),
        transformers=transformers.__version__,
    )
    return model, processor, info


# --- export -----------------------------------------------------------------------------------
def gen_masks_onnx(
    input_ids: torch.Tensor, special_tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``modeling_grounding_dino.generate_masks_with_special_tokens_and_transfer_map`` without
    ``torch.isin`` (no ONNX symbolic) and ``cummax``/``cummin`` (no ONNX op): input_ids [B,T]
    int64 -> (attention mask [B,T,T] bool, position_ids [B,T] int64), bit-identical (checked
    on random id sequences by tests/test_detector.py)."""
    idx = torch.arange(input_ids.shape[1], device=input_ids.device)
    n = idx[-1:] + 1  # T as a tensor (stays dynamic in the trace)
    special = (input_ids.unsqueeze(-1) == special_tokens.view(1, 1, -1)).any(-1)
    i, j = idx.view(1, -1, 1), idx.view(1, 1, -1)
    sj = special.unsqueeze(1)
    next_special = torch.where(sj & (j >= i), j, torch.full_like(j, 1 << 30)).amin(-1)
    next_special = torch.minimum(next_special, n)
    prev_special = torch.where(sj & (j < i), j, torch.full_like(j, -1)).amax(-1)
    valid = (next_special != 0) & (next_special != n - 1) & (next_special != n)
    mask = (next_special.unsqueeze(2) == next_special.unsqueeze(1)) & valid.unsqueeze(1)
    mask = mask | (i == j)
    position_ids = torch.where(valid, idx.unsqueeze(0) - prev_special - 1, 0)
    return mask, torch.clamp(position_ids, min=0).to(torch.long)


@contextlib.contextmanager
def onnx_patches() -> Iterator[None]:
    """Swap in :func:`gen_masks_onnx` for the duration of an export only."""
    import transformers.models.grounding_dino.modeling_grounding_dino as gd

    original = gd.generate_masks_with_special_tokens_and_transfer_map
    gd.generate_masks_with_special_tokens_and_transfer_map = gen_masks_onnx
    try:
        yield
    finally:
        gd.generate_masks_with_special_tokens_and_transfer_map = original


class DetectorGraph(torch.nn.Module):
    """The exported function: the five processor tensors -> (logits, pred_boxes)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
        )
        return out.logits, out.pred_boxes


def export_example(canvas_hw: tuple[int, int], text_len: int = 7) -> tuple[torch.Tensor, ...]:
    """Trace inputs: one random image filling the canvas, ``text_len`` tokens with two phrases
    (the traced T is not special: T stays dynamic)."""
    g = torch.Generator().manual_seed(0)
    h, w = canvas_hw
    ids = torch.full((1, text_len), 1030, dtype=torch.int64)
    ids[0, 0], ids[0, -1] = text_spec.CLS_ID, text_spec.SEP_ID
    ids[0, 2] = ids[0, -2] = text_spec.PERIOD_ID
    ones = torch.ones_like(ids)
    mask = torch.ones(1, h, w, dtype=torch.int64)
    return torch.randn(1, 3, h, w, generator=g), mask, ids, ones, torch.zeros_like(ids)


def export_detector(
    model: torch.nn.Module, out_path: str | Path, canvas_hw: tuple[int, int]
) -> dict[str, object]:
    """Export ``model`` for the static canvas ``canvas_hw`` (B and T dynamic) to ``out_path``.

    The TorchScript exporter (opset :data:`OPSET`, constant folding) with :func:`onnx_patches`.
    The model is in eval mode afterwards (the exporter restores the *wrapper's* mode,
    recursively, which would otherwise switch dropout on). Returns ``{"bytes", "seconds",
    "canvas"}``. Raises ExportError if the hub ``kernels`` package is installed (it would
    replace the deformable attention by a CUDA kernel the graph cannot hold).
    """
    if importlib.util.find_spec("kernels") is not None:
        raise ExportError("the 'kernels' package is installed: uninstall it to export")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = (*text_spec.DETECTOR_INPUT_NAMES, *text_spec.DETECTOR_OUTPUT_NAMES)
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in names}
    for n in text_spec.TEXT_INPUT_NAMES:
        axes[n][1] = "text_len"
    start = time.perf_counter()
    try:
        with onnx_patches(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Swin's shape branches
            torch.onnx.export(
                DetectorGraph(model).eval(),
                export_example(canvas_hw),
                str(out_path),
                input_names=list(text_spec.DETECTOR_INPUT_NAMES),
                output_names=list(text_spec.DETECTOR_OUTPUT_NAMES),
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.eval()
    _static_output_dims(out_path, int(model.config.num_queries))
    seconds = round(time.perf_counter() - start, 1)
    logger.info("exported %s in %.1f s", out_path, seconds)
    return {"bytes": out_path.stat().st_size, "seconds": seconds, "canvas": list(canvas_hw)}


def _static_output_dims(path: Path, num_queries: int) -> None:
    """Write the outputs' fixed dimensions into the graph (the exporter leaves them symbolic):
    [batch, Q, 256] and [batch, Q, 4], as the contract and the Triton configs declare them."""
    import onnx

    model = onnx.load(str(path))
    fixed = {t.name: t.shape[1:] for t in text_spec.detector_outputs(num_queries)}
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        for dim, value in zip(list(dims)[1:], fixed[out.name]):
            dim.Clear()
            dim.dim_value = value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def stage_detector(
    model_dir: str | Path,
    staged: Path,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Export both canvases of the detector in ``model_dir`` into ``staged`` (nothing is
    installed), verify each against transformers, and stage the tokenizer files for
    ``sam2_text``. Returns the report (also ``staged / REPORT_FILE``): ``passed``, ``failures``,
    ``detector`` (:class:`DetectorInfo`), ``files`` (relative paths to install), per-canvas
    export and verification results."""
    from . import detector_verify

    say = progress or (lambda _text: None)
    t0 = time.perf_counter()
    model, processor, info = load_detector(model_dir)
    report: dict = {
        "format": 1,
        "opset": OPSET,
        "detector": dict(info),
        "model_dir": str(Path(model_dir).resolve()),
        "models": {},
        "verify": {},
        "failures": [],
        "files": [],
    }
    canvases = text_spec.canvases(info["shortest_edge"], info["longest_edge"])
    for orientation, canvas in canvases.items():
        name = text_spec.DETECTOR_MODELS[orientation]
        rel = f"{name}/1/{MODEL_FILE}"
        say(f"Exporting {rel} (canvas {canvas[0]}x{canvas[1]}) ...")
        report["models"][name] = {"file": rel, **export_detector(model, staged / rel, canvas)}
        say(f"Verifying {name} with onnxruntime against transformers ...")
        cases = detector_verify.cases_for(orientation, canvas)
        result = detector_verify.verify_detector(model, processor, staged / rel, cases)
        report["verify"][name] = result
        report["failures"] += [f"{name}: {f}" for f in result["failures"]]
        report["files"].append(rel)
    for fname in text_spec.TOKENIZER_FILES:
        rel = f"{text_spec.TEXT_MODEL}/1/{fname}"
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(model_dir) / fname, staged / rel)
        report["files"].append(rel)
    report["passed"] = not report["failures"]
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (staged / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    report["files"].append(REPORT_FILE)
    return report
