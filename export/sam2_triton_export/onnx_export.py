"""Export ``ImageEncoder`` / ``PromptDecoder`` to ONNX (classic exporter, opset 17)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from sam2_triton import spec

from .modules import ImageEncoder, PromptDecoder

logger = logging.getLogger(__name__)

OPSET = 17


def _names(specs: tuple[spec.TensorSpec, ...]) -> list[str]:
    return [t.name for t in specs]


def _dynamic_axes(
    specs: tuple[spec.TensorSpec, ...], labels: dict[int, str]
) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for t in specs:
        dyn = {i: labels.get(i, f"{t.name}_{i}") for i, d in enumerate(t.shape) if d == -1}
        if dyn:
            axes[t.name] = dyn
    return axes


def torch_export(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    axes: dict[str, dict[int, str]],
) -> None:
    """``torch.onnx.export`` as every model of this project is exported: the classic (tracing)
    exporter, opset ``OPSET``, constant folding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values are expected
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _export(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: tuple[spec.TensorSpec, ...],
    outputs: tuple[spec.TensorSpec, ...],
    axes: dict[str, dict[int, str]],
) -> None:
    torch_export(module, args, path, _names(inputs), _names(outputs), axes)
    _annotate_outputs(path, outputs, axes)


def _annotate_outputs(
    path: Path, outputs: tuple[spec.TensorSpec, ...], axes: dict[str, dict[int, str]]
) -> None:
    """Write the spec's output shapes into the graph (the tracer loses them after reshapes),
    so Triton, TensorRT and readers see [N,4,256,256] instead of four unknown dimensions."""
    import onnx

    model = onnx.load(str(path))
    by_name = {t.name: t for t in outputs}
    for value in model.graph.output:
        t = by_name[value.name]
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for i, d in enumerate(t.shape):
            dim = dims.add()
            if d == -1:
                dim.dim_param = axes.get(t.name, {}).get(i, f"{t.name}_{i}")
            else:
                dim.dim_value = d
    onnx.save(model, str(path))


def export_encoder(encoder: ImageEncoder, path: str | os.PathLike[str]) -> None:
    """Write the encoder ONNX with a dynamic batch dimension."""
    dtype = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}[
        encoder.image_dtype
    ]
    example = torch.rand(1, 3, spec.IMAGE_SIZE, spec.IMAGE_SIZE)
    example = (example * 255).round().to(dtype) if dtype == torch.uint8 else example.to(dtype)
    ins = spec.encoder_inputs(encoder.image_dtype)
    outs = spec.encoder_outputs(str(encoder.feature_dtype).removeprefix("torch."))
    axes = {name: {0: "batch"} for name in _names(ins) + _names(outs)}
    _export(encoder.eval(), (example,), Path(path), ins, outs, axes)


def decoder_example(
    feature_dtype: str, n: int = 2, p: int = 3, m: int = 2, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random decoder inputs in the spec's order: features [1,...], N prompts of P points, M masks."""
    g = torch.Generator().manual_seed(seed)
    dtype = {"float32": torch.float32, "float16": torch.float16}[feature_dtype]
    feats = [
        torch.randn(1, *spec.FEATURE_SHAPES[name], generator=g).to(dtype)
        for name in spec.FEATURE_NAMES
    ]
    coords = torch.rand(n, p, 2, generator=g) * spec.IMAGE_SIZE
    labels = torch.randint(0, 2, (n, p), generator=g, dtype=torch.int32)
    masks = torch.randn(m, 1, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE, generator=g)
    has_mask = torch.ones(m)
    return (*feats, coords, labels, masks, has_mask)


def export_decoder(
    decoder: PromptDecoder, path: str | os.PathLike[str], feature_dtype: str
) -> None:
    """Write the decoder ONNX with dynamic N (prompts), P (points) and M (mask inputs)."""
    ins = spec.decoder_inputs(feature_dtype)
    outs = spec.decoder_outputs()
    axes = {
        spec.POINT_COORDS: {0: "num_prompts", 1: "num_points"},
        spec.POINT_LABELS: {0: "num_prompts", 1: "num_points"},
        spec.MASK_INPUT: {0: "num_masks"},
        spec.HAS_MASK_INPUT: {0: "num_masks"},
        spec.LOW_RES_MASKS: {0: "num_prompts"},
        spec.IOU_PREDICTIONS: {0: "num_prompts"},
        spec.OBJECT_SCORE_LOGITS: {0: "num_prompts"},
    }
    _export(decoder.eval(), decoder_example(feature_dtype), Path(path), ins, outs, axes)


def check_onnx(path: str | os.PathLike[str]) -> None:
    """``onnx.checker`` on a written model (full check, by path so >2 GB models work)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
